import WardenCore
import DiskImage
import Partitions

/// The guest's whole file tree as the guest would mount it: the root filesystem plus
/// the filesystems its `/etc/fstab` mounts, found on this disk by UUID, label,
/// PARTUUID, PARTLABEL, device name or LVM name.
///
/// Whatever cannot be assembled (a network filesystem, a device on another disk, a
/// malformed line) is recorded in ``problems``; it never aborts assembly. Paths resolve
/// across mount points with symlinks confined to the guest root, like
/// ``GuestPathResolver`` does inside one filesystem.
public final class GuestView: @unchecked Sendable {
    /// One assembled mount.
    public struct Mount: Sendable, Codable {
        /// Canonical mount point, `/` for the root.
        public var path: String
        /// The fstab spec that named it (`UUID=…`), or `root` for the detected root.
        public var spec: String
        public var volume: GuestVolume
        /// Filesystem type as detected (not as fstab claims).
        public var type: String
        /// btrfs: the subvolume mounted, as its path from the top level (`/` for the top level).
        public var subvolume: String?
    }

    /// An fstab entry that was not assembled, and why.
    public struct Problem: Sendable, Codable, Equatable {
        public var line: Int
        public var spec: String
        public var mountPoint: String
        public var reason: String
    }

    public let mounts: [Mount]
    public let problems: [Problem]
    private let filesystems: [String: any FileSystem]   // by mount path
    /// The root filesystem.
    public let root: any FileSystem

    init(root: any FileSystem, mounts: [Mount], filesystems: [String: any FileSystem], problems: [Problem]) {
        self.root = root
        self.mounts = mounts.sorted { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
        self.filesystems = filesystems
        self.problems = problems
    }

    /// The filesystem mounted at `path`, if any.
    public func filesystem(at path: String) -> (any FileSystem)? { filesystems[path] }

    // MARK: Assembly

    /// Finds the root filesystem on `disk` and assembles its fstab mounts.
    public static func assemble(disk: any BlockDevice, layout: GuestDiskLayout) throws -> GuestView {
        var opened: [Int: any FileSystem] = [:]   // by volume index in layout.volumes
        var failed: [Int: String] = [:]           // why a readable-looking volume did not open
        func open(_ i: Int) -> (any FileSystem)? {
            if let fs = opened[i] { return fs }
            guard failed[i] == nil, layout.volumes[i].filesystem?.isReadable == true else { return nil }
            do {
                let fs = try GuestDisk.openFileSystem(try GuestDisk.device(for: layout.volumes[i], in: layout, on: disk))
                opened[i] = fs
                return fs
            } catch {
                failed[i] = (error as? WardenError)?.message ?? "\(error)"
                return nil
            }
        }
        // Root: a readable filesystem with an /etc directory and os-release or fstab;
        // the largest such wins.
        func holdsRoot(_ fs: any FileSystem) -> Bool {
            let r = GuestPathResolver(fs)
            guard let etc = try? r.resolve("/etc"), etc.stat.type == .directory else { return false }
            return (try? r.resolve("/etc/fstab", followFinal: false)) != nil
                || (try? r.resolve("/etc/os-release", followFinal: false)) != nil
        }
        var rootIndex: Int?
        var rootFound: (any FileSystem)?
        for (i, v) in layout.volumes.enumerated() {
            guard let fs = open(i) else { continue }
            if let best = rootIndex, layout.volumes[best].size >= v.size { continue }
            // btrfs: the default subvolume, or else the first subvolume (not a snapshot) that
            // holds one, as Fedora's `root` and Ubuntu's `@` under a top-level default.
            var candidates: [any FileSystem] = [fs]
            if let b = fs as? BtrfsVolume, !holdsRoot(fs) { candidates += (try? b.rootCandidates()) ?? [] }
            guard let found = candidates.first(where: holdsRoot) else { continue }
            rootIndex = i
            rootFound = found
        }
        guard let rootIndex, var rootFS = rootFound else {
            // Say which volumes could not be read at all: the root may well be one of them.
            let unread = layout.volumes.enumerated().compactMap { i, v -> String? in
                guard let f = v.filesystem else { return nil }
                if let why = failed[i] { return "\(f.type) on \(v.displayName) (\(why))" }
                return f.isReadable ? nil : "\(f.type) on \(v.displayName)"
            }
            let why = unread.isEmpty ? "" : "; not read: " + unread.prefix(8).joined(separator: ", ") + (unread.count > 8 ? ", …" : "")
            throw WardenError.notFound("no root filesystem found (no readable volume holds /etc with os-release or fstab\(why))")
        }
        var rootMount = Mount(path: "/", spec: "root", volume: layout.volumes[rootIndex],
                              type: layout.volumes[rootIndex].filesystem?.type ?? "unknown",
                              subvolume: (rootFS as? BtrfsVolume).map(Self.subvolumePath))
        var problems: [Problem] = []

        let fstab: [UInt8]?
        do {
            let r = try GuestPathResolver(rootFS).resolve("/etc/fstab")
            fstab = r.stat.type == .regular && r.stat.size <= 1 << 20
                ? try rootFS.read(r.inode, at: 0, count: Int(r.stat.size)) : nil
        } catch {
            fstab = nil
        }
        var mounts: [Mount] = []
        var filesystems: [String: any FileSystem] = [:]
        for entry in FSTab.parse(fstab ?? []) {
            if let reason = entry.problem {
                problems.append(Problem(line: entry.line, spec: entry.spec, mountPoint: entry.mountPoint, reason: reason))
                continue
            }
            if FSTab.ignoredTypes.contains(entry.type) || entry.mountPoint == "none" || entry.type == "swap" { continue }
            let point = FSTab.canonical(entry.mountPoint)
            if point == "/" {
                // The root was found by content; a btrfs root line naming another subvolume
                // of the same volume (subvol=, subvolid=) is how the guest mounts it.
                if let b = rootFS as? BtrfsVolume, case .success(let i) = match(entry.spec, layout), i == rootIndex,
                   let named = try? Self.btrfsSubvolume(b, options: entry.options), named.subvolumeID != b.subvolumeID,
                   holdsRoot(named) {
                    rootFS = named
                    rootMount.subvolume = Self.subvolumePath(named)
                }
                continue
            }
            if entry.options.contains("bind") {
                problems.append(Problem(line: entry.line, spec: entry.spec, mountPoint: point, reason: "bind mounts are not assembled"))
                continue
            }
            switch match(entry.spec, layout) {
            case .failure(let reason):
                problems.append(Problem(line: entry.line, spec: entry.spec, mountPoint: point, reason: reason))
            case .success(let i):
                guard var fs = open(i) else {
                    let t = layout.volumes[i].filesystem?.type ?? "no filesystem"
                    problems.append(Problem(line: entry.line, spec: entry.spec, mountPoint: point,
                                            reason: "\(layout.volumes[i].displayName) holds \(t), which cannot be read"))
                    continue
                }
                if let b = fs as? BtrfsVolume {
                    do { fs = try Self.btrfsSubvolume(b, options: entry.options) } catch {
                        let why = (error as? WardenError)?.message ?? "\(error)"
                        problems.append(Problem(line: entry.line, spec: entry.spec, mountPoint: point, reason: why))
                        continue
                    }
                }
                if filesystems[point] != nil {
                    problems.append(Problem(line: entry.line, spec: entry.spec, mountPoint: point, reason: "mount point already used by an earlier line"))
                    continue
                }
                filesystems[point] = fs
                mounts.append(Mount(path: point, spec: entry.spec, volume: layout.volumes[i],
                                    type: layout.volumes[i].filesystem?.type ?? "unknown",
                                    subvolume: (fs as? BtrfsVolume).map(Self.subvolumePath)))
            }
        }
        filesystems["/"] = rootFS
        return GuestView(root: rootFS, mounts: [rootMount] + mounts, filesystems: filesystems, problems: problems)
    }

    /// The btrfs subvolume fstab options name (`subvolid=` wins over `subvol=`, as in the
    /// kernel when both agree), or the volume's default subvolume.
    static func btrfsSubvolume(_ b: BtrfsVolume, options: [String]) throws -> BtrfsVolume {
        if let v = options.last(where: { $0.hasPrefix("subvolid=") }) {
            guard let id = UInt64(v.dropFirst("subvolid=".count)) else {
                throw WardenError(.invalidArgument, "bad btrfs option \(v)")
            }
            return try b.subvolume(id: id)
        }
        if let v = options.last(where: { $0.hasPrefix("subvol=") }) {
            return try b.subvolume(path: String(v.dropFirst("subvol=".count)))
        }
        return b
    }

    /// `/` for the top level, else `/` + the subvolume's path.
    static func subvolumePath(_ b: BtrfsVolume) -> String {
        if b.subvolumeID == 5 { return "/" }
        return "/" + ((try? b.subvolumes().first { $0.id == b.subvolumeID }?.path) ?? "\(b.subvolumeID)")
    }

    enum Match { case success(Int); case failure(String) }

    /// Finds the volume an fstab spec names.
    static func match(_ spec: String, _ layout: GuestDiskLayout) -> Match {
        func partitionFor(_ v: GuestVolume) -> Partition? {
            v.partitionIndex.flatMap { layout.table.partition($0) }
        }
        func find(_ what: String, _ pred: (GuestVolume) -> Bool) -> Match {
            let hits = layout.volumes.indices.filter { pred(layout.volumes[$0]) }
            if hits.count == 1 { return .success(hits[0]) }
            if hits.isEmpty { return .failure("no volume on this disk has \(what)") }
            return .failure("\(hits.count) volumes on this disk have \(what) (ambiguous)")
        }
        let s = spec
        func value(_ prefix: String) -> String? {
            if s.hasPrefix(prefix) { return FSTab.unquote(String(s.dropFirst(prefix.count))) }
            return nil
        }
        if let u = value("UUID=") ?? value("/dev/disk/by-uuid/") {
            return find("UUID \(u)") { $0.filesystem?.uuid?.lowercased() == u.lowercased() }
        }
        if let l = value("LABEL=") ?? value("/dev/disk/by-label/") {
            return find("label \(l)") { $0.filesystem?.label == l }
        }
        if let p = value("PARTUUID=") ?? value("/dev/disk/by-partuuid/") {
            return find("PARTUUID \(p)") { partitionFor($0)?.uuid?.lowercased() == p.lowercased() }
        }
        if let n = value("PARTLABEL=") ?? value("/dev/disk/by-partlabel/") {
            return find("PARTLABEL \(n)") { partitionFor($0)?.name == n }
        }
        if s.hasPrefix("/dev/mapper/") || s.split(separator: "/").count == 3 && s.hasPrefix("/dev/") && !s.hasPrefix("/dev/disk/") {
            let norm = GuestDisk.normalizedLV(s)
            let hits = layout.volumes.indices.filter { layout.volumes[$0].logicalVolume.map(GuestDisk.normalizedLV) == norm }
            if hits.count == 1 { return .success(hits[0]) }
            return .failure("no logical volume \(s) on this disk")
        }
        if let (disk, n) = FSTab.deviceName(s) {
            guard disk == 0 else { return .failure("\(s) names another disk (only the first disk is this image)") }
            if n == 0 {
                if layout.table.scheme == .none, !layout.volumes.isEmpty { return .success(0) }
                return .failure("\(s) is the whole disk, which holds a partition table")
            }
            return find("partition \(n)") { $0.partitionIndex == n }
        }
        return .failure("unrecognised device spec")
    }

    // MARK: Resolution across mounts

    /// A path resolved inside the view.
    public struct Resolved: Sendable {
        public var fs: any FileSystem
        public var inode: UInt64
        public var stat: FileStat
        /// The canonical guest path (after links), `/`-separated.
        public var path: String
    }

    /// Resolves `path` across mount points. Symlinks resolve inside the guest root; at most 40 are followed.
    public func resolve(_ path: String, followFinal: Bool = true) throws -> Resolved {
        // As in POSIX, a trailing slash names a directory (following a final link to it).
        if path.utf8.count > 1, path.hasSuffix("/") {
            let r = try resolve(String(path.dropLast()), followFinal: true)
            guard r.stat.type == .directory else { throw WardenError.notFound("\(path): not a directory") }
            return r
        }
        var links = 0
        var stack: [(name: [UInt8], fs: any FileSystem, inode: UInt64)] = []
        var pending = Array(path.utf8).split(separator: 0x2F).map(Array.init)
        guard path.utf8.count <= GuestPathResolver.maxPathLength else {
            throw WardenError(.invalidArgument, "guest path is longer than \(GuestPathResolver.maxPathLength) bytes")
        }
        func current() -> (any FileSystem, UInt64) {
            if let last = stack.last { return (last.fs, last.inode) }
            return (root, root.rootInode)
        }
        func canonical(_ st: [(name: [UInt8], fs: any FileSystem, inode: UInt64)]) -> String {
            st.isEmpty ? "/" : st.map { "/" + String(decoding: $0.name, as: UTF8.self) }.joined()
        }
        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name == [0x2E] { continue }
            if name == [0x2E, 0x2E] { if !stack.isEmpty { stack.removeLast() }; continue }
            let (fs, dir) = current()
            guard try fs.stat(dir).type == .directory else {
                throw WardenError.notFound("\(canonical(stack)) is not a directory")
            }
            guard let entry = try fs.readDirectory(dir).first(where: { $0.nameBytes == name }) else {
                throw WardenError.notFound("\(canonical(stack) == "/" ? "" : canonical(stack))/\(String(decoding: name, as: UTF8.self)): no such file or directory in the guest")
            }
            let st = try fs.stat(entry.inode)
            if st.type == .symlink && (!pending.isEmpty || followFinal) {
                links += 1
                guard links <= 40 else { throw WardenError.limit("too many levels of symbolic links resolving \(path)") }
                let target = try fs.readLink(entry.inode)
                guard !target.isEmpty, target.count <= GuestPathResolver.maxPathLength else {
                    throw WardenError.corrupt("symbolic link with an invalid target length \(target.count)")
                }
                if target.first == 0x2F { stack.removeAll() }
                pending = target.split(separator: 0x2F).map(Array.init) + pending
                continue
            }
            stack.append((name, fs, entry.inode))
            // Crossing into a mounted filesystem: continue at its root.
            if st.type == .directory, let mounted = filesystems[canonical(stack)], canonical(stack) != "/" {
                stack[stack.count - 1] = (name, mounted, mounted.rootInode)
            }
        }
        let (fs, inode) = current()
        return Resolved(fs: fs, inode: inode, stat: try fs.stat(inode), path: canonical(stack))
    }
}

/// `/etc/fstab` parsing (fstab(5)): whitespace-separated fields with octal escapes.
enum FSTab {
    struct Entry {
        var line: Int
        var spec: String
        var mountPoint: String
        var type: String
        var options: [String]
        /// Set when the line cannot be used.
        var problem: String?
    }

    static let ignoredTypes: Set<String> = ["proc", "sysfs", "devpts", "tmpfs", "devtmpfs", "securityfs", "cgroup",
                                            "cgroup2", "debugfs", "tracefs", "hugetlbfs", "mqueue", "pstore",
                                            "efivarfs", "bpf", "configfs", "fusectl", "binfmt_misc", "autofs", "overlay"]
    static let networkTypes: Set<String> = ["nfs", "nfs4", "cifs", "smb3", "sshfs", "fuse.sshfs", "glusterfs", "ceph", "9p", "virtiofs"]

    static func parse(_ bytes: [UInt8]) -> [Entry] {
        var out: [Entry] = []
        let text = String(decoding: bytes.prefix(1 << 20), as: UTF8.self)
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).prefix(10_000).enumerated() {
            let line = raw.trimmingCharacters(in: " \t\r")
            if line.isEmpty || line.hasPrefix("#") { continue }
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map { unescape(String($0)) }
            guard f.count >= 3 else {
                out.append(Entry(line: i + 1, spec: f.first ?? "", mountPoint: f.count > 1 ? f[1] : "", type: "",
                                 options: [], problem: "malformed line: \(f.count) fields, need at least 3"))
                continue
            }
            var e = Entry(line: i + 1, spec: f[0], mountPoint: f[1], type: f[2],
                          options: f.count > 3 ? f[3].split(separator: ",").map(String.init) : [])
            if networkTypes.contains(e.type) || e.spec.contains(":/") || e.spec.hasPrefix("//") {
                e.problem = "network filesystem (\(e.type)) is not on this disk"
            } else if e.mountPoint != "none" && e.type != "swap" && !e.mountPoint.hasPrefix("/") {
                e.problem = "mount point is not an absolute path"
            }
            out.append(e)
        }
        return out
    }

    /// fstab escapes: `\040` space, `\011` tab, `\012` newline, `\134` backslash.
    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var bytes: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == 0x5C, i + 3 < u.count,
               let v = UInt8(String(decoding: u[i + 1...i + 3], as: UTF8.self), radix: 8) {
                bytes.append(v)
                i += 4
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func unquote(_ s: String) -> String {
        if s.count >= 2, (s.hasPrefix("\"") && s.hasSuffix("\"")) || (s.hasPrefix("'") && s.hasSuffix("'")) {
            return String(s.dropFirst().dropLast())
        }
        return s
    }

    /// Canonical mount point: no trailing or repeated slashes, no `.` components.
    static func canonical(_ p: String) -> String {
        let parts = p.split(separator: "/").filter { $0 != "." }
        return "/" + parts.joined(separator: "/")
    }

    /// `/dev/sdb2` → (disk 1, partition 2); `/dev/vda` → (0, 0); `/dev/nvme0n1p3` → (0, 3).
    static func deviceName(_ s: String) -> (disk: Int, partition: Int)? {
        guard s.hasPrefix("/dev/") else { return nil }
        let name = Array(s.dropFirst(5).utf8)
        func digits(_ from: Int) -> Int? {
            guard from < name.count else { return 0 }
            let tail = name[from...]
            guard tail.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), tail.count <= 4 else { return nil }
            return Int(String(decoding: tail, as: UTF8.self))
        }
        for prefix in ["sd", "vd", "hd", "xvd"] {
            let p = Array(prefix.utf8)
            if name.count > p.count, Array(name[0..<p.count]) == p {
                let letter = name[p.count]
                guard letter >= 0x61 && letter <= 0x7A, let n = digits(p.count + 1) else { return nil }
                return (Int(letter - 0x61), n)
            }
        }
        for (prefix, sep) in [("nvme", "n1p"), ("mmcblk", "p")] {
            let str = String(decoding: name, as: UTF8.self)
            guard str.hasPrefix(prefix) else { continue }
            let rest = str.dropFirst(prefix.count)
            guard let diskEnd = rest.firstIndex(where: { !$0.isNumber }), let disk = Int(rest[..<diskEnd]) else {
                if let disk = Int(rest) { return (disk, 0) }
                return nil
            }
            let after = rest[diskEnd...]
            if prefix == "nvme" && after == "n1" { return (disk, 0) }
            guard after.hasPrefix(sep), let n = Int(after.dropFirst(sep.count)) else { return nil }
            return (disk, n)
        }
        return nil
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var s = self[...]
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
