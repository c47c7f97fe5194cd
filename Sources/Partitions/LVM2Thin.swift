import Foundation
import WardenCore
import DiskImage

/// LVM thin volumes: a thin LV's bytes live in its pool's data LV, chunk by chunk, as the
/// pool's metadata LV maps them (the device-mapper thin-provisioning target's on-disk format,
/// "persistent data": a superblock and copy-on-write B-trees in 4 KiB blocks).
///
/// The data-mapping tree is keyed by thin device id; each value is the root of that device's
/// own tree, keyed by virtual chunk, whose values pack the data chunk and a time stamp
/// (`chunk << 24 | time`). A thin snapshot is another device sharing chunks with its origin.
/// Chunks no tree maps read as zeros, as the kernel returns them. Metadata is read lazily,
/// one tree walk per chunk run, through a bounded cache of checked nodes.
public enum LVM2Thin {
    static let blockSize = 4096
    static let superblockMagic: UInt64 = 27_022_010
    static let superblockChecksumXor: UInt32 = 160_774
    static let nodeChecksumXor: UInt32 = 121_107
    static let internalNode: UInt32 = 1
    static let leafNode: UInt32 = 2
    /// Deeper trees than this cannot address a 64-bit key space of 4 KiB nodes: a longer walk
    /// is a loop in damaged metadata.
    static let maxDepth = 16
    static let cacheLimit = 4096

    /// A thin pool's metadata, read from its metadata LV.
    public final class Metadata: @unchecked Sendable {
        let device: any BlockDevice
        let blocks: UInt64
        public let dataMappingRoot: UInt64
        /// Bytes per data chunk.
        public let chunkSize: UInt64
        public let transactionID: UInt64
        // The cache of checked nodes; guarded by `lock` (reads may come from several threads).
        private let lock = NSLock()
        private var cache: [UInt64: Node] = [:]

        struct Node {
            var leaf: Bool
            var keys: [UInt64]
            var values: [UInt64]
        }

        public init(device: any BlockDevice, name: String) throws {
            self.device = device
            guard device.size >= UInt64(LVM2Thin.blockSize) else {
                throw WardenError.corrupt("lvm2: thin pool metadata \(name) is smaller than one block")
            }
            var raw = [UInt8](repeating: 0, count: LVM2Thin.blockSize)
            try raw.withUnsafeMutableBytes { try device.read(at: 0, into: $0) }
            let r = ByteReader(raw, context: "thin pool superblock")
            guard try r.le(at: 32, UInt64.self) == LVM2Thin.superblockMagic else {
                throw WardenError.corrupt("lvm2: thin pool metadata \(name) has no superblock (bad magic)")
            }
            let stored = try r.le(at: 0, UInt32.self)
            guard LVM2Thin.checksum(raw, xor: LVM2Thin.superblockChecksumXor) == stored else {
                throw WardenError.corrupt("lvm2: thin pool metadata \(name): superblock checksum mismatch")
            }
            let version = try r.le(at: 40, UInt32.self)
            guard version == 1 || version == 2 else {
                throw WardenError.unsupported("lvm2: thin pool metadata \(name) is version \(version) (1 and 2 are read)")
            }
            guard try r.le(at: 340, UInt32.self) == 8 else {
                throw WardenError.unsupported("lvm2: thin pool metadata \(name) uses metadata blocks other than 4 KiB")
            }
            let sectors = UInt64(try r.le(at: 336, UInt32.self))
            // dm-thin accepts 64 KiB to 1 GiB chunks (128 to 2,097,152 sectors), multiples of 64 KiB.
            guard sectors >= 128, sectors <= 2_097_152, sectors % 128 == 0 else {
                throw WardenError.corrupt("lvm2: thin pool metadata \(name) has a chunk of \(sectors) sectors")
            }
            chunkSize = sectors * 512
            let count = try r.le(at: 344, UInt64.self)
            blocks = min(count, device.size / UInt64(LVM2Thin.blockSize))
            transactionID = try r.le(at: 48, UInt64.self)
            dataMappingRoot = try r.le(at: 320, UInt64.self)
            guard dataMappingRoot > 0, dataMappingRoot < blocks else {
                throw WardenError.corrupt("lvm2: thin pool metadata \(name) names a mapping root outside its \(blocks) blocks")
            }
        }

        /// Node `block`, checked: its checksum, its own block number, and entry counts that fit.
        func node(_ block: UInt64) throws -> Node {
            if let n = lock.withLock({ cache[block] }) { return n }
            guard block > 0, block < blocks else {
                throw WardenError.corrupt("lvm2: thin pool metadata points at block \(block), outside its \(blocks) blocks")
            }
            var raw = [UInt8](repeating: 0, count: LVM2Thin.blockSize)
            try raw.withUnsafeMutableBytes { try device.read(at: block * UInt64(LVM2Thin.blockSize), into: $0) }
            let r = ByteReader(raw, context: "thin pool B-tree node \(block)")
            guard LVM2Thin.checksum(raw, xor: LVM2Thin.nodeChecksumXor) == (try r.le(at: 0, UInt32.self)) else {
                throw WardenError.corrupt("lvm2: thin pool metadata block \(block): B-tree node checksum mismatch")
            }
            let flags = try r.le(at: 4, UInt32.self)
            let count = Int(try r.le(at: 16, UInt32.self)), capacity = Int(try r.le(at: 20, UInt32.self))
            let valueSize = Int(try r.le(at: 24, UInt32.self))
            guard try r.le(at: 8, UInt64.self) == block else {
                throw WardenError.corrupt("lvm2: thin pool metadata block \(block) claims to be block \(try r.le(at: 8, UInt64.self))")
            }
            guard flags == LVM2Thin.internalNode || flags == LVM2Thin.leafNode, valueSize >= 8, valueSize <= 64,
                  count <= capacity, capacity <= (LVM2Thin.blockSize - 32) / (8 + valueSize) else {
                throw WardenError.corrupt("lvm2: thin pool metadata block \(block) is a malformed B-tree node")
            }
            let leaf = flags == LVM2Thin.leafNode
            guard leaf || valueSize == 8 else {
                throw WardenError.corrupt("lvm2: thin pool metadata block \(block): internal node values of \(valueSize) bytes")
            }
            var keys: [UInt64] = [], values: [UInt64] = []
            keys.reserveCapacity(count); values.reserveCapacity(count)
            let valuesAt = 32 + capacity * 8
            for i in 0..<count {
                let k = try r.le(at: 32 + i * 8, UInt64.self)
                if let last = keys.last, k <= last {
                    throw WardenError.corrupt("lvm2: thin pool metadata block \(block) holds keys out of order")
                }
                keys.append(k)
                values.append(try r.le(at: valuesAt + i * valueSize, UInt64.self))
            }
            let n = Node(leaf: leaf, keys: keys, values: values)
            lock.withLock {
                if cache.count >= LVM2Thin.cacheLimit { cache.removeAll(keepingCapacity: true) }
                cache[block] = n
            }
            return n
        }

        /// The value stored under `key` in the tree rooted at `root` (the first 8 bytes of it).
        public func lookup(root: UInt64, key: UInt64) throws -> UInt64? {
            var block = root
            for _ in 0..<LVM2Thin.maxDepth {
                let n = try node(block)
                // The last entry whose key is at most `key`.
                var lo = 0, hi = n.keys.count
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if n.keys[mid] <= key { lo = mid + 1 } else { hi = mid }
                }
                if n.leaf { return lo > 0 && n.keys[lo - 1] == key ? n.values[lo - 1] : nil }
                guard lo > 0 else { return nil }
                block = n.values[lo - 1]
            }
            throw WardenError.corrupt("lvm2: thin pool metadata tree deeper than \(LVM2Thin.maxDepth) levels (a loop?)")
        }

        /// Calls `body` with each (key, value) of the tree rooted at `root` whose key is in
        /// `range`, in key order, visiting only the subtrees that can hold such keys. In a tree
        /// each node is visited once at most: a walk that visits more nodes than the metadata
        /// has blocks is going round a loop, and fails.
        public func forEach(root: UInt64, in range: Range<UInt64>, _ body: (UInt64, UInt64) throws -> Void) throws {
            var budget = blocks
            try walk(root, range, depth: 0, budget: &budget, body)
        }

        private func walk(_ block: UInt64, _ range: Range<UInt64>, depth: Int, budget: inout UInt64,
                          _ body: (UInt64, UInt64) throws -> Void) throws {
            guard depth < LVM2Thin.maxDepth, budget > 0 else {
                throw WardenError.corrupt("lvm2: thin pool metadata tree deeper than \(LVM2Thin.maxDepth) levels or with more nodes than blocks (a loop?)")
            }
            budget -= 1
            let n = try node(block)
            for i in n.keys.indices {
                if n.keys[i] >= range.upperBound { break }
                if n.leaf {
                    if n.keys[i] >= range.lowerBound { try body(n.keys[i], n.values[i]) }
                } else if i + 1 == n.keys.count || n.keys[i + 1] > range.lowerBound {
                    // Child i holds the keys from keys[i] up to keys[i + 1].
                    try walk(n.values[i], range, depth: depth + 1, budget: &budget, body)
                }
            }
        }

        /// The root of thin device `id`'s tree, or nil when the pool holds no such device.
        public func deviceRoot(_ id: UInt64) throws -> UInt64? {
            try lookup(root: dataMappingRoot, key: id)
        }
    }

    static func checksum(_ block: [UInt8], xor: UInt32) -> UInt32 {
        // The raw CRC-32C register (seeded with all ones, not finalised) over everything after
        // the checksum field, xored with the structure's salt, as persistent-data's
        // dm_bm_checksum computes it.
        CRC32.castagnoli.update(0xFFFF_FFFF, block[4...]) ^ xor
    }
}

/// A thin LV: virtual chunks mapped onto the pool's data LV; unmapped chunks read as zeros.
public final class LVM2ThinDevice: BlockDevice, @unchecked Sendable {
    public let size: UInt64
    let metadata: LVM2Thin.Metadata
    let root: UInt64
    let data: any BlockDevice
    let name: String

    public init(size: UInt64, metadata: LVM2Thin.Metadata, root: UInt64, data: any BlockDevice, name: String) {
        self.size = size; self.metadata = metadata; self.root = root; self.data = data; self.name = name
    }

    /// The data chunk holding virtual chunk `v`, or nil when none does.
    func dataChunk(_ v: UInt64) throws -> UInt64? {
        guard let value = try metadata.lookup(root: root, key: v) else { return nil }
        let chunk = value >> 24
        let (end, o) = (chunk &+ 1).multipliedReportingOverflow(by: metadata.chunkSize)
        guard !o, end <= data.size else {
            throw WardenError.corrupt("lvm2: thin LV \(name) maps chunk \(v) to data chunk \(chunk), beyond the pool's data")
        }
        return chunk
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        let chunk = metadata.chunkSize
        var done = 0
        while done < buffer.count {
            let pos = offset + UInt64(done)
            let within = pos % chunk
            let n = Int(min(chunk - within, UInt64(buffer.count - done)))
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + n)])
            if let c = try dataChunk(pos / chunk) {
                try data.read(at: c * chunk + within, into: part)
            } else {
                part.initializeMemory(as: UInt8.self, repeating: 0)
            }
            done += n
        }
    }

    public func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
        let (end, o) = offset.addingReportingOverflow(length)
        guard !o, end <= size else { throw WardenError(.invalidArgument, "mapping beyond the end of thin LV \(name)") }
        guard length > 0 else { return [] }
        let chunk = metadata.chunkSize
        // The mapped chunks in range, from the tree's leaves (not one lookup per chunk).
        var out: [BlockExtent] = []
        var pos = offset
        try metadata.forEach(root: root, in: (offset / chunk)..<((end - 1) / chunk + 1)) { v, _ in
            // v * chunk < end: v is in the range.
            let chunkStart = v * chunk
            let start = max(offset, chunkStart), stop = end - chunkStart > chunk ? chunkStart + chunk : end
            guard start >= pos else { return }   // keys out of order across nodes: damaged, skipped
            if start > pos { out.appendMerging(BlockExtent(offset: pos, length: start - pos, kind: .zero)) }
            out.appendMerging(BlockExtent(offset: start, length: stop - start, kind: .data))
            pos = stop
        }
        if pos < end { out.appendMerging(BlockExtent(offset: pos, length: end - pos, kind: .zero)) }
        return out
    }
}
