import WardenCore

extension EXT4 {
    /// One leaf extent: `count` logical blocks from `logical` stored at `physical`.
    public struct Extent: Sendable, Equatable {
        public var logical: UInt64
        public var count: UInt64
        public var physical: UInt64
        /// Allocated but never written: reads as zeros.
        public var unwritten: Bool
    }

    /// A run of logical blocks: stored at `physical`, or zeros when `physical` is nil.
    struct Run: Equatable {
        var logical: UInt64
        var count: UInt64
        var physical: UInt64?
    }

    static let extentMagic: UInt16 = 0xF30A

    /// Appends `run` to `runs`, merging it with the previous run when contiguous.
    static func append(_ run: Run, to runs: inout [Run]) {
        guard run.count > 0 else { return }
        if var last = runs.last, last.logical + last.count == run.logical {
            switch (last.physical, run.physical) {
            case (nil, nil):
                last.count += run.count
                runs[runs.count - 1] = last
                return
            case let (p?, q?) where p &+ last.count == q:
                last.count += run.count
                runs[runs.count - 1] = last
                return
            default: break
            }
        }
        runs.append(run)
    }
}

extension EXT4Volume {
    // MARK: Extent trees

    /// Collects every leaf extent of `inode`'s extent tree, in logical order.
    func extents(of inode: EXT4.Inode) throws -> [EXT4.Extent] {
        if let cached = extentCache[inode.number] { return cached }
        var out: [EXT4.Extent] = []
        var visited = Set<UInt64>()
        try walkExtentNode(Array(inode.iBlock), block: nil, expectedDepth: nil, inode: inode, out: &out, visited: &visited)
        var end: UInt64 = 0
        for e in out {
            guard e.logical >= end else {
                throw EXT4.corrupt("inode \(inode.number) has overlapping or unsorted extents at logical block \(e.logical)")
            }
            end = e.logical + e.count
        }
        extentCache.put(inode.number, out)
        return out
    }

    private func walkExtentNode(_ node: [UInt8], block: UInt64?, expectedDepth: Int?, inode: EXT4.Inode,
                                out: inout [EXT4.Extent], visited: inout Set<UInt64>) throws {
        let ino = inode.number
        let whereText = block.map { "extent block \($0)" } ?? "extent root"
        let magic: UInt16 = try node.le(0)
        guard magic == EXT4.extentMagic else {
            throw EXT4.corrupt("inode \(ino) \(whereText) has bad magic \(hex(magic))")
        }
        let entries = Int(try node.le(2) as UInt16)
        let maxEntries = Int(try node.le(4) as UInt16)
        let depth = Int(try node.le(6) as UInt16)
        let capacity = (node.count - 12) / 12
        guard maxEntries <= capacity, entries <= maxEntries else {
            throw EXT4.corrupt("inode \(ino) \(whereText) claims \(entries) of \(maxEntries) entries but only \(capacity) fit")
        }
        guard depth <= EXT4.Limits.maxExtentDepth else {
            throw EXT4.corrupt("inode \(ino) extent tree is deeper than \(EXT4.Limits.maxExtentDepth) levels (depth \(depth))")
        }
        if let expectedDepth, depth != expectedDepth {
            throw EXT4.corrupt("inode \(ino) \(whereText) has depth \(depth), expected \(expectedDepth)")
        }
        if let block, sb.hasMetadataCsum {
            let tail = 12 + 12 * maxEntries
            if tail + 4 <= node.count {
                let stored: UInt32 = try node.le(tail)
                let computed = CRC32.castagnoli.update(inodeSeed(inode), node[0..<tail])
                if stored != computed {
                    warn("ext4: inode \(ino) extent block \(block) checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
                }
            }
        }
        for i in 0..<entries {
            let o = 12 + 12 * i
            let lblk = UInt64(try node.le(o) as UInt32)
            if depth == 0 {
                var len = UInt64(try node.le(o + 4) as UInt16)
                let hi = UInt64(try node.le(o + 6) as UInt16)
                let lo = UInt64(try node.le(o + 8) as UInt32)
                let unwritten = len > 32768
                if unwritten { len -= 32768 }
                if len == 0 { continue }
                let phys = hi << 32 | lo
                let (end, ov) = phys.addingReportingOverflow(len)
                guard !ov, end <= sb.blocksCount, phys >= 1 || unwritten else {
                    throw EXT4.corrupt("inode \(ino) extent maps blocks \(phys)..<\(phys &+ len), beyond the \(sb.blocksCount)-block volume")
                }
                guard out.count < EXT4.Limits.maxExtents else {
                    throw EXT4.limit("inode \(ino) has more than \(EXT4.Limits.maxExtents) extents")
                }
                out.append(EXT4.Extent(logical: lblk, count: len, physical: phys, unwritten: unwritten))
            } else {
                let lo = UInt64(try node.le(o + 4) as UInt32)
                let hi = UInt64(try node.le(o + 8) as UInt16)
                let child = hi << 32 | lo
                guard visited.insert(child).inserted, child != block else {
                    throw EXT4.corrupt("inode \(ino) extent tree visits block \(child) twice (loop)")
                }
                let bytes = try readBlock(child, what: "inode \(ino) extent block")
                try walkExtentNode(bytes, block: child, expectedDepth: depth - 1, inode: inode, out: &out, visited: &visited)
            }
        }
    }

    /// Runs covering logical blocks `from ..< to` of an extent-mapped file.
    func extentRuns(_ inode: EXT4.Inode, from: UInt64, to: UInt64) throws -> [EXT4.Run] {
        let list = try extents(of: inode)
        var runs: [EXT4.Run] = []
        // First extent ending after `from`.
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if list[mid].logical + list[mid].count <= from { lo = mid + 1 } else { hi = mid }
        }
        var pos = from
        var i = lo
        while pos < to && i < list.count {
            let e = list[i]
            if e.logical >= to { break }
            if e.logical > pos {
                EXT4.append(EXT4.Run(logical: pos, count: e.logical - pos, physical: nil), to: &runs)
                pos = e.logical
            }
            let end = min(e.logical + e.count, to)
            if end > pos {
                let phys: UInt64? = e.unwritten ? nil : e.physical + (pos - e.logical)
                EXT4.append(EXT4.Run(logical: pos, count: end - pos, physical: phys), to: &runs)
                pos = end
            }
            i += 1
        }
        if pos < to { EXT4.append(EXT4.Run(logical: pos, count: to - pos, physical: nil), to: &runs) }
        return runs
    }

    // MARK: Indirect block maps (ext2/ext3)

    /// Runs covering logical blocks `from ..< to` of a block-mapped file.
    func indirectRuns(_ inode: EXT4.Inode, from: UInt64, to: UInt64) throws -> [EXT4.Run] {
        let perBlock = UInt64(sb.blockSize / 4)
        var cache: [UInt64: [UInt8]] = [:]
        let iBlock = Array(inode.iBlock)
        func pointer(_ bytes: [UInt8], _ index: UInt64) throws -> UInt64 {
            UInt64(try bytes.le(Int(index) * 4) as UInt32)
        }
        func checked(_ p: UInt64) throws -> UInt64 {
            guard p < sb.blocksCount else {
                throw EXT4.corrupt("inode \(inode.number) block map points at block \(p), beyond the \(sb.blocksCount)-block volume")
            }
            return p
        }
        func indirectBlock(_ p: UInt64) throws -> [UInt8] {
            if let b = cache[p] { return b }
            let b = try readBlock(try checked(p), what: "inode \(inode.number) indirect block")
            if cache.count >= 16 { cache.removeAll() }
            cache[p] = b
            return b
        }
        /// Physical block of logical `l` (nil: hole) and the first logical block after that answer.
        func map(_ l: UInt64) throws -> (UInt64?, UInt64) {
            if l < 12 {
                let p = try pointer(iBlock, l)
                return (p == 0 ? nil : try checked(p), l + 1)
            }
            var rel = l - 12
            var span = perBlock
            for level in 1...3 {
                if rel < span {
                    var ptr = try pointer(iBlock, UInt64(11 + level))
                    var sub = span
                    if ptr == 0 { return (nil, l - rel + sub) }
                    for _ in 0..<level {
                        sub /= perBlock
                        let b = try indirectBlock(ptr)
                        let idx = rel / sub
                        rel %= sub
                        ptr = try pointer(b, idx)
                        if ptr == 0 { return (nil, l - rel + sub) }
                    }
                    return (try checked(ptr), l + 1)
                }
                rel -= span
                span *= perBlock
            }
            return (nil, UInt64.max)
        }
        var runs: [EXT4.Run] = []
        var l = from
        while l < to {
            let (p, next) = try map(l)
            let end = min(max(next, l + 1), to)
            EXT4.append(EXT4.Run(logical: l, count: end - l, physical: p), to: &runs)
            l = end
        }
        return runs
    }

    /// Runs for logical blocks `from ..< to` of an extent- or block-mapped inode.
    func runs(_ inode: EXT4.Inode, from: UInt64, to: UInt64) throws -> [EXT4.Run] {
        if inode.has(EXT4.InodeFlags.extents) {
            return try extentRuns(inode, from: from, to: to)
        }
        return try indirectRuns(inode, from: from, to: to)
    }
}
