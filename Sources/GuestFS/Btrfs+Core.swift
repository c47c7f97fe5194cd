import WardenCore
import DiskImage

/// What every view of one btrfs filesystem shares: the device, the superblock, the chunk
/// map, the node cache and the warnings.
///
/// Thread-safe: the caches are ``BoundedCache``s and the warnings a ``WarningLog``.
final class BtrfsCore: @unchecked Sendable {
    let device: any BlockDevice
    let sb: Btrfs.SuperBlock
    /// Byte offset of the superblock copy in use (64 KiB unless the primary was unusable).
    let superblockOffset: UInt64
    /// Sorted by logical address, non-overlapping.
    private(set) var chunks: [Btrfs.Chunk] = []
    private let nodeCache = BoundedCache<UInt64, Btrfs.Node>(capacity: 512)
    private let rootCache = BoundedCache<UInt64, TreeRoot>(capacity: 256)
    private let warningLog = WarningLog(limit: Btrfs.Limits.maxWarnings, suppressedLine: "btrfs: further warnings suppressed")
    var warnings: [String] { warningLog.all }
    func warn(_ message: String) { warningLog.warn(message) }

    /// A tree's root node and what its ROOT_ITEM says about it.
    struct TreeRoot: Sendable {
        var id: UInt64
        var bytenr: UInt64
        var level: UInt8
        var rootDirID: UInt64
        var flags: UInt64
        var generation: UInt64
        var uuid: [UInt8]?
        var parentUUID: [UInt8]?
        var createdGeneration: UInt64?
        var created: Int64?
        var readOnly: Bool { flags & 1 != 0 }
    }

    init(device: any BlockDevice) throws {
        self.device = device
        // The primary superblock, or else the newest valid mirror.
        var chosen: (Btrfs.SuperBlock, UInt64)?
        var firstError: WardenError?
        for off in Btrfs.superblockOffsets {
            guard off.addingReportingOverflow(UInt64(Btrfs.superblockSize)).partialValue <= device.size else { break }
            do {
                let raw = try device.read(at: off, count: Btrfs.superblockSize)
                let sb = try Btrfs.SuperBlock(raw, at: off)
                if sb.checksumType == Btrfs.ChecksumType.crc32c.rawValue {
                    let (stored, computed) = Btrfs.crc32c(raw)
                    guard stored == computed else {
                        throw Btrfs.corrupt("superblock at byte \(off) fails its checksum (stored \(hex(stored)), computed \(hex(computed)))")
                    }
                }
                if off == Btrfs.superblockOffsets[0] { chosen = (sb, off); break }
                if chosen == nil || sb.generation > chosen!.0.generation { chosen = (sb, off) }
            } catch let e as WardenError {
                if firstError == nil { firstError = e }
            }
        }
        guard let (sb, off) = chosen else {
            throw firstError ?? Btrfs.corrupt("no superblock found")
        }
        self.sb = sb
        superblockOffset = off
        if off != Btrfs.superblockOffsets[0] {
            warn("btrfs: the primary superblock is unusable (\(firstError?.message ?? "damaged")); read the copy at byte \(off)")
        }
        if sb.checksumType != Btrfs.ChecksumType.crc32c.rawValue {
            warn("btrfs: metadata checksums of type \(sb.checksumType) are not verified")
        }
        let unknown = sb.incompat & ~Btrfs.Incompat.understood
        if unknown != 0 {
            throw Btrfs.unsupported("incompatible features \(describeFeatureBits(unknown, names: Btrfs.Incompat.names)) are not read")
        }
        try loadChunks()
        if sb.logRoot != 0 {
            warn("btrfs: a log tree is present (changes fsync'd since the last commit): it is not replayed, so this view may miss the newest changes")
        }
    }

    // MARK: Chunks

    private func loadChunks() throws {
        // Bootstrap from the system chunk array, then read the chunk tree.
        let a = sb.sysChunkArray
        var at = 0
        var boot: [Btrfs.Chunk] = []
        while at < a.count {
            guard a.count - at >= 17 else { throw Btrfs.corrupt("system chunk array is truncated") }
            let key = try Btrfs.Key(a, at: at)
            guard key.type == Btrfs.ItemType.chunkItem else {
                throw Btrfs.corrupt("system chunk array holds an item of type \(key.type)")
            }
            let (chunk, size) = try Btrfs.parseChunk(a, at: at + 17, logical: key.offset)
            boot.append(chunk)
            at += 17 + size
        }
        chunks = try Self.sorted(boot)
        var all: [Btrfs.Chunk] = []
        try walk(root: sb.chunkRoot, level: sb.chunkRootLevel,
                 from: Btrfs.Key(Btrfs.ObjectID.firstChunkTree, Btrfs.ItemType.chunkItem, 0),
                 to: Btrfs.Key(Btrfs.ObjectID.firstChunkTree, Btrfs.ItemType.chunkItem, UInt64.max)) { key, data in
            guard all.count < Btrfs.Limits.maxChunks else { throw Btrfs.limit("more than \(Btrfs.Limits.maxChunks) chunks") }
            let (chunk, _) = try Btrfs.parseChunk(Array(data), at: 0, logical: key.offset)
            all.append(chunk)
            return true
        }
        guard !all.isEmpty else { throw Btrfs.corrupt("the chunk tree holds no chunks") }
        chunks = try Self.sorted(all)
    }

    private static func sorted(_ list: [Btrfs.Chunk]) throws -> [Btrfs.Chunk] {
        let s = list.sorted { $0.logical < $1.logical }
        for i in s.indices.dropFirst() where s[i].logical < s[i - 1].end {
            throw Btrfs.corrupt("chunks at \(s[i - 1].logical) and \(s[i].logical) overlap")
        }
        return s
    }

    /// The chunk holding logical address `logical`.
    private func chunk(at logical: UInt64) throws -> Btrfs.Chunk {
        var lo = 0, hi = chunks.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if chunks[mid].end <= logical { lo = mid + 1 } else { hi = mid }
        }
        guard lo < chunks.count, chunks[lo].logical <= logical else {
            throw Btrfs.corrupt("logical address \(logical) lies in no chunk")
        }
        return chunks[lo]
    }

    /// The physical offsets on this device of every copy of `logical` (one for single,
    /// two for DUP, the copies on this device for RAID1*).
    func physical(_ logical: UInt64) throws -> (offsets: [UInt64], chunkEnd: UInt64) {
        let c = try chunk(at: logical)
        if c.type & Btrfs.BlockGroup.striped != 0 {
            throw Btrfs.unsupported("chunk at \(c.logical) uses a striped profile (RAID0/10/5/6), which is not read")
        }
        let within = logical - c.logical
        let mine = c.stripes.filter { $0.devid == sb.devid }
        guard !mine.isEmpty else {
            throw Btrfs.unsupported("chunk at \(c.logical) lies on device \(c.stripes.map { String($0.devid) }.joined(separator: ", ")), not on this image (device \(sb.devid) of a \(sb.numDevices)-device filesystem)")
        }
        var out: [UInt64] = []
        for s in mine {
            let (p, o) = s.offset.addingReportingOverflow(within)
            guard !o, p < device.size else {
                throw Btrfs.corrupt("chunk at \(c.logical) maps to byte \(s.offset), beyond the \(device.size)-byte device")
            }
            out.append(p)
        }
        return (out, c.end)
    }

    /// Reads `count` bytes of logical address space (from the first copy).
    func readLogical(_ logical: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try readLogical(logical, into: $0) }
        return out
    }

    func readLogical(_ logical: UInt64, into buf: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buf.count {
            let addr = try Checked.add(logical, UInt64(done), "btrfs logical address")
            let (offsets, end) = try physical(addr)
            let n = Int(min(UInt64(buf.count - done), end - addr))
            let p = offsets[0]
            guard p.addingReportingOverflow(UInt64(n)).partialValue <= device.size else {
                throw Btrfs.corrupt("logical address \(addr) maps to byte \(p), beyond the \(device.size)-byte device")
            }
            try device.read(at: p, into: UnsafeMutableRawBufferPointer(rebasing: buf[done..<(done + n)]))
            done += n
        }
    }

    // MARK: Nodes

    /// Reads the tree node at `bytenr`, which must be at `level`. A copy failing its
    /// checksum is replaced by another copy (DUP, RAID1) when one verifies; otherwise it
    /// is read with a warning, as the other readers do.
    func node(_ bytenr: UInt64, level: UInt8) throws -> Btrfs.Node {
        if let n = nodeCache[bytenr] {
            guard n.level == level else { throw Btrfs.corrupt("node \(bytenr) is at level \(n.level), expected \(level)") }
            return n
        }
        let (offsets, end) = try physical(bytenr)
        guard end - bytenr >= UInt64(sb.nodeSize) else { throw Btrfs.corrupt("node \(bytenr) crosses the end of its chunk") }
        var chosen: [UInt8]?
        var mismatch: (UInt32, UInt32)?
        for p in offsets {
            guard p.addingReportingOverflow(UInt64(sb.nodeSize)).partialValue <= device.size else { continue }
            let raw = try device.read(at: p, count: sb.nodeSize)
            if sb.checksumType == Btrfs.ChecksumType.crc32c.rawValue {
                let (stored, computed) = Btrfs.crc32c(raw)
                if stored != computed {
                    if chosen == nil { chosen = raw; mismatch = (stored, computed) }
                    continue
                }
            }
            chosen = raw
            mismatch = nil
            break
        }
        guard let raw = chosen else { throw Btrfs.corrupt("node \(bytenr) lies beyond the \(device.size)-byte device") }
        if let (stored, computed) = mismatch {
            warn("btrfs: node \(bytenr) checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
        }
        let headerBytenr: UInt64 = try raw.le(0x30)
        guard headerBytenr == bytenr else { throw Btrfs.corrupt("node at \(bytenr) says it is node \(headerBytenr)") }
        guard Array(raw[0x20..<0x30]) == sb.metadataFSID else {
            throw Btrfs.corrupt("node \(bytenr) belongs to another filesystem")
        }
        let n = try Btrfs.Node(bytenr: bytenr, raw: raw)
        guard n.level == level else { throw Btrfs.corrupt("node \(bytenr) is at level \(n.level), expected \(level)") }
        nodeCache.put(bytenr, n)
        return n
    }

    /// Calls `body` with every item whose key lies in `lo…hi`, in key order, until it
    /// returns false. Levels must fall by one at each step, and at most
    /// ``Btrfs/Limits/maxNodesPerWalk`` nodes are visited.
    func walk(root: UInt64, level: UInt8, from lo: Btrfs.Key, to hi: Btrfs.Key,
              _ body: (Btrfs.Key, ArraySlice<UInt8>) throws -> Bool) throws {
        guard level <= Btrfs.Limits.maxLevel else { throw Btrfs.corrupt("tree root \(root) is at level \(level)") }
        var budget = Btrfs.Limits.maxNodesPerWalk
        _ = try walkNode(root, level: level, lo, hi, &budget, body)
    }

    private func walkNode(_ bytenr: UInt64, level: UInt8, _ lo: Btrfs.Key, _ hi: Btrfs.Key, _ budget: inout Int,
                          _ body: (Btrfs.Key, ArraySlice<UInt8>) throws -> Bool) throws -> Bool {
        guard budget > 0 else { throw Btrfs.limit("a tree walk visited more than \(Btrfs.Limits.maxNodesPerWalk) nodes") }
        budget -= 1
        let n = try node(bytenr, level: level)
        var i = n.lowerBound(lo)
        if level == 0 {
            while i < n.keys.count, n.keys[i] <= hi {
                if try !body(n.keys[i], n.itemData(i)) { return false }
                i += 1
            }
            return true
        }
        // The child whose range holds `lo` is the last key ≤ lo.
        if i == n.keys.count || n.keys[i] > lo { i = max(0, i - 1) }
        while i < n.keys.count, n.keys[i] <= hi {
            if try !walkNode(n.children[i], level: level - 1, lo, hi, &budget, body) { return false }
            i += 1
        }
        return true
    }

    /// Whether node `bytenr` has been read (and is still cached).
    func hasRead(_ bytenr: UInt64) -> Bool { nodeCache[bytenr] != nil }

    /// Calls `body` with the address of every node of the tree at `root`, parents first.
    func walkNodes(root: UInt64, level: UInt8, _ body: (UInt64) throws -> Void) throws {
        var budget = Btrfs.Limits.maxNodesPerWalk
        func visit(_ bytenr: UInt64, _ level: UInt8) throws {
            guard budget > 0 else { throw Btrfs.limit("a tree walk visited more than \(Btrfs.Limits.maxNodesPerWalk) nodes") }
            budget -= 1
            let n = try node(bytenr, level: level)
            try body(bytenr)
            if level > 0 { for c in n.children { try visit(c, level - 1) } }
        }
        guard level <= Btrfs.Limits.maxLevel else { throw Btrfs.corrupt("tree root \(root) is at level \(level)") }
        try visit(root, level)
    }

    /// The data of the item with exactly `key`, if any.
    func item(root: UInt64, level: UInt8, _ key: Btrfs.Key) throws -> ArraySlice<UInt8>? {
        var found: ArraySlice<UInt8>?
        try walk(root: root, level: level, from: key, to: key) { _, d in found = d; return false }
        return found
    }

    // MARK: Trees

    /// The root of tree `id` (5 or a subvolume), from its ROOT_ITEM.
    func treeRoot(_ id: UInt64) throws -> TreeRoot {
        if let r = rootCache[id] { return r }
        var found: (Btrfs.Key, ArraySlice<UInt8>)?
        try walk(root: sb.root, level: sb.rootLevel, from: Btrfs.Key(id, Btrfs.ItemType.rootItem, 0),
                 to: Btrfs.Key(id, Btrfs.ItemType.rootItem, UInt64.max)) { k, d in found = (k, d); return false }
        guard let (_, d) = found else { throw WardenError.notFound("btrfs: no subvolume \(id)") }
        guard d.count >= 239 else { throw Btrfs.corrupt("root item of tree \(id) is truncated (\(d.count) bytes)") }
        var r = TreeRoot(id: id, bytenr: try d.le(176), level: d[d.startIndex + 238], rootDirID: try d.le(168),
                         flags: try d.le(208), generation: try d.le(160))
        guard r.level <= Btrfs.Limits.maxLevel else { throw Btrfs.corrupt("tree \(id) has root level \(r.level)") }
        if d.count >= 351 {
            func uuid(_ at: Int) -> [UInt8]? {
                let b = Array(d[(d.startIndex + at)..<(d.startIndex + at + 16)])
                return b.allSatisfy { $0 == 0 } ? nil : b
            }
            r.uuid = uuid(247)
            r.parentUUID = uuid(263)
            r.createdGeneration = try d.le(303)
            r.created = Int64(bitPattern: try d.le(339) as UInt64)
        }
        rootCache.put(id, r)
        return r
    }

    /// Whether the root tree holds a ROOT_REF from tree `parent` to subvolume `child` for the
    /// entry `name` of directory `directory`.
    func isReferenced(_ child: UInt64, from parent: UInt64, directory: UInt64, name: [UInt8]) throws -> Bool {
        guard let d = try item(root: sb.root, level: sb.rootLevel, Btrfs.Key(parent, Btrfs.ItemType.rootRef, child)),
              d.count >= 18 else { return false }
        let dir: UInt64 = try d.le(0)
        let len: UInt16 = try d.le(16)
        guard 18 + Int(len) <= d.count else { throw Btrfs.corrupt("root ref of subvolume \(child) has a bad name") }
        return dir == directory && Array(d[(d.startIndex + 18)..<(d.startIndex + 18 + Int(len))]) == name
    }

    /// The default subvolume (directory 6's "default" entry in the root tree), or 5.
    func defaultSubvolume() throws -> UInt64 {
        var id = Btrfs.ObjectID.fsTree
        try walk(root: sb.root, level: sb.rootLevel, from: Btrfs.Key(Btrfs.ObjectID.rootTreeDir, Btrfs.ItemType.dirItem, 0),
                 to: Btrfs.Key(Btrfs.ObjectID.rootTreeDir, Btrfs.ItemType.dirItem, UInt64.max)) { _, d in
            for e in try Btrfs.DirEntry.parse(d) where e.name == Array("default".utf8) {
                id = e.location.objectid
                return false
            }
            return true
        }
        if id != Btrfs.ObjectID.fsTree {
            do { _ = try treeRoot(id) } catch {
                warn("btrfs: the default subvolume \(id) does not exist; the top level is read instead")
                return Btrfs.ObjectID.fsTree
            }
        }
        return id
    }

    // MARK: Subvolumes

    /// Every subvolume and snapshot with the path where it lives (from the top level),
    /// in id order.
    func subvolumes() throws -> [Btrfs.Subvolume] {
        var backrefs: [UInt64: (parent: UInt64, dir: UInt64, name: [UInt8])] = [:]
        var ids: [UInt64] = []
        try walk(root: sb.root, level: sb.rootLevel, from: Btrfs.Key(Btrfs.ObjectID.firstFree, 0, 0),
                 to: Btrfs.Key(Btrfs.ObjectID.lastFree, UInt8.max, UInt64.max)) { k, d in
            switch k.type {
            case Btrfs.ItemType.rootItem:
                if ids.last != k.objectid { ids.append(k.objectid) }
                guard ids.count <= Btrfs.Limits.maxSubvolumes else {
                    throw Btrfs.limit("more than \(Btrfs.Limits.maxSubvolumes) subvolumes")
                }
            case Btrfs.ItemType.rootBackref:
                guard d.count >= 18 else { throw Btrfs.corrupt("root backref of subvolume \(k.objectid) is truncated") }
                let dir: UInt64 = try d.le(0)
                let len: UInt16 = try d.le(16)
                guard 18 + Int(len) <= d.count, len >= 1 else { throw Btrfs.corrupt("root backref of subvolume \(k.objectid) has a bad name") }
                if backrefs[k.objectid] == nil {
                    backrefs[k.objectid] = (k.offset, dir, Array(d[(d.startIndex + 18)..<(d.startIndex + 18 + Int(len))]))
                }
            default:
                break
            }
            return true
        }
        let defaultID = try defaultSubvolume()
        var paths: [UInt64: String] = [Btrfs.ObjectID.fsTree: ""]
        func path(_ id: UInt64, depth: Int) throws -> String? {
            if let p = paths[id] { return p }
            guard depth < 64, let b = backrefs[id], let parent = try path(b.parent, depth: depth + 1) else { return nil }
            let r = try treeRoot(b.parent)
            let dir = try directoryPath(tree: r, inode: b.dir)
            let name = ManifestEscaping.escape(b.name)
            let p = [parent, dir, name].filter { !$0.isEmpty }.joined(separator: "/")
            paths[id] = p
            return p
        }
        var out: [Btrfs.Subvolume] = []
        for id in ids {
            // A tree without a backref is being deleted (or is not a subvolume): skip it.
            guard let b = backrefs[id], let p = try path(id, depth: 0) else { continue }
            let r = try treeRoot(id)
            out.append(Btrfs.Subvolume(id: id, parentID: b.parent, path: p, uuid: r.uuid.map(formatUUID),
                                       parentUUID: r.parentUUID.map(formatUUID), generation: r.generation,
                                       createdGeneration: r.createdGeneration, created: r.created,
                                       readOnly: r.readOnly, isDefault: id == defaultID))
        }
        return out
    }

    /// The path of directory `inode` inside tree `tree`, from the tree's root directory
    /// ("" for the root itself), by following INODE_REFs upwards.
    func directoryPath(tree: TreeRoot, inode: UInt64) throws -> String {
        var parts: [String] = []
        var cur = inode
        var steps = 0
        while cur != tree.rootDirID {
            steps += 1
            guard steps <= Btrfs.Limits.maxPathDepth else {
                throw Btrfs.corrupt("directory \(inode) of tree \(tree.id) is more than \(Btrfs.Limits.maxPathDepth) levels deep or in a loop")
            }
            var next: (UInt64, [UInt8])?
            try walk(root: tree.bytenr, level: tree.level, from: Btrfs.Key(cur, Btrfs.ItemType.inodeRef, 0),
                     to: Btrfs.Key(cur, Btrfs.ItemType.inodeRef, UInt64.max)) { k, d in
                guard d.count >= 10 else { throw Btrfs.corrupt("inode ref of \(cur) is truncated") }
                let len: UInt16 = try d.le(8)
                guard len >= 1, 10 + Int(len) <= d.count else { throw Btrfs.corrupt("inode ref of \(cur) has a bad name") }
                next = (k.offset, Array(d[(d.startIndex + 10)..<(d.startIndex + 10 + Int(len))]))
                return false
            }
            guard let (parent, name) = next else {
                throw Btrfs.corrupt("directory \(cur) of tree \(tree.id) has no name in its parent")
            }
            parts.append(ManifestEscaping.escape(name))
            cur = parent
        }
        return parts.reversed().joined(separator: "/")
    }
}

extension Btrfs {
    /// A subvolume or snapshot, as `image ls --snapshots` lists it.
    public struct Subvolume: Sendable, Codable, Equatable {
        public var id: UInt64
        /// The subvolume it lives in (5 for the top level).
        public var parentID: UInt64
        /// Where it lives, from the top level, without a leading slash.
        public var path: String
        public var uuid: String?
        /// Set for snapshots: the subvolume it was taken of.
        public var parentUUID: String?
        public var generation: UInt64
        public var createdGeneration: UInt64?
        /// Creation time, seconds since the epoch.
        public var created: Int64?
        public var readOnly: Bool
        public var isDefault: Bool
        public var isSnapshot: Bool { parentUUID != nil }

        enum CodingKeys: String, CodingKey {
            case id, parentID, path, uuid, parentUUID, generation, createdGeneration, created, readOnly, isDefault, isSnapshot
        }

        public init(id: UInt64, parentID: UInt64, path: String, uuid: String?, parentUUID: String?, generation: UInt64,
                    createdGeneration: UInt64?, created: Int64?, readOnly: Bool, isDefault: Bool) {
            self.id = id
            self.parentID = parentID
            self.path = path
            self.uuid = uuid
            self.parentUUID = parentUUID
            self.generation = generation
            self.createdGeneration = createdGeneration
            self.created = created
            self.readOnly = readOnly
            self.isDefault = isDefault
        }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            self.init(id: try c.decode(UInt64.self, forKey: .id), parentID: try c.decode(UInt64.self, forKey: .parentID),
                      path: try c.decode(String.self, forKey: .path), uuid: try c.decodeIfPresent(String.self, forKey: .uuid),
                      parentUUID: try c.decodeIfPresent(String.self, forKey: .parentUUID),
                      generation: try c.decode(UInt64.self, forKey: .generation),
                      createdGeneration: try c.decodeIfPresent(UInt64.self, forKey: .createdGeneration),
                      created: try c.decodeIfPresent(Int64.self, forKey: .created),
                      readOnly: try c.decode(Bool.self, forKey: .readOnly), isDefault: try c.decode(Bool.self, forKey: .isDefault))
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(id, forKey: .id)
            try c.encode(parentID, forKey: .parentID)
            try c.encode(path, forKey: .path)
            try c.encodeIfPresent(uuid, forKey: .uuid)
            try c.encodeIfPresent(parentUUID, forKey: .parentUUID)
            try c.encode(generation, forKey: .generation)
            try c.encodeIfPresent(createdGeneration, forKey: .createdGeneration)
            try c.encodeIfPresent(created, forKey: .created)
            try c.encode(readOnly, forKey: .readOnly)
            try c.encode(isDefault, forKey: .isDefault)
            try c.encode(isSnapshot, forKey: .isSnapshot)
        }
    }
}
