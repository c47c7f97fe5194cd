import Foundation
import WardenCore
import DiskImage

// LVM2 physical volumes (read-only).
//
//   sector 0..3 (512 bytes each): one holds the label
//   +-----------------------------------------------------------------------------------+
//   | label header: "LABELONE", sector u64, crc u32 (of bytes 20..<512), offset u32,    |
//   |               type "LVM2 001"                                                     |
//   | pv header (at label + offset): uuid[32], device size u64,                         |
//   |   data areas (offset u64, size u64)... 0/0, metadata areas (offset, size)... 0/0   |
//   +-----------------------------------------------------------------------------------+
//   metadata area (usually at 4 KiB): 512-byte header: crc u32 (of bytes 4..<512),
//   magic " LVM2 x[5A%r0N*>", version u32, start u64, size u64, raw_locn[]: offset u64
//   (from the area start), size u64, crc u32 (of the text), flags u32. The text lives in a
//   circular buffer: what runs past the area end continues right after the 512-byte header.
//
// All checksums use LVM's CRC: the reflected 0xEDB88320 table, seed 0xf597a6cf, no inversion.

/// Namespace for the LVM2 reader. Start with ``LVM2/readPhysicalVolume(_:)``.
public enum LVM2 {
    static let labelID = Array("LABELONE".utf8)
    static let labelType = Array("LVM2 001".utf8)
    static let mdaMagic = Array(" LVM2 x[5A%r0N*>".utf8)
    static let crcSeed: UInt32 = 0xF597_A6CF
    static let maxAreas = 16

    /// LVM's checksum over `bytes`.
    public static func crc<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        CRC32.ieee.update(crcSeed, bytes)
    }

    /// A byte range on the PV.
    public struct DiskArea: Sendable, Equatable {
        public var offset: UInt64
        /// 0 for a data area means "to the end of the device".
        public var size: UInt64
    }

    public struct PhysicalVolume: Sendable {
        /// The PV UUID in LVM's dashed form (6-4-4-4-4-4-6).
        public var uuid: String
        public var deviceSize: UInt64
        public var labelSector: UInt64
        public var dataAreas: [DiskArea]
        public var metadataAreas: [DiskArea]
        /// The newest metadata text found (nil if the PV has no usable metadata area).
        public var metadataText: [UInt8]?
        public var warnings: [String]

        /// Parses the metadata text into a volume group.
        public func volumeGroup() throws -> VolumeGroup {
            guard let text = metadataText else { throw WardenError.notFound("lvm2: PV \(uuid) carries no metadata") }
            return try VolumeGroup(metadata: try LVM2.parseMetadata(text))
        }
    }

    /// True if one of the first four sectors holds an LVM2 label.
    public static func probe(_ device: any BlockDevice) -> Bool {
        for s in 0..<UInt64(4) {
            guard device.size >= (s + 1) * 512, let b = try? device.read(at: s * 512, count: 512) else { return false }
            if Array(b[0..<8]) == labelID && Array(b[24..<32]) == labelType { return true }
        }
        return false
    }

    static func dashedUUID(_ raw: [UInt8]) -> String {
        let s = String(decoding: raw.map { $0 >= 0x21 && $0 < 0x7F ? $0 : 0x3F }, as: UTF8.self)
        let c = Array(s)
        guard c.count == 32 else { return s }
        var out = ""
        var i = 0
        for n in [6, 4, 4, 4, 4, 4, 6] {
            if !out.isEmpty { out += "-" }
            out += String(c[i..<(i + n)])
            i += n
        }
        return out
    }

    /// Reads the PV label, the PV header and the newest metadata text.
    public static func readPhysicalVolume(_ device: any BlockDevice) throws -> PhysicalVolume {
        var found: (sector: UInt64, bytes: [UInt8])?
        for s in 0..<UInt64(4) where device.size >= (s + 1) * 512 {
            let b = try device.read(at: s * 512, count: 512)
            if Array(b[0..<8]) == labelID { found = (s, b); break }
        }
        guard let (sector, b) = found else { throw WardenError.corrupt("lvm2: no LABELONE label in the first 4 sectors") }
        var warnings: [String] = []
        guard Array(b[24..<32]) == labelType else {
            throw WardenError.unsupported("lvm2: label type \"\(String(decoding: b[24..<32], as: UTF8.self))\" is not LVM2 001")
        }
        let claimed: UInt64 = try b.le(8)
        if claimed != sector { warnings.append("lvm2: label in sector \(sector) claims sector \(claimed)") }
        let stored: UInt32 = try b.le(16)
        let computed = crc(b[20..<512])
        if stored != computed {
            warnings.append("lvm2: label checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
        }
        let off = Int(try b.le(20, UInt32.self))
        guard off >= 32, off < 512 - 40 else { throw WardenError.corrupt("lvm2: PV header offset \(off) is outside the label sector") }
        var r = ByteReader(b, context: "lvm2 PV header")
        try r.seek(to: off)
        let uuid = dashedUUID(try r.readBytes(32))
        let devSize: UInt64 = try r.readLE()
        func areas(_ what: String) throws -> [DiskArea] {
            var out: [DiskArea] = []
            while true {
                let o: UInt64 = try r.readLE(), s: UInt64 = try r.readLE()
                if o == 0 { return out }
                guard out.count < maxAreas else { throw WardenError.corrupt("lvm2: PV header lists more than \(maxAreas) \(what)s") }
                out.append(DiskArea(offset: o, size: s))
            }
        }
        let data = try areas("data area")
        let mdas = try areas("metadata area")
        guard !data.isEmpty else { throw WardenError.corrupt("lvm2: PV header lists no data area") }
        if devSize > device.size {
            warnings.append("lvm2: PV header claims \(devSize) bytes, the device has \(device.size)")
        }
        var text: [UInt8]?
        var lastError: WardenError?
        for m in mdas {
            do {
                if let t = try readMetadataArea(device, m, warnings: &warnings) { text = t; break }
            } catch let e as WardenError {
                lastError = e
                warnings.append("lvm2: metadata area at \(hex(m.offset)) unusable: \(e.message)")
            }
        }
        if text == nil, let lastError { throw lastError }
        return PhysicalVolume(uuid: uuid, deviceSize: devSize, labelSector: sector, dataAreas: data,
                              metadataAreas: mdas, metadataText: text, warnings: warnings)
    }

    /// Reads the current metadata text of one metadata area (nil if the area holds none yet).
    static func readMetadataArea(_ device: any BlockDevice, _ area: DiskArea, warnings: inout [String]) throws -> [UInt8]? {
        let areaEnd = try Checked.add(area.offset, area.size, "lvm2 metadata area end")
        guard area.size > 512, areaEnd <= device.size else {
            throw WardenError.corrupt("lvm2: metadata area \(hex(area.offset))+\(area.size) does not fit the \(device.size)-byte device")
        }
        let h = try device.read(at: area.offset, count: 512)
        guard Array(h[4..<20]) == mdaMagic else { throw WardenError.corrupt("lvm2: metadata area at \(hex(area.offset)) has no magic") }
        let stored: UInt32 = try h.le(0)
        let computed = crc(h[4..<512])
        if stored != computed {
            warnings.append("lvm2: metadata area header checksum mismatch at \(hex(area.offset)) (stored \(hex(stored)), computed \(hex(computed)))")
        }
        let version: UInt32 = try h.le(20)
        guard version == 1 else { throw WardenError.unsupported("lvm2: metadata area version \(version)") }
        let start: UInt64 = try h.le(24)
        if start != area.offset { warnings.append("lvm2: metadata area at \(hex(area.offset)) claims to start at \(hex(start))") }
        let size: UInt64 = try h.le(32)
        if size != area.size { warnings.append("lvm2: metadata area at \(hex(area.offset)) claims \(size) bytes, the PV header \(area.size)") }
        let locOffset: UInt64 = try h.le(40), locSize: UInt64 = try h.le(48)
        let locCRC: UInt32 = try h.le(56), locFlags: UInt32 = try h.le(60)
        if locOffset == 0 { return nil }
        if locFlags & 1 != 0 { warnings.append("lvm2: metadata area at \(hex(area.offset)) is marked ignored") }
        guard locOffset >= 512, locOffset < area.size else {
            throw WardenError.corrupt("lvm2: metadata text offset \(locOffset) is outside the \(area.size)-byte area")
        }
        guard locSize <= area.size - 512 else {
            throw WardenError.corrupt("lvm2: metadata text of \(locSize) bytes does not fit the \(area.size)-byte area")
        }
        guard locSize <= UInt64(MetadataLimits.maxTextBytes) else {
            throw WardenError.limit("lvm2: metadata text of \(locSize) bytes exceeds the \(MetadataLimits.maxTextBytes)-byte limit")
        }
        // Circular buffer: the part past the area end wraps to just after the header.
        let first = min(locSize, area.size - locOffset)
        var text = try device.read(at: area.offset + locOffset, count: Int(first))
        if first < locSize {
            text += try device.read(at: area.offset + 512, count: Int(locSize - first))
        }
        let textCRC = crc(text)
        if textCRC != locCRC {
            warnings.append("lvm2: metadata text checksum mismatch (stored \(hex(locCRC)), computed \(hex(textCRC)))")
        }
        if let z = text.firstIndex(of: 0) { text.removeSubrange(z...) }
        return text
    }

    /// The device-mapper name LVM gives a logical volume: `/dev/mapper/VG-LV` with each `-`
    /// inside the VG and LV names doubled.
    public static func mapperPath(vg: String, lv: String) -> String {
        "/dev/mapper/" + vg.replacingOccurrences(of: "-", with: "--") + "-" + lv.replacingOccurrences(of: "-", with: "--")
    }
}
