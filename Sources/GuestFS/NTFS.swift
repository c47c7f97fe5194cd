import WardenCore
import DiskImage

/// NTFS on-disk structures, parsed from hostile bytes: the boot sector, MFT records with their
/// update sequence arrays, attributes, runlists and LZNT1 compression units.
/// ``NTFSVolume`` is the filesystem built on them.
public enum NTFS {
    /// Opens the NTFS volume on `device` (its boot sector at byte 0).
    public static func open(_ device: any BlockDevice) throws -> NTFSVolume {
        try NTFSVolume(device: device)
    }

    public static let rootRecord: UInt64 = 5

    enum Limits {
        static let maxRecordSize = 64 * 1024
        static let maxIndexRecordSize = 64 * 1024
        static let maxAttributes = 512
        static let maxRuns = 1 << 20
        static let maxDirectoryEntries = 1 << 20
        static let maxIndexRecords = 1 << 20
        static let maxAttributeListExtensions = 4096
        static let maxResidentValue = 64 * 1024
        static let maxWarnings = 64
        static let maxReparseData = 16 * 1024
    }

    static func corrupt(_ message: String) -> WardenError { WardenError.corrupt("ntfs: " + message) }

    // MARK: Boot sector

    struct BootSector {
        var bytesPerSector: UInt64
        var clusterSize: UInt64
        var totalSectors: UInt64
        var mftCluster: UInt64
        var mftMirrorCluster: UInt64
        var recordSize: Int
        var indexRecordSize: Int
        var serial: UInt64

        init(_ b: [UInt8], deviceSize: UInt64) throws {
            guard b.count >= 512, Array(b[3..<11]) == Array("NTFS    ".utf8) else { throw NTFS.corrupt("no NTFS boot sector") }
            let bps = UInt64(try b.le(0x0B, UInt16.self))
            guard [512, 1024, 2048, 4096].contains(bps) else { throw NTFS.corrupt("\(bps) bytes per sector") }
            let spcRaw = b[0x0D]
            // Large clusters are stored as a negative power of two (2^-n sectors… times the sector size).
            let spc: UInt64 = spcRaw <= 0x80 ? UInt64(spcRaw) : (1 << UInt64(256 - Int(spcRaw)))
            guard spc >= 1, spc.nonzeroBitCount == 1, spc * bps <= 2 << 20 else { throw NTFS.corrupt("\(spc) sectors per cluster") }
            bytesPerSector = bps
            clusterSize = spc * bps
            totalSectors = try b.le(0x28, UInt64.self)
            mftCluster = try b.le(0x30, UInt64.self)
            mftMirrorCluster = try b.le(0x38, UInt64.self)
            func size(_ raw: UInt8, what: String) throws -> Int {
                let signed = Int8(bitPattern: raw)
                let v: UInt64 = signed > 0 ? UInt64(signed) * spc * bps : (signed < 0 && signed >= -31 ? 1 << UInt64(-Int(signed)) : 0)
                guard v >= 256, v <= UInt64(Limits.maxRecordSize), v.nonzeroBitCount == 1, v % 512 == 0 || v == 256 else {
                    throw NTFS.corrupt("\(what) size byte \(raw) gives \(v) bytes")
                }
                return Int(v)
            }
            recordSize = try size(b[0x40], what: "MFT record")
            indexRecordSize = try size(b[0x44], what: "index record")
            serial = try b.le(0x48, UInt64.self)
            let bytes = try Checked.mul(totalSectors, bps, "volume size")
            guard bytes <= deviceSize + bps else {
                throw NTFS.corrupt("boot sector claims \(bytes) bytes, the volume has \(deviceSize)")
            }
            let clusters = bytes / clusterSize
            guard mftCluster < clusters, mftMirrorCluster < clusters else { throw NTFS.corrupt("$MFT at cluster \(mftCluster) lies outside the volume") }
        }
    }

    // MARK: Update sequence arrays

    /// Checks and undoes the fixups of a multi-sector record (`FILE` or `INDX`): the last two
    /// bytes of every 512-byte stride must equal the update sequence number, and are replaced
    /// by the saved values. A mismatch is a torn or forged record.
    static func applyFixups(_ rec: inout [UInt8], magic: String, what: String) throws {
        guard rec.count >= 48, Array(rec[0..<4]) == Array(magic.utf8) else {
            throw NTFS.corrupt("\(what) has no \(magic) signature")
        }
        let usaOffset = Int(try rec.le(4, UInt16.self)), usaCount = Int(try rec.le(6, UInt16.self))
        let strides = rec.count / 512
        guard usaCount == strides + 1, usaOffset >= 8, usaOffset % 2 == 0, usaOffset + 2 * usaCount <= min(rec.count, 512) else {
            throw NTFS.corrupt("\(what) has an update sequence array of \(usaCount) entries at \(usaOffset) for \(rec.count) bytes")
        }
        let usn0 = rec[usaOffset], usn1 = rec[usaOffset + 1]
        for i in 0..<strides {
            let end = (i + 1) * 512 - 2
            guard rec[end] == usn0, rec[end + 1] == usn1 else {
                throw NTFS.corrupt("\(what): sector \(i) does not end in its update sequence number (a torn or damaged record)")
            }
            rec[end] = rec[usaOffset + 2 + 2 * i]
            rec[end + 1] = rec[usaOffset + 3 + 2 * i]
        }
    }

    // MARK: Attributes

    enum AttributeType: UInt32 {
        case standardInformation = 0x10, attributeList = 0x20, fileName = 0x30, objectID = 0x40
        case securityDescriptor = 0x50, volumeName = 0x60, volumeInformation = 0x70, data = 0x80
        case indexRoot = 0x90, indexAllocation = 0xA0, bitmap = 0xB0, reparsePoint = 0xC0
        case eaInformation = 0xD0, ea = 0xE0, loggedUtilityStream = 0x100
    }

    struct Attribute {
        var type: UInt32
        var name: [UInt16]
        var flags: UInt16
        var id: UInt16
        /// Resident value, or nil for a non-resident attribute.
        var value: [UInt8]?
        var startVCN: UInt64 = 0
        var lastVCN: UInt64 = 0
        var compressionUnit: UInt8 = 0
        var allocatedSize: UInt64 = 0
        var dataSize: UInt64 = 0
        var initializedSize: UInt64 = 0
        var runs: [Run] = []

        var isCompressed: Bool { flags & 0x0001 != 0 }
        var isEncrypted: Bool { flags & 0x4000 != 0 }
        var nameString: String { String(decoding: name, as: UTF16.self) }
        var size: UInt64 { value.map { UInt64($0.count) } ?? dataSize }
    }

    /// A run of clusters: `lcn` nil for a sparse run.
    struct Run: Equatable {
        var vcn: UInt64
        var lcn: UInt64?
        var length: UInt64
    }

    /// The attributes in one MFT record (after fixups), up to the end marker.
    static func parseAttributes(_ rec: [UInt8], record: UInt64, clusters: UInt64) throws -> [Attribute] {
        var out: [Attribute] = []
        var off = Int(try rec.le(0x14, UInt16.self))
        let used = Int(try rec.le(0x18, UInt32.self))
        guard used <= rec.count, off >= 0x30 || off >= 0x2A, off < used else {
            throw NTFS.corrupt("MFT record \(record): attributes at \(off), used size \(used) of \(rec.count)")
        }
        while true {
            guard off + 4 <= used else { throw NTFS.corrupt("MFT record \(record): attributes run past the used size") }
            let type = try rec.le(off, UInt32.self)
            if type == 0xFFFF_FFFF { break }
            guard off + 16 <= used else { throw NTFS.corrupt("MFT record \(record): truncated attribute header at \(off)") }
            let length = Int(try rec.le(off + 4, UInt32.self))
            guard length >= 16, length % 8 == 0, off + length <= used else {
                throw NTFS.corrupt("MFT record \(record): attribute 0x\(String(type, radix: 16)) at \(off) has length \(length)")
            }
            guard out.count < Limits.maxAttributes else { throw WardenError.limit("ntfs: MFT record \(record) has more than \(Limits.maxAttributes) attributes") }
            let a = Array(rec[off..<off + length])
            let nonResident = a[8] != 0
            let nameLength = Int(a[9]), nameOffset = Int(try a.le(10, UInt16.self))
            var name: [UInt16] = []
            if nameLength > 0 {
                guard nameOffset + 2 * nameLength <= length else { throw NTFS.corrupt("MFT record \(record): attribute name outside the attribute") }
                name = (0..<nameLength).map { UInt16(a[nameOffset + 2 * $0]) | UInt16(a[nameOffset + 2 * $0 + 1]) << 8 }
            }
            var attr = Attribute(type: type, name: name, flags: try a.le(12, UInt16.self), id: try a.le(14, UInt16.self), value: nil)
            if nonResident {
                guard length >= 64 else { throw NTFS.corrupt("MFT record \(record): non-resident attribute header of \(length) bytes") }
                attr.startVCN = try a.le(16, UInt64.self)
                attr.lastVCN = try a.le(24, UInt64.self)
                let runOffset = Int(try a.le(32, UInt16.self))
                attr.compressionUnit = a[34]
                attr.allocatedSize = try a.le(40, UInt64.self)
                attr.dataSize = try a.le(48, UInt64.self)
                attr.initializedSize = try a.le(56, UInt64.self)
                guard runOffset >= 64 || (runOffset >= 0x40 - 8 && !attr.isCompressed), runOffset < length else {
                    throw NTFS.corrupt("MFT record \(record): runlist at \(runOffset) of a \(length)-byte attribute")
                }
                guard attr.lastVCN >= attr.startVCN || attr.lastVCN == attr.startVCN &- 1 else {
                    throw NTFS.corrupt("MFT record \(record): attribute covers VCN \(attr.startVCN)…\(attr.lastVCN)")
                }
                attr.runs = try decodeRuns(Array(a[runOffset...]), startVCN: attr.startVCN, clusters: clusters, record: record)
            } else {
                let valueLength = Int(try a.le(16, UInt32.self)), valueOffset = Int(try a.le(20, UInt16.self))
                guard valueOffset + valueLength <= length, valueLength <= Limits.maxResidentValue else {
                    throw NTFS.corrupt("MFT record \(record): resident value of \(valueLength) bytes at \(valueOffset) in \(length)")
                }
                attr.value = Array(a[valueOffset..<valueOffset + valueLength])
            }
            out.append(attr)
            off += length
        }
        return out
    }

    /// Decodes a runlist: each run is a header byte (low nibble: bytes of the length, high
    /// nibble: bytes of the signed LCN delta; no delta means sparse), ended by a zero byte.
    static func decodeRuns(_ b: [UInt8], startVCN: UInt64, clusters: UInt64, record: UInt64) throws -> [Run] {
        var runs: [Run] = []
        var i = 0, vcn = startVCN
        var lcn: Int64 = 0
        while i < b.count, b[i] != 0 {
            let lenBytes = Int(b[i] & 0x0F), offBytes = Int(b[i] >> 4)
            guard lenBytes >= 1, lenBytes <= 8, offBytes <= 8, i + 1 + lenBytes + offBytes <= b.count else {
                throw NTFS.corrupt("MFT record \(record): bad runlist header 0x\(String(b[i], radix: 16))")
            }
            var length: UInt64 = 0
            for k in 0..<lenBytes { length |= UInt64(b[i + 1 + k]) << (8 * UInt64(k)) }
            guard length > 0, length <= clusters else { throw NTFS.corrupt("MFT record \(record): run of \(length) clusters") }
            var run = Run(vcn: vcn, lcn: nil, length: length)
            if offBytes > 0 {
                var delta: UInt64 = 0
                for k in 0..<offBytes { delta |= UInt64(b[i + 1 + lenBytes + k]) << (8 * UInt64(k)) }
                if offBytes < 8, delta & (1 << (8 * UInt64(offBytes) - 1)) != 0 { delta |= ~0 << (8 * UInt64(offBytes)) }
                let (next, overflow) = lcn.addingReportingOverflow(Int64(bitPattern: delta))
                guard !overflow, next >= 0, UInt64(next) < clusters, length <= clusters - UInt64(next) else {
                    throw NTFS.corrupt("MFT record \(record): run at LCN \(next) of \(length) clusters lies outside the volume")
                }
                lcn = next
                run.lcn = UInt64(next)
            }
            guard runs.count < Limits.maxRuns else { throw WardenError.limit("ntfs: MFT record \(record): more than \(Limits.maxRuns) runs") }
            runs.append(run)
            vcn = try Checked.add(vcn, length, "runlist VCN")
            i += 1 + lenBytes + offBytes
        }
        return runs
    }

    // MARK: File names

    struct FileName {
        var parent: UInt64
        var namespace: UInt8
        var name: [UInt16]
        var flags: UInt32
        var mtime: Int64

        init(_ v: [UInt8], record: UInt64) throws {
            guard v.count >= 66 else { throw NTFS.corrupt("MFT record \(record): $FILE_NAME of \(v.count) bytes") }
            parent = (try v.le(0, UInt64.self)) & 0x0000_FFFF_FFFF_FFFF
            mtime = NTFS.unixTime(try v.le(16, UInt64.self))
            flags = try v.le(56, UInt32.self)
            let length = Int(v[64])
            namespace = v[65]
            guard 66 + 2 * length <= v.count else { throw NTFS.corrupt("MFT record \(record): $FILE_NAME name runs past its value") }
            name = (0..<length).map { UInt16(v[66 + 2 * $0]) | UInt16(v[67 + 2 * $0]) << 8 }
        }
    }

    /// FILETIME (100 ns since 1601) to Unix seconds; the one conversion for NTFS and registry hives.
    public static func unixTime(_ ft: UInt64) -> Int64 { Int64(ft / 10_000_000) - 11_644_473_600 }

    /// UTF-16 names to UTF-8 bytes; unpaired surrogates (legal in NTFS names) become U+FFFD.
    static func utf8(_ name: [UInt16]) -> [UInt8] { Array(String(decoding: name, as: UTF16.self).utf8) }

    // MARK: LZNT1

    /// Decompresses one LZNT1 compression unit (a sequence of chunks of up to 4096 bytes, each
    /// with a 2-byte header) into at most `limit` bytes.
    static func lznt1(_ src: [UInt8], limit: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(limit)
        var i = 0
        while i + 2 <= src.count, out.count < limit {
            let header = Int(src[i]) | Int(src[i + 1]) << 8
            if header == 0 { break }
            let size = (header & 0x0FFF) + 1
            guard i + 2 + size <= src.count else { throw NTFS.corrupt("LZNT1 chunk of \(size) bytes runs past its unit") }
            let chunk = src[(i + 2)..<(i + 2 + size)]
            let chunkStart = out.count
            if header & 0x8000 == 0 {
                out.append(contentsOf: chunk)          // stored uncompressed
            } else {
                var p = chunk.startIndex
                while p < chunk.endIndex {
                    let tags = chunk[p]; p += 1
                    for bit in 0..<8 where p < chunk.endIndex {
                        if tags & (1 << bit) == 0 {
                            out.append(chunk[p]); p += 1
                        } else {
                            guard p + 1 < chunk.endIndex else { throw NTFS.corrupt("LZNT1 back-reference cut short") }
                            let token = Int(chunk[p]) | Int(chunk[p + 1]) << 8
                            p += 2
                            let pos = out.count - chunkStart
                            guard pos > 0 else { throw NTFS.corrupt("LZNT1 back-reference before any data") }
                            var lengthBits = 12
                            var limitPos = 16
                            while limitPos < pos { limitPos <<= 1; lengthBits -= 1 }
                            let length = (token & ((1 << lengthBits) - 1)) + 3
                            let back = (token >> lengthBits) + 1
                            guard back <= pos else { throw NTFS.corrupt("LZNT1 back-reference of \(back) bytes at offset \(pos)") }
                            guard out.count + length <= limit + 4096 else { throw NTFS.corrupt("LZNT1 unit expands beyond its size") }
                            for _ in 0..<length { out.append(out[out.count - back]) }
                        }
                    }
                }
                guard out.count - chunkStart <= 4096 else { throw NTFS.corrupt("LZNT1 chunk expands beyond 4096 bytes") }
            }
            i += 2 + size
            // Every chunk but the last stands for 4096 bytes: a shorter one ends in zeros.
            let more = i + 2 <= src.count && (Int(src[i]) | Int(src[i + 1]) << 8) != 0
            if more, out.count - chunkStart < 4096 { out.append(contentsOf: repeatElement(0, count: 4096 - (out.count - chunkStart))) }
        }
        if out.count > limit { out.removeSubrange(limit...) }
        return out
    }
}
