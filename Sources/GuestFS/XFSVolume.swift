import Foundation
import WardenCore
import DiskImage

/// A read-only XFS filesystem on a ``BlockDevice``. Create with ``XFS/open(_:)``.
///
/// Thread-safe: the caches are ``BoundedCache``s and the warnings a ``WarningLog``; device reads
/// happen outside it.
public final class XFSVolume: FileSystem, @unchecked Sendable {
    public let device: any BlockDevice
    public let sb: XFS.SuperBlock
    public var typeName: String { "xfs" }
    public let label: String?
    public let uuid: String?
    public var rootInode: UInt64 { sb.rootInode }

    private let warningLog = WarningLog(limit: XFS.Limits.maxWarnings, suppressedLine: "xfs: further warnings suppressed")
    private let inodeCache = BoundedCache<UInt64, XFS.Inode>(capacity: 1024)
    let extentCache = BoundedCache<UInt64, [XFS.Extent]>(capacity: 64)

    public var warnings: [String] { warningLog.all }
    /// Whether the log was left clean; a dirty log is reported, not replayed.
    public private(set) var logState: XFS.LogState = .unknown

    init(device: any BlockDevice) throws {
        self.device = device
        guard device.size >= 512 else {
            throw XFS.corrupt("volume of \(device.size) bytes is too small to hold a superblock")
        }
        let first = try device.read(at: 0, count: 512)
        // Read the whole superblock sector (its size is in the first 512 bytes).
        let ss = Int(try first.be(102) as UInt16)
        var raw = first
        if ss > 512 && ss <= 32768 && UInt64(ss) <= device.size {
            raw = try device.read(at: 0, count: ss)
        }
        let sb = try XFS.SuperBlock(raw, deviceSize: device.size)
        self.sb = sb
        label = sb.label
        if sb.uuid.allSatisfy({ $0 == 0 }) {
            uuid = nil
        } else {
            uuid = formatUUID(sb.uuid)
        }
        if sb.hasCRC {
            let computed = sb.computedCRC(raw)
            if computed != sb.storedCRC {
                warn("xfs: superblock checksum mismatch (stored \(hex(sb.storedCRC)), computed \(hex(computed)))")
            }
        }
        if sb.featuresIncompat & XFS.Incompat.needsRepair != 0 {
            warn("xfs: the filesystem is marked as needing repair (xfs_repair); contents may be inconsistent")
        }
        // Fail early on an unusable root.
        let root = try liveInode(sb.rootInode)
        guard root.fileType == .directory else {
            throw XFS.corrupt("root inode \(sb.rootInode) is not a directory")
        }
        let (state, reason) = logState(start: try XFS.logStart(of: raw), blocks: try XFS.logBlocks(of: raw))
        logState = state
        switch state {
        case .dirty:
            warn("xfs: the log is dirty (the filesystem was not unmounted cleanly): it is not replayed, so this view may miss the newest changes")
        case .unknown:
            warn("xfs: the state of the log could not be determined (\(reason ?? "unknown")): this view may miss the newest changes")
        case .clean, .external:
            break
        }
    }

    // MARK: Warnings

    func warn(_ message: String) { warningLog.warn(message) }

    // MARK: Blocks

    /// Reads linear volume block `n` (already checked by ``diskBlock(_:count:what:)``).
    func readBlock(_ n: UInt64) throws -> [UInt8] {
        guard n < sb.dataBlocks else {
            throw XFS.corrupt("block \(n) lies beyond the end of the \(sb.dataBlocks)-block volume")
        }
        return try device.read(at: n * UInt64(sb.blockSize), count: sb.blockSize)
    }

    // MARK: Inodes

    /// Byte offset of inode `n` on the volume.
    func inodeOffset(_ n: UInt64) throws -> UInt64 {
        let slotBits = UInt64(sb.inodesPerBlockLog)
        let agShift = UInt64(sb.agBlockLog) + slotBits
        let agno = agShift >= 64 ? 0 : n >> agShift
        let agbno = (n >> slotBits) & ((UInt64(1) << UInt64(sb.agBlockLog)) - 1)
        let slot = n & ((UInt64(1) << slotBits) - 1)
        guard n != 0, agno < UInt64(sb.agCount), agbno < UInt64(sb.agBlocks) else {
            throw XFS.corrupt("inode \(n) is out of range (AG \(agno), block \(agbno) of \(sb.agCount) AGs x \(sb.agBlocks) blocks)")
        }
        let linear = agno * UInt64(sb.agBlocks) + agbno
        guard linear < sb.dataBlocks else {
            throw XFS.corrupt("inode \(n) lies in block \(linear), beyond the end of the \(sb.dataBlocks)-block volume")
        }
        return linear * UInt64(sb.blockSize) + slot * UInt64(sb.inodeSize)
    }

    /// Reads and parses inode `n`.
    public func inode(_ n: UInt64) throws -> XFS.Inode {
        if let i = inodeCache[n] { return i }
        let off = try inodeOffset(n)
        let raw = try device.read(at: off, count: sb.inodeSize)
        let ino = try XFS.Inode(number: n, raw: raw, sb: sb, warn: { self.warn($0) })
        if sb.hasCRC {
            let (stored, computed) = XFS.crc(raw[...], crcOffset: XFS.Inode.crcOffset)
            if stored != computed {
                warn("xfs: inode \(n) checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
            }
        }
        inodeCache.put(n, ino)
        return ino
    }

    /// Inode `n`, which must be in use.
    func liveInode(_ n: UInt64) throws -> XFS.Inode {
        let ino = try inode(n)
        guard ino.mode != 0 else { throw WardenError.notFound("xfs: inode \(n) is not in use") }
        guard let type = ino.fileType else {
            throw XFS.corrupt("inode \(n) has unknown file type in mode 0o\(String(ino.mode, radix: 8))")
        }
        let f = ino.forkFormat
        switch type {
        case .regular:
            guard f == .extents || f == .btree || f == .local else {
                throw XFS.corrupt("regular file inode \(n) has data fork format \(ino.format)")
            }
            if ino.flags & XFS.InodeFlags.realtime != 0 {
                throw XFS.unsupported("inode \(n) keeps its data on the realtime device, which is not read")
            }
        case .directory, .symlink:
            guard f == .extents || f == .btree || f == .local else {
                throw XFS.corrupt("\(type) inode \(n) has data fork format \(ino.format)")
            }
        case .characterDevice, .blockDevice, .fifo, .socket:
            break
        }
        return ino
    }

    // MARK: FileSystem

    public func stat(_ n: UInt64) throws -> FileStat {
        let ino = try liveInode(n)
        guard let type = ino.fileType else { throw XFS.corrupt("inode \(n) has no file type") }
        let size: UInt64
        switch type {
        case .regular, .directory, .symlink: size = ino.size
        default: size = 0
        }
        return FileStat(inode: n, type: type, mode: UInt32(ino.mode), uid: ino.uid, gid: ino.gid,
                        size: size, links: ino.links, mtime: ino.mtime)
    }

    public func readDirectory(_ n: UInt64) throws -> [DirectoryEntry] {
        let ino = try liveInode(n)
        guard ino.fileType == .directory else {
            throw WardenError(.invalidArgument, "xfs: inode \(n) is not a directory")
        }
        if ino.forkFormat == .local { return try parseShortform(ino) }
        return try readDirectoryBlocks(ino)
    }

    public func read(_ n: UInt64, at offset: UInt64, count: Int) throws -> [UInt8] {
        guard count >= 0 else { throw WardenError(.invalidArgument, "xfs: negative read length \(count)") }
        let ino = try regularInode(n)
        guard offset < ino.size, count > 0 else { return [] }
        let n64 = min(UInt64(count), ino.size - offset)
        guard n64 <= UInt64(XFS.Limits.maxReadBytes) else {
            throw XFS.limit("read of \(n64) bytes from inode \(n) exceeds the \(XFS.Limits.maxReadBytes)-byte limit")
        }
        var out = [UInt8](repeating: 0, count: Int(n64))
        try out.withUnsafeMutableBytes { try readData(ino, offset: offset, into: $0) }
        return out
    }

    /// Streams a regular file with large device reads (one read per extent piece).
    public func forEachChunk(_ n: UInt64, chunkSize: Int, _ body: ([UInt8]) throws -> Void) throws {
        let ino = try regularInode(n)
        let chunk = UInt64(max(4096, min(chunkSize, XFS.Limits.maxReadBytes)))
        // Resolve the map once for the whole file.
        let map: [XFS.Extent]? = ino.forkFormat == .local ? nil : try extents(ino)
        var buffer = [UInt8](repeating: 0, count: Int(min(chunk, ino.size)))
        var off: UInt64 = 0
        while off < ino.size {
            let len = min(chunk, ino.size - off)
            if len == UInt64(buffer.count) {
                try buffer.withUnsafeMutableBytes { try readData(ino, offset: off, into: $0, map: map) }
                try body(buffer)
            } else {
                var last = [UInt8](repeating: 0, count: Int(len))
                try last.withUnsafeMutableBytes { try readData(ino, offset: off, into: $0, map: map) }
                try body(last)
            }
            off += len
        }
    }

    public func readLink(_ n: UInt64) throws -> [UInt8] {
        let ino = try liveInode(n)
        guard ino.fileType == .symlink else {
            throw WardenError(.invalidArgument, "xfs: inode \(n) is not a symbolic link")
        }
        guard ino.size > 0, ino.size <= XFS.Limits.maxSymlinkBytes else {
            throw XFS.corrupt("symlink inode \(n) claims a \(ino.size)-byte target")
        }
        let size = Int(ino.size)
        if ino.forkFormat == .local {
            guard size <= ino.dataFork.count else {
                throw XFS.corrupt("symlink inode \(n) claims \(size) bytes but its fork holds \(ino.dataFork.count)")
            }
            return Array(ino.dataFork.prefix(size))
        }
        let extents = try extents(ino)
        let bs = sb.blockSize
        var hdr = sb.hasCRC ? 56 : 0
        if sb.hasCRC, let first = extents.first, first.logical == 0, !first.unwritten {
            // mkfs.xfs -p (xfsprogs 6.1) writes v5 remote symlink blocks without the XSLM
            // header; read those as plain data instead of refusing them.
            var head = [UInt8](repeating: 0, count: 4)
            try head.withUnsafeMutableBytes { try readMapped(ino, extents, offset: 0, into: $0) }
            if head != [0x58, 0x53, 0x4C, 0x4D] {
                warn("xfs: symlink inode \(n) remote block lacks its XSLM header; read as plain data")
                hdr = 0
            }
        }
        let perBlock = bs - hdr
        let nblocks = (size + perBlock - 1) / perBlock
        var out: [UInt8] = []
        out.reserveCapacity(size)
        for i in 0..<nblocks {
            var block = [UInt8](repeating: 0, count: bs)
            let covered = extents.contains { $0.logical <= UInt64(i) && UInt64(i) < $0.end && !$0.unwritten }
            guard covered else { throw XFS.corrupt("symlink inode \(n) block \(i) is not mapped") }
            try block.withUnsafeMutableBytes {
                try readMapped(ino, extents, offset: UInt64(i) * UInt64(bs), into: $0)
            }
            let want = min(perBlock, size - out.count)
            if hdr > 0 {
                let b = block[...]
                let magic: UInt32 = try b.xbe(0)
                guard magic == 0x5853_4C4D else {  // "XSLM"
                    throw XFS.corrupt("symlink inode \(n) block \(i) has bad magic \(hex(magic))")
                }
                let offset: UInt32 = try b.xbe(4)
                let bytes: UInt32 = try b.xbe(8)
                guard Int(offset) == out.count, Int(bytes) == want else {
                    throw XFS.corrupt("symlink inode \(n) block \(i) holds \(bytes) bytes at \(offset), expected \(want) at \(out.count)")
                }
                let (stored, computed) = XFS.crc(b, crcOffset: 12)
                if stored != computed {
                    warn("xfs: symlink inode \(n) block \(i) checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
                }
                let owner: UInt64 = try b.xbe(32)
                if owner != n { throw XFS.corrupt("symlink block \(i) of inode \(n) belongs to inode \(owner)") }
            }
            out += block[hdr..<(hdr + want)]
        }
        return out
    }

    // MARK: Data

    private func regularInode(_ n: UInt64) throws -> XFS.Inode {
        let ino = try liveInode(n)
        guard ino.fileType == .regular else {
            throw WardenError(.invalidArgument, "xfs: inode \(n) is not a regular file")
        }
        return ino
    }

    /// Fills `buf` with file bytes `offset ..< offset + buf.count` (which must lie within the file).
    func readData(_ ino: XFS.Inode, offset: UInt64, into buf: UnsafeMutableRawBufferPointer, map: [XFS.Extent]? = nil) throws {
        guard buf.count > 0 else { return }
        let end = try Checked.add(offset, UInt64(buf.count), "xfs read range")
        if ino.forkFormat == .local {
            guard end <= UInt64(ino.dataFork.count) else {
                throw XFS.corrupt("inline inode \(ino.number) read past its \(ino.dataFork.count) bytes")
            }
            ino.dataFork.withUnsafeBytes { src in
                buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[Int(offset)..<Int(end)]))
            }
            return
        }
        let extents = try map ?? extents(ino)
        try readMapped(ino, extents, offset: offset, into: buf)
    }
}
