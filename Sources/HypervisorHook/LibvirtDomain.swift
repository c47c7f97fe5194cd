import Foundation
import Ledger
import WardenNetwork
import WardenCore

/// What Warden needs from a libvirt domain XML: its name, UUID and disk sources.
///
/// Only `/domain/@type`, `/domain/name`, `/domain/uuid` and `/domain/devices/disk` (its
/// `device` attribute, `driver/@type` and `source/@file|@dev`) are read; backing stores, cdrom
/// media and network disks are ignored for mapping. The XML comes from libvirtd, but it is still
/// read as hostile input by ``XMLStreamReader``: size-capped, depth-capped, no DTD and no
/// entities beyond XML's five and character references, and a malformed document is an error,
/// never a guess.
public struct LibvirtDomain: Sendable, Equatable {
    public var name: String
    public var uuid: UUID?
    /// Absolute paths of the domain's disks (device='disk'), in document order.
    public var diskPaths: [String]
    /// Each disk's `<driver type=…>` (qcow2, raw), `unknown` when not given.
    public var diskFormats: [String]
    /// `<domain type=…>` (qemu, kvm).
    public var type: String?

    /// Host interface names of the domain's network devices (`<interface><target dev=…>`), as
    /// libvirt reports them once they exist (at `started`); only names that are valid interface
    /// names are kept.
    public var interfaces: [String] = []

    /// Each disk's LUKS secret (`<encryption format='luks'><secret type='passphrase' uuid=…>`,
    /// inside `<source>` or directly in `<disk>`), nil for a disk without one: the libvirt
    /// secret that `warden libvirt start` defines for the run (docs/vault.md).
    public var diskSecrets: [UUID?]

    public init(name: String, uuid: UUID?, diskPaths: [String], diskFormats: [String]? = nil, type: String? = nil, interfaces: [String] = [],
                diskSecrets: [UUID?]? = nil) {
        self.name = name; self.uuid = uuid; self.diskPaths = diskPaths; self.type = type; self.interfaces = interfaces
        self.diskFormats = diskFormats ?? diskPaths.map { _ in "unknown" }
        self.diskSecrets = diskSecrets ?? diskPaths.map { _ in nil }
    }

    /// The largest domain XML accepted (libvirt's own limit for XML documents is 10 MiB).
    public static let maxSize = 10 << 20
    /// Disks beyond this many are not used for mapping.
    public static let maxDisks = 256
    /// The longest `<name>` or `<uuid>` text accepted, in bytes.
    public static let maxTextLength = 4096

    public static func parse(_ data: Data) throws -> LibvirtDomain {
        guard data.count <= maxSize else { throw WardenError.limit("domain XML larger than \(maxSize) bytes") }
        return try data.withUnsafeBytes { raw in
            try parse(UnsafeBufferPointer(start: raw.baseAddress?.assumingMemoryBound(to: UInt8.self), count: raw.count))
        }
    }

    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>) throws -> LibvirtDomain {
        guard bytes.count <= maxSize else { throw WardenError.limit("domain XML larger than \(maxSize) bytes") }
        var collector = DomainCollector()
        do {
            var reader = XMLStreamReader(bytes)
            try reader.read(into: &collector)
        } catch let e as XMLStreamReader.Failure {
            throw WardenError.corrupt("domain XML: \(e.message)")
        }
        guard let rawName = collector.name else { throw WardenError.corrupt("domain XML has no <name>") }
        let name = rawName.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !name.isEmpty else { throw WardenError.corrupt("domain XML has no <name>") }
        var uuid: UUID? = nil
        if let u = collector.uuid?.trimmingCharacters(in: .whitespacesAndNewlines), !u.isEmpty {
            guard let parsed = UUID(uuidString: u) else { throw WardenError.corrupt("domain XML <uuid> is not a UUID") }
            uuid = parsed
        }
        return LibvirtDomain(name: name, uuid: uuid, diskPaths: collector.disks, diskFormats: collector.formats, type: collector.type,
                             interfaces: collector.interfaces, diskSecrets: collector.secrets)
    }
}

/// Picks the mapped fields out of the reader's events.
struct DomainCollector: XMLStreamReader.Handler {
    var path: [String] = []
    var name: String?
    var uuid: String?
    var type: String?
    var disks: [String] = []
    var formats: [String] = []
    var text = ""
    var diskIsDisk = false
    var diskSource: String?
    var diskFormat: String?
    var interfaces: [String] = []
    var secrets: [UUID?] = []
    var diskSecret: UUID?
    var luksEncryption = false

    mutating func start(_ element: String, attributes: [(String, String)]) throws {
        path.append(element)
        text = ""
        func attribute(_ n: String) -> String? { attributes.first { $0.0 == n }?.1 }
        if path.count == 1 {
            guard element == "domain" else { throw XMLStreamReader.Failure("the root element is <\(element)>, not <domain>") }
            type = attribute("type")
        } else if path.count == 3, path[1] == "devices", element == "disk" {
            diskIsDisk = (attribute("device") ?? "disk") == "disk"
            diskSource = nil
            diskFormat = nil
            diskSecret = nil
        } else if path.count >= 4, path.count <= 6, path[1] == "devices", path[2] == "disk", element == "encryption" || element == "secret",
                  path.count == 4 || path[3] == "source" || path[3] == "encryption" {
            // <disk>[<source>]<encryption format='luks'><secret type='passphrase' uuid='…'/>
            let inSource = path[3] == "source"
            if element == "encryption", path.count == (inSource ? 5 : 4) {
                luksEncryption = attribute("format") == "luks"
            } else if element == "secret", path.count == (inSource ? 6 : 5), path[path.count - 2] == "encryption", luksEncryption,
                      attribute("type") == "passphrase", let u = attribute("uuid").flatMap(UUID.init(uuidString:)) {
                diskSecret = u
            }
        } else if path.count == 4, path[1] == "devices", path[2] == "disk" {
            if element == "driver", let t = attribute("type"), t.utf8.count <= 16,
               t.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) }) {
                diskFormat = t
            }
            if element == "source" { diskSource = attribute("file") ?? attribute("dev") }
        } else if path.count == 4, path[1] == "devices", path[2] == "interface", element == "target",
                  let dev = attribute("dev"), Interface.isValid(dev), interfaces.count < 64, !interfaces.contains(dev) {
            interfaces.append(dev)
        }
    }

    var collectsText: Bool { path.count == 2 && (path[1] == "name" || path[1] == "uuid") }

    mutating func characters(_ s: String) throws {
        guard collectsText else { return }
        guard text.utf8.count + s.utf8.count <= LibvirtDomain.maxTextLength else {
            throw XMLStreamReader.Failure("<\(path[1])> longer than \(LibvirtDomain.maxTextLength) bytes")
        }
        text += s
    }

    mutating func end(_ element: String) throws {
        // The first <name> and <uuid> count, as libvirt's own parser takes them.
        if path.count == 2, path[1] == "name", name == nil { name = text }
        if path.count == 2, path[1] == "uuid", uuid == nil { uuid = text }
        if path.count == 3, path[1] == "devices", element == "disk" {
            if diskIsDisk, let s = diskSource, s.hasPrefix("/"), disks.count < LibvirtDomain.maxDisks {
                disks.append(s)
                formats.append(diskFormat ?? "unknown")
                secrets.append(diskSecret)
            }
        }
        path.removeLast()
    }
}

extension LibvirtDomain {
    /// The domain's disks that are disks of a ledger VM: each `<disk>` source (by its position
    /// in ``diskPaths``) matched to the ledger disk with that path, or with the same file
    /// (device and inode) under another name. One place for the hook and `libvirt start`.
    public func ledgerDisks(_ disks: [DiskRecord]) -> [(position: Int, path: String, disk: DiskRecord)] {
        var out: [(position: Int, path: String, disk: DiskRecord)] = []
        for (j, path) in diskPaths.enumerated() {
            let file = DiskRecord.FileID.of(path: path)
            if let d = disks.first(where: { $0.path == path || (file != nil && $0.file == file) }) { out.append((j, path, d)) }
        }
        return out
    }
}
