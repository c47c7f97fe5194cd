import WardenCore

extension XFS {
    /// Data block magics: single-block directories ("XD2B"/"XDB3") and multi-block ones ("XD2D"/"XDD3").
    static let dirBlockMagicV4: UInt32 = 0x5844_3242
    static let dirDataMagicV4: UInt32 = 0x5844_3244
    static let dirBlockMagicV5: UInt32 = 0x5844_4233
    static let dirDataMagicV5: UInt32 = 0x5844_4433
    /// Directory data lives below this byte offset; leaf and free blocks above it.
    static let dirLeafOffset: UInt64 = 1 << 35
}

extension XFSVolume {
    /// Parses a shortform (inline) directory.
    func parseShortform(_ ino: XFS.Inode) throws -> [DirectoryEntry] {
        let n = ino.number
        guard ino.size <= UInt64(ino.dataFork.count) else {
            throw XFS.corrupt("shortform directory inode \(n) claims \(ino.size) bytes but its fork holds \(ino.dataFork.count)")
        }
        let d = ino.dataFork[0..<Int(ino.size)]
        let count: UInt8 = try d.xbe(0)
        let i8count: UInt8 = try d.xbe(1)
        let inoSize = i8count > 0 ? 8 : 4
        var pos = 2 + inoSize  // header: count, i8count, parent
        guard pos <= d.count else {
            throw XFS.corrupt("shortform directory inode \(n) is truncated (\(d.count) bytes)")
        }
        let entries = Int(count)
        var out: [DirectoryEntry] = []
        out.reserveCapacity(entries)
        for i in 0..<entries {
            let namelen = Int(try d.xbe(pos) as UInt8)
            guard namelen > 0 else {
                throw XFS.corrupt("shortform directory inode \(n) entry \(i) has an empty name")
            }
            let nameStart = pos + 3  // namelen, offset[2]
            let afterName = nameStart + namelen
            var typeByte: UInt8 = 0
            var inoPos = afterName
            if sb.hasFtype {
                typeByte = try d.xbe(afterName)
                inoPos += 1
            }
            let number: UInt64 = inoSize == 8 ? try d.xbe(inoPos) : UInt64(try d.xbe(inoPos) as UInt32)
            let next = inoPos + inoSize
            guard next <= d.count else {
                throw XFS.corrupt("shortform directory inode \(n) entry \(i) runs past its \(d.count) bytes")
            }
            let s = d.startIndex
            let name = Array(d[(s + nameStart)..<(s + afterName)])
            out.append(DirectoryEntry(nameBytes: name, inode: number, type: sb.hasFtype ? XFS.entryType(typeByte) : nil))
            pos = next
        }
        return out
    }

    /// Parses one directory data block (block- or data-format), appending its entries.
    func parseDataBlock(_ block: [UInt8], dir n: UInt64, dirBlock: UInt64, into out: inout [DirectoryEntry]) throws {
        let b = block[...]
        let magic: UInt32 = try b.xbe(0)
        let hdr: Int
        let isSingle: Bool
        switch magic {
        case XFS.dirBlockMagicV5 where sb.hasCRC: hdr = 64; isSingle = true
        case XFS.dirDataMagicV5 where sb.hasCRC: hdr = 64; isSingle = false
        case XFS.dirBlockMagicV4 where !sb.hasCRC: hdr = 16; isSingle = true
        case XFS.dirDataMagicV4 where !sb.hasCRC: hdr = 16; isSingle = false
        default:
            throw XFS.corrupt("directory inode \(n) block \(dirBlock) has bad magic \(hex(magic))")
        }
        if sb.hasCRC {
            let (stored, computed) = XFS.crc(b, crcOffset: 4)
            if stored != computed {
                warn("xfs: directory inode \(n) block \(dirBlock) checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
            }
            let owner: UInt64 = try b.xbe(40)
            if owner != n {
                throw XFS.corrupt("directory block \(dirBlock) of inode \(n) belongs to inode \(owner)")
            }
        }
        var end = b.count
        if isSingle {
            // Tail: leaf count, stale count; the leaf array sits just before it.
            let leafCount: UInt32 = try b.xbe(b.count - 8)
            let leafBytes = UInt64(leafCount) * 8 + 8
            guard leafBytes <= UInt64(b.count - hdr) else {
                throw XFS.corrupt("directory inode \(n) block \(dirBlock) claims \(leafCount) leaf entries in \(b.count) bytes")
            }
            end = b.count - Int(leafBytes)
        }
        let extra = sb.hasFtype ? 1 : 0
        var pos = hdr
        while pos < end {
            guard end - pos >= 8 else {
                throw XFS.corrupt("directory inode \(n) block \(dirBlock) has a \(end - pos)-byte fragment at offset \(pos)")
            }
            let freeTag: UInt16 = try b.xbe(pos)
            if freeTag == 0xFFFF {
                let len = Int(try b.xbe(pos + 2) as UInt16)
                guard len >= 8, len % 8 == 0, len <= end - pos else {
                    throw XFS.corrupt("directory inode \(n) block \(dirBlock) has a free region of \(len) bytes at offset \(pos)")
                }
                pos += len
                continue
            }
            let number: UInt64 = try b.xbe(pos)
            let namelen = Int(try b.xbe(pos + 8) as UInt8)
            let entSize = (8 + 1 + namelen + extra + 2 + 7) & ~7
            guard namelen > 0, entSize <= end - pos else {
                throw XFS.corrupt("directory inode \(n) block \(dirBlock) has an entry with name length \(namelen) at offset \(pos) running past \(end)")
            }
            let tag: UInt16 = try b.xbe(pos + entSize - 2)
            guard Int(tag) == pos else {
                throw XFS.corrupt("directory inode \(n) block \(dirBlock) entry at offset \(pos) has tag \(tag)")
            }
            let s = b.startIndex + pos + 9
            let name = Array(b[s..<(s + namelen)])
            let isDot = (namelen == 1 && name[0] == 0x2E) || (namelen == 2 && name[0] == 0x2E && name[1] == 0x2E)
            if !isDot {
                guard out.count < XFS.Limits.maxDirectoryEntries else {
                    throw XFS.limit("directory inode \(n) has more than \(XFS.Limits.maxDirectoryEntries) entries")
                }
                let type: FileType? = extra == 1 ? XFS.entryType(b[s + namelen]) : nil
                out.append(DirectoryEntry(nameBytes: name, inode: number, type: type))
            }
            pos += entSize
        }
    }

    /// Lists a block/leaf/node/btree directory by walking its data blocks.
    func readDirectoryBlocks(_ ino: XFS.Inode) throws -> [DirectoryEntry] {
        let n = ino.number
        let extents = try extents(ino)
        let bs = UInt64(sb.blockSize)
        let per = UInt64(1) << UInt64(sb.dirBlockLog)  // fs blocks per directory block
        let leafBlock = XFS.dirLeafOffset / bs
        let maxDataBlocks = XFS.Limits.maxDirectoryBytes / bs
        var out: [DirectoryEntry] = []
        var dataBlocks: UInt64 = 0
        var next: UInt64 = 0  // first directory-block-aligned file block not yet read
        for e in extents {
            guard e.logical < leafBlock else { break }
            let stop = min(e.end, leafBlock)
            var db = max(next, e.logical & ~(per - 1))
            while db < stop {
                dataBlocks += per
                guard dataBlocks <= maxDataBlocks else {
                    throw XFS.limit("directory inode \(n) has more than \(XFS.Limits.maxDirectoryBytes) bytes of data blocks")
                }
                var block = [UInt8](repeating: 0, count: sb.dirBlockSize)
                try block.withUnsafeMutableBytes {
                    try readMapped(ino, extents, offset: db * bs, into: $0)
                }
                if e.unwritten || block.allSatisfy({ $0 == 0 }) {
                    warn("xfs: directory inode \(n) block \(db) is unwritten or empty")
                } else {
                    try parseDataBlock(block, dir: n, dirBlock: db, into: &out)
                }
                db += per
            }
            next = db
        }
        return out
    }
}
