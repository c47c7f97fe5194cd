import Foundation
import WardenCore
import DiskImage

extension EXT4WritableVolume {
    // MARK: FileSystem (reads go through a fresh reader)

    public func stat(_ inode: UInt64) throws -> FileStat { try reader.stat(inode) }
    public func readDirectory(_ inode: UInt64) throws -> [DirectoryEntry] { try reader.readDirectory(inode) }
    public func read(_ inode: UInt64, at offset: UInt64, count: Int) throws -> [UInt8] {
        try reader.read(inode, at: offset, count: count)
    }
    public func readLink(_ inode: UInt64) throws -> [UInt8] { try reader.readLink(inode) }
    public func forEachChunk(_ inode: UInt64, chunkSize: Int, _ body: ([UInt8]) throws -> Void) throws {
        try reader.forEachChunk(inode, chunkSize: chunkSize, body)
    }

    // MARK: Block mapping of one inode

    /// A file's blocks: data extents (logical order) and the tree/indirect blocks.
    struct Mapping {
        var extents: [EXT4.Extent] = []
        var meta: [UInt64] = []
        var dataBlocks: UInt64 { extents.reduce(0) { $0 + $1.count } }
    }

    static let extentsFlag: UInt32 = 0x80000
    static let indexFlag: UInt32 = 0x1000
    /// Flags that make an inode unsafe to rewrite here: compressed, encrypted,
    /// ea_inode, inline data, verity, DAX, casefold... (refused, named by number).
    static let refusedInodeFlags: UInt32 = 0x4 | 0x200 | 0x800 | 0x200000 | 0x1000_0000 | 0x100000 | 0x2000000 | 0x4000_0000

    func mapping(_ n: UInt64, _ raw: [UInt8]) throws -> Mapping {
        let flags = Self.get32(raw, 0x20)
        var m = Mapping()
        if flags & Self.extentsFlag != 0 {
            var visited = Set<UInt64>()
            try walkExtents(Array(raw[0x28..<0x64]), depth: nil, inode: n, into: &m, visited: &visited)
            var end: UInt64 = 0
            for e in m.extents {
                guard e.logical >= end else { throw EXT4.corrupt("inode \(n) has overlapping extents") }
                end = e.logical + e.count
            }
        } else {
            try walkIndirect(raw, inode: n, into: &m)
        }
        let total = m.dataBlocks + UInt64(m.meta.count)
        guard total <= Self.maxFileBlocks else {
            throw EXT4.limit("inode \(n) uses \(total) blocks, more than the \(Self.maxFileBlocks) this writer handles")
        }
        return m
    }

    func checkBlock(_ b: UInt64, _ n: UInt64) throws -> UInt64 {
        guard b > UInt64(sb.firstDataBlock) || (sb.firstDataBlock == 0 && b > 0), b < sb.blocksCount else {
            throw EXT4.corrupt("inode \(n) points at block \(b), outside the filesystem")
        }
        return b
    }

    private func walkExtents(_ node: [UInt8], depth: Int?, inode n: UInt64, into m: inout Mapping, visited: inout Set<UInt64>) throws {
        guard node.count >= 12, Self.get16(node, 0) == EXT4.extentMagic else {
            throw EXT4.corrupt("inode \(n) extent node has a bad header")
        }
        let entries = Int(Self.get16(node, 2)), maxE = Int(Self.get16(node, 4)), d = Int(Self.get16(node, 6))
        guard entries <= maxE, maxE <= (node.count - 12) / 12, d <= EXT4.Limits.maxExtentDepth else {
            throw EXT4.corrupt("inode \(n) extent node is inconsistent (\(entries)/\(maxE) entries, depth \(d))")
        }
        if let depth, depth != d { throw EXT4.corrupt("inode \(n) extent node has depth \(d), expected \(depth)") }
        for i in 0..<entries {
            let o = 12 + 12 * i
            if d == 0 {
                var len = UInt64(Self.get16(node, o + 4))
                let unwritten = len > 32768
                if unwritten { len -= 32768 }
                if len == 0 { continue }
                let phys = UInt64(Self.get16(node, o + 6)) << 32 | UInt64(Self.get32(node, o + 8))
                _ = try checkBlock(phys, n)
                _ = try checkBlock(phys + len - 1, n)
                guard m.extents.count < 1 << 20 else { throw EXT4.limit("inode \(n) has too many extents") }
                m.extents.append(EXT4.Extent(logical: UInt64(Self.get32(node, o)), count: len, physical: phys, unwritten: unwritten))
            } else {
                let child = try checkBlock(UInt64(Self.get16(node, o + 8)) << 32 | UInt64(Self.get32(node, o + 4)), n)
                guard visited.insert(child).inserted else { throw EXT4.corrupt("inode \(n) extent tree has a loop") }
                m.meta.append(child)
                try walkExtents(try readBlock(child), depth: d - 1, inode: n, into: &m, visited: &visited)
            }
        }
    }

    private func walkIndirect(_ raw: [UInt8], inode n: UInt64, into m: inout Mapping) throws {
        let per = UInt64(bs / 4)
        func add(_ logical: UInt64, _ p: UInt64) throws {
            _ = try checkBlock(p, n)
            if var last = m.extents.last, last.logical + last.count == logical, last.physical + last.count == p, last.count < 32768 {
                last.count += 1
                m.extents[m.extents.count - 1] = last
            } else {
                m.extents.append(EXT4.Extent(logical: logical, count: 1, physical: p, unwritten: false))
            }
            guard m.extents.count + m.meta.count <= Int(Self.maxFileBlocks) else {
                throw EXT4.limit("inode \(n) has more blocks than this writer handles")
            }
        }
        var seen = Set<UInt64>()
        func walk(_ block: UInt64, level: Int, base: UInt64) throws {
            guard seen.insert(block).inserted else { throw EXT4.corrupt("inode \(n) block map uses block \(block) twice") }
            m.meta.append(try checkBlock(block, n))
            let b = try readBlock(block)
            var span: UInt64 = 1
            for _ in 1..<level { span *= per }
            for i in 0..<per {
                let p = UInt64(Self.get32(b, Int(i) * 4))
                if p == 0 { continue }
                if level == 1 { try add(base + i, p) } else { try walk(p, level: level - 1, base: base + i * span) }
            }
        }
        for i in 0..<12 {
            let p = UInt64(Self.get32(raw, 0x28 + 4 * i))
            if p != 0 { try add(UInt64(i), p) }
        }
        var base: UInt64 = 12
        var span = per
        for level in 1...3 {
            let p = UInt64(Self.get32(raw, 0x28 + 4 * (11 + level)))
            if p != 0 { try walk(p, level: level, base: base) }
            base += span
            span *= per
        }
    }

    /// Writes a mapping for `extents` into `raw` (i_block, flags), allocating tree or
    /// indirect blocks near `goal`. Returns the metadata blocks it allocated.
    func writeMapping(_ n: UInt64, _ raw: inout [UInt8], extents: [EXT4.Extent], goal: UInt64) throws -> [UInt64] {
        let flags = Self.get32(raw, 0x20)
        if flags & Self.extentsFlag != 0 {
            return try writeExtentTree(n, &raw, extents: extents, goal: goal)
        }
        return try writeBlockMap(n, &raw, extents: extents, goal: goal)
    }

    private func extentEntry(_ e: EXT4.Extent) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 12)
        Self.put32(&b, 0, UInt32(truncatingIfNeeded: e.logical))
        Self.put16(&b, 4, UInt16(truncatingIfNeeded: e.count + (e.unwritten ? 32768 : 0)))
        Self.put16(&b, 6, UInt16(truncatingIfNeeded: e.physical >> 32))
        Self.put32(&b, 8, UInt32(truncatingIfNeeded: e.physical))
        return b
    }

    func extentHeader(entries: Int, max: Int, depth: Int) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 12)
        Self.put16(&h, 0, EXT4.extentMagic)
        Self.put16(&h, 2, UInt16(entries))
        Self.put16(&h, 4, UInt16(max))
        Self.put16(&h, 6, UInt16(depth))
        return h
    }

    private func writeExtentTree(_ n: UInt64, _ raw: inout [UInt8], extents input: [EXT4.Extent], goal: UInt64) throws -> [UInt64] {
        // Split extents longer than the on-disk maximum (32768 initialised, 32767 unwritten).
        var extents: [EXT4.Extent] = []
        for e in input {
            var e = e
            let maxLen: UInt64 = e.unwritten ? 32767 : 32768
            while e.count > maxLen {
                extents.append(EXT4.Extent(logical: e.logical, count: maxLen, physical: e.physical, unwritten: e.unwritten))
                e.logical += maxLen; e.physical += maxLen; e.count -= maxLen
            }
            extents.append(e)
        }
        var root = [UInt8](repeating: 0, count: 60)
        var meta: [UInt64] = []
        if extents.count <= 4 {
            root.replaceSubrange(0..<12, with: extentHeader(entries: extents.count, max: 4, depth: 0))
            for (i, e) in extents.enumerated() { root.replaceSubrange((12 + 12 * i)..<(24 + 12 * i), with: extentEntry(e)) }
        } else {
            let perLeaf = (bs - 12) / 12
            let leaves = (extents.count + perLeaf - 1) / perLeaf
            guard leaves <= 4 else {
                throw EXT4.limit("a file of \(extents.count) extents needs an extent tree deeper than 1 level, which this writer does not build")
            }
            let runs = try allocateBlocks(UInt64(leaves), goal: goal)
            for r in runs { for k in 0..<r.count { meta.append(r.start + k) } }
            root.replaceSubrange(0..<12, with: extentHeader(entries: leaves, max: 4, depth: 1))
            let seed = inodeSeed(n, raw)
            for l in 0..<leaves {
                let slice = Array(extents[(l * perLeaf)..<min(extents.count, (l + 1) * perLeaf)])
                var blk = [UInt8](repeating: 0, count: bs)
                blk.replaceSubrange(0..<12, with: extentHeader(entries: slice.count, max: perLeaf, depth: 0))
                for (i, e) in slice.enumerated() { blk.replaceSubrange((12 + 12 * i)..<(24 + 12 * i), with: extentEntry(e)) }
                if hasCsum {
                    let tail = 12 + 12 * perLeaf
                    Self.put32(&blk, tail, CRC32.castagnoli.update(seed, blk[0..<tail]))
                }
                try writeBlock(meta[l], blk)
                var idx = [UInt8](repeating: 0, count: 12)
                Self.put32(&idx, 0, UInt32(truncatingIfNeeded: slice[0].logical))
                Self.put32(&idx, 4, UInt32(truncatingIfNeeded: meta[l]))
                Self.put16(&idx, 8, UInt16(truncatingIfNeeded: meta[l] >> 32))
                root.replaceSubrange((12 + 12 * l)..<(24 + 12 * l), with: idx)
            }
        }
        raw.replaceSubrange(0x28..<0x64, with: root)
        return meta
    }

    private func writeBlockMap(_ n: UInt64, _ raw: inout [UInt8], extents: [EXT4.Extent], goal: UInt64) throws -> [UInt64] {
        let per = UInt64(bs / 4)
        var map: [UInt64: UInt64] = [:]
        var last: UInt64 = 0
        for e in extents {
            guard !e.unwritten else { throw EXT4.corrupt("inode \(n): unwritten extent in a block-mapped file") }
            for k in 0..<e.count { map[e.logical + k] = e.physical + k }
            last = max(last, e.logical + e.count)
        }
        guard last <= 12 + per + per * per else {
            throw EXT4.limit("a block-mapped file of \(last) blocks needs a triple-indirect block, which this writer does not build")
        }
        var iblock = [UInt8](repeating: 0, count: 60)
        for l in 0..<min(last, 12) { if let p = map[l] { Self.put32(&iblock, Int(l) * 4, UInt32(truncatingIfNeeded: p)) } }
        // Which indirect blocks are needed.
        var needSingle = false
        var dindChildren = Set<UInt64>()
        for l in map.keys where l >= 12 {
            if l < 12 + per { needSingle = true } else { dindChildren.insert((l - 12 - per) / per) }
        }
        let count = (needSingle ? 1 : 0) + (dindChildren.isEmpty ? 0 : 1 + dindChildren.count)
        var meta: [UInt64] = []
        if count > 0 {
            for r in try allocateBlocks(UInt64(count), goal: goal) { for k in 0..<r.count { meta.append(r.start + k) } }
        }
        var next = 0
        if needSingle {
            let b = meta[next]; next += 1
            var blk = [UInt8](repeating: 0, count: bs)
            for i in 0..<per { if let p = map[12 + i] { Self.put32(&blk, Int(i) * 4, UInt32(truncatingIfNeeded: p)) } }
            try writeBlock(b, blk)
            Self.put32(&iblock, 48, UInt32(truncatingIfNeeded: b))
        }
        if !dindChildren.isEmpty {
            let top = meta[next]; next += 1
            var topBlk = [UInt8](repeating: 0, count: bs)
            for c in dindChildren.sorted() {
                let b = meta[next]; next += 1
                var blk = [UInt8](repeating: 0, count: bs)
                for i in 0..<per { if let p = map[12 + per + c * per + i] { Self.put32(&blk, Int(i) * 4, UInt32(truncatingIfNeeded: p)) } }
                try writeBlock(b, blk)
                Self.put32(&topBlk, Int(c) * 4, UInt32(truncatingIfNeeded: b))
            }
            try writeBlock(top, topBlk)
            Self.put32(&iblock, 52, UInt32(truncatingIfNeeded: top))
        }
        raw.replaceSubrange(0x28..<0x64, with: iblock)
        return meta
    }

    // MARK: Inode fields

    func setSize(_ raw: inout [UInt8], _ size: UInt64) {
        Self.put32(&raw, 0x04, UInt32(truncatingIfNeeded: size))
        Self.put32(&raw, 0x6C, UInt32(truncatingIfNeeded: size >> 32))
    }

    func setBlockCount(_ raw: inout [UInt8], blocks: UInt64) throws {
        let units = blocks * (bs64 / 512)
        guard units < 1 << 32 || (sb.hasROCompat(EXT4.ROCompat.hugeFile) && units < 1 << 48) else {
            throw EXT4.limit("file is too large for i_blocks")
        }
        Self.put32(&raw, 0x1C, UInt32(truncatingIfNeeded: units))
        if raw.count >= 0x76 { Self.put16(&raw, 0x74, UInt16(truncatingIfNeeded: units >> 32)) }
    }

    func touch(_ raw: inout [UInt8], mtime: Bool = true) {
        let now = UInt32(truncatingIfNeeded: Int(Date().timeIntervalSince1970))
        Self.put32(&raw, 0x0C, now)                 // ctime
        if mtime { Self.put32(&raw, 0x10, now) }    // mtime
    }

    /// The group holding inode `n` (allocation goal for its blocks).
    func group(ofInode n: UInt64) -> UInt64 { (n - 1) / UInt64(sb.inodesPerGroup) }

    /// Writes `data` into newly allocated blocks; returns the extents.
    func writeData(_ data: [UInt8], goal: UInt64) throws -> [EXT4.Extent] {
        let nblocks = (UInt64(data.count) + bs64 - 1) / bs64
        let runs = try allocateBlocks(nblocks, goal: goal)
        var extents: [EXT4.Extent] = []
        var logical: UInt64 = 0
        for r in runs {
            let from = Int(logical * bs64)
            let to = min(data.count, Int((logical + r.count) * bs64))
            var chunk = Array(data[from..<to])
            let padded = Int(r.count * bs64)
            if chunk.count < padded { chunk += [UInt8](repeating: 0, count: padded - chunk.count) }
            guard r.start + r.count <= sb.blocksCount else { throw EXT4.corrupt("allocated blocks beyond the filesystem") }
            try device.write(chunk, at: r.start * bs64)
            extents.append(EXT4.Extent(logical: logical, count: r.count, physical: r.start, unwritten: false))
            logical += r.count
        }
        return extents
    }

    func freeMapping(_ m: Mapping) throws {
        var runs: [(start: UInt64, count: UInt64)] = m.extents.map { ($0.physical, $0.count) }
        runs += m.meta.map { ($0, 1) }
        try freeBlockRuns(runs)
    }

    func checkRewritable(_ n: UInt64, _ raw: [UInt8]) throws {
        let f = Self.get32(raw, 0x20)
        if f & Self.refusedInodeFlags != 0 {
            throw EXT4.unsupported("inode \(n) has flags \(hex(f & Self.refusedInodeFlags)) (inline data, encryption, compression, verity, DAX or casefold) that this writer does not handle")
        }
    }

    // MARK: Operations

    public func replaceContents(of path: String, with data: [UInt8]) throws {
        guard data.count <= Self.maxContentBytes else { throw EXT4.limit("content of \(data.count) bytes is over the \(Self.maxContentBytes)-byte limit") }
        let r = GuestPathResolver(self)
        let resolved: GuestPathResolver.Resolved
        do {
            resolved = try r.resolve(path)
        } catch let e as WardenError where e.code == .notFound {
            if let link = try? r.resolve(path, followFinal: false), link.stat.type == .symlink {
                throw WardenError(.invalidArgument, "ext4: \(path) is a dangling symbolic link; refusing to write through it")
            }
            try createFile(path, contents: data, mode: 0o644, uid: 0, gid: 0)
            return
        }
        guard resolved.stat.type == .regular else {
            throw WardenError(.invalidArgument, "ext4: \(path) is not a regular file")
        }
        let n = resolved.inode
        var raw = try readInodeRaw(n)
        try checkRewritable(n, raw)
        let old = try mapping(n, raw)
        let goal = group(ofInode: n)
        let extents = try writeData(data, goal: goal)
        let meta = try writeMapping(n, &raw, extents: extents, goal: goal)
        setSize(&raw, UInt64(data.count))
        try setBlockCount(&raw, blocks: extents.reduce(0) { $0 + $1.count } + UInt64(meta.count))
        touch(&raw)
        try writeInodeRaw(n, raw)
        try freeMapping(old)
        try finish()
    }

    public func createFile(_ path: String, contents: [UInt8], mode: UInt16, uid: UInt32, gid: UInt32) throws {
        guard contents.count <= Self.maxContentBytes else { throw EXT4.limit("content of \(contents.count) bytes is over the \(Self.maxContentBytes)-byte limit") }
        guard mode & 0o170000 == 0 || mode & 0o170000 == 0o100000 else {
            throw WardenError(.invalidArgument, "ext4: createFile makes regular files only (mode 0o\(String(mode, radix: 8)))")
        }
        let (dir, name) = try parentAndName(path)
        if try findEntry(dir: dir, name: name) != nil {
            throw WardenError(.conflict, "ext4: \(path) already exists")
        }
        let dirRaw = try readInodeRaw(dir)
        try checkRewritable(dir, dirRaw)
        let n = try allocateInode(goal: group(ofInode: dir), directory: false)
        let extents = try writeData(contents, goal: group(ofInode: n))
        var raw = newInodeRaw(mode: 0o100000 | (mode & 0o7777), uid: uid, gid: gid)
        let meta = try writeMapping(n, &raw, extents: extents, goal: group(ofInode: n))
        setSize(&raw, UInt64(contents.count))
        try setBlockCount(&raw, blocks: extents.reduce(0) { $0 + $1.count } + UInt64(meta.count))
        try writeInodeRaw(n, raw)
        try insertEntry(dir: dir, name: name, inode: n, type: 1)
        try finish()
    }

    public func truncate(_ path: String, to size: UInt64) throws {
        let resolved = try GuestPathResolver(self).resolve(path)
        guard resolved.stat.type == .regular else {
            throw WardenError(.invalidArgument, "ext4: \(path) is not a regular file")
        }
        let n = resolved.inode
        var raw = try readInodeRaw(n)
        try checkRewritable(n, raw)
        let maxSize = sb.hasROCompat(EXT4.ROCompat.largeFile) ? (UInt64(1) << 32) * bs64 : UInt64(Int32.max)
        guard size <= maxSize, size / bs64 < UInt64(UInt32.max) else { throw EXT4.limit("size \(size) is too large for this filesystem") }
        let old = try mapping(n, raw)
        let keepBlocks = (size + bs64 - 1) / bs64
        var kept: [EXT4.Extent] = []
        var freed: [(start: UInt64, count: UInt64)] = []
        for e in old.extents {
            if e.logical >= keepBlocks { freed.append((e.physical, e.count)); continue }
            if e.logical + e.count > keepBlocks {
                let keep = keepBlocks - e.logical
                kept.append(EXT4.Extent(logical: e.logical, count: keep, physical: e.physical, unwritten: e.unwritten))
                freed.append((e.physical + keep, e.count - keep))
            } else {
                kept.append(e)
            }
        }
        // Zero the tail of the last kept block so a later extension reads zeros.
        if size % bs64 != 0, let last = kept.last, last.logical + last.count == keepBlocks, !last.unwritten {
            let pb = last.physical + last.count - 1
            var blk = try readBlock(pb)
            for i in Int(size % bs64)..<bs { blk[i] = 0 }
            try writeBlock(pb, blk)
        }
        let meta = try writeMapping(n, &raw, extents: kept, goal: group(ofInode: n))
        setSize(&raw, size)
        try setBlockCount(&raw, blocks: kept.reduce(0) { $0 + $1.count } + UInt64(meta.count))
        touch(&raw)
        try writeInodeRaw(n, raw)
        try freeBlockRuns(freed + old.meta.map { ($0, 1) })
        try finish()
    }

    public func unlink(_ path: String) throws {
        let (dir, name) = try parentAndName(path)
        guard let n = try findEntry(dir: dir, name: name) else {
            throw WardenError.notFound("ext4: \(path): no such file or directory in the guest")
        }
        var raw = try readInodeRaw(n)
        let mode = Self.get16(raw, 0x00)
        guard mode & 0o170000 != 0o040000 else {
            throw WardenError(.invalidArgument, "ext4: \(path) is a directory; unlink removes files only")
        }
        try checkRewritable(n, raw)
        let dirRaw = try readInodeRaw(dir)
        try checkRewritable(dir, dirRaw)
        try removeEntry(dir: dir, name: name)
        let links = Self.get16(raw, 0x1A)
        if links > 1 {
            Self.put16(&raw, 0x1A, links - 1)
            touch(&raw, mtime: false)
            try writeInodeRaw(n, raw)
            try finish()
            return
        }
        // Last link: free the blocks, the xattr block and the inode.
        let type = mode & 0o170000
        let flags = Self.get32(raw, 0x20)
        let aclBlock = UInt64(Self.get32(raw, 0x68)) | (is64 ? UInt64(Self.get16(raw, 0x76)) << 32 : 0)
        var m = Mapping()
        let hasBlocks: Bool
        switch type {
        case 0o100000: hasBlocks = true
        case 0o120000:
            let blocks512 = UInt64(Self.get32(raw, 0x1C))
            let aclUnits: UInt64 = aclBlock != 0 ? bs64 / 512 : 0
            hasBlocks = flags & Self.extentsFlag != 0 || blocks512 > aclUnits
        default: hasBlocks = false
        }
        if hasBlocks { m = try mapping(n, raw) }
        try release(n, &raw, mapping: hasBlocks ? m : nil, aclBlock: aclBlock, directory: false)
    }

    /// Frees inode `n` whose last name is gone: the inode is marked deleted (no links,
    /// dtime, empty size and block map) and written first, then its blocks, its
    /// extended-attribute block and the inode itself are released, then the counts.
    private func release(_ n: UInt64, _ raw: inout [UInt8], mapping m: Mapping?, aclBlock: UInt64, directory: Bool) throws {
        let now = UInt32(truncatingIfNeeded: Int(Date().timeIntervalSince1970))
        Self.put16(&raw, 0x1A, 0)
        Self.put32(&raw, 0x14, now)   // dtime
        Self.put32(&raw, 0x0C, now)
        if directory { Self.put32(&raw, 0x20, Self.get32(raw, 0x20) & ~Self.indexFlag) }
        setSize(&raw, 0)
        try setBlockCount(&raw, blocks: 0)
        if m != nil {
            if Self.get32(raw, 0x20) & Self.extentsFlag != 0 {
                var root = [UInt8](repeating: 0, count: 60)
                root.replaceSubrange(0..<12, with: extentHeader(entries: 0, max: 4, depth: 0))
                raw.replaceSubrange(0x28..<0x64, with: root)
            } else {
                raw.replaceSubrange(0x28..<0x64, with: [UInt8](repeating: 0, count: 60))
            }
        }
        if aclBlock != 0 {
            Self.put32(&raw, 0x68, 0)
            if is64 { Self.put16(&raw, 0x76, 0) }
        }
        try writeInodeRaw(n, raw)
        if let m { try freeMapping(m) }
        if aclBlock != 0 { try releaseXattrBlock(try checkBlock(aclBlock, n)) }
        try freeInode(n, directory: directory)
        try finish()
    }

    public func removeDirectory(_ path: String) throws {
        let (parent, name) = try parentAndName(path)
        guard let n = try findEntry(dir: parent, name: name) else {
            throw WardenError.notFound("ext4: \(path): no such file or directory in the guest")
        }
        var raw = try readInodeRaw(n)
        guard Self.get16(raw, 0x00) & 0o170000 == 0o040000 else {
            throw WardenError(.invalidArgument, "ext4: \(path) is not a directory")
        }
        guard n != EXT4.rootInode, n != parent else { throw WardenError(.invalidArgument, "ext4: \(path) is the root directory") }
        guard try reader.readDirectory(n).isEmpty else {
            throw WardenError(.conflict, "ext4: \(path) is not empty")
        }
        try checkRewritable(n, raw)
        var parentRaw = try readInodeRaw(parent)
        try checkRewritable(parent, parentRaw)
        let m = try mapping(n, raw)
        let aclBlock = UInt64(Self.get32(raw, 0x68)) | (is64 ? UInt64(Self.get16(raw, 0x76)) << 32 : 0)
        try removeEntry(dir: parent, name: name)
        // The parent loses the ".." link (a count of 1 means "too many to count", dir_nlink).
        parentRaw = try readInodeRaw(parent)
        let plinks = Self.get16(parentRaw, 0x1A)
        if plinks > 2 {
            Self.put16(&parentRaw, 0x1A, plinks - 1)
            try writeInodeRaw(parent, parentRaw)
        }
        try release(n, &raw, mapping: m, aclBlock: aclBlock, directory: true)
    }

    /// Drops one reference to an extended-attribute block, freeing it at zero.
    func releaseXattrBlock(_ b: UInt64) throws {
        var blk = try readBlock(b)
        guard Self.get32(blk, 0) == 0xEA02_0000 else { throw EXT4.corrupt("xattr block \(b) has a bad magic") }
        let refs = Self.get32(blk, 4)
        if refs <= 1 {
            try freeBlockRuns([(b, 1)])
        } else {
            Self.put32(&blk, 4, refs - 1)
            if hasCsum {
                Self.put32(&blk, 0x10, 0)
                var le64 = [UInt8](repeating: 0, count: 8)
                for i in 0..<8 { le64[i] = UInt8(truncatingIfNeeded: b >> UInt64(8 * i)) }
                Self.put32(&blk, 0x10, CRC32.castagnoli.update(CRC32.castagnoli.update(fsSeed, le64), blk))
            }
            try writeBlock(b, blk)
        }
    }

    public func setFilesystemUUID(_ uuid: UUID) throws {
        let u = uuid.uuid
        let bytes = [u.0, u.1, u.2, u.3, u.4, u.5, u.6, u.7, u.8, u.9, u.10, u.11, u.12, u.13, u.14, u.15]
        if hasCsum && !sb.hasIncompat(EXT4.Incompat.csumSeed) {
            // Keep every existing checksum valid: pin the seed, then change the UUID.
            Self.put32(&sbRaw, 0x270, fsSeed)
            Self.put32(&sbRaw, 0x60, Self.get32(sbRaw, 0x60) | EXT4.Incompat.csumSeed)
        }
        sbRaw.replaceSubrange(0x68..<0x78, with: bytes)
        let oldUUID = sb.uuid
        sb.uuid = bytes
        if hasGdtCsum {
            // crc16 group descriptor checksums cover the UUID: rewrite them all.
            for g in 0..<sb.groupCount {
                sb.uuid = oldUUID
                let gd = try readGD(g)
                sb.uuid = bytes
                try writeGD(gd)
            }
        }
        try writeSuperblock()
        try writeBackupSuperblocks()
        try refresh()
        sb = reader.sb
        fsSeed = sb.checksumSeed
    }

    /// Copies the primary superblock to every backup location (with its group number).
    private func writeBackupSuperblocks() throws {
        guard sb.groupCount <= 1 << 20 else { return }
        for g in 1..<max(sb.groupCount, 1) where sb.groupHasSuper(g) {
            let block = groupFirstBlock(g)
            guard block < sb.blocksCount else { continue }
            var copy = sbRaw
            Self.put16(&copy, 0x5A, UInt16(truncatingIfNeeded: g))
            if hasCsum { Self.put32(&copy, 0x3FC, CRC32.castagnoli.update(0xFFFF_FFFF, copy[0..<0x3FC])) }
            var blk = try readBlock(block)
            blk.replaceSubrange(0..<1024, with: copy)
            try writeBlock(block, blk)
        }
    }

    /// Ends an operation: superblock counts, then a fresh reader.
    func finish() throws {
        try writeSuperblock()
        try refresh()
    }

    func newInodeRaw(mode: UInt16, uid: UInt32, gid: UInt32) -> [UInt8] {
        var raw = [UInt8](repeating: 0, count: sb.inodeSize)
        let now = UInt32(truncatingIfNeeded: Int(Date().timeIntervalSince1970))
        Self.put16(&raw, 0x00, mode)
        Self.put16(&raw, 0x02, UInt16(truncatingIfNeeded: uid))
        Self.put32(&raw, 0x08, now)
        Self.put32(&raw, 0x0C, now)
        Self.put32(&raw, 0x10, now)
        Self.put16(&raw, 0x18, UInt16(truncatingIfNeeded: gid))
        Self.put16(&raw, 0x1A, 1)
        Self.put32(&raw, 0x64, UInt32.random(in: 0...UInt32.max))   // generation
        Self.put16(&raw, 0x78, UInt16(truncatingIfNeeded: uid >> 16))
        Self.put16(&raw, 0x7A, UInt16(truncatingIfNeeded: gid >> 16))
        if hasExtents {
            Self.put32(&raw, 0x20, Self.extentsFlag)
            raw.replaceSubrange(0x28..<0x34, with: extentHeader(entries: 0, max: 4, depth: 0))
        }
        if sb.inodeSize > 128 {
            let want = Int(Self.get16(sbRaw, 0x15E))
            let extra = min(sb.inodeSize - 128, want >= 4 && want % 4 == 0 ? want : 32)
            Self.put16(&raw, 0x80, UInt16(extra))
            if 128 + extra >= 0x94 { Self.put32(&raw, 0x90, now) }   // crtime
        }
        return raw
    }
}
