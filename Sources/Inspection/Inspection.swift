import WardenCore
import GuestFS

/// Offline guest inspection: reads facts about a guest from its filesystem only.
///
/// Every reader takes a ``GuestFiles`` view of the guest's root filesystem and never
/// touches a host path. A fact that cannot be established is reported as unknown with
/// a reason, never guessed from the host.
public enum Inspection {}

/// Read access to a guest's files, confined to its root (symlinks resolve inside it).
public struct GuestFiles: Sendable {
    public let fs: any FileSystem
    /// Largest file a reader will load whole (configuration files, databases).
    public var maxFileSize: Int = 64 << 20

    public init(_ fs: any FileSystem) { self.fs = fs }

    /// The bytes of the regular file at `path`, or nil if it does not exist.
    /// Throws if it exists but is not a regular file, is too large, or cannot be read.
    public func read(_ path: String) throws -> [UInt8]? {
        let r: GuestPathResolver.Resolved
        do { r = try GuestPathResolver(fs).resolve(path) } catch let e as WardenError where e.code == .notFound {
            return nil
        }
        guard r.stat.type == .regular else {
            throw WardenError(.invalidArgument, "\(path) is not a regular file")
        }
        guard r.stat.size <= UInt64(maxFileSize) else {
            throw WardenError.limit("\(path) is larger than \(maxFileSize) bytes")
        }
        return try fs.read(r.inode, at: 0, count: Int(r.stat.size))
    }

    /// The text of the file at `path` (UTF-8, invalid bytes replaced), or nil if absent.
    public func text(_ path: String) throws -> String? {
        try read(path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Directory entries at `path` (names), or nil if the directory does not exist.
    public func list(_ path: String) throws -> [DirectoryEntry]? {
        let r: GuestPathResolver.Resolved
        do { r = try GuestPathResolver(fs).resolve(path) } catch let e as WardenError where e.code == .notFound {
            return nil
        }
        guard r.stat.type == .directory else { return nil }
        return try fs.readDirectory(r.inode)
    }

    /// `lstat`-like: the entry at `path` without following a final symlink, or nil.
    public func lstat(_ path: String) throws -> FileStat? {
        do { return try GuestPathResolver(fs).resolve(path, followFinal: false).stat } catch let e as WardenError where e.code == .notFound {
            return nil
        }
    }

    /// The target of the symlink at `path`, or nil if it is absent or not a link.
    public func readLink(_ path: String) throws -> String? {
        guard let st = try lstat(path), st.type == .symlink else { return nil }
        return String(decoding: try fs.readLink(st.inode), as: UTF8.self)
    }
}
