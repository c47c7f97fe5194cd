import Foundation
import WardenCore
import DiskImage

/// A read-only FAT12/16/32 filesystem on a ``BlockDevice``. Create with ``FAT/open(_:)``.
///
/// Inode numbers are synthesized: the root is ``FAT/rootInode`` (1); every other object's
/// inode is the byte offset (within the volume) of its 32-byte short directory entry.
/// Modes are fixed like a default vfat mount: directories 0755, files 0644, uid/gid 0.
///
/// Thread-safe: the FAT sector and chain caches are ``BoundedCache``s, the warnings a ``WarningLog``;
/// device reads happen outside it.
public final class FATVolume: FileSystem, @unchecked Sendable {
    public let device: any BlockDevice
    public let boot: FAT.BootSector
    public var typeName: String { "vfat" }
    public private(set) var label: String?
    public let uuid: String?
    public var rootInode: UInt64 { FAT.rootInode }

    /// A run of contiguous clusters.
    struct Run { var first: UInt64; var count: UInt64 }

    /// A parsed short directory entry.
    struct Entry {
        var offset: UInt64
        var attributes: UInt8
        var firstCluster: UInt64
        var size: UInt64
        var mtime: Int64
        var isDirectory: Bool { attributes & 0x10 != 0 }
    }

    private let warningLog = WarningLog(limit: FAT.Limits.maxWarnings, suppressedLine: "vfat: further warnings suppressed")
    private let fatCache = BoundedCache<UInt64, [UInt8]>(capacity: 512)
    private let chainCache = BoundedCache<UInt64, [Run]>(capacity: 256)

    public var warnings: [String] { warningLog.all }

    init(device: any BlockDevice) throws {
        self.device = device
        guard device.size >= 512 else {
            throw FAT.corrupt("volume of \(device.size) bytes is too small to hold a boot sector")
        }
        let b = try device.read(at: 0, count: 512)
        let boot = try FAT.BootSector(b, deviceSize: device.size)
        self.boot = boot
        if let id = boot.volumeID {
            let hi = String(id >> 16, radix: 16, uppercase: true), lo = String(id & 0xFFFF, radix: 16, uppercase: true)
            uuid = String(repeating: "0", count: 4 - hi.count) + hi + "-" + String(repeating: "0", count: 4 - lo.count) + lo
        } else {
            uuid = nil
        }
        if b[510] != 0x55 || b[511] != 0xAA {
            warn("vfat: boot sector signature is \(hex(b[510]))\(String(b[511], radix: 16)), not 0x55aa")
        }
        if boot.kind == .fat32 { checkFSInfo() }
        // The label: the root directory's volume-label entry wins over the boot sector's.
        let rootLabel = try rootVolumeLabel()
        var labelBytes = rootLabel ?? boot.bpbLabel
        if rootLabel == nil, labelBytes == Array("NO NAME    ".utf8) { labelBytes = nil }
        if var l = labelBytes {
            while let last = l.last, last == 0x20 || last == 0 { l.removeLast() }
            if l.first == 0x05 { l[0] = 0xE5 }
            label = l.isEmpty ? nil : String(l.map { Character(UnicodeScalar($0)) })
        } else {
            label = nil
        }
    }

    // MARK: Warnings

    func warn(_ message: String) { warningLog.warn(message) }

    private func checkFSInfo() {
        let s = boot.fsInfoSector
        guard s != 0, s != 0xFFFF else { return }
        guard s < boot.reservedSectors,
              let b = try? device.read(at: s * boot.bytesPerSector, count: 512) else {
            warn("vfat: FSInfo sector \(s) is outside the \(boot.reservedSectors) reserved sectors")
            return
        }
        let lead = b.peekLE(0, as: UInt32.self) ?? 0
        let strucSig = b.peekLE(484, as: UInt32.self) ?? 0
        let trail = b.peekLE(508, as: UInt32.self) ?? 0
        if lead != 0x4161_5252 || strucSig != 0x6141_7272 || trail != 0xAA55_0000 {
            warn("vfat: FSInfo sector \(s) has bad signatures (\(hex(lead)), \(hex(strucSig)), \(hex(trail)))")
        }
    }

    // MARK: FAT and cluster chains

    /// The FAT entry for cluster `c` (from the first FAT).
    func fatEntry(_ c: UInt64) throws -> UInt64 {
        let bps = boot.bytesPerSector
        let byteOffset: UInt64
        switch boot.kind {
        case .fat12: byteOffset = c + c / 2
        case .fat16: byteOffset = c * 2
        case .fat32: byteOffset = c * 4
        }
        let width: UInt64 = boot.kind == .fat32 ? 4 : 2
        var raw: UInt64 = 0
        for i in 0..<width {
            let o = byteOffset + i
            let sector = o / bps
            guard sector < boot.fatSectors else {
                throw FAT.corrupt("FAT entry for cluster \(c) lies beyond the \(boot.fatSectors)-sector FAT")
            }
            let bytes = try fatSector(sector)
            guard let idx = Int(exactly: o % bps), idx < bytes.count else {
                throw FAT.corrupt("FAT sector \(sector) is short")
            }
            raw |= UInt64(bytes[idx]) << (8 * i)
        }
        switch boot.kind {
        case .fat12: return c & 1 == 0 ? raw & 0xFFF : (raw >> 4) & 0xFFF
        case .fat16: return raw & 0xFFFF
        case .fat32: return raw & 0x0FFF_FFFF
        }
    }

    private func fatSector(_ s: UInt64) throws -> [UInt8] {
        if let b = fatCache[s] { return b }
        let off = try Checked.add(boot.fatOffset, try Checked.mul(s, boot.bytesPerSector, "FAT sector offset"), "FAT sector offset")
        let b = try device.read(at: off, count: Int(boot.bytesPerSector))
        fatCache.put(s, b)
        return b
    }

    private var endOfChain: UInt64 {
        switch boot.kind {
        case .fat12: return 0xFF8
        case .fat16: return 0xFFF8
        case .fat32: return 0x0FFF_FFF8
        }
    }

    /// The cluster chain starting at `first` as contiguous runs. At most `maxClusters`
    /// clusters are followed; a longer chain is a loop or damage and throws.
    /// With `exact` set, the chain must have exactly `maxClusters` clusters.
    func chain(_ first: UInt64, maxClusters: UInt64, exact: Bool, what: String) throws -> [Run] {
        if let r = chainCache[first] {
            let n = r.reduce(UInt64(0)) { $0 + $1.count }
            if n <= maxClusters && (!exact || n == maxClusters) { return r }
        }
        var runs: [Run] = []
        var c = first
        var n: UInt64 = 0
        let limit = min(maxClusters, boot.clusterCount)
        while true {
            guard c >= 2, c <= boot.maxCluster else {
                throw FAT.corrupt("\(what): cluster chain points to cluster \(c), outside 2...\(boot.maxCluster)")
            }
            guard n < limit else {
                throw FAT.corrupt("\(what): cluster chain from \(first) is longer than \(limit) clusters (a loop?)")
            }
            n += 1
            if let last = runs.last, last.first + last.count == c {
                runs[runs.count - 1].count += 1
            } else {
                guard runs.count < FAT.Limits.maxRuns else {
                    throw WardenError.limit("vfat: \(what): cluster chain has more than \(FAT.Limits.maxRuns) fragments")
                }
                runs.append(Run(first: c, count: 1))
            }
            let next = try fatEntry(c)
            if next >= endOfChain { break }
            if next == 0 { throw FAT.corrupt("\(what): cluster chain reaches free cluster after \(c)") }
            if next == endOfChain - 1 { throw FAT.corrupt("\(what): cluster chain reaches bad cluster after \(c)") }
            c = next
        }
        if exact && n != maxClusters {
            throw FAT.corrupt("\(what): cluster chain from \(first) has \(n) clusters, the size needs \(maxClusters)")
        }
        chainCache.put(first, runs)
        return runs
    }

    /// Byte offset on the device of cluster `c` (2 ... maxCluster).
    func clusterOffset(_ c: UInt64) throws -> UInt64 {
        guard c >= 2, c <= boot.maxCluster else { throw FAT.corrupt("cluster \(c) is outside 2...\(boot.maxCluster)") }
        return try Checked.add(boot.dataOffset, try Checked.mul(c - 2, boot.clusterSize, "cluster offset"), "cluster offset")
    }

    /// Reads `count` bytes at `offset` of the data laid out in `runs`.
    func readRuns(_ runs: [Run], at offset: UInt64, count: Int, into out: inout [UInt8]) throws {
        let cs = boot.clusterSize
        var pos = offset
        var remaining = UInt64(count)
        var runStart: UInt64 = 0
        for r in runs where remaining > 0 {
            let runBytes = r.count * cs
            let runEnd = runStart + runBytes
            if pos < runEnd {
                let within = pos - runStart
                let n = min(remaining, runEnd - pos)
                let dev = try Checked.add(try clusterOffset(r.first), within, "data offset")
                let chunk = try device.read(at: dev, count: Int(n))
                out.append(contentsOf: chunk)
                pos += n
                remaining -= n
            }
            runStart = runEnd
        }
        if remaining > 0 { throw FAT.corrupt("cluster chain ends before byte \(pos)") }
    }

    // MARK: Directories

    /// The raw bytes of a directory (the fixed root region, or a cluster chain).
    func directoryBytes(_ inode: UInt64) throws -> (bytes: [UInt8], base: [Run]?, fixedBase: UInt64?) {
        if inode == FAT.rootInode {
            if boot.kind == .fat32 {
                let runs = try chain(UInt64(boot.rootCluster), maxClusters: dirClusterCap, exact: false, what: "root directory")
                var out: [UInt8] = []
                try readRuns(runs, at: 0, count: Int(runs.reduce(UInt64(0)) { $0 + $1.count } * boot.clusterSize), into: &out)
                return (out, runs, nil)
            }
            let b = try device.read(at: boot.rootDirOffset, count: Int(boot.rootDirBytes))
            return (b, nil, boot.rootDirOffset)
        }
        let e = try entry(inode)
        guard e.isDirectory else { throw WardenError(.invalidArgument, "vfat: inode \(inode) is not a directory") }
        if e.firstCluster == 0 { return ([], [], nil) }
        let runs = try chain(e.firstCluster, maxClusters: dirClusterCap, exact: false, what: "directory at \(hex(inode))")
        var out: [UInt8] = []
        try readRuns(runs, at: 0, count: Int(runs.reduce(UInt64(0)) { $0 + $1.count } * boot.clusterSize), into: &out)
        return (out, runs, nil)
    }

    private var dirClusterCap: UInt64 {
        max(1, FAT.Limits.maxDirectoryBytes / boot.clusterSize)
    }

    /// Device byte offset of byte `i` of a directory.
    private func entryOffset(_ i: UInt64, runs: [Run]?, fixed: UInt64?) throws -> UInt64 {
        if let fixed { return try Checked.add(fixed, i, "entry offset") }
        let cs = boot.clusterSize
        var start: UInt64 = 0
        for r in runs ?? [] {
            let len = r.count * cs
            if i < start + len { return try Checked.add(try clusterOffset(r.first), i - start, "entry offset") }
            start += len
        }
        throw FAT.corrupt("directory entry \(i) is beyond its cluster chain")
    }

    private func rootVolumeLabel() throws -> [UInt8]? {
        let (bytes, _, _) = try directoryBytes(FAT.rootInode)
        var i = 0
        while i + 32 <= bytes.count {
            let first = bytes[i]
            if first == 0 { break }
            let attr = bytes[i + 11]
            if first != 0xE5, attr & 0x3F != 0x0F, attr & 0x08 != 0, attr & 0x10 == 0 {
                return Array(bytes[i..<(i + 11)])
            }
            i += 32
        }
        return nil
    }

    /// Parses the short entry at device byte `offset` (an inode number).
    func entry(_ inode: UInt64) throws -> Entry {
        guard inode >= boot.rootDirOffset, inode % 32 == 0 else {
            throw WardenError.notFound("vfat: inode \(inode) is not a directory entry")
        }
        let inRoot = boot.kind != .fat32 && inode < boot.rootDirOffset + boot.rootDirBytes
        guard inRoot || inode >= boot.dataOffset, inode < boot.totalSectors * boot.bytesPerSector else {
            throw WardenError.notFound("vfat: inode \(inode) is not a directory entry")
        }
        let b = try device.read(at: inode, count: 32)
        guard b[0] != 0, b[0] != 0xE5, b[11] & 0x3F != 0x0F, b[11] & 0x08 == 0 else {
            throw WardenError.notFound("vfat: inode \(inode) is not a live file or directory entry")
        }
        return try parseShort(b[...], offset: inode)
    }

    private func parseShort(_ b: ArraySlice<UInt8>, offset: UInt64) throws -> Entry {
        let hi = UInt64(try b.le(20, UInt16.self)), lo = UInt64(try b.le(26, UInt16.self))
        let cluster = boot.kind == .fat32 ? (hi << 16 | lo) & 0x0FFF_FFFF : lo
        let s = b.startIndex
        let attr = b[s + 11]
        let size = UInt64(try b.le(28, UInt32.self))
        let mtime = FAT.dosTime(date: try b.le(24, UInt16.self), time: try b.le(22, UInt16.self))
        return Entry(offset: offset, attributes: attr, firstCluster: cluster, size: attr & 0x10 != 0 ? 0 : size, mtime: mtime)
    }

    /// The decoded short name (with the NT lower-case flags applied), or nil for "." / "..".
    static func shortName(_ b: ArraySlice<UInt8>) -> [UInt8] {
        let s = b.startIndex
        let flags = b[s + 12]
        func part(_ r: Range<Int>, lower: Bool) -> [UInt8] {
            var p = Array(b[(s + r.lowerBound)..<(s + r.upperBound)])
            while let l = p.last, l == 0x20 { p.removeLast() }
            if lower { p = p.map { $0 >= 0x41 && $0 <= 0x5A ? $0 + 0x20 : $0 } }
            return p
        }
        var base = part(0..<8, lower: flags & 0x08 != 0)
        if base.first == 0x05 { base[0] = 0xE5 }
        let ext = part(8..<11, lower: flags & 0x10 != 0)
        let raw = ext.isEmpty ? base : base + [0x2E] + ext
        // Bytes >= 0x80 are in the OEM code page; they are shown as Latin-1.
        return Array(String(raw.map { Character(UnicodeScalar($0)) }).utf8)
    }

    // MARK: FileSystem

    public func stat(_ inode: UInt64) throws -> FileStat {
        if inode == FAT.rootInode {
            let (bytes, _, _) = try directoryBytes(inode)
            return FileStat(inode: inode, type: .directory, mode: 0o40755, uid: 0, gid: 0,
                            size: UInt64(bytes.count), links: 1, mtime: 0)
        }
        let e = try entry(inode)
        var size = e.size
        if e.isDirectory && e.firstCluster != 0 {
            let runs = try chain(e.firstCluster, maxClusters: dirClusterCap, exact: false, what: "directory at \(hex(inode))")
            size = runs.reduce(UInt64(0)) { $0 + $1.count } * boot.clusterSize
        }
        return FileStat(inode: inode, type: e.isDirectory ? .directory : .regular,
                        mode: e.isDirectory ? 0o40755 : 0o100644, uid: 0, gid: 0,
                        size: size, links: 1, mtime: e.mtime)
    }

    public func readDirectory(_ inode: UInt64) throws -> [DirectoryEntry] {
        let (bytes, runs, fixed) = try directoryBytes(inode)
        var out: [DirectoryEntry] = []
        // Pending long name: parts by sequence number, expected next sequence, checksum.
        var lfnParts: [[UInt16]] = []
        var lfnNext = 0
        var lfnSum: UInt8 = 0
        var i = 0
        while i + 32 <= bytes.count {
            defer { i += 32 }
            let e = bytes[i..<(i + 32)]
            let first = e[i]
            if first == 0 { break }
            if first == 0xE5 { lfnParts = []; lfnNext = 0; continue }
            let attr = e[i + 11]
            if attr & 0x3F == 0x0F {
                let ord = Int(first & 0x1F)
                var units: [UInt16] = []
                for o in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30] {
                    units.append(UInt16(e[i + o]) | UInt16(e[i + o + 1]) << 8)
                }
                if first & 0x40 != 0, ord >= 1 {
                    lfnParts = [units]
                    lfnNext = ord - 1
                    lfnSum = e[i + 13]
                } else if lfnNext >= 1, ord == lfnNext, e[i + 13] == lfnSum {
                    lfnParts.append(units)
                    lfnNext -= 1
                } else {
                    lfnNext = -1
                }
                continue
            }
            defer { lfnParts = []; lfnNext = 0 }
            if attr & 0x08 != 0 { continue } // volume label
            var name = FATVolume.shortName(e)
            if name == [0x2E] || name == [0x2E, 0x2E] { continue }
            if !lfnParts.isEmpty {
                if lfnNext == 0, FAT.shortNameChecksum(e[i..<(i + 11)]) == lfnSum {
                    var units: [UInt16] = []
                    for p in lfnParts.reversed() { units.append(contentsOf: p) }
                    if let end = units.firstIndex(of: 0) { units.removeSubrange(end...) }
                    name = Array(String(decoding: units, as: UTF16.self).utf8)
                } else {
                    warn("vfat: long name for entry \(String(decoding: name, as: UTF8.self)) in directory \(inode) does not match its short entry; using the short name")
                }
            }
            if name.isEmpty || name == [0x2E] || name == [0x2E, 0x2E] || name.contains(0x2F) || name.contains(0) {
                warn("vfat: skipped an entry with an invalid name in directory \(inode)")
                continue
            }
            let off = try entryOffset(UInt64(i), runs: runs, fixed: fixed)
            out.append(DirectoryEntry(nameBytes: name, inode: off, type: attr & 0x10 != 0 ? .directory : .regular))
        }
        return out
    }

    private func fileRuns(_ inode: UInt64) throws -> (Entry, [Run]) {
        let e = try entry(inode)
        guard !e.isDirectory else { throw WardenError(.invalidArgument, "vfat: inode \(inode) is a directory") }
        if e.size == 0 { return (e, []) }
        guard e.firstCluster != 0 else {
            throw FAT.corrupt("file at \(hex(inode)) has \(e.size) bytes but no first cluster")
        }
        let need = (e.size + boot.clusterSize - 1) / boot.clusterSize
        guard need <= boot.clusterCount else {
            throw FAT.corrupt("file at \(hex(inode)) claims \(e.size) bytes, more than the volume's \(boot.clusterCount) clusters")
        }
        return (e, try chain(e.firstCluster, maxClusters: need, exact: true, what: "file at \(hex(inode))"))
    }

    public func read(_ inode: UInt64, at offset: UInt64, count: Int) throws -> [UInt8] {
        guard count >= 0 else { throw WardenError(.invalidArgument, "negative read length") }
        guard count <= FAT.Limits.maxReadBytes else {
            throw WardenError.limit("vfat: read of \(count) bytes exceeds the \(FAT.Limits.maxReadBytes)-byte limit")
        }
        let (e, runs) = try fileRuns(inode)
        guard offset < e.size, count > 0 else { return [] }
        let n = Int(min(UInt64(count), e.size - offset))
        var out: [UInt8] = []
        out.reserveCapacity(n)
        try readRuns(runs, at: offset, count: n, into: &out)
        return out
    }

    public func readLink(_ inode: UInt64) throws -> [UInt8] {
        throw WardenError(.invalidArgument, "vfat: inode \(inode) is not a symbolic link (FAT has none)")
    }

    public func forEachChunk(_ inode: UInt64, chunkSize: Int, _ body: ([UInt8]) throws -> Void) throws {
        guard chunkSize > 0 else { throw WardenError(.invalidArgument, "chunk size must be positive") }
        let (e, runs) = try fileRuns(inode)
        let step = UInt64(min(chunkSize, FAT.Limits.maxReadBytes))
        var remaining = e.size
        for r in runs where remaining > 0 {
            var dev = try clusterOffset(r.first)
            var runLeft = min(remaining, r.count * boot.clusterSize)
            while runLeft > 0 {
                let n = min(step, runLeft)
                try body(try device.read(at: dev, count: Int(n)))
                dev += n
                runLeft -= n
                remaining -= n
            }
        }
    }
}
