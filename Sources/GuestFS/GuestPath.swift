import WardenCore

/// Resolves guest paths inside one filesystem, confined to its root.
///
/// Symlinks are followed the way the guest kernel would, but with the
/// filesystem's root as `/`: an absolute target restarts at the guest root, and
/// `..` at the root stays at the root. Nothing here ever touches a host path.
/// At most ``maxSymlinks`` links are followed per lookup (Linux uses 40).
public struct GuestPathResolver: Sendable {
    public let fs: any FileSystem
    public var maxSymlinks: Int = 40
    /// Longest path accepted, in bytes (Linux PATH_MAX).
    public static let maxPathLength = 4096

    public init(_ fs: any FileSystem) { self.fs = fs }

    /// A resolved path: the inode and its stat.
    public struct Resolved: Sendable {
        public var inode: UInt64
        public var stat: FileStat
        /// The canonical guest path after following links (bytes, `/`-separated).
        public var canonicalPath: [UInt8]
    }

    /// Resolves `path`. With `followFinal` false, a final symlink is returned itself (like `lstat`).
    public func resolve(_ path: String, followFinal: Bool = true) throws -> Resolved {
        try resolve(Array(path.utf8), followFinal: followFinal)
    }

    public func resolve(_ path: [UInt8], followFinal: Bool = true) throws -> Resolved {
        guard path.count <= Self.maxPathLength else {
            throw WardenError(.invalidArgument, "guest path is longer than \(Self.maxPathLength) bytes")
        }
        // As in POSIX, a trailing slash names a directory (following a final link to it).
        if path.count > 1, path.last == 0x2F {
            let r = try resolve(Array(path.dropLast()), followFinal: true)
            guard r.stat.type == .directory else {
                throw WardenError.notFound("\(String(decoding: path, as: UTF8.self)): not a directory")
            }
            return r
        }
        var linksFollowed = 0
        // Stack of (name, inode) from the root; the root is the empty stack.
        var stack: [([UInt8], UInt64)] = []
        var pending: [[UInt8]] = split(path)

        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name == [0x2E] { continue }                       // "."
            if name == [0x2E, 0x2E] { if !stack.isEmpty { stack.removeLast() }; continue } // ".."
            let dirInode = stack.last?.1 ?? fs.rootInode
            let dirStat = try fs.stat(dirInode)
            guard dirStat.type == .directory else {
                throw WardenError.notFound("\(display(stack)) is not a directory")
            }
            // Exact bytes first; a case-insensitive filesystem (NTFS) then folds case as Windows does.
            guard let entry = try fs.readDirectory(dirInode).first(where: { $0.nameBytes == name })
                    ?? (fs as? CaseInsensitiveLookup)?.lookup(dirInode, name: name) else {
                throw WardenError.notFound("\(display(stack + [(name, 0)])): no such file or directory in the guest")
            }
            let st = try fs.stat(entry.inode)
            let isLast = pending.isEmpty
            if st.type == .symlink && (!isLast || followFinal) {
                linksFollowed += 1
                guard linksFollowed <= maxSymlinks else {
                    throw WardenError.limit("too many levels of symbolic links resolving \(String(decoding: path, as: UTF8.self))")
                }
                let target = try fs.readLink(entry.inode)
                guard !target.isEmpty, target.count <= Self.maxPathLength else {
                    throw WardenError.corrupt("symbolic link \(display(stack + [(name, 0)])) has an invalid target length \(target.count)")
                }
                if target.first == 0x2F { stack.removeAll() }   // absolute: restart at the guest root
                pending = split(target) + pending
                guard pending.count <= Self.maxPathLength else {
                    throw WardenError.limit("path grows too long while following symbolic links")
                }
                continue
            }
            stack.append((name, entry.inode))
        }
        let inode = stack.last?.1 ?? fs.rootInode
        return Resolved(inode: inode, stat: try fs.stat(inode), canonicalPath: join(stack))
    }

    private func split(_ p: [UInt8]) -> [[UInt8]] {
        p.split(separator: 0x2F, omittingEmptySubsequences: true).map(Array.init)
    }

    private func join(_ stack: [([UInt8], UInt64)]) -> [UInt8] {
        if stack.isEmpty { return [0x2F] }
        var out: [UInt8] = []
        for (n, _) in stack { out.append(0x2F); out += n }
        return out
    }

    private func display(_ stack: [([UInt8], UInt64)]) -> String {
        ManifestEscaping.escape(join(stack))
    }
}
