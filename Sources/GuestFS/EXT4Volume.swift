import Foundation
import WardenCore
import DiskImage

/// A read-only ext2/ext3/ext4 filesystem on a ``BlockDevice``. Create with ``EXT4/open(_:)``.
///
/// Thread-safe: the caches and the warning list sit behind one lock; device reads
/// happen outside it.
public final class EXT4Volume: FileSystem, @unchecked Sendable {
    public let device: any BlockDevice
    public let sb: EXT4.SuperBlock
    public let typeName: String
    public let label: String?
    public let uuid: String?
    public var rootInode: UInt64 { EXT4.rootInode }

    let lock = NSLock()
    private let warningLog = WarningLog(limit: EXT4.Limits.maxWarnings, suppressedLine: "ext4: further warnings suppressed")
    private let blockCache = BoundedCache<UInt64, [UInt8]>(capacity: 1024)
    private let inodeCache = BoundedCache<UInt64, EXT4.Inode>(capacity: 8192)
    private var checkedGroups = Set<UInt64>()
    let extentCache = BoundedCache<UInt64, [EXT4.Extent]>(capacity: 64)
    private let fsSeed: UInt32
    /// Block number of the primary superblock: 1 for 1 KiB blocks, else 0.

    public var warnings: [String] { warningLog.all }

    /// What replaying the journal did, when this volume is the replayed view.
    public let journalReplay: JBD2.Summary?

    init(device: any BlockDevice, replayed: JBD2.Summary? = nil) throws {
        self.device = device
        self.journalReplay = replayed
        guard device.size >= EXT4.superBlockOffset + 1024 else {
            throw EXT4.corrupt("volume of \(device.size) bytes is too small to hold a superblock")
        }
        let raw = try device.read(at: EXT4.superBlockOffset, count: 1024)
        let sb = try EXT4.SuperBlock(raw, deviceSize: device.size)
        self.sb = sb
        typeName = sb.typeName
        let nameBytes = sb.volumeName.prefix { $0 != 0 }
        label = nameBytes.isEmpty ? nil : String(decoding: nameBytes, as: UTF8.self)
        if sb.uuid.allSatisfy({ $0 == 0 }) {
            uuid = nil
        } else {
            let h = sb.uuid.hexString
            let c = Array(h)
            uuid = [c[0..<8], c[8..<12], c[12..<16], c[16..<20], c[20..<32]].map { String($0) }.joined(separator: "-")
        }
        fsSeed = sb.checksumSeed

        if sb.hasMetadataCsum && sb.storedChecksum != sb.computedChecksum {
            warn("ext4: superblock checksum mismatch (stored \(hex(sb.storedChecksum)), computed \(hex(sb.computedChecksum)))")
        }
        if let r = replayed {
            var note = "ext4: the journal was replayed in memory: \(r.transactions) transaction(s), \(r.blocks) block(s)"
            if r.revoked > 0 { note += ", \(r.revoked) revoked" }
            if r.badChecksums > 0 { note += ", \(r.badChecksums) left out for a bad checksum or target" }
            if r.incompleteTransaction { note += "; an incomplete last transaction was not applied" }
            if r.fastCommit { note += "; fast-commit blocks were not replayed" }
            warn(note)
        }
        // Fail early on an unusable root or first descriptor block.
        _ = try groupDescriptor(0)
    }

    // MARK: Warnings

    func warn(_ message: String) { warningLog.warn(message) }

    // MARK: Blocks

    /// Reads block `n` (checked against the volume) into a new array.
    func readBlock(_ n: UInt64, what: String = "block") throws -> [UInt8] {
        guard n < sb.blocksCount else {
            throw EXT4.corrupt("\(what) \(n) lies beyond the end of the \(sb.blocksCount)-block volume")
        }
        return try device.read(at: n * UInt64(sb.blockSize), count: sb.blockSize)
    }

    /// Like ``readBlock(_:what:)`` but kept in a small cache (metadata only).
    func cachedBlock(_ n: UInt64, what: String) throws -> [UInt8] {
        if let b = blockCache[n] { return b }
        let b = try readBlock(n, what: what)
        blockCache.put(n, b)
        return b
    }

    // MARK: Group descriptors

    func groupDescriptor(_ g: UInt64) throws -> EXT4.GroupDescriptor {
        let (block, off) = try sb.descriptorLocation(ofGroup: g)
        let bytes = try cachedBlock(block, what: "group descriptor block")
        let slice = bytes[off..<(off + sb.descSize)]
        let gd = try EXT4.GroupDescriptor(slice, descSize: sb.descSize)
        let first = lock.withLock { checkedGroups.count < 65536 ? checkedGroups.insert(g).inserted : false }
        if first { verifyGroupDescriptor(g, slice, gd) }
        let itBlocks = (UInt64(sb.inodesPerGroup) * UInt64(sb.inodeSize) + UInt64(sb.blockSize) - 1) / UInt64(sb.blockSize)
        let (end, ov) = gd.inodeTable.addingReportingOverflow(itBlocks)
        guard gd.inodeTable != 0, !ov, end <= sb.blocksCount else {
            throw EXT4.corrupt("group \(g) inode table at block \(gd.inodeTable) (\(itBlocks) blocks) lies beyond the end of the \(sb.blocksCount)-block volume")
        }
        return gd
    }

    private func verifyGroupDescriptor(_ g: UInt64, _ slice: ArraySlice<UInt8>, _ gd: EXT4.GroupDescriptor) {
        let groupLE = withUnsafeBytes(of: UInt32(truncatingIfNeeded: g).littleEndian) { Array($0) }
        let computed: UInt16
        if sb.hasMetadataCsum {
            var copy = Array(slice)
            copy[0x1E] = 0
            copy[0x1F] = 0
            let c = CRC32.castagnoli.update(CRC32.castagnoli.update(fsSeed, groupLE), copy)
            computed = UInt16(truncatingIfNeeded: c)
        } else if sb.hasROCompat(EXT4.ROCompat.gdtCsum) {
            var c = EXT4CRC16.update(0xFFFF, sb.uuid)
            c = EXT4CRC16.update(c, groupLE)
            let s = slice.startIndex
            c = EXT4CRC16.update(c, slice[s..<(s + 0x1E)])
            if sb.descSize > 0x20 { c = EXT4CRC16.update(c, slice[(s + 0x20)..<(s + sb.descSize)]) }
            computed = c
        } else {
            return
        }
        if computed != gd.checksum {
            warn("ext4: group \(g) descriptor checksum mismatch (stored \(hex(gd.checksum)), computed \(hex(computed)))")
        }
    }

    // MARK: Inodes

    /// crc32c seed of one inode's metadata (fs seed, inode number, generation).
    func inodeSeed(_ inode: EXT4.Inode) -> UInt32 {
        let n = withUnsafeBytes(of: UInt32(truncatingIfNeeded: inode.number).littleEndian) { Array($0) }
        let g = withUnsafeBytes(of: inode.generation.littleEndian) { Array($0) }
        return CRC32.castagnoli.update(CRC32.castagnoli.update(fsSeed, n), g)
    }

    /// Reads and parses inode `n`.
    public func inode(_ n: UInt64) throws -> EXT4.Inode {
        guard n >= 1, n <= UInt64(sb.inodesCount) else {
            throw EXT4.corrupt("inode \(n) is out of range (the filesystem has inodes 1...\(sb.inodesCount))")
        }
        if let i = inodeCache[n] { return i }
        let ipg = UInt64(sb.inodesPerGroup)
        let group = (n - 1) / ipg
        let index = (n - 1) % ipg
        let gd = try groupDescriptor(group)
        let bs = UInt64(sb.blockSize)
        let byteInTable = index * UInt64(sb.inodeSize)
        let block = gd.inodeTable + byteInTable / bs
        let bytes = try cachedBlock(block, what: "inode table block")
        let off = Int(byteInTable % bs)
        let raw = Array(bytes[off..<(off + sb.inodeSize)])
        let ino = try EXT4.Inode(number: n, raw: raw, sb: sb, warn: { self.warn($0) })
        if sb.hasMetadataCsum && !raw.allSatisfy({ $0 == 0 }) {
            let (computed, stored) = ino.checksums(seed: fsSeed)
            if computed != stored {
                warn("ext4: inode \(n) checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
            }
        }
        inodeCache.put(n, ino)
        return ino
    }

    /// Inode `n`, which must be in use.
    func liveInode(_ n: UInt64) throws -> EXT4.Inode {
        let ino = try inode(n)
        guard ino.mode != 0 else { throw WardenError.notFound("ext4: inode \(n) is not in use") }
        guard ino.fileType != nil else {
            throw EXT4.corrupt("inode \(n) has unknown file type in mode 0o\(String(ino.mode, radix: 8))")
        }
        if ino.fileType == .regular || ino.fileType == .directory {
            let maxSize = maxFileSize(ino)
            guard ino.size <= maxSize else {
                throw EXT4.corrupt("inode \(n) claims \(ino.size) bytes, more than its block map can address (\(maxSize))")
            }
        }
        return ino
    }

    /// The largest size the inode's mapping scheme can address.
    func maxFileSize(_ ino: EXT4.Inode) -> UInt64 {
        let bs = UInt64(sb.blockSize)
        if ino.has(EXT4.InodeFlags.inlineData) { return UInt64(ino.raw.count) + 60 }
        if ino.has(EXT4.InodeFlags.extents) { return (UInt64(1) << 32) * bs }
        let p = bs / 4
        return (12 + p + p * p + p * p * p) * bs
    }

    private func refuseEncrypted(_ ino: EXT4.Inode) throws {
        if ino.has(EXT4.InodeFlags.encrypt) {
            throw EXT4.unsupported("inode \(ino.number) is encrypted (fscrypt); its names and contents cannot be read")
        }
    }

    // MARK: FileSystem

    public func stat(_ n: UInt64) throws -> FileStat {
        let ino = try liveInode(n)
        guard let type = ino.fileType else { throw EXT4.corrupt("inode \(n) has no file type") }
        return FileStat(inode: n, type: type, mode: UInt32(ino.mode), uid: ino.uid, gid: ino.gid,
                        size: ino.size, links: UInt32(ino.links), mtime: ino.mtime)
    }

    public func readDirectory(_ n: UInt64) throws -> [DirectoryEntry] {
        let ino = try liveInode(n)
        guard ino.fileType == .directory else {
            throw WardenError(.invalidArgument, "ext4: inode \(n) is not a directory")
        }
        try refuseEncrypted(ino)
        var out: [DirectoryEntry] = []
        if ino.has(EXT4.InodeFlags.inlineData) {
            let iBlock = ino.iBlock
            let s = iBlock.startIndex
            try parseDirents(iBlock[(s + 4)..<(s + 60)], wholeBlock: false, dir: n, whereText: "inline data", into: &out)
            if let more = try EXT4.inodeXattr(ino, index: 7, name: Array("data".utf8)), !more.isEmpty {
                try parseDirents(more[...], wholeBlock: false, dir: n, whereText: "inline data xattr", into: &out)
            }
            return out
        }
        guard ino.size <= EXT4.Limits.maxDirectoryBytes else {
            throw EXT4.limit("directory inode \(n) is \(ino.size) bytes, larger than the \(EXT4.Limits.maxDirectoryBytes)-byte limit")
        }
        let bs = UInt64(sb.blockSize)
        let nblocks = (ino.size + bs - 1) / bs
        for run in try runs(ino, from: 0, to: nblocks) {
            guard let p = run.physical else { continue }
            for i in 0..<run.count {
                let block = try readBlock(p + i, what: "directory inode \(n) block")
                let logical = run.logical + i
                if sb.hasMetadataCsum { verifyDirBlock(block, inode: ino, logical: logical) }
                try parseDirents(block[...], wholeBlock: true, dir: n, whereText: "block \(logical)", into: &out)
            }
        }
        return out
    }

    public func read(_ n: UInt64, at offset: UInt64, count: Int) throws -> [UInt8] {
        guard count >= 0 else { throw WardenError(.invalidArgument, "ext4: negative read length \(count)") }
        let ino = try liveInode(n)
        guard ino.fileType == .regular else {
            throw WardenError(.invalidArgument, "ext4: inode \(n) is not a regular file")
        }
        try refuseEncrypted(ino)
        guard offset < ino.size, count > 0 else { return [] }
        let n64 = min(UInt64(count), ino.size - offset)
        guard n64 <= UInt64(EXT4.Limits.maxReadBytes) else {
            throw EXT4.limit("read of \(n64) bytes from inode \(n) exceeds the \(EXT4.Limits.maxReadBytes)-byte limit")
        }
        var out = [UInt8](repeating: 0, count: Int(n64))
        try out.withUnsafeMutableBytes { try readData(ino, offset: offset, into: $0) }
        return out
    }

    /// Streams a regular file with large device reads, one extent run at a time.
    public func forEachChunk(_ n: UInt64, chunkSize: Int, _ body: ([UInt8]) throws -> Void) throws {
        let ino = try liveInode(n)
        guard ino.fileType == .regular else {
            throw WardenError(.invalidArgument, "ext4: inode \(n) is not a regular file")
        }
        try refuseEncrypted(ino)
        let chunk = UInt64(max(4096, min(chunkSize, EXT4.Limits.maxReadBytes)))
        var buffer = [UInt8](repeating: 0, count: Int(min(chunk, ino.size)))
        var off: UInt64 = 0
        while off < ino.size {
            let len = min(chunk, ino.size - off)
            if len == UInt64(buffer.count) {
                try buffer.withUnsafeMutableBytes { try readData(ino, offset: off, into: $0) }
                try body(buffer)
            } else {
                var last = [UInt8](repeating: 0, count: Int(len))
                try last.withUnsafeMutableBytes { try readData(ino, offset: off, into: $0) }
                try body(last)
            }
            off += len
        }
    }

    public func readLink(_ n: UInt64) throws -> [UInt8] {
        let ino = try liveInode(n)
        guard ino.fileType == .symlink else {
            throw WardenError(.invalidArgument, "ext4: inode \(n) is not a symbolic link")
        }
        try refuseEncrypted(ino)
        guard ino.size <= EXT4.Limits.maxSymlinkBytes else {
            throw EXT4.corrupt("symlink inode \(n) claims a \(ino.size)-byte target")
        }
        let size = Int(ino.size)
        if ino.has(EXT4.InodeFlags.inlineData) {
            let data = try inlineData(ino)
            return Array(data.prefix(size))
        }
        // As e2fsprogs decides (ext2fs_is_fast_symlink): a target shorter than i_block lives in
        // it. i_blocks is no guide: the kernel charges a symlink's xattr inodes (ea_inode) and a
        // bigalloc cluster to it. A short target under the extents flag is slow only when
        // i_block really holds an extent header.
        let extentHeader = Array(ino.iBlock.prefix(2)) == [0x0A, 0xF3]
        let fast = size > 0 && size < 60 && !(ino.has(EXT4.InodeFlags.extents) && extentHeader)
        if fast {
            return Array(ino.iBlock.prefix(size))
        }
        var out = [UInt8](repeating: 0, count: size)
        try out.withUnsafeMutableBytes { try readData(ino, offset: 0, into: $0) }
        return out
    }

    // MARK: Data

    /// The whole inline content of an inline_data inode: i_block then `system.data`.
    func inlineData(_ ino: EXT4.Inode) throws -> [UInt8] {
        var data = Array(ino.iBlock)
        if let more = try EXT4.inodeXattr(ino, index: 7, name: Array("data".utf8)) { data += more }
        guard ino.size <= UInt64(data.count) else {
            throw EXT4.corrupt("inline inode \(ino.number) claims \(ino.size) bytes but holds \(data.count)")
        }
        return data
    }

    /// Fills `buf` with file bytes `offset ..< offset + buf.count` (which must lie within the file).
    func readData(_ ino: EXT4.Inode, offset: UInt64, into buf: UnsafeMutableRawBufferPointer) throws {
        let count = UInt64(buf.count)
        guard count > 0 else { return }
        let end = try Checked.add(offset, count, "ext4 read range")
        if ino.has(EXT4.InodeFlags.inlineData) {
            let data = try inlineData(ino)
            guard end <= UInt64(data.count) else {
                throw EXT4.corrupt("inline inode \(ino.number) read past its \(data.count) bytes")
            }
            data.withUnsafeBytes { src in
                buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[Int(offset)..<Int(end)]))
            }
            return
        }
        let bs = UInt64(sb.blockSize)
        let fromBlock = offset / bs
        let toBlock = (end - 1) / bs + 1
        for run in try runs(ino, from: fromBlock, to: toBlock) {
            // Runs never start past `end`, but their end may not be representable in bytes.
            let runStart = run.logical * bs
            let (runEndRaw, overflow) = (run.logical + run.count).multipliedReportingOverflow(by: bs)
            let runEnd = overflow ? UInt64.max : runEndRaw
            let lo = max(runStart, offset), hi = min(runEnd, end)
            guard lo < hi else { continue }
            let dst = UnsafeMutableRawBufferPointer(rebasing: buf[Int(lo - offset)..<Int(hi - offset)])
            if let p = run.physical {
                let (last, o) = p.addingReportingOverflow(run.count)
                guard !o, last <= sb.blocksCount else {
                    throw EXT4.corrupt("inode \(ino.number) block \(p) (+\(run.count)) lies beyond the end of the \(sb.blocksCount)-block volume")
                }
                let devOff = p * bs + (lo - runStart)
                try device.read(at: devOff, into: dst)
            } else {
                dst.initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
    }
}

extension EXT4Volume: FileDataMapping {
    public var dataDevice: any BlockDevice { device }

    public func dataRuns(_ n: UInt64) throws -> [FileDataRun]? {
        let ino = try liveInode(n)
        guard ino.fileType == .regular, !ino.has(EXT4.InodeFlags.inlineData), !ino.has(EXT4.InodeFlags.encrypt) else { return nil }
        let bs = UInt64(sb.blockSize)
        let blocks = ino.size / bs + (ino.size % bs == 0 ? 0 : 1)
        guard blocks > 0 else { return [] }
        var out: [FileDataRun] = []
        for run in try runs(ino, from: 0, to: blocks) {
            let (logical, o1) = run.logical.multipliedReportingOverflow(by: bs)
            let (length, o2) = run.count.multipliedReportingOverflow(by: bs)
            guard !o1, !o2 else { return nil }
            var physical: UInt64? = nil
            if let p = run.physical {
                let (b, o3) = p.multipliedReportingOverflow(by: bs)
                guard !o3 else { return nil }
                physical = b
            }
            out.append(FileDataRun(logical: logical, physical: physical, length: length))
        }
        return out
    }
}
