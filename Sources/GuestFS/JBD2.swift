import WardenCore
import DiskImage

// The ext3/ext4 journal (jbd2), replayed in memory: what e2fsck or the kernel would write
// when recovering, computed without writing anything.
//
//   journal (the blocks of inode s_journal_inum, in logical order; fields big-endian)
//   block 0: superblock: header (magic C03B3998, type 3/4, sequence), block size, maxlen,
//            first log block, s_sequence (first transaction to recover), s_start (first log
//            block to recover; 0 = nothing to recover), features, uuid, fast-commit blocks,
//            checksum (crc32c, v2/v3)
//   log:     circular in [s_first, maxlen - fast-commit blocks), a transaction is
//              descriptor block: header (type 1, sequence) + tags, one per following data
//                block: target block (32 or 64 bit), flags (escape, same-uuid, last tag),
//                checksum of the data (csum v2: 16 bit, v3: 32 bit)
//              data blocks (an escaped one had the journal magic in its first 4 bytes)
//              revoke block: header (type 5) + count + block numbers no earlier
//                transaction may write
//              commit block: header (type 2, sequence) + checksum
//
//   Recovery: walk from s_start while headers carry the magic and the expected sequence;
//   a transaction counts only with its commit block (and valid checksums); then every
//   committed transaction's blocks are written in order, except blocks revoked by the same
//   or a later transaction.

/// jbd2 journal replay for ``EXT4Volume``.
public enum JBD2 {
    static let magic: UInt32 = 0xC03B_3998
    enum Kind: UInt32 { case descriptor = 1, commit = 2, superV1 = 3, superV2 = 4, revoke = 5 }
    enum Incompat {
        static let revoke: UInt32 = 0x1, bit64: UInt32 = 0x2, asyncCommit: UInt32 = 0x4
        static let csumV2: UInt32 = 0x8, csumV3: UInt32 = 0x10, fastCommit: UInt32 = 0x20
        static let known: UInt32 = 0x3F
    }
    enum TagFlag { static let escape: UInt32 = 1, sameUUID: UInt32 = 2, lastTag: UInt32 = 8 }
    /// The most journal blocks accepted (4 Mi: 16 GiB of 4 KiB blocks).
    static let maxJournalBlocks: UInt64 = 1 << 22
    /// The most journalled blocks (tags) one replay keeps track of.
    static let maxTags = 1 << 20

    /// What a replay did, for the volume's report.
    public struct Summary: Sendable, Equatable, Codable {
        /// Committed transactions recovered.
        public var transactions: Int
        /// Filesystem blocks given their journalled content.
        public var blocks: Int
        /// Journalled blocks left out because a revoke record covered them.
        public var revoked: Int
        /// Journalled blocks left out because their checksum did not match.
        public var badChecksums: Int
        /// A transaction at the end of the log without a (valid) commit block: not applied.
        public var incompleteTransaction: Bool
        /// The journal has fast-commit blocks, which are not replayed.
        public var fastCommit: Bool
    }

    /// Where a replayed block's content is: a journal block on the same device.
    struct Source: Equatable { var offset: UInt64; var escaped: Bool }

    /// The blocks a recovery of `volume`'s journal would write, or nil when there is nothing
    /// to recover. Throws when the journal cannot be read or is not one this reader knows.
    static func replay(_ volume: EXT4Volume) throws -> (blocks: [UInt64: Source], summary: Summary)? {
        let sb = volume.sb
        let bs = UInt64(sb.blockSize)
        let r = ByteReader(sb.raw, context: "ext4 superblock")
        let inum = UInt64(try r.le(at: 0xE0, UInt32.self))
        guard inum != 0 else { throw EXT4.unsupported("the journal is on an external device; it cannot be replayed") }
        let inode = try volume.inode(inum)
        let runs = try volume.runs(inode, from: 0, to: min(maxJournalBlocks, max(1, inode.size / bs)))
        func physical(_ logical: UInt64) throws -> UInt64 {
            var lo = 0, hi = runs.count - 1
            while lo <= hi {
                let mid = (lo + hi) / 2, run = runs[mid]
                if logical < run.logical { hi = mid - 1 } else if logical >= run.logical + run.count { lo = mid + 1 } else {
                    guard let p = run.physical else { break }
                    let block = p + (logical - run.logical)
                    guard block < sb.blocksCount else { break }
                    return block
                }
            }
            throw EXT4.corrupt("journal block \(logical) is not mapped to a block of the volume")
        }
        func block(_ logical: UInt64) throws -> [UInt8] { try volume.readBlock(try physical(logical), what: "journal block") }

        let js = try block(0)
        let j = ByteReader(js, context: "journal superblock")
        guard try j.be(at: 0, UInt32.self) == magic else { throw EXT4.corrupt("the journal superblock has no jbd2 magic") }
        let version = try j.be(at: 4, UInt32.self)
        guard version == Kind.superV1.rawValue || version == Kind.superV2.rawValue else {
            throw EXT4.corrupt("the journal superblock has block type \(version)")
        }
        guard UInt64(try j.be(at: 0xC, UInt32.self)) == bs else { throw EXT4.unsupported("the journal's block size differs from the filesystem's") }
        let maxlen = UInt64(try j.be(at: 0x10, UInt32.self))
        let first = UInt64(try j.be(at: 0x14, UInt32.self))
        var sequence = try j.be(at: 0x18, UInt32.self)
        let start = UInt64(try j.be(at: 0x1C, UInt32.self))
        if start == 0 { return nil }
        let incompat = version == Kind.superV2.rawValue ? try j.be(at: 0x28, UInt32.self) : 0
        guard incompat & ~Incompat.known == 0 else { throw EXT4.unsupported("the journal has unknown features \(hex(incompat & ~Incompat.known))") }
        let csum3 = incompat & Incompat.csumV3 != 0, csum2 = incompat & Incompat.csumV2 != 0, checksums = csum2 || csum3
        let bit64 = incompat & Incompat.bit64 != 0
        let fastCommit = incompat & Incompat.fastCommit != 0
        let seed = CRC32.castagnoli.update(0xFFFF_FFFF, js[0x30..<0x40])
        if checksums {
            var copy = js
            for k in 0xFC..<0x100 { copy[k] = 0 }
            guard CRC32.castagnoli.update(0xFFFF_FFFF, copy[0..<1024]) == (try j.be(at: 0xFC, UInt32.self)) else {
                throw EXT4.corrupt("the journal superblock checksum does not match")
            }
        }
        var last = maxlen
        if fastCommit {
            let fc = UInt64(try j.be(at: 0x54, UInt32.self))
            last = maxlen - min(maxlen, fc == 0 ? 256 : fc)
        }
        guard maxlen <= maxJournalBlocks, first >= 1, first < last, start >= first, start < last, UInt64(runs.reduce(0) { $0 + $1.count }) >= maxlen else {
            throw EXT4.corrupt("the journal superblock's geometry (first \(first), start \(start), length \(maxlen)) is impossible")
        }
        /// Whether `b`'s checksum, stored at `at` (zeroed while computing), matches.
        func checksumOK(_ b: [UInt8], at: Int) -> Bool {
            guard let stored: UInt32 = try? ByteReader.be(b, at: at) else { return false }
            var copy = b
            for k in at..<at + 4 { copy[k] = 0 }
            return CRC32.castagnoli.update(seed, copy) == stored
        }
        func next(_ p: UInt64) -> UInt64 { p + 1 >= last ? first : p + 1 }
        let tagSize = csum3 ? 16 : 8 + (csum2 ? 2 : 0) + (bit64 ? 4 : 0)
        let tail = checksums ? 4 : 0

        // The walk: committed transactions, in order.
        struct Tag { var target: UInt64; var logBlock: UInt64; var escaped: Bool; var checksum: UInt32 }
        struct Transaction { var sequence: UInt32; var tags: [Tag] = []; var revoked: [UInt64] = [] }
        var done: [Transaction] = []
        var current = Transaction(sequence: sequence)
        var pos = start
        var steps: UInt64 = 0
        var incomplete = false
        var tagCount = 0
        walk: while steps < maxlen {
            let b = try block(pos)
            let h = ByteReader(b, context: "journal block")
            guard try h.be(at: 0, UInt32.self) == magic, try h.be(at: 8, UInt32.self) == sequence,
                  let kind = Kind(rawValue: try h.be(at: 4, UInt32.self)) else { break }
            switch kind {
            case .descriptor:
                if checksums && !checksumOK(b, at: b.count - 4) { break walk }
                var off = 12
                var p = pos
                while off + tagSize <= b.count - tail {
                    let low = UInt64(try h.be(at: off, UInt32.self))
                    let flags: UInt32, high: UInt64, sum: UInt32
                    if csum3 {
                        flags = try h.be(at: off + 4, UInt32.self); high = UInt64(try h.be(at: off + 8, UInt32.self)); sum = try h.be(at: off + 12, UInt32.self)
                    } else {
                        sum = UInt32(try h.be(at: off + 4, UInt16.self)); flags = UInt32(try h.be(at: off + 6, UInt16.self))
                        high = bit64 ? UInt64(try h.be(at: off + 8, UInt32.self)) : 0
                    }
                    off += tagSize
                    if flags & TagFlag.sameUUID == 0 { off += 16 }
                    p = next(p); steps += 1
                    tagCount += 1
                    guard tagCount <= maxTags else { throw WardenError.limit("the journal holds more than \(maxTags) blocks to replay") }
                    current.tags.append(Tag(target: bit64 ? high << 32 | low : low, logBlock: p, escaped: flags & TagFlag.escape != 0, checksum: sum))
                    if flags & TagFlag.lastTag != 0 { break }
                }
                pos = p
            case .revoke:
                if checksums && !checksumOK(b, at: b.count - 4) { break walk }
                let count = Int(try h.be(at: 12, UInt32.self))
                let width = bit64 ? 8 : 4
                guard count >= 16, count <= b.count - tail else { break walk }
                var off = 16
                while off + width <= count {
                    current.revoked.append(bit64 ? try h.be(at: off, UInt64.self) : UInt64(try h.be(at: off, UInt32.self)))
                    off += width
                }
            case .commit:
                if checksums && !checksumOK(b, at: 16) { break walk }
                done.append(current)
                sequence &+= 1
                current = Transaction(sequence: sequence)
            case .superV1, .superV2:
                break walk
            }
            pos = next(pos); steps += 1
        }
        incomplete = !current.tags.isEmpty || !current.revoked.isEmpty

        // Revokes: the latest transaction revoking each block.
        func later(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) > 0 }
        var revokedBy: [UInt64: UInt32] = [:]
        for t in done { for b in t.revoked { if let s = revokedBy[b], !later(t.sequence, s) { continue }; revokedBy[b] = t.sequence } }
        var out: [UInt64: Source] = [:]
        var summary = Summary(transactions: done.count, blocks: 0, revoked: 0, badChecksums: 0, incompleteTransaction: incomplete, fastCommit: fastCommit)
        for t in done {
            var seqBE = t.sequence.bigEndian
            let seqSeed = withUnsafeBytes(of: &seqBE) { CRC32.castagnoli.update(seed, Array($0)) }
            for tag in t.tags {
                if let s = revokedBy[tag.target], !later(t.sequence, s) { summary.revoked += 1; continue }
                guard tag.target < sb.blocksCount else { summary.badChecksums += 1; continue }
                let at = try physical(tag.logBlock)
                if checksums {
                    let data = try volume.readBlock(at, what: "journal data block")
                    let c = CRC32.castagnoli.update(seqSeed, data)
                    guard csum3 ? c == tag.checksum : UInt32(c & 0xFFFF) == tag.checksum else { summary.badChecksums += 1; continue }
                }
                out[tag.target] = Source(offset: at * bs, escaped: tag.escaped)
            }
        }
        summary.blocks = out.count
        return (out, summary)
    }

    /// A device reading replayed blocks from their journal copies, the rest from `base`.
    final class ReplayedDevice: BlockDevice, @unchecked Sendable {
        let base: any BlockDevice
        let blockSize: UInt64
        let blocks: [UInt64: Source]
        var size: UInt64 { base.size }

        init(base: any BlockDevice, blockSize: Int, blocks: [UInt64: Source]) {
            self.base = base; self.blockSize = UInt64(blockSize); self.blocks = blocks
        }

        func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
            try checkRange(offset, buffer.count)
            var done = 0
            while done < buffer.count {
                let pos = offset + UInt64(done)
                let n = Int(min(UInt64(buffer.count - done), blockSize - pos % blockSize))
                let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n])
                if let s = blocks[pos / blockSize] {
                    let within = pos % blockSize
                    try base.read(at: s.offset + within, into: dst)
                    // An escaped block began with the journal magic, which the journal replaced by zeros.
                    if s.escaped && within < 4 {
                        let magic: [UInt8] = [0xC0, 0x3B, 0x39, 0x98]
                        for k in Int(within)..<min(4, Int(within) + n) { dst[k - Int(within)] = magic[k] }
                    }
                } else {
                    try base.read(at: pos, into: dst)
                }
                done += n
            }
        }

        func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
            // Replayed blocks are data wherever they land.
            let base = try self.base.mapping(at: offset, length: length)
            if blocks.isEmpty { return base }
            var out: [BlockExtent] = []
            for e in base {
                if e.kind == .data { out.appendMerging(e); continue }
                var pos = e.offset
                let end = e.offset + e.length
                while pos < end {
                    let n = min(end - pos, blockSize - pos % blockSize)
                    out.appendMerging(BlockExtent(offset: pos, length: n, kind: blocks[pos / blockSize] != nil ? .data : .zero))
                    pos += n
                }
            }
            return out
        }
    }
}
