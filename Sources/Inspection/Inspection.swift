import WardenCore
import GuestFS

/// Offline guest inspection: reads facts about a guest from its filesystem only.
///
/// Every reader takes a ``GuestFiles`` view of the guest's root filesystem and never
/// touches a host path. A fact that cannot be established is reported as unknown with
/// a reason, never guessed from the host.
public enum Inspection {}

/// Read access to a guest's files, confined to its root (symlinks resolve inside it).
///
/// Backed by one filesystem, or by a ``GuestView`` that spans the guest's fstab mounts
/// (so `/var/lib/dpkg/status` is found when `/var` is its own partition).
public struct GuestFiles: Sendable {
    public let fs: any FileSystem
    public let view: GuestView?
    /// Largest file a reader will load whole (configuration files, databases).
    public var maxFileSize: Int = 64 << 20

    public init(_ fs: any FileSystem) {
        self.fs = fs
        self.view = nil
    }

    public init(view: GuestView) {
        self.fs = view.root
        self.view = view
    }

    /// Resolves `path` to its filesystem and inode, or nil if it does not exist.
    func resolve(_ path: String, followFinal: Bool = true) throws -> (fs: any FileSystem, inode: UInt64, stat: FileStat)? {
        do {
            if let view {
                let r = try view.resolve(path, followFinal: followFinal)
                return (r.fs, r.inode, r.stat)
            }
            let r = try GuestPathResolver(fs).resolve(path, followFinal: followFinal)
            return (fs, r.inode, r.stat)
        } catch let e as WardenError where e.code == .notFound {
            return nil
        }
    }

    /// The bytes of the regular file at `path`, or nil if it does not exist.
    /// Throws if it exists but is not a regular file, is too large, or cannot be read.
    public func read(_ path: String) throws -> [UInt8]? {
        guard let r = try resolve(path) else { return nil }
        guard r.stat.type == .regular else {
            throw WardenError(.invalidArgument, "\(path) is not a regular file")
        }
        guard r.stat.size <= UInt64(maxFileSize) else {
            throw WardenError.limit("\(path) is larger than \(maxFileSize) bytes")
        }
        return try r.fs.read(r.inode, at: 0, count: Int(r.stat.size))
    }

    /// The text of the file at `path` (UTF-8, invalid bytes replaced), or nil if absent.
    public func text(_ path: String) throws -> String? {
        try read(path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Directory entries at `path`, or nil if the directory does not exist.
    public func list(_ path: String) throws -> [DirectoryEntry]? {
        guard let r = try resolve(path), r.stat.type == .directory else { return nil }
        return try r.fs.readDirectory(r.inode)
    }

    /// `lstat`-like: the entry at `path` without following a final symlink, or nil.
    public func lstat(_ path: String) throws -> FileStat? {
        try resolve(path, followFinal: false)?.stat
    }

    /// The target of the symlink at `path`, or nil if it is absent or not a link.
    public func readLink(_ path: String) throws -> String? {
        guard let r = try resolve(path, followFinal: false), r.stat.type == .symlink else { return nil }
        return String(decoding: try r.fs.readLink(r.inode), as: UTF8.self)
    }
}
