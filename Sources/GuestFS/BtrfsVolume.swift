import WardenCore
import DiskImage

/// A read-only view of one btrfs subvolume (by default the filesystem's default
/// subvolume), with the subvolumes nested in it reachable through their directory
/// entries, as a mount of that subvolume shows them. Create with ``Btrfs/open(_:)``, and
/// other views of the same filesystem with ``subvolume(path:)`` / ``subvolume(id:)``.
///
/// Inode numbers: btrfs numbers inodes per subvolume, so this view numbers the trees it
/// meets (its own is 0) and gives each inode `tree number << 48 | objectid`. Inodes of the
/// viewed subvolume keep their own numbers.
public final class BtrfsVolume: FileSystem, @unchecked Sendable {
    let core: BtrfsCore
    /// The subvolume (tree id) this view is rooted at.
    public let subvolumeID: UInt64
    public var typeName: String { "btrfs" }
    public var label: String? { core.sb.label }
    public let uuid: String?
    public let rootInode: UInt64
    public var warnings: [String] { core.warnings }

    private let trees = Locked<(ids: [UInt64], slots: [UInt64: UInt64])>(([], [:]))
    private let inodeCache = BoundedCache<UInt64, Btrfs.Inode>(capacity: 2048)
    private let extentCache = BoundedCache<UInt64, [Btrfs.FileExtent]>(capacity: 64)
    private let decompressedCache = BoundedCache<UInt64, [UInt8]>(capacity: 8)

    static let objectBits: UInt64 = 48
    static let objectMask: UInt64 = (1 << 48) - 1

    init(core: BtrfsCore, subvolume: UInt64? = nil) throws {
        self.core = core
        let id = try subvolume ?? core.defaultSubvolume()
        subvolumeID = id
        uuid = formatUUID(core.sb.fsid)
        let root = try core.treeRoot(id)
        trees.withLock { $0 = ([id], [id: 0]) }
        guard root.rootDirID < Self.objectMask else { throw Btrfs.corrupt("subvolume \(id) has root directory \(root.rootDirID)") }
        rootInode = root.rootDirID
        let st = try stat(rootInode)
        guard st.type == .directory else { throw Btrfs.corrupt("the root of subvolume \(id) is not a directory") }
    }

    // MARK: Subvolumes

    /// Every subvolume and snapshot of the filesystem.
    public func subvolumes() throws -> [Btrfs.Subvolume] { try core.subvolumes() }

    /// A view of subvolume `id` (5 is the top level).
    public func subvolume(id: UInt64) throws -> BtrfsVolume {
        if id == subvolumeID { return self }
        return try BtrfsVolume(core: core, subvolume: id)
    }

    /// A view of the subvolume at `path` from the top level (`/`, `@`, `root`,
    /// `@/.snapshots/1/snapshot`), as fstab's `subvol=` names it.
    public func subvolume(path: String) throws -> BtrfsVolume {
        let want = path.split(separator: "/").joined(separator: "/")
        if want.isEmpty { return try subvolume(id: Btrfs.ObjectID.fsTree) }
        let all = try subvolumes()
        guard let s = all.first(where: { $0.path == want }) else {
            throw WardenError.notFound("btrfs: no subvolume \(path) (subvolumes: \(all.isEmpty ? "none" : all.prefix(12).map(\.path).joined(separator: ", ")))")
        }
        return try subvolume(id: s.id)
    }

    /// The subvolumes that could hold a guest's root: not snapshots, in id order.
    public func rootCandidates() throws -> [BtrfsVolume] {
        try subvolumes().filter { !$0.isSnapshot && $0.id != subvolumeID }.map { try subvolume(id: $0.id) }
    }

    // MARK: Inode numbers

    private func tree(of inode: UInt64) throws -> (BtrfsCore.TreeRoot, UInt64) {
        let slot = inode >> Self.objectBits
        let id: UInt64? = trees.withLock { s in slot < UInt64(s.ids.count) ? s.ids[Int(slot)] : nil }
        guard let id else { throw WardenError.notFound("btrfs: inode \(inode) does not exist") }
        return (try core.treeRoot(id), inode & Self.objectMask)
    }

    private func number(tree id: UInt64, objectid: UInt64) throws -> UInt64 {
        guard objectid <= Self.objectMask else {
            throw Btrfs.unsupported("inode \(objectid) of subvolume \(id) is beyond the numbers this reader gives")
        }
        let slot: UInt64? = trees.withLock { s in
            if let v = s.slots[id] { return v }
            guard s.ids.count <= Btrfs.Limits.maxSubvolumes else { return nil }
            let v = UInt64(s.ids.count)
            s.ids.append(id)
            s.slots[id] = v
            return v
        }
        guard let slot else { throw Btrfs.limit("more than \(Btrfs.Limits.maxSubvolumes) subvolumes met") }
        return slot << Self.objectBits | objectid
    }

    // MARK: Inodes

    func inode(_ n: UInt64) throws -> Btrfs.Inode {
        if let i = inodeCache[n] { return i }
        let (t, obj) = try tree(of: n)
        if obj == Btrfs.ObjectID.emptySubvolumeDir {
            // A subvolume entry whose subvolume is missing (in a snapshot, say): an empty directory.
            return Btrfs.Inode(size: 0, nlink: 1, uid: 0, gid: 0, mode: 0o40755, flags: 0, mtime: 0)
        }
        guard let d = try core.item(root: t.bytenr, level: t.level, Btrfs.Key(obj, Btrfs.ItemType.inodeItem, 0)) else {
            throw WardenError.notFound("btrfs: inode \(obj) of subvolume \(t.id) does not exist")
        }
        let ino = try Btrfs.Inode(d)
        inodeCache.put(n, ino)
        return ino
    }

    public func stat(_ n: UInt64) throws -> FileStat {
        let ino = try inode(n)
        guard let type = FileType(mode: ino.mode) else {
            throw Btrfs.corrupt("inode \(n) has unknown file type in mode 0o\(String(ino.mode, radix: 8))")
        }
        let size: UInt64
        switch type {
        case .regular, .symlink: size = ino.size
        case .directory: size = ino.size
        default: size = 0
        }
        return FileStat(inode: n, type: type, mode: ino.mode, uid: ino.uid, gid: ino.gid, size: size,
                        links: ino.nlink, mtime: ino.mtime)
    }

    public func readDirectory(_ n: UInt64) throws -> [DirectoryEntry] {
        let st = try stat(n)
        guard st.type == .directory else { throw WardenError(.invalidArgument, "btrfs: inode \(n) is not a directory") }
        let (t, obj) = try tree(of: n)
        if obj == Btrfs.ObjectID.emptySubvolumeDir { return [] }
        var out: [DirectoryEntry] = []
        var pending: [(DirectoryEntry, UInt64)] = []   // subvolume entries, numbered below
        try core.walk(root: t.bytenr, level: t.level, from: Btrfs.Key(obj, Btrfs.ItemType.dirIndex, 0),
                      to: Btrfs.Key(obj, Btrfs.ItemType.dirIndex, UInt64.max)) { _, d in
            guard out.count + pending.count < Btrfs.Limits.maxDirectoryEntries else {
                throw Btrfs.limit("directory \(n) holds more than \(Btrfs.Limits.maxDirectoryEntries) entries")
            }
            for e in try Btrfs.DirEntry.parse(d) {
                let type = FileType(direntCode: e.type)
                switch e.location.type {
                case Btrfs.ItemType.inodeItem:
                    out.append(DirectoryEntry(nameBytes: e.name, inode: try number(tree: t.id, objectid: e.location.objectid), type: type))
                case Btrfs.ItemType.rootItem:
                    pending.append((DirectoryEntry(nameBytes: e.name, inode: 0, type: .directory), e.location.objectid))
                default:
                    throw Btrfs.corrupt("directory \(n) entry points at an item of type \(e.location.type)")
                }
            }
            return true
        }
        for (entry, sub) in pending {
            var e = entry
            // Enter the subvolume only if the root tree says it lives here (ROOT_REF from this
            // tree, naming this directory and name): a nested subvolume copied into a
            // snapshot is an empty directory, as the kernel shows it.
            if try core.isReferenced(sub, from: t.id, directory: obj, name: entry.nameBytes), let r = try? core.treeRoot(sub) {
                e.inode = try number(tree: sub, objectid: r.rootDirID)
            } else {
                e.inode = try number(tree: t.id, objectid: Btrfs.ObjectID.emptySubvolumeDir)
            }
            out.append(e)
        }
        return out
    }

    // MARK: File data

    func extents(_ n: UInt64, size: UInt64) throws -> [Btrfs.FileExtent] {
        if let e = extentCache[n] { return e }
        let (t, obj) = try tree(of: n)
        var out: [Btrfs.FileExtent] = []
        try core.walk(root: t.bytenr, level: t.level, from: Btrfs.Key(obj, Btrfs.ItemType.extentData, 0),
                      to: Btrfs.Key(obj, Btrfs.ItemType.extentData, UInt64.max)) { k, d in
            guard k.offset < size else { return false }
            guard out.count < Btrfs.Limits.maxExtentsPerFile else {
                throw Btrfs.limit("inode \(n) has more than \(Btrfs.Limits.maxExtentsPerFile) extents")
            }
            out.append(try Btrfs.FileExtent(fileOffset: k.offset, d, inode: "inode \(obj) of subvolume \(t.id)"))
            return true
        }
        extentCache.put(n, out)
        return out
    }

    /// Fills `buf` with bytes `offset ..< offset + buf.count` of the file (within its size).
    private func readData(_ n: UInt64, size: UInt64, offset: UInt64, into buf: UnsafeMutableRawBufferPointer) throws {
        guard buf.count > 0 else { return }
        let end = offset + UInt64(buf.count)
        let list = try extents(n, size: size)
        // First extent that may overlap: the last one starting at or before `offset`.
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if list[mid].fileOffset <= offset { lo = mid + 1 } else { hi = mid }
        }
        var i = max(0, lo - 1)
        while i < list.count, list[i].fileOffset < end {
            let e = list[i]
            i += 1
            let eEnd = e.fileOffset + e.length
            guard eEnd > offset else { continue }
            let from = max(offset, e.fileOffset), to = min(end, eEnd)
            let dst = UnsafeMutableRawBufferPointer(rebasing: buf[Int(from - offset)..<Int(to - offset)])
            let within = from - e.fileOffset
            switch e.kind {
            case .prealloc:
                continue
            case .inline(let payload):
                let data = e.compression == 0 ? payload
                    : try Btrfs.decompress(payload, type: e.compression, size: Int(e.ramBytes), sectorSize: core.sb.sectorSize,
                                           what: "inline extent of inode \(n)")
                guard within + UInt64(dst.count) <= UInt64(data.count) else {
                    throw Btrfs.corrupt("inline extent of inode \(n) holds \(data.count) bytes, fewer than its file needs")
                }
                data.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(within)..<(Int(within) + dst.count)])) }
            case .regular(let bytenr, let diskNum, let extOffset):
                if bytenr == 0 { continue }   // a hole
                if e.compression == 0 {
                    let addr = try Checked.add(bytenr, try Checked.add(extOffset, within, "btrfs extent offset"), "btrfs extent address")
                    try core.readLogical(addr, into: dst)
                } else {
                    let data = try decompressed(bytenr: bytenr, diskNumBytes: diskNum, ramBytes: e.ramBytes,
                                                compression: e.compression, inode: n)
                    let start = Int(extOffset + within)
                    guard start + dst.count <= data.count else {
                        throw Btrfs.corrupt("compressed extent at \(bytenr) of inode \(n) is shorter than its file part")
                    }
                    data.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<(start + dst.count)])) }
                }
            }
        }
    }

    private func decompressed(bytenr: UInt64, diskNumBytes: UInt64, ramBytes: UInt64, compression: UInt8, inode n: UInt64) throws -> [UInt8] {
        if let d = decompressedCache[bytenr], d.count == Int(ramBytes) { return d }
        let raw = try core.readLogical(bytenr, count: Int(diskNumBytes))
        let d = try Btrfs.decompress(raw, type: compression, size: Int(ramBytes), sectorSize: core.sb.sectorSize,
                                     what: "\(Btrfs.Compression.name(compression)) extent at \(bytenr) of inode \(n)")
        decompressedCache.put(bytenr, d)
        return d
    }

    private func regular(_ n: UInt64) throws -> Btrfs.Inode {
        let ino = try inode(n)
        guard FileType(mode: ino.mode) == .regular else { throw WardenError(.invalidArgument, "btrfs: inode \(n) is not a regular file") }
        return ino
    }

    public func read(_ n: UInt64, at offset: UInt64, count: Int) throws -> [UInt8] {
        guard count >= 0 else { throw WardenError(.invalidArgument, "btrfs: negative read length \(count)") }
        let ino = try regular(n)
        guard offset < ino.size, count > 0 else { return [] }
        let len = min(UInt64(count), ino.size - offset)
        guard len <= UInt64(Btrfs.Limits.maxReadBytes) else {
            throw Btrfs.limit("read of \(len) bytes from inode \(n) exceeds the \(Btrfs.Limits.maxReadBytes)-byte limit")
        }
        var out = [UInt8](repeating: 0, count: Int(len))
        try out.withUnsafeMutableBytes { try readData(n, size: ino.size, offset: offset, into: $0) }
        return out
    }

    public func forEachChunk(_ n: UInt64, chunkSize: Int, _ body: ([UInt8]) throws -> Void) throws {
        let ino = try regular(n)
        let chunk = UInt64(max(4096, min(chunkSize, Btrfs.Limits.maxReadBytes)))
        var off: UInt64 = 0
        while off < ino.size {
            let len = min(chunk, ino.size - off)
            var buf = [UInt8](repeating: 0, count: Int(len))
            try buf.withUnsafeMutableBytes { try readData(n, size: ino.size, offset: off, into: $0) }
            try body(buf)
            off += len
        }
    }

    public func readLink(_ n: UInt64) throws -> [UInt8] {
        let ino = try inode(n)
        guard FileType(mode: ino.mode) == .symlink else { throw WardenError(.invalidArgument, "btrfs: inode \(n) is not a symbolic link") }
        guard ino.size > 0, ino.size <= UInt64(Btrfs.Limits.maxSymlinkBytes) else {
            throw Btrfs.corrupt("symlink inode \(n) claims a \(ino.size)-byte target")
        }
        var out = [UInt8](repeating: 0, count: Int(ino.size))
        try out.withUnsafeMutableBytes { try readData(n, size: ino.size, offset: 0, into: $0) }
        return out
    }
}
