import WardenCore

extension XFS {
    /// One decoded data fork extent: `count` file blocks from `logical` stored at fsblock `start`.
    public struct Extent: Sendable, Equatable {
        public var logical: UInt64
        public var start: UInt64
        public var count: UInt64
        /// Preallocated but never written: reads as zeros.
        public var unwritten: Bool

        public var end: UInt64 { logical + count }

        /// Decodes one packed 128-bit record (two big-endian 64-bit words).
        init(l0: UInt64, l1: UInt64) {
            unwritten = l0 >> 63 != 0
            logical = (l0 >> 9) & ((UInt64(1) << 54) - 1)
            start = ((l0 & 0x1FF) << 43) | (l1 >> 21)
            count = l1 & ((UInt64(1) << 21) - 1)
        }

        init(logical: UInt64, start: UInt64, count: UInt64, unwritten: Bool) {
            self.logical = logical
            self.start = start
            self.count = count
            self.unwritten = unwritten
        }
    }

    /// The bmbt block magics.
    static let bmapMagic: UInt32 = 0x424D_4150  // "BMAP"
    static let bma3Magic: UInt32 = 0x424D_4133  // "BMA3"
}

extension XFSVolume {
    /// Every extent of the inode's data fork, sorted, validated and non-overlapping.
    func extents(_ ino: XFS.Inode) throws -> [XFS.Extent] {
        if let e = extentCache[ino.number] { return e }
        var out: [XFS.Extent] = []
        switch ino.forkFormat {
        case .extents:
            guard ino.nextents <= UInt64(ino.dataFork.count / 16) else {
                throw XFS.corrupt("inode \(ino.number) claims \(ino.nextents) extents but its data fork holds at most \(ino.dataFork.count / 16)")
            }
            let fork = ino.dataFork[...]
            for i in 0..<Int(ino.nextents) {
                try appendRecord(fork, at: i * 16, inode: ino.number, into: &out)
            }
        case .btree:
            try walkRoot(ino, into: &out)
        default:
            throw XFS.corrupt("inode \(ino.number) data fork format \(ino.format) has no extents")
        }
        if ino.nextents != UInt64(out.count) {
            warn("xfs: inode \(ino.number) records \(ino.nextents) extents but its map holds \(out.count)")
        }
        extentCache.put(ino.number, out)
        return out
    }

    /// Decodes the record at `offset` of `bytes`, checks it and appends it (after the last one).
    private func appendRecord(_ bytes: ArraySlice<UInt8>, at offset: Int, inode: UInt64, into out: inout [XFS.Extent]) throws {
        let l0: UInt64 = try bytes.xbe(offset)
        let l1: UInt64 = try bytes.xbe(offset + 8)
        let e = XFS.Extent(l0: l0, l1: l1)
        guard e.count > 0 else {
            throw XFS.corrupt("inode \(inode) has an empty extent at file block \(e.logical)")
        }
        if let last = out.last, e.logical < last.end {
            throw XFS.corrupt("inode \(inode) extent at file block \(e.logical) overlaps or precedes the one ending at \(last.end)")
        }
        _ = try diskBlock(e.start, count: e.count, what: "inode \(inode) extent at file block \(e.logical)")
        guard out.count < XFS.Limits.maxExtents else {
            throw XFS.limit("inode \(inode) has more than \(XFS.Limits.maxExtents) extents")
        }
        out.append(e)
    }

    /// Walks the bmbt whose root sits in the inode's data fork.
    private func walkRoot(_ ino: XFS.Inode, into out: inout [XFS.Extent]) throws {
        let fork = ino.dataFork[...]
        let level: UInt16 = try fork.xbe(0)
        let numrecs: UInt16 = try fork.xbe(2)
        let maxrecs = (fork.count - 4) / 16
        guard level >= 1 else { throw XFS.corrupt("inode \(ino.number) bmbt root has level 0") }
        guard Int(level) < XFS.Limits.maxBmbtDepth else {
            throw XFS.corrupt("inode \(ino.number) bmbt is deeper than \(XFS.Limits.maxBmbtDepth) levels (root level \(level))")
        }
        guard numrecs >= 1, Int(numrecs) <= maxrecs else {
            throw XFS.corrupt("inode \(ino.number) bmbt root holds \(numrecs) records, room for \(maxrecs)")
        }
        var visited = Set<UInt64>()
        let ptrBase = 4 + maxrecs * 8
        for i in 0..<Int(numrecs) {
            let ptr: UInt64 = try fork.xbe(ptrBase + i * 8)
            try walkNode(ptr, level: Int(level) - 1, inode: ino.number, visited: &visited, into: &out)
        }
    }

    /// Visits the bmbt block `fsb`, which must be at `level`.
    private func walkNode(_ fsb: UInt64, level: Int, inode: UInt64, visited: inout Set<UInt64>, into out: inout [XFS.Extent]) throws {
        guard visited.insert(fsb).inserted else {
            throw XFS.corrupt("inode \(inode) bmbt visits block \(fsb) twice")
        }
        guard visited.count <= XFS.Limits.maxBmbtBlocks else {
            throw XFS.limit("inode \(inode) bmbt has more than \(XFS.Limits.maxBmbtBlocks) blocks")
        }
        let disk = try diskBlock(fsb, count: 1, what: "inode \(inode) bmbt block")
        let block = try readBlock(disk)[...]
        let magic: UInt32 = try block.xbe(0)
        let hdr: Int
        if sb.hasCRC {
            guard magic == XFS.bma3Magic else {
                throw XFS.corrupt("inode \(inode) bmbt block \(fsb) has bad magic \(hex(magic))")
            }
            hdr = 72
            let (stored, computed) = XFS.crc(block, crcOffset: 64)
            if stored != computed {
                warn("xfs: inode \(inode) bmbt block \(fsb) checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
            }
            let owner: UInt64 = try block.xbe(56)
            if owner != inode {
                throw XFS.corrupt("bmbt block \(fsb) belongs to inode \(owner), not \(inode)")
            }
        } else {
            guard magic == XFS.bmapMagic else {
                throw XFS.corrupt("inode \(inode) bmbt block \(fsb) has bad magic \(hex(magic))")
            }
            hdr = 24
        }
        let lvl: UInt16 = try block.xbe(4)
        let numrecs: UInt16 = try block.xbe(6)
        guard Int(lvl) == level else {
            throw XFS.corrupt("inode \(inode) bmbt block \(fsb) is at level \(lvl), expected \(level)")
        }
        let maxrecs = (block.count - hdr) / 16
        guard Int(numrecs) <= maxrecs else {
            throw XFS.corrupt("inode \(inode) bmbt block \(fsb) holds \(numrecs) records, room for \(maxrecs)")
        }
        if level == 0 {
            for i in 0..<Int(numrecs) {
                try appendRecord(block, at: hdr + i * 16, inode: inode, into: &out)
            }
        } else {
            let ptrBase = hdr + maxrecs * 8
            for i in 0..<Int(numrecs) {
                let ptr: UInt64 = try block.xbe(ptrBase + i * 8)
                try walkNode(ptr, level: level - 1, inode: inode, visited: &visited, into: &out)
            }
        }
    }

    /// The linear volume block of fsblock `fsb`, checking that `count` blocks from it stay in
    /// one allocation group and inside the volume.
    func diskBlock(_ fsb: UInt64, count: UInt64, what: String) throws -> UInt64 {
        let agno = fsb >> UInt64(sb.agBlockLog)
        let agbno = fsb & ((UInt64(1) << UInt64(sb.agBlockLog)) - 1)
        let (agEnd, o) = agbno.addingReportingOverflow(count)
        guard agno < UInt64(sb.agCount), !o, agEnd <= UInt64(sb.agBlocks) else {
            throw XFS.corrupt("\(what): fsblock \(fsb) (+\(count)) is outside the \(sb.agCount) AGs of \(sb.agBlocks) blocks")
        }
        let linear = agno * UInt64(sb.agBlocks) + agbno
        guard linear + count <= sb.dataBlocks else {
            throw XFS.corrupt("\(what): block \(linear) (+\(count)) lies beyond the end of the \(sb.dataBlocks)-block volume")
        }
        return linear
    }

    /// Index of the first extent whose end lies past `block` (extents are sorted).
    static func firstExtent(_ extents: [XFS.Extent], endingAfter block: UInt64) -> Int {
        var lo = 0, hi = extents.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if extents[mid].end <= block { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Fills `buf` with file bytes `offset ..< offset + buf.count` mapped by `extents`; holes
    /// and unwritten extents read as zeros.
    func readMapped(_ ino: XFS.Inode, _ extents: [XFS.Extent], offset: UInt64, into buf: UnsafeMutableRawBufferPointer) throws {
        let count = UInt64(buf.count)
        guard count > 0 else { return }
        let end = try Checked.add(offset, count, "xfs read range")
        let bs = UInt64(sb.blockSize)
        var pos = offset
        var i = XFSVolume.firstExtent(extents, endingAfter: offset / bs)
        while pos < end {
            // Next extent start in bytes (or end of range if none).
            let e: XFS.Extent? = i < extents.count ? extents[i] : nil
            var startByte = end
            if let e {
                let (s, o) = e.logical.multipliedReportingOverflow(by: bs)
                if !o { startByte = min(end, s) }
            }
            if pos < startByte {
                let dst = UnsafeMutableRawBufferPointer(rebasing: buf[Int(pos - offset)..<Int(startByte - offset)])
                dst.initializeMemory(as: UInt8.self, repeating: 0)
                pos = startByte
                continue
            }
            guard let e else { break }
            let (eEndRaw, ov) = e.end.multipliedReportingOverflow(by: bs)
            let hi = min(end, ov ? UInt64.max : eEndRaw)
            let dst = UnsafeMutableRawBufferPointer(rebasing: buf[Int(pos - offset)..<Int(hi - offset)])
            if e.unwritten {
                dst.initializeMemory(as: UInt8.self, repeating: 0)
            } else {
                let disk = try diskBlock(e.start, count: e.count, what: "inode \(ino.number) extent")
                let devOff = try Checked.add(disk * bs, pos - e.logical * bs, "xfs extent offset")
                try device.read(at: devOff, into: dst)
            }
            pos = hi
            i += 1
        }
    }
}
