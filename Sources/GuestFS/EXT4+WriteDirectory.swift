import Foundation
import WardenCore
import DiskImage

// Directory entries (writer side).
//
//   linear leaf block (metadata_csum adds the 12-byte tail)
//   +---------+---------+-----+-----------------------------+------------------------+
//   | entry 0 | entry 1 | ... | last entry (rec_len reaches | tail: inode 0, rec_len |
//   |         |         |     | the tail or the block end)  | 12, type 0xDE, crc32c  |
//   +---------+---------+-----+-----------------------------+------------------------+
//   insert: the first entry with rec_len - used(entry) >= used(new) is split;
//   remove: the entry's rec_len is merged into the previous entry (first entry:
//   its inode becomes 0). htree directories are made linear before an insert
//   (see docs/decisions.md): index blocks become empty leaf blocks and the
//   index flag is cleared, which the kernel and e2fsck accept.

extension EXT4WritableVolume {
    /// Splits `path` into its parent directory inode (resolved, symlinks followed)
    /// and its last component (not followed).
    func parentAndName(_ path: String) throws -> (UInt64, [UInt8]) {
        let bytes = Array(path.utf8)
        var comps = bytes.split(separator: 0x2F, omittingEmptySubsequences: true).map(Array.init)
        guard let name = comps.popLast() else { throw WardenError(.invalidArgument, "ext4: \(path) names the root directory") }
        guard name != [0x2E], name != [0x2E, 0x2E] else { throw WardenError(.invalidArgument, "ext4: \(path) does not name a file") }
        guard name.count <= 255 else { throw WardenError(.invalidArgument, "ext4: a name in \(path) is longer than 255 bytes") }
        var parent: [UInt8] = [0x2F]
        for c in comps { parent += c + [0x2F] }
        let r = try GuestPathResolver(self).resolve(parent)
        guard r.stat.type == .directory else { throw WardenError.notFound("ext4: the parent of \(path) is not a directory") }
        return (r.inode, name)
    }

    struct DirBlock {
        var logical: UInt64
        var physical: UInt64
    }

    func directoryBlocks(_ dir: UInt64, _ raw: [UInt8]) throws -> [DirBlock] {
        let size = UInt64(Self.get32(raw, 0x04)) | UInt64(Self.get32(raw, 0x6C)) << 32
        guard size <= EXT4.Limits.maxDirectoryBytes else {
            throw EXT4.limit("directory inode \(dir) is \(size) bytes, larger than the \(EXT4.Limits.maxDirectoryBytes)-byte limit")
        }
        let nblocks = (size + bs64 - 1) / bs64
        let m = try mapping(dir, raw)
        var out: [DirBlock] = []
        for e in m.extents where !e.unwritten {
            for k in 0..<e.count where e.logical + k < nblocks { out.append(DirBlock(logical: e.logical + k, physical: e.physical + k)) }
        }
        return out.sorted { $0.logical < $1.logical }
    }

    /// Whether `blk` ends with a metadata_csum dirent tail.
    func hasTail(_ blk: [UInt8]) -> Bool {
        Self.get32(blk, bs - 12) == 0 && Self.get16(blk, bs - 8) == 12 && blk[bs - 6] == 0 && blk[bs - 5] == 0xDE
    }

    func setDirChecksum(_ blk: inout [UInt8], dir: UInt64, dirRaw: [UInt8]) {
        guard hasCsum, hasTail(blk) else { return }
        Self.put32(&blk, bs - 4, CRC32.castagnoli.update(inodeSeed(dir, dirRaw), blk[0..<(bs - 12)]))
    }

    struct Entry {
        var offset: Int
        var inode: UInt32
        var recLen: Int
        var nameLen: Int
        var name: [UInt8]
    }

    /// Parses the live part of a leaf block (before any tail); nil for blocks that are
    /// not plain leaves (htree index blocks without a tail under metadata_csum).
    func entries(_ blk: [UInt8], dir: UInt64) throws -> [Entry]? {
        let end = hasTail(blk) ? bs - 12 : bs
        if hasCsum && end == bs { return nil }
        let hasType = sb.hasIncompat(EXT4.Incompat.filetype)
        var out: [Entry] = []
        var off = 0
        while off < end {
            guard end - off >= 8 else { throw EXT4.corrupt("directory inode \(dir) has a truncated entry") }
            let ino = Self.get32(blk, off)
            let rec = Int(Self.get16(blk, off + 4))
            let nl = hasType ? Int(blk[off + 6]) : Int(Self.get16(blk, off + 6))
            guard rec >= 8, rec % 4 == 0, rec <= end - off, nl + 8 <= rec else {
                throw EXT4.corrupt("directory inode \(dir) has an entry at offset \(off) with rec_len \(rec); refusing to write")
            }
            out.append(Entry(offset: off, inode: ino, recLen: rec, nameLen: nl, name: Array(blk[(off + 8)..<(off + 8 + nl)])))
            off += rec
        }
        return out
    }

    func findEntry(dir: UInt64, name: [UInt8]) throws -> UInt64? {
        try reader.readDirectory(dir).first { $0.nameBytes == name }?.inode
    }

    func removeEntry(dir: UInt64, name: [UInt8]) throws {
        let dirRaw = try readInodeRaw(dir)
        for db in try directoryBlocks(dir, dirRaw) {
            var blk = try readBlock(db.physical)
            guard let list = try entries(blk, dir: dir) else { continue }
            for (i, e) in list.enumerated() where e.inode != 0 && e.name == name {
                if i > 0 {
                    let p = list[i - 1]
                    Self.put16(&blk, p.offset + 4, UInt16(p.recLen + e.recLen))
                } else {
                    Self.put32(&blk, e.offset, 0)
                }
                setDirChecksum(&blk, dir: dir, dirRaw: dirRaw)
                try writeBlock(db.physical, blk)
                var raw = dirRaw
                touch(&raw)
                try writeInodeRaw(dir, raw)
                return
            }
        }
        throw WardenError.notFound("ext4: directory inode \(dir) has no entry to remove")
    }

    func insertEntry(dir: UInt64, name: [UInt8], inode: UInt64, type: UInt8) throws {
        var dirRaw = try readInodeRaw(dir)
        if Self.get32(dirRaw, 0x20) & Self.indexFlag != 0 {
            try dropIndex(dir: dir, &dirRaw)
        }
        let need = (8 + name.count + 3) & ~3
        let hasType = sb.hasIncompat(EXT4.Incompat.filetype)
        func put(_ blk: inout [UInt8], at off: Int, recLen: Int) {
            Self.put32(&blk, off, UInt32(truncatingIfNeeded: inode))
            Self.put16(&blk, off + 4, UInt16(recLen))
            if hasType { blk[off + 6] = UInt8(name.count); blk[off + 7] = type } else { Self.put16(&blk, off + 6, UInt16(name.count)) }
            blk.replaceSubrange((off + 8)..<(off + 8 + name.count), with: name)
        }
        let blocks = try directoryBlocks(dir, dirRaw)
        for db in blocks {
            var blk = try readBlock(db.physical)
            guard let list = try entries(blk, dir: dir) else { continue }
            for e in list {
                let used = e.inode == 0 ? 0 : (8 + e.nameLen + 3) & ~3
                // The first entry of block 0 is "."; never reuse it even if its inode is 0.
                if db.logical == 0 && e.offset == 0 && e.inode == 0 { continue }
                guard e.recLen - used >= need else { continue }
                if used == 0 {
                    put(&blk, at: e.offset, recLen: e.recLen)
                } else {
                    Self.put16(&blk, e.offset + 4, UInt16(used))
                    put(&blk, at: e.offset + used, recLen: e.recLen - used)
                }
                setDirChecksum(&blk, dir: dir, dirRaw: dirRaw)
                try writeBlock(db.physical, blk)
                touch(&dirRaw)
                try writeInodeRaw(dir, dirRaw)
                return
            }
        }
        // No room: add a block to the directory.
        let size = UInt64(Self.get32(dirRaw, 0x04)) | UInt64(Self.get32(dirRaw, 0x6C)) << 32
        guard size % bs64 == 0 else { throw EXT4.corrupt("directory inode \(dir) size \(size) is not a multiple of the block size") }
        let logical = size / bs64
        let old = try mapping(dir, dirRaw)
        let goal = group(ofInode: dir)
        guard let run = try allocateBlocks(1, goal: goal).first else { throw WardenError(.internal, "ext4: allocation returned nothing") }
        var blk = [UInt8](repeating: 0, count: bs)
        let tail = hasCsum ? 12 : 0
        put(&blk, at: 0, recLen: bs - tail)
        if hasCsum {
            Self.put16(&blk, bs - 8, 12)
            blk[bs - 5] = 0xDE
            setDirChecksum(&blk, dir: dir, dirRaw: dirRaw)
        }
        try writeBlock(run.start, blk)
        var extents = old.extents
        if var last = extents.last, last.logical + last.count == logical, last.physical + last.count == run.start, !last.unwritten, last.count < 32768 {
            last.count += 1
            extents[extents.count - 1] = last
        } else {
            extents.append(EXT4.Extent(logical: logical, count: 1, physical: run.start, unwritten: false))
        }
        let meta = try writeMapping(dir, &dirRaw, extents: extents, goal: goal)
        setSize(&dirRaw, size + bs64)
        try setBlockCount(&dirRaw, blocks: extents.reduce(0) { $0 + $1.count } + UInt64(meta.count))
        touch(&dirRaw)
        try writeInodeRaw(dir, dirRaw)
        try freeBlockRuns(old.meta.map { ($0, 1) })
    }

    /// Turns an htree directory into a linear one: the root block keeps "." and ".."
    /// (".." spans the rest), index nodes become empty leaf blocks, and the index
    /// flag is cleared. Leaf blocks and their entries are unchanged.
    func dropIndex(dir: UInt64, _ dirRaw: inout [UInt8]) throws {
        let tail = hasCsum ? 12 : 0
        // The flag goes first: an interruption then leaves a linear directory whose
        // remaining index blocks read as empty entries.
        Self.put32(&dirRaw, 0x20, Self.get32(dirRaw, 0x20) & ~Self.indexFlag)
        try writeInodeRaw(dir, dirRaw)
        for db in try directoryBlocks(dir, dirRaw) {
            var blk = try readBlock(db.physical)
            let firstIno = Self.get32(blk, 0)
            let firstRec = Int(Self.get16(blk, 4))
            var rewrite = false
            if db.logical == 0 {
                // ".", then "..": keep their inodes, let ".." span to the tail.
                guard firstRec == 12, Self.get16(blk, 12 + 4) >= 12 else {
                    throw EXT4.corrupt("htree directory inode \(dir) has an unexpected root block")
                }
                let dotdot = Self.get32(blk, 12)
                var nb = [UInt8](repeating: 0, count: bs)
                nb.replaceSubrange(0..<12, with: blk[0..<12])
                Self.put32(&nb, 12, dotdot)
                Self.put16(&nb, 16, UInt16(bs - 12 - tail))
                nb[18] = 2
                nb[19] = sb.hasIncompat(EXT4.Incompat.filetype) ? 2 : 0
                nb[20] = 0x2E; nb[21] = 0x2E
                blk = nb
                rewrite = true
            } else if firstIno == 0 && firstRec == bs {
                var nb = [UInt8](repeating: 0, count: bs)
                Self.put16(&nb, 4, UInt16(bs - tail))
                blk = nb
                rewrite = true
            }
            if rewrite {
                if hasCsum {
                    Self.put32(&blk, bs - 12, 0)
                    Self.put16(&blk, bs - 8, 12)
                    blk[bs - 6] = 0
                    blk[bs - 5] = 0xDE
                }
                setDirChecksum(&blk, dir: dir, dirRaw: dirRaw)
                try writeBlock(db.physical, blk)
            }
        }
    }
}
