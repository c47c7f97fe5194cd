import WardenCore

extension EXT4 {
    /// The file type byte of a directory entry (filetype feature), low 4 bits.
    static func direntType(_ byte: UInt8) -> FileType? {
        FileType(direntCode: byte & 0x0F)
    }

    /// Finds the value of the in-inode extended attribute `index`/`name`
    /// (e.g. 7 / "data" for `system.data`), or nil when absent.
    static func inodeXattr(_ inode: Inode, index: UInt8, name: [UInt8]) throws -> [UInt8]? {
        let raw = inode.raw
        let start = inode.coreSize
        guard raw.count > 128, start + 4 <= raw.count else { return nil }
        let magic: UInt32 = try raw.le(start)
        guard magic == 0xEA02_0000 else { return nil }
        let first = start + 4
        var off = first
        // Each entry is at least 16 bytes, so this loop ends within raw.count / 16 steps.
        while off + 4 <= raw.count {
            let head: UInt32 = try raw.le(off)
            if head == 0 { break }
            guard off + 16 <= raw.count else {
                throw EXT4.corrupt("inode \(inode.number) in-inode xattr entry at offset \(off) is truncated")
            }
            let nameLen = Int(raw[off])
            let nameIndex = raw[off + 1]
            let valueOffs = Int(try raw.le(off + 2) as UInt16)
            let valueInum: UInt32 = try raw.le(off + 4)
            let valueSize: UInt32 = try raw.le(off + 8)
            let entryEnd = off + 16 + nameLen
            guard entryEnd <= raw.count else {
                throw EXT4.corrupt("inode \(inode.number) in-inode xattr name at offset \(off) runs past the inode")
            }
            if nameIndex == index && Array(raw[(off + 16)..<entryEnd]) == name {
                guard valueInum == 0 else {
                    throw EXT4.unsupported("inode \(inode.number) keeps xattr value in inode \(valueInum) (ea_inode), not supported here")
                }
                let vs = Int(valueSize)
                let vo = first + valueOffs
                guard vs <= raw.count, vo <= raw.count - vs else {
                    throw EXT4.corrupt("inode \(inode.number) in-inode xattr value (\(vs) bytes at \(valueOffs)) runs past the inode")
                }
                return Array(raw[vo..<(vo + vs)])
            }
            off = (entryEnd + 3) & ~3
        }
        return nil
    }
}

extension EXT4Volume {
    /// Parses one region of directory entries (a block, or a part of inline data).
    /// `whereText` names the region for messages.
    func parseDirents(_ region: ArraySlice<UInt8>, wholeBlock: Bool, dir: UInt64, whereText: String,
                      into out: inout [DirectoryEntry]) throws {
        let base = region.startIndex
        let length = region.count
        let hasType = sb.hasIncompat(EXT4.Incompat.filetype)
        var off = 0
        while off < length {
            guard length - off >= 8 else {
                throw EXT4.corrupt("directory inode \(dir) \(whereText) has a truncated entry at offset \(off)")
            }
            let ino = UInt64(try region.le(off) as UInt32)
            var recLen = Int(try region.le(off + 4) as UInt16)
            if wholeBlock && sb.blockSize == 65536 {
                recLen = (recLen == 65535 || recLen == 0) ? 65536 : (recLen & 65532) | ((recLen & 3) << 16)
            }
            let nameLen: Int
            if hasType {
                nameLen = Int(region[base + off + 6])
            } else {
                nameLen = Int(try region.le(off + 6) as UInt16)
            }
            guard recLen >= 8, recLen % 4 == 0, recLen <= length - off else {
                throw EXT4.corrupt("directory inode \(dir) \(whereText) has an entry at offset \(off) with rec_len \(recLen)")
            }
            guard nameLen + 8 <= recLen else {
                throw EXT4.corrupt("directory inode \(dir) \(whereText) entry at offset \(off) has name_len \(nameLen) beyond its rec_len \(recLen)")
            }
            if ino != 0 {
                let name = Array(region[(base + off + 8)..<(base + off + 8 + nameLen)])
                let isDot = name == [0x2E] || name == [0x2E, 0x2E]
                if !isDot {
                    guard nameLen > 0 else {
                        throw EXT4.corrupt("directory inode \(dir) \(whereText) has an empty name at offset \(off)")
                    }
                    guard ino <= UInt64(sb.inodesCount) else {
                        throw EXT4.corrupt("directory inode \(dir) entry at offset \(off) of \(whereText) points at inode \(ino), beyond the \(sb.inodesCount) inodes")
                    }
                    let type = hasType ? EXT4.direntType(region[base + off + 7]) : nil
                    out.append(DirectoryEntry(nameBytes: name, inode: ino, type: type))
                }
            }
            off += recLen
        }
    }

    /// Verifies the metadata_csum tail of a directory leaf block.
    func verifyDirBlock(_ block: [UInt8], inode: EXT4.Inode, logical: UInt64) {
        let bs = block.count
        guard bs >= 12 else { return }
        let tailIno = block.peekLE(bs - 12, as: UInt32.self) ?? 1
        let tailRec = block.peekLE(bs - 8, as: UInt16.self) ?? 0
        let isTail = tailIno == 0 && tailRec == 12 && block[bs - 6] == 0 && block[bs - 5] == 0xDE
        if isTail {
            let stored = block.peekLE(bs - 4, as: UInt32.self) ?? 0
            let computed = CRC32.castagnoli.update(inodeSeed(inode), block[0..<(bs - 12)])
            if stored != computed {
                warn("ext4: directory inode \(inode.number) block \(logical) checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
            }
        } else if !inode.has(EXT4.InodeFlags.indexDir) {
            warn("ext4: directory inode \(inode.number) block \(logical) has no checksum tail")
        } else {
            verifyDxBlock(block, inode: inode, logical: logical)
        }
    }

    /// Verifies the dx_tail checksum of an htree root or interior node block.
    private func verifyDxBlock(_ block: [UInt8], inode: EXT4.Inode, logical: UInt64) {
        let bs = block.count
        guard let firstRec = try? block.le(4) as UInt16 else { return }
        let countOffset: Int
        if logical == 0 {
            countOffset = 32  // ".", "..", dx_root_info
        } else if block.peekLE(0, as: UInt32.self) == 0 && (Int(firstRec) == bs || (bs == 65536 && (firstRec == 0 || firstRec == 65535))) {
            countOffset = 8  // fake empty dirent
        } else {
            warn("ext4: directory inode \(inode.number) block \(logical) has no checksum tail")
            return
        }
        guard let limit = try? block.le(countOffset) as UInt16, let count = try? block.le(countOffset + 2) as UInt16 else { return }
        let tail = countOffset + Int(limit) * 8
        guard count <= limit, tail + 8 <= bs else {
            warn("ext4: directory inode \(inode.number) htree block \(logical) has count \(count) / limit \(limit) that leave no room for its checksum")
            return
        }
        let crc = CRC32.castagnoli
        var c = crc.update(inodeSeed(inode), block[0..<(countOffset + Int(count) * 8)])
        c = crc.update(c, block[tail..<(tail + 4)])
        c = crc.update(c, [0, 0, 0, 0] as [UInt8])
        let stored = block.peekLE(tail + 4, as: UInt32.self) ?? 0
        if stored != c {
            warn("ext4: directory inode \(inode.number) htree block \(logical) checksum mismatch (stored \(hex(stored)), computed \(hex(c)))")
        }
    }
}
