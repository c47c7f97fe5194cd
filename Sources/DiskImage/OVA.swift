import Foundation
import WardenCore

// An OVA: a tar archive (ustar, with pax or GNU extensions for long names and large sizes)
// whose first member is the OVF descriptor (XML) and whose other members are the disks it
// references. Read in place: members are windows of the archive, never unpacked to disk.
//
//   tar member: 512-byte header (name 0-100, size 124-136 in octal or base-256, checksum
//   148-156, type 156, "ustar" at 257, prefix 345-500), then the data, padded to 512.
//   OVF: References/File (id, href, size), DiskSection/Disk (diskId, fileRef, capacity,
//   units, format), NetworkSection/Network (name), VirtualSystem (id, Name) with its
//   VirtualHardwareSection Items (rasd:ResourceType 3 CPUs, 4 memory, 17 disks in order).

/// OVA appliances: the OVF facts in ``ImageInfo/details`` and the first disk as the device.
public enum OVA {
    static let maxMembers = 4096
    static let maxDescriptorBytes = 4 << 20
    static let maxDisks = 64
    static let maxText = 256

    /// A tar member: its name and where its data is.
    struct Member { var name: String; var offset: UInt64; var size: UInt64 }

    /// Whether `head` (the first 512 bytes) is a tar header of an `.ovf` member.
    static func isOVA(_ head: [UInt8]) -> Bool {
        guard head.count >= 512, Array(head[257..<262]) == Array("ustar".utf8) else { return false }
        let name = String(decoding: head[0..<100].prefix { $0 != 0 }, as: UTF8.self).lowercased()
        return name.hasSuffix(".ovf") && checksumOK(head)
    }

    static func checksumOK(_ h: [UInt8]) -> Bool {
        guard let stored = octal(h[148..<156]) else { return false }
        var sum: UInt64 = 0
        for (i, b) in h.prefix(512).enumerated() { sum += (148..<156).contains(i) ? 0x20 : UInt64(b) }
        return sum == stored
    }

    /// An octal field (NUL/space padded); nil when malformed.
    static func octal(_ f: ArraySlice<UInt8>) -> UInt64? {
        var v: UInt64 = 0, digits = 0
        for c in f {
            if c == 0 || c == 0x20 { if digits > 0 { break } else { continue } }
            guard c >= 0x30, c <= 0x37, v >> 60 == 0 else { return nil }
            v = v << 3 | UInt64(c - 0x30); digits += 1
        }
        return digits > 0 ? v : nil
    }

    /// The members of the archive, in order.
    static func members(_ file: ImageFile) throws -> [Member] {
        var out: [Member] = []
        var off: UInt64 = 0
        var longName: String?
        var paxName: String?, paxSize: UInt64?
        while off + 512 <= file.length {
            let h = try file.read(at: off, count: 512, what: "tar header")
            if h.allSatisfy({ $0 == 0 }) { break }
            guard checksumOK(h) else { throw WardenError.corrupt("tar header at \(hex(off)) has a wrong checksum", file: file.path) }
            var size: UInt64
            if h[124] & 0x80 != 0 {   // GNU base-256
                size = 0
                for b in h[125..<136] { guard size >> 56 == 0 else { throw WardenError.corrupt("tar member size overflows", file: file.path) }; size = size << 8 | UInt64(b) }
            } else {
                guard let s = octal(h[124..<136]) else { throw WardenError.corrupt("tar header at \(hex(off)) has a malformed size", file: file.path) }
                size = s
            }
            if let s = paxSize { size = s }
            let data = off + 512
            let (end, o) = data.addingReportingOverflow(size)
            guard !o, end <= file.length else { throw WardenError.corrupt("tar member at \(hex(off)) runs past the end of the archive", file: file.path) }
            let padded = (size + 511) / 512 * 512
            var name = String(decoding: h[0..<100].prefix { $0 != 0 }, as: UTF8.self)
            if Array(h[257..<262]) == Array("ustar".utf8) {
                let prefix = String(decoding: h[345..<500].prefix { $0 != 0 }, as: UTF8.self)
                if !prefix.isEmpty { name = prefix + "/" + name }
            }
            switch h[156] {
            case 0x4C:   // 'L': the next member's long name (GNU)
                guard size <= 4096 else { throw WardenError.corrupt("tar long name of \(size) bytes", file: file.path) }
                longName = String(decoding: try file.read(at: data, count: Int(size), what: "tar long name").prefix { $0 != 0 }, as: UTF8.self)
            case 0x78:   // 'x': pax extended header for the next member
                guard size <= 65536 else { throw WardenError.corrupt("tar extended header of \(size) bytes", file: file.path) }
                let text = String(decoding: try file.read(at: data, count: Int(size), what: "tar extended header"), as: UTF8.self)
                for record in text.split(separator: "\n") {
                    guard let sp = record.firstIndex(of: " ") else { continue }
                    let kv = record[record.index(after: sp)...]
                    guard let eq = kv.firstIndex(of: "=") else { continue }
                    let key = kv[..<eq], value = String(kv[kv.index(after: eq)...])
                    if key == "path" { paxName = value } else if key == "size" { paxSize = UInt64(value) }
                }
            case 0x67:   // 'g': global pax header: nothing needed from it
                break
            default:
                if h[156] == 0 || h[156] == 0x30 || h[156] == 0x37 {   // regular file
                    guard out.count < maxMembers else { throw WardenError.limit("the archive has more than \(maxMembers) members", file: file.path) }
                    out.append(Member(name: paxName ?? longName ?? name, offset: data, size: size))
                }
                longName = nil; paxName = nil; paxSize = nil
            }
            off = data + padded
        }
        return out
    }

    /// What the OVF descriptor says.
    public struct Descriptor: Sendable, Equatable {
        public var name: String?
        public var cpus: Int?
        public var memoryMiB: UInt64?
        public var operatingSystem: String?
        /// Disks in the order the virtual hardware attaches them: file name and capacity (bytes).
        public var disks: [(file: String, capacity: UInt64?)] = []
        public var networks: [String] = []

        public static func == (a: Descriptor, b: Descriptor) -> Bool {
            a.name == b.name && a.cpus == b.cpus && a.memoryMiB == b.memoryMiB && a.operatingSystem == b.operatingSystem
                && a.networks == b.networks && a.disks.map(\.file) == b.disks.map(\.file) && a.disks.map(\.capacity) == b.disks.map(\.capacity)
        }
    }

    /// Parses an OVF descriptor (strict XML, no DOCTYPE, capped).
    public static func parseDescriptor(_ bytes: [UInt8], file: String) throws -> Descriptor {
        guard bytes.count <= maxDescriptorBytes else { throw WardenError.limit("the OVF descriptor is larger than \(maxDescriptorBytes) bytes", file: file) }
        var c = Collector()
        do {
            try bytes.withUnsafeBufferPointer { p in
                var reader = XMLStreamReader(p)
                try reader.read(into: &c)
            }
        } catch let e as XMLStreamReader.Failure {
            throw WardenError.corrupt("the OVF descriptor is not well-formed XML: \(e.message)", file: file)
        }
        guard c.sawEnvelope else { throw WardenError.corrupt("the OVF descriptor has no Envelope", file: file) }
        var d = Descriptor()
        d.name = c.name.map(clean)
        d.operatingSystem = c.os.map(clean)
        d.networks = c.networks.map(clean)
        for item in c.items {
            switch item["ResourceType"] {
            case "3": d.cpus = item["VirtualQuantity"].flatMap { Int($0) }
            case "4":
                if let q = item["VirtualQuantity"].flatMap({ UInt64($0) }) { d.memoryMiB = memoryMiB(q, units: item["AllocationUnits"] ?? "byte * 2^20") }
            default: break
            }
        }
        // Disks: in the order hardware items attach them (HostResource ovf:/disk/ID), then any others.
        var order: [String] = []
        for item in c.items where item["ResourceType"] == "17" {
            if let r = item["HostResource"], let id = r.split(separator: "/").last.map(String.init), !order.contains(id) { order.append(id) }
        }
        for disk in c.disks where !order.contains(disk["diskId"] ?? "") { if let id = disk["diskId"] { order.append(id) } }
        for id in order.prefix(maxDisks) {
            guard let disk = c.disks.first(where: { $0["diskId"] == id }), let ref = disk["fileRef"],
                  let href = c.files.first(where: { $0["id"] == ref })?["href"] else { continue }
            let capacity = disk["capacity"].flatMap { UInt64($0) }.flatMap { capacityBytes($0, units: disk["capacityAllocationUnits"] ?? "byte") }
            d.disks.append((clean(href), capacity))
        }
        return d
    }

    static func clean(_ s: String) -> String {
        String(String.UnicodeScalarView(s.trimmingCharacters(in: .whitespacesAndNewlines).unicodeScalars.prefix(maxText).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
    }

    /// `units` as OVF writes them: "byte", "byte * 2^20", "MegaBytes", "GigaBytes"…
    static func multiplier(_ units: String) -> UInt64? {
        let u = units.replacingOccurrences(of: " ", with: "").lowercased()
        switch u {
        case "byte", "bytes": return 1
        case "kilobytes", "kb": return 1 << 10
        case "megabytes", "mb": return 1 << 20
        case "gigabytes", "gb": return 1 << 30
        default:
            guard u.hasPrefix("byte*2^"), let e = UInt64(u.dropFirst(7)), e <= 60 else { return nil }
            return 1 << e
        }
    }
    static func memoryMiB(_ q: UInt64, units: String) -> UInt64? {
        guard let m = multiplier(units) else { return nil }
        let (bytes, o) = q.multipliedReportingOverflow(by: m)
        return o ? nil : bytes >> 20
    }
    static func capacityBytes(_ q: UInt64, units: String) -> UInt64? {
        guard let m = multiplier(units) else { return nil }
        let (bytes, o) = q.multipliedReportingOverflow(by: m)
        return o ? nil : bytes
    }

    /// Collects the few OVF elements Warden reports, by local name (namespaces ignored).
    struct Collector: XMLStreamReader.Handler {
        var path: [String] = []
        var sawEnvelope = false
        var name: String?, os: String?
        var files: [[String: String]] = [], disks: [[String: String]] = [], networks: [String] = []
        var items: [[String: String]] = []
        var text = ""
        var collectsText: Bool {
            guard let last = path.last else { return false }
            return (last == "Name" && path.dropLast().last == "VirtualSystem") || (last == "Description" && path.dropLast().last == "OperatingSystemSection")
                || path.dropLast().last == "Item"
        }

        static func local(_ n: String) -> String { n.split(separator: ":").last.map(String.init) ?? n }
        static func attrs(_ a: [(String, String)]) -> [String: String] {
            var out: [String: String] = [:]
            for (k, v) in a { out[local(k)] = v }
            return out
        }

        mutating func start(_ element: String, attributes: [(String, String)]) throws {
            let n = Self.local(element)
            if path.isEmpty { guard n == "Envelope" else { throw XMLStreamReader.Failure("the root element is <\(element)>, not an OVF Envelope") }; sawEnvelope = true }
            path.append(n)
            text = ""
            let a = Self.attrs(attributes)
            switch n {
            case "File" where path.contains("References"): if files.count < 4096 { files.append(a) }
            case "Disk" where path.contains("DiskSection"): if disks.count < 4096 { disks.append(a) }
            case "Network" where path.contains("NetworkSection"): if let v = a["name"], networks.count < 256 { networks.append(v) }
            case "Item" where path.contains("VirtualHardwareSection"): if items.count < 4096 { items.append([:]) }
            case "OperatingSystemSection": if os == nil, let id = a["osType"] ?? a["id"] { os = id }
            default: break
            }
        }
        mutating func characters(_ s: String) throws { if text.utf8.count < 4096 { text += s } }
        mutating func end(_ element: String) throws {
            let n = path.removeLast()
            if n == "Name", path.last == "VirtualSystem", name == nil { name = text }
            if n == "Description", path.last == "OperatingSystemSection" { os = text.isEmpty ? os : text }
            if path.last == "Item", !items.isEmpty { items[items.count - 1][n] = text.trimmingCharacters(in: .whitespacesAndNewlines) }
            text = ""
        }
    }

    static func open(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        if context.options.snapshot != nil { throw WardenError(.invalidArgument, "OVA appliances have no internal snapshots", file: file.path) }
        let members = try members(file)
        guard let ovf = members.first, ovf.name.lowercased().hasSuffix(".ovf") else {
            throw WardenError.corrupt("the archive's first member is not an OVF descriptor", file: file.path)
        }
        guard ovf.size <= UInt64(maxDescriptorBytes) else { throw WardenError.limit("the OVF descriptor is larger than \(maxDescriptorBytes) bytes", file: file.path) }
        let descriptor = try parseDescriptor(try file.read(at: ovf.offset, count: Int(ovf.size), what: "OVF descriptor"), file: file.path)
        guard let boot = descriptor.disks.first else { throw WardenError.corrupt("the OVF descriptor names no disk", file: file.path) }
        guard let member = members.first(where: { $0.name == boot.file }) else {
            throw WardenError.corrupt("the OVF disk \(boot.file) is not in the archive", file: file.path)
        }
        // The disk is a window of the archive. It may not reach outside it: no backing files,
        // and only formats that hold all their data in one file.
        let window = try file.window(at: member.offset, length: member.size, name: "\(file.path)[\(member.name)]")
        var inner = context
        inner.options.maxBackingDepth = 0
        let innerFormat = try ImageOpener.detect(window)
        if innerFormat == .vmdk, try window.readPrefix(at: 0, count: 4) != Array("KDMV".utf8) {
            throw WardenError.unsupported("the OVA disk \(member.name) is a VMDK descriptor naming other files; only single-file disks are read inside an OVA", file: file.path)
        }
        if innerFormat == .ova { throw WardenError.corrupt("an OVA inside an OVA", file: file.path) }
        inner.options.format = innerFormat
        let disk = try ImageOpener.open(file: window, context: inner)
        var details: [String: String] = ["disk_member": member.name, "ovf_disks": String(descriptor.disks.count)]
        if let v = descriptor.name { details["ovf_name"] = v }
        if let v = descriptor.cpus { details["ovf_cpus"] = String(v) }
        if let v = descriptor.memoryMiB { details["ovf_memory_mib"] = String(v) }
        if let v = descriptor.operatingSystem { details["ovf_os"] = v }
        if !descriptor.networks.isEmpty { details["ovf_networks"] = descriptor.networks.joined(separator: ",") }
        details["ovf_disk_files"] = descriptor.disks.map(\.file).joined(separator: ",")
        let info = ImageInfo(path: file.path, format: .ova, virtualSize: disk.device.size, fileSize: file.length,
                             allocatedSize: file.allocatedBytes, details: details)
        return OpenedImage(device: disk.device, chain: [info] + disk.chain)
    }
}

/// The regular-file members of a tar archive (ustar, GNU and pax long names and sizes), read
/// in place with the bounds of the OVA reader: one tar reader for OVAs and OCI layers.
public enum TarArchive {
    public struct Member: Sendable, Equatable {
        public var name: String
        public var offset: UInt64
        public var size: UInt64
    }

    public static func members(path: String) throws -> [Member] {
        try OVA.members(try ImageFile(path: path)).map { Member(name: $0.name, offset: $0.offset, size: $0.size) }
    }
}
