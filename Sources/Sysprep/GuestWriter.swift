import Foundation
import WardenCore
import GuestFS
import Inspection

/// Writes into a guest assembled as a ``GuestView`` whose filesystems are writable.
///
/// A guest path is split into its parent directory and final name; the parent resolves
/// inside the guest (symlinks confined to the guest root, across fstab mounts), and the
/// write goes to the ``MutableFileSystem`` mounted there, with the path relative to that
/// mount. A path whose parent is on a filesystem Warden cannot write (XFS, FAT) fails
/// with a message naming it; nothing is written outside the guest's filesystems.
public final class GuestWriter: @unchecked Sendable {
    public let view: GuestView
    /// Reads through the same filesystems, so they see earlier writes.
    public var files: GuestFiles { GuestFiles(view: view) }
    private var touched: [ObjectIdentifier: any MutableFileSystem] = [:]
    private var touchedOrder: [ObjectIdentifier] = []

    public init(view: GuestView) {
        self.view = view
    }

    /// The writable filesystem holding `path`'s final component, and the path inside it.
    func target(_ path: String) throws -> (fs: any MutableFileSystem, path: String) {
        var parts = path.split(separator: "/").map(String.init)
        guard let name = parts.popLast(), name != ".", name != "..", name.utf8.count <= 255 else {
            throw WardenError(.invalidArgument, "not a file path: \(path)")
        }
        let parent = try view.resolve("/" + parts.joined(separator: "/"))
        guard parent.stat.type == .directory else { throw WardenError.notFound("\(parent.path) is not a directory") }
        // The deepest mount containing the canonical parent directory.
        let canonical = parent.path
        var mount = "/"
        for m in view.mounts {
            let p: String = m.path
            let inside: Bool = p == "/" || canonical == p || canonical.hasPrefix(p + "/")
            if inside && p.utf8.count > mount.utf8.count { mount = p }
        }
        guard let fs = view.filesystem(at: mount) else {
            throw WardenError(.internal, "no filesystem at mount point \(mount)")
        }
        guard let mfs = fs as? any MutableFileSystem else {
            throw WardenError.unsupported("\(path) is on \(fs.typeName) (mounted at \(mount)); Warden writes only ext2/3/4")
        }
        let inner = mount == "/" ? canonical : String(canonical.dropFirst(mount.count))
        let dir = inner.isEmpty || inner == "/" ? "" : inner
        return (mfs, dir + "/" + name)
    }

    private func note(_ fs: any MutableFileSystem) {
        let id = ObjectIdentifier(fs)
        if touched[id] == nil { touched[id] = fs; touchedOrder.append(id) }
    }

    /// Replaces a file's contents, keeping its mode and owner. A symbolic link is refused:
    /// writing through it would change whatever file the guest pointed it at (`/etc/shadow`).
    public func replace(_ path: String, with data: [UInt8]) throws {
        try refuseLink(path)
        let t = try target(path)
        note(t.fs)
        try t.fs.replaceContents(of: t.path, with: data)
    }

    /// Throws if `path` is a symbolic link (its final component), naming where it points.
    func refuseLink(_ path: String) throws {
        guard let e = files.entry(path), e.type == .symlink else { return }
        let to = (try? files.readLink(path)) ?? nil
        let resolved = files.canonicalPath(path)
        throw WardenError(.invalidArgument, "\(path) is a symbolic link" + (to.map { " to \($0)" } ?? "")
                          + (resolved.map { ", resolving to \($0)" } ?? ", which does not resolve")
                          + "; Warden does not write through links in a guest")
    }

    /// Creates a regular file (the path must not exist).
    public func create(_ path: String, contents: [UInt8], mode: UInt16, uid: UInt32 = 0, gid: UInt32 = 0) throws {
        let t = try target(path)
        note(t.fs)
        try t.fs.createFile(t.path, contents: contents, mode: mode, uid: uid, gid: gid)
    }

    /// Removes the directory entry at `path` itself (a final symlink is removed, not followed).
    public func remove(_ path: String) throws {
        let t = try target(path)
        note(t.fs)
        try t.fs.unlink(t.path)
    }

    /// Sets the UUID of the filesystem mounted at `mountPoint`.
    public func setFilesystemUUID(mountPoint: String, _ uuid: UUID) throws {
        guard let fs = view.filesystem(at: mountPoint) else { throw WardenError.notFound("no filesystem mounted at \(mountPoint)") }
        guard let mfs = fs as? any MutableFileSystem else {
            throw WardenError.unsupported("the filesystem at \(mountPoint) is \(fs.typeName); Warden writes only ext2/3/4")
        }
        note(mfs)
        try mfs.setFilesystemUUID(uuid)
    }

    /// Flushes every filesystem written so far.
    public func commit() throws {
        for id in touchedOrder { try touched[id]?.commit() }
    }
}

// MARK: Read helpers shared by plan and apply

extension GuestFiles {
    /// The entry at `path` without following a final symlink; nil if absent or unreachable.
    func entry(_ path: String) -> FileStat? {
        (try? lstat(path)) ?? nil
    }

    /// Sorted names in a directory (empty if absent), at most `limit`.
    func namesIn(_ path: String, limit: Int = 4096) -> [String] {
        guard let entries = try? list(path) else { return [] }
        return Array(entries.map(\.name).sorted().prefix(limit))
    }

    /// The file's bytes if it is a regular file of at most `maxBytes`; nil otherwise.
    func small(_ path: String, maxBytes: Int = 1 << 20) -> [UInt8]? {
        guard let st = entry(path) ?? ((try? resolveStat(path)) ?? nil),
              st.size <= UInt64(maxBytes) else { return nil }
        var g = self
        g.maxFileSize = maxBytes
        return (try? g.read(path)) ?? nil
    }

    /// Follows a final symlink.
    func resolveStat(_ path: String) throws -> FileStat? {
        if let view {
            do { return try view.resolve(path).stat } catch let e as WardenError where e.code == .notFound { return nil }
        }
        do { return try GuestPathResolver(fs).resolve(path).stat } catch let e as WardenError where e.code == .notFound { return nil }
    }

    /// The canonical guest path `path` resolves to, if it exists.
    func canonicalPath(_ path: String) -> String? {
        if let view { return (try? view.resolve(path))?.path }
        return (try? GuestPathResolver(fs).resolve(path)).map { String(decoding: $0.canonicalPath, as: UTF8.self) }
    }

    /// Every non-directory entry below `dir` (depth-first, at most `limit`), directories not followed through symlinks.
    func filesBelow(_ dir: String, limit: Int = 100_000) -> [String] {
        var out: [String] = []
        var stack = [dir]
        var seen = 0
        while let d = stack.popLast(), out.count < limit, seen < limit {
            seen += 1
            guard let st = entry(d), st.type == .directory else { continue }
            for n in namesIn(d, limit: limit) {
                let p = d + "/" + n
                guard let e = entry(p) else { continue }
                if e.type == .directory { stack.append(p) } else { out.append(p) }
            }
        }
        return out.sorted()
    }
}
