import WardenCore
import DiskImage

/// A read-only NTFS volume on a ``BlockDevice``. Create with ``NTFS/open(_:)``.
///
/// Inode numbers are MFT record numbers; the root directory is record 5. Directories are read
/// from their `$I30` index (the root node and every index block the bitmap marks in use);
/// names in the DOS namespace only are skipped, as are the metadata files (records 0–15) in the
/// root. Files read through their unnamed `$DATA` (resident, non-resident, sparse,
/// LZNT1-compressed); alternate data streams are listed by ``streams(_:)`` but never followed.
/// Symbolic links and junctions (reparse points) read as links whose targets are guest paths:
/// a drive letter becomes the guest root, so no target can leave it. Names are looked up
/// case-insensitively through the volume's `$UpCase` table. Modes are fixed like a default
/// ntfs-3g mount without user mapping: directories 0755, files 0644, uid/gid 0.
///
/// Thread-safe: records and decompressed units are kept in ``BoundedCache``s.
public final class NTFSVolume: FileSystem, CaseInsensitiveLookup, @unchecked Sendable {
    public let device: any BlockDevice
    let boot: NTFS.BootSector
    public var typeName: String { "ntfs" }
    public private(set) var label: String?
    public let uuid: String?
    public var rootInode: UInt64 { NTFS.rootRecord }
    public var warnings: [String] { warningLog.all }

    struct FileRecord {
        var number: UInt64
        var sequence: UInt16
        var isDirectory: Bool
        var attributes: [NTFS.Attribute]

        func attribute(_ type: NTFS.AttributeType, name: String = "") -> NTFS.Attribute? {
            attributes.first { $0.type == type.rawValue && $0.nameString == name }
        }
    }

    private let warningLog = WarningLog(limit: NTFS.Limits.maxWarnings, suppressedLine: "ntfs: further warnings suppressed")
    private let records = BoundedCache<UInt64, FileRecord>(capacity: 2048)
    private let units = BoundedCache<String, [UInt8]>(capacity: 16)
    private var mftRuns: [NTFS.Run] = []
    private var mftBytes: UInt64 = 0
    private var upcase: [UInt16] = []
    var clusters: UInt64 { boot.totalSectors * boot.bytesPerSector / boot.clusterSize }

    init(device: any BlockDevice) throws {
        self.device = device
        guard device.size >= 512 else { throw NTFS.corrupt("volume of \(device.size) bytes is too small for a boot sector") }
        boot = try NTFS.BootSector(try device.read(at: 0, count: 512), deviceSize: device.size)
        uuid = FilesystemProbe.hexUpper(boot.serial, digits: 16)
        // $MFT's own record, read where the boot sector says, gives the runs of the whole MFT.
        var rec0 = try device.read(at: try Checked.mul(boot.mftCluster, boot.clusterSize, "$MFT offset"), count: boot.recordSize)
        try NTFS.applyFixups(&rec0, magic: "FILE", what: "MFT record 0 ($MFT)")
        let attrs0 = try NTFS.parseAttributes(rec0, record: 0, clusters: clusters)
        guard let data = attrs0.first(where: { $0.type == NTFS.AttributeType.data.rawValue && $0.name.isEmpty }), data.value == nil else {
            throw NTFS.corrupt("$MFT has no non-resident $DATA")
        }
        mftRuns = data.runs
        mftBytes = data.dataSize
        // A fragmented MFT keeps the rest of its runs in extension records listed by $ATTRIBUTE_LIST.
        if attrs0.contains(where: { $0.type == NTFS.AttributeType.attributeList.rawValue }) {
            let full = try fileRecord(0)
            if let merged = full.attribute(.data) { mftRuns = merged.runs; mftBytes = merged.dataSize }
            records.put(0, full)
        }
        guard mftBytes >= 16 * UInt64(boot.recordSize) else { throw NTFS.corrupt("$MFT of \(mftBytes) bytes holds fewer than 16 records") }
        label = nil
        if let vol = try? fileRecord(3), let name = vol.attribute(.volumeName)?.value, name.count % 2 == 0, !name.isEmpty {
            let units = stride(from: 0, to: name.count, by: 2).map { UInt16(name[$0]) | UInt16(name[$0 + 1]) << 8 }
            label = ManifestEscaping.escape(NTFS.utf8(units))
        }
        loadUpcase()
    }

    func warn(_ message: String) { warningLog.warn(message) }

    private func loadUpcase() {
        do {
            let rec = try fileRecord(10)
            guard let data = rec.attribute(.data), data.size == 131_072 else { throw NTFS.corrupt("$UpCase is not 128 KiB") }
            let bytes = try readAttribute(data, record: 10, at: 0, count: 131_072)
            upcase = stride(from: 0, to: bytes.count, by: 2).map { UInt16(bytes[$0]) | UInt16(bytes[$0 + 1]) << 8 }
        } catch {
            warn("ntfs: $UpCase unreadable (\(error)); names compare by ASCII case only")
            upcase = (0..<65536).map { c in (0x61...0x7A).contains(c) ? UInt16(c - 0x20) : UInt16(c) }
        }
    }

    // MARK: MFT records

    /// The record (base record with every attribute, extension records merged) of a file.
    func fileRecord(_ n: UInt64) throws -> FileRecord {
        if let r = records[n] { return r }
        let (raw, sequence, flags) = try rawRecord(n)
        guard flags & 0x01 != 0 else { throw WardenError.notFound("ntfs: MFT record \(n) is not in use") }
        let base = (try raw.le(0x20, UInt64.self)) & 0x0000_FFFF_FFFF_FFFF
        guard base == 0 else { throw NTFS.corrupt("MFT record \(n) is an extension of record \(base), not a file") }
        var attrs = try NTFS.parseAttributes(raw, record: n, clusters: clusters)
        if let list = attrs.first(where: { $0.type == NTFS.AttributeType.attributeList.rawValue }) {
            attrs = try mergeAttributeList(list, base: attrs, record: n)
        }
        let r = FileRecord(number: n, sequence: sequence, isDirectory: flags & 0x02 != 0, attributes: attrs)
        records.put(n, r)
        return r
    }

    /// A record's bytes after fixups, with its sequence number and flags.
    func rawRecord(_ n: UInt64) throws -> ([UInt8], UInt16, UInt16) {
        let size = UInt64(boot.recordSize)
        let offset = try Checked.mul(n, size, "MFT record offset")
        guard offset < mftBytes, size <= mftBytes - offset else { throw WardenError.notFound("ntfs: MFT record \(n) lies beyond the \(mftBytes)-byte $MFT") }
        var rec = try readRuns(mftRuns, at: offset, count: boot.recordSize, limit: mftBytes, what: "$MFT")
        try NTFS.applyFixups(&rec, magic: "FILE", what: "MFT record \(n)")
        return (rec, try rec.le(0x10, UInt16.self), try rec.le(0x16, UInt16.self))
    }

    /// The attributes of a file whose $ATTRIBUTE_LIST names extension records: each extension's
    /// attributes (which must point back to this base record), and non-resident attributes split
    /// over several records joined into one runlist in VCN order.
    private func mergeAttributeList(_ list: NTFS.Attribute, base: [NTFS.Attribute], record: UInt64) throws -> [NTFS.Attribute] {
        let value: [UInt8]
        if let v = list.value { value = v } else {
            guard list.dataSize <= 1 << 20 else { throw WardenError.limit("ntfs: MFT record \(record): $ATTRIBUTE_LIST of \(list.dataSize) bytes") }
            value = try readRuns(list.runs, at: 0, count: Int(list.dataSize), limit: list.dataSize, what: "$ATTRIBUTE_LIST of record \(record)")
        }
        var extensions: [UInt64] = []
        var off = 0
        while off + 26 <= value.count {
            let length = Int(try value.le(off + 4, UInt16.self))
            guard length >= 26, off + length <= value.count else { throw NTFS.corrupt("MFT record \(record): $ATTRIBUTE_LIST entry of \(length) bytes") }
            let segment = (try value.le(off + 16, UInt64.self)) & 0x0000_FFFF_FFFF_FFFF
            if segment != record, !extensions.contains(segment) {
                guard extensions.count < NTFS.Limits.maxAttributeListExtensions else {
                    throw WardenError.limit("ntfs: MFT record \(record) lists more than \(NTFS.Limits.maxAttributeListExtensions) extension records")
                }
                extensions.append(segment)
            }
            off += length
        }
        var all = base.filter { $0.type != NTFS.AttributeType.attributeList.rawValue }
        for ext in extensions {
            let (raw, _, flags) = try rawRecord(ext)
            let owner = (try raw.le(0x20, UInt64.self)) & 0x0000_FFFF_FFFF_FFFF
            guard flags & 0x01 != 0, owner == record else {
                throw NTFS.corrupt("MFT record \(record) lists record \(ext), which belongs to record \(owner)")
            }
            all += try NTFS.parseAttributes(raw, record: ext, clusters: clusters).filter { $0.type != NTFS.AttributeType.attributeList.rawValue }
        }
        // Join the extents of each non-resident attribute (same type and name).
        var merged: [NTFS.Attribute] = []
        for a in all {
            if a.value == nil, let i = merged.firstIndex(where: { $0.value == nil && $0.type == a.type && $0.name == a.name }) {
                var first = merged[i], second = a
                if second.startVCN < first.startVCN { swap(&first, &second) }
                first.runs += second.runs
                first.runs.sort { $0.vcn < $1.vcn }
                first.lastVCN = max(first.lastVCN, second.lastVCN)
                merged[i] = first
            } else {
                merged.append(a)
            }
        }
        return merged
    }

    // MARK: Reading runs

    /// Reads `count` bytes at `offset` of the stream described by `runs` (clusters), never past
    /// `limit`; sparse runs read as zeros; a VCN no run covers is damage.
    func readRuns(_ runs: [NTFS.Run], at offset: UInt64, count: Int, limit: UInt64, what: String) throws -> [UInt8] {
        guard offset < limit else { return [] }
        let want = Int(min(UInt64(count), limit - offset))
        var out = [UInt8]()
        out.reserveCapacity(want)
        let cs = boot.clusterSize
        var pos = offset
        while out.count < want {
            let vcn = pos / cs
            guard let run = Self.run(containing: vcn, in: runs) else {
                throw NTFS.corrupt("\(what): no run maps cluster \(vcn) (byte \(pos))")
            }
            let runEnd = try Checked.mul(try Checked.add(run.vcn, run.length, "run end"), cs, "run end")
            let n = Int(min(UInt64(want - out.count), runEnd - pos))
            if let lcn = run.lcn {
                let phys = try Checked.add(try Checked.mul(lcn, cs, "cluster offset"), pos - run.vcn * cs, "cluster offset")
                let bytes = try device.read(at: phys, count: n)
                guard bytes.count == n else { throw NTFS.corrupt("\(what): cluster \(lcn) lies past the end of the volume") }
                out += bytes
            } else {
                out += repeatElement(0, count: n)
            }
            pos += UInt64(n)
        }
        return out
    }

    static func run(containing vcn: UInt64, in runs: [NTFS.Run]) -> NTFS.Run? {
        var lo = 0, hi = runs.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if runs[mid].vcn + runs[mid].length <= vcn { lo = mid + 1 } else { hi = mid }
        }
        return lo < runs.count && runs[lo].vcn <= vcn ? runs[lo] : nil
    }

    /// Reads an attribute's value: resident, plain non-resident (zeros past the initialized
    /// size), or LZNT1-compressed.
    func readAttribute(_ a: NTFS.Attribute, record: UInt64, at offset: UInt64, count: Int) throws -> [UInt8] {
        if let v = a.value {
            guard offset < UInt64(v.count) else { return [] }
            let start = Int(offset)
            return Array(v[start..<min(v.count, start + count)])
        }
        guard a.dataSize <= a.allocatedSize || a.isCompressed || a.allocatedSize == 0 else {
            throw NTFS.corrupt("MFT record \(record): data size \(a.dataSize) exceeds the allocated \(a.allocatedSize)")
        }
        if a.isEncrypted { throw WardenError.unsupported("ntfs: MFT record \(record) is EFS-encrypted") }
        if a.isCompressed && a.compressionUnit != 0 { return try readCompressed(a, record: record, at: offset, count: count) }
        var bytes = try readRuns(a.runs, at: offset, count: count, limit: a.dataSize, what: "MFT record \(record)")
        // Past the initialized size the bytes read as zeros, whatever the clusters hold.
        if offset + UInt64(bytes.count) > a.initializedSize {
            let from = a.initializedSize > offset ? Int(a.initializedSize - offset) : 0
            for i in from..<bytes.count { bytes[i] = 0 }
        }
        return bytes
    }

    /// Compressed data: units of 2^compressionUnit clusters; a unit whose clusters are all
    /// allocated is stored plain, one with some sparse clusters holds LZNT1 chunks in the
    /// allocated ones, and an all-sparse unit reads as zeros.
    private func readCompressed(_ a: NTFS.Attribute, record: UInt64, at offset: UInt64, count: Int) throws -> [UInt8] {
        guard a.compressionUnit <= 8 else { throw NTFS.corrupt("MFT record \(record): compression unit 2^\(a.compressionUnit) clusters") }
        let unitClusters = UInt64(1) << UInt64(a.compressionUnit)
        let unitBytes = unitClusters * boot.clusterSize
        guard unitBytes <= 1 << 20 else { throw WardenError.unsupported("ntfs: compression units of \(unitBytes) bytes") }
        guard offset < a.dataSize else { return [] }
        let end = min(a.dataSize, offset + UInt64(count))
        var out = [UInt8]()
        out.reserveCapacity(Int(end - offset))
        var pos = offset
        while pos < end {
            let unit = pos / unitBytes
            let key = "\(record):\(unit)"
            let bytes: [UInt8]
            if let cached = units[key] { bytes = cached } else {
                bytes = try decodeUnit(a, record: record, unit: unit, unitClusters: unitClusters, unitBytes: unitBytes)
                units.put(key, bytes)
            }
            let within = Int(pos - unit * unitBytes)
            let n = min(Int(end - pos), Int(unitBytes) - within)
            out += bytes[within..<within + n]
            pos += UInt64(n)
        }
        return out
    }

    private func decodeUnit(_ a: NTFS.Attribute, record: UInt64, unit: UInt64, unitClusters: UInt64, unitBytes: UInt64) throws -> [UInt8] {
        let firstVCN = unit * unitClusters
        var allocated: [NTFS.Run] = []
        var covered: UInt64 = 0
        var vcn = firstVCN
        while vcn < firstVCN + unitClusters {
            guard let run = Self.run(containing: vcn, in: a.runs) else { break }
            let n = min(run.vcn + run.length, firstVCN + unitClusters) - vcn
            if let lcn = run.lcn { allocated.append(NTFS.Run(vcn: vcn, lcn: lcn + (vcn - run.vcn), length: n)); covered += n }
            vcn += n
        }
        if covered == 0 { return [UInt8](repeating: 0, count: Int(unitBytes)) }
        var raw = [UInt8]()
        raw.reserveCapacity(Int(covered * boot.clusterSize))
        for r in allocated {
            let bytes = try device.read(at: try Checked.mul(r.lcn!, boot.clusterSize, "cluster offset"), count: Int(r.length * boot.clusterSize))
            guard bytes.count == Int(r.length * boot.clusterSize) else { throw NTFS.corrupt("MFT record \(record): compressed cluster past the volume") }
            raw += bytes
        }
        if covered == unitClusters { return raw }
        var plain = try NTFS.lznt1(raw, limit: Int(unitBytes))
        if plain.count < Int(unitBytes) { plain += repeatElement(0, count: Int(unitBytes) - plain.count) }
        return plain
    }

    // MARK: FileSystem

    /// The reparse tag of a record, if it has a reparse point.
    private func reparseTag(_ r: FileRecord) -> UInt32? {
        guard let v = r.attribute(.reparsePoint)?.value, v.count >= 8 else { return nil }
        return v.peekLE(0, as: UInt32.self)
    }

    static let symlinkTag: UInt32 = 0xA000_000C
    static let junctionTag: UInt32 = 0xA000_0003

    public func stat(_ inode: UInt64) throws -> FileStat {
        let r = try fileRecord(inode)
        let tag = reparseTag(r)
        let isLink = tag == Self.symlinkTag || tag == Self.junctionTag
        let type: FileType = isLink ? .symlink : (r.isDirectory ? .directory : .regular)
        var mtime: Int64 = 0
        if let si = r.attribute(.standardInformation)?.value, let t = si.peekLE(8, as: UInt64.self) { mtime = NTFS.unixTime(t) }
        let names = r.attributes.filter { $0.type == NTFS.AttributeType.fileName.rawValue }
            .compactMap { $0.value.flatMap { try? NTFS.FileName($0, record: inode) } }
            .filter { $0.namespace != 2 }
        let size: UInt64 = type == .regular ? (r.attribute(.data)?.size ?? 0) : (isLink ? UInt64((try? readLink(inode))?.count ?? 0) : 0)
        let mode: UInt32 = type == .directory ? 0o040755 : (type == .symlink ? 0o120777 : 0o100644)
        return FileStat(inode: inode, type: type, mode: mode, uid: 0, gid: 0, size: size, links: UInt32(max(1, names.count)), mtime: mtime)
    }

    public func readDirectory(_ inode: UInt64) throws -> [DirectoryEntry] {
        let r = try fileRecord(inode)
        guard r.isDirectory else { throw WardenError(.invalidArgument, "ntfs: record \(inode) is not a directory") }
        guard let root = r.attribute(.indexRoot, name: "$I30")?.value else { throw NTFS.corrupt("directory \(inode) has no $I30 index root") }
        guard root.count >= 32 else { throw NTFS.corrupt("directory \(inode): $INDEX_ROOT of \(root.count) bytes") }
        var entries: [DirectoryEntry] = []
        var seen = Set<[UInt8]>()
        func collect(_ node: [UInt8], headerAt h: Int, what: String) throws {
            let first = h + Int(try node.le(h, UInt32.self)), used = h + Int(try node.le(h + 4, UInt32.self))
            guard first >= h + 16, used <= node.count, first <= used else { throw NTFS.corrupt("\(what): entries at \(first), used to \(used) of \(node.count)") }
            var off = first
            while off + 16 <= used {
                let length = Int(try node.le(off + 8, UInt16.self)), keyLength = Int(try node.le(off + 10, UInt16.self))
                let flags = try node.le(off + 12, UInt16.self)
                guard length >= 16, off + length <= used, 16 + keyLength <= length else { throw NTFS.corrupt("\(what): index entry of \(length) bytes at \(off)") }
                if flags & 0x02 != 0 { break }
                let ref = try node.le(off, UInt64.self)
                let target = ref & 0x0000_FFFF_FFFF_FFFF, sequence = UInt16(ref >> 48)
                let name = try NTFS.FileName(Array(node[(off + 16)..<(off + 16 + keyLength)]), record: inode)
                off += length
                if name.namespace == 2 || target == inode || (inode == NTFS.rootRecord && target < 16) { continue }
                guard entries.count < NTFS.Limits.maxDirectoryEntries else { throw WardenError.limit("ntfs: directory \(inode) has more than \(NTFS.Limits.maxDirectoryEntries) entries") }
                if let t = try? fileRecord(target), t.sequence != sequence, sequence != 0 {
                    warn("ntfs: directory \(inode): entry for record \(target) has sequence \(sequence), the record \(t.sequence) (stale entry skipped)")
                    continue
                }
                let bytes = NTFS.utf8(name.name)
                guard !bytes.isEmpty, !bytes.contains(0x2F), !bytes.contains(0), seen.insert(bytes).inserted else { continue }
                let type: FileType? = name.flags & 0x400 != 0 ? nil : (name.flags & 0x1000_0000 != 0 ? .directory : .regular)
                entries.append(DirectoryEntry(nameBytes: bytes, inode: target, type: type))
            }
        }
        try collect(root, headerAt: 16, what: "directory \(inode) $INDEX_ROOT")
        guard root[28] & 0x01 != 0 else { return entries }
        // A large index: every block of $INDEX_ALLOCATION that $BITMAP marks in use.
        guard let alloc = r.attribute(.indexAllocation, name: "$I30") else { throw NTFS.corrupt("directory \(inode) has a large index but no $INDEX_ALLOCATION") }
        let blockSize = Int(try root.le(8, UInt32.self))
        guard blockSize == boot.indexRecordSize else { throw NTFS.corrupt("directory \(inode): index blocks of \(blockSize) bytes, the volume says \(boot.indexRecordSize)") }
        let blocks = alloc.dataSize / UInt64(blockSize)
        guard blocks <= UInt64(NTFS.Limits.maxIndexRecords) else { throw WardenError.limit("ntfs: directory \(inode) has \(blocks) index blocks") }
        var bitmap: [UInt8] = []
        if let bm = r.attribute(.bitmap, name: "$I30") { bitmap = try readAttribute(bm, record: inode, at: 0, count: Int(min(bm.size, 1 << 20))) }
        for b in 0..<blocks {
            if !bitmap.isEmpty { guard Int(b / 8) < bitmap.count, bitmap[Int(b / 8)] & (1 << (b % 8)) != 0 else { continue } }
            var block = try readAttribute(alloc, record: inode, at: b * UInt64(blockSize), count: blockSize)
            guard block.count == blockSize else { throw NTFS.corrupt("directory \(inode): index block \(b) is short") }
            try NTFS.applyFixups(&block, magic: "INDX", what: "directory \(inode) index block \(b)")
            try collect(block, headerAt: 0x18, what: "directory \(inode) index block \(b)")
        }
        return entries
    }

    public func read(_ inode: UInt64, at offset: UInt64, count: Int) throws -> [UInt8] {
        let r = try fileRecord(inode)
        guard !r.isDirectory else { throw WardenError(.invalidArgument, "ntfs: record \(inode) is a directory") }
        guard let data = r.attribute(.data) else { return [] }
        return try readAttribute(data, record: inode, at: offset, count: count)
    }

    /// The target of a symbolic link or junction as a guest path: `\??\C:\x\y` and `C:\x\y`
    /// become `/x/y` (any drive letter is the guest root), `..\x` becomes `../x`; a target on
    /// another volume (`\??\Volume{…}`, a UNC path) reads as a path under
    /// `/.warden-outside-volume/`, which does not exist, so it resolves nowhere.
    public func readLink(_ inode: UInt64) throws -> [UInt8] {
        let r = try fileRecord(inode)
        guard let v = r.attribute(.reparsePoint)?.value, v.count >= 16, v.count <= NTFS.Limits.maxReparseData else {
            throw WardenError(.invalidArgument, "ntfs: record \(inode) is not a symbolic link or junction")
        }
        let tag = try v.le(0, UInt32.self)
        let buffer: Int
        switch tag {
        case Self.symlinkTag: buffer = 20
        case Self.junctionTag: buffer = 16
        default: throw WardenError.unsupported("ntfs: reparse tag 0x\(String(tag, radix: 16)) of record \(inode)")
        }
        let subOff = Int(try v.le(8, UInt16.self)), subLen = Int(try v.le(10, UInt16.self))
        let printOff = Int(try v.le(12, UInt16.self)), printLen = Int(try v.le(14, UInt16.self))
        let symlinkFlags: UInt32 = tag == Self.symlinkTag ? try v.le(16, UInt32.self) : 0
        let relative = symlinkFlags & 1 != 0
        func name(_ o: Int, _ l: Int) throws -> [UInt16] {
            guard l % 2 == 0, buffer + o + l <= v.count else { throw NTFS.corrupt("record \(inode): reparse name outside its data") }
            return stride(from: buffer + o, to: buffer + o + l, by: 2).map { UInt16(v[$0]) | UInt16(v[$0 + 1]) << 8 }
        }
        var target = String(decoding: try name(subOff, subLen), as: UTF16.self)
        if target.isEmpty { target = String(decoding: try name(printOff, printLen), as: UTF16.self) }
        guard !target.isEmpty else { throw NTFS.corrupt("record \(inode): empty link target") }
        if relative { return Array(target.replacingBackslashes.utf8) }
        if target.hasPrefix("\\??\\") { target.removeFirst(4) }
        let chars = Array(target)
        if chars.count >= 2, chars[1] == ":", chars[0].isASCII, chars[0].isLetter {
            return Array(("/" + String(chars.dropFirst(2)).replacingBackslashes).replacingOccurrences(of: "//", with: "/").utf8)
        }
        return Array(("/.warden-outside-volume/" + target.replacingBackslashes.replacingOccurrences(of: "/", with: "_")).utf8)
    }

    // MARK: Names and streams

    /// Case-insensitive lookup through `$UpCase`, as Windows does it.
    public func lookup(_ directory: UInt64, name: [UInt8]) throws -> DirectoryEntry? {
        let folded = fold(Array(String(decoding: name, as: UTF8.self).utf16))
        return try readDirectory(directory).first { fold(Array($0.name.utf16)) == folded }
    }

    private func fold(_ units: [UInt16]) -> [UInt16] { units.map { Int($0) < upcase.count ? upcase[Int($0)] : $0 } }

    /// The alternate data streams of a file: names and sizes (listed, never followed).
    public func streams(_ inode: UInt64) throws -> [(name: String, size: UInt64)] {
        try fileRecord(inode).attributes.filter { $0.type == NTFS.AttributeType.data.rawValue && !$0.name.isEmpty }
            .map { (ManifestEscaping.escape(NTFS.utf8($0.name)), $0.size) }
    }
}

/// A filesystem whose names compare case-insensitively (NTFS through `$UpCase`): path
/// resolution asks it when no entry matches exactly.
public protocol CaseInsensitiveLookup {
    func lookup(_ directory: UInt64, name: [UInt8]) throws -> DirectoryEntry?
}

extension String {
    var replacingBackslashes: String { replacingOccurrences(of: "\\", with: "/") }
}
