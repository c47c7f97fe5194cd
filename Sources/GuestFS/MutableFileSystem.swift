import Foundation
import WardenCore
import DiskImage

/// A filesystem that Warden can change: small, checked writes for identity
/// refreshes (replace a file, create one, truncate, unlink).
///
/// Paths are guest paths, resolved with ``GuestPathResolver`` inside this
/// filesystem (symlinks are followed confined to its root). Every operation
/// leaves the filesystem consistent (`e2fsck -fn` clean for ext4) when it
/// returns; ``commit()`` makes the writes durable.
public protocol MutableFileSystem: FileSystem {
    /// Creates or overwrites the regular file at `path` with `data`. An existing
    /// file keeps its inode, mode and owner; a new one is created 0644 root:root.
    func replaceContents(of path: String, with data: [UInt8]) throws
    /// Creates a new regular file; throws `.conflict` if the name exists.
    /// `mode` holds the permission bits (the file-type bits may be 0 or S_IFREG).
    func createFile(_ path: String, contents: [UInt8], mode: UInt16, uid: UInt32, gid: UInt32) throws
    /// Shrinks or grows (with a hole) the regular file at `path`.
    func truncate(_ path: String, to size: UInt64) throws
    /// Removes the directory entry at `path` (not a directory); frees the inode
    /// and its blocks when its link count drops to zero.
    func unlink(_ path: String) throws
    /// Removes the empty directory at `path` (a final symlink is not followed).
    func removeDirectory(_ path: String) throws
    /// Sets the filesystem UUID.
    func setFilesystemUUID(_ uuid: UUID) throws
    /// Flushes every write to the device.
    func commit() throws
}

extension GuestDisk {
    /// Opens the filesystem on `device` for writing. Only ext2/3/4 can be written;
    /// XFS and FAT (and anything else) throw `.unsupported`.
    public static func openMutableFileSystem(_ device: any WritableBlockDevice) throws -> any MutableFileSystem {
        guard let sig = try FilesystemProbe.probe(device) else {
            throw WardenError.notFound("no filesystem signature found")
        }
        switch sig.type {
        case "ext2", "ext3", "ext4":
            return try EXT4.openWritable(device)
        default:
            throw WardenError.unsupported("writing \(sig.type) filesystems is not supported; Warden writes ext2/3/4 only")
        }
    }
}

/// The guest's file tree opened for writing: the root filesystem and the other
/// ext2/3/4 filesystems its `/etc/fstab` mounts, over one writable disk.
///
/// Mirrors ``GuestView``: ``resolve(_:)`` maps a guest path to the filesystem
/// that holds it (the deepest mount point) and the path inside it.
public final class WritableGuestView: @unchecked Sendable {
    /// The read-only view the mounts were found with.
    public let view: GuestView
    /// The writable root filesystem.
    public let root: any MutableFileSystem
    private let filesystems: [String: any MutableFileSystem]
    /// Mounts that could not be opened for writing, and why.
    public let notWritable: [String: String]

    init(view: GuestView, root: any MutableFileSystem, filesystems: [String: any MutableFileSystem], notWritable: [String: String]) {
        self.view = view
        self.root = root
        self.filesystems = filesystems
        self.notWritable = notWritable
    }

    /// Assembles the guest on `disk` (as ``GuestView/assemble(disk:layout:)`` does)
    /// and opens each mounted ext2/3/4 filesystem writable. The root must be writable.
    public static func assemble(disk: any WritableBlockDevice) throws -> WritableGuestView {
        let layout = try GuestDisk.layout(of: disk)
        let view = try GuestView.assemble(disk: disk, layout: layout)
        var filesystems: [String: any MutableFileSystem] = [:]
        var notWritable: [String: String] = [:]
        for m in view.mounts {
            do {
                let dev = try GuestDisk.device(for: m.volume, in: layout, on: disk)
                guard let w = dev as? any WritableBlockDevice, (dev as? SliceDevice)?.isWritable ?? true else {
                    throw WardenError.unsupported("\(m.volume.displayName) cannot be opened for writing")
                }
                filesystems[m.path] = try GuestDisk.openMutableFileSystem(w)
            } catch let e as WardenError {
                if m.path == "/" { throw e }
                notWritable[m.path] = e.message
            }
        }
        guard let root = filesystems["/"] else { throw WardenError.notFound("no writable root filesystem") }
        return WritableGuestView(view: view, root: root, filesystems: filesystems, notWritable: notWritable)
    }

    /// The writable filesystem mounted at `mountPoint`, if any.
    public func filesystem(at mountPoint: String) -> (any MutableFileSystem)? { filesystems[mountPoint] }

    /// The filesystem holding guest path `path` (by mount-point prefix, after
    /// normalising `.`/`..`/`//`; symlinks are resolved inside that filesystem)
    /// and the path inside it.
    public func resolve(_ path: String) throws -> (fs: any MutableFileSystem, path: String) {
        var parts: [Substring] = []
        for c in path.split(separator: "/", omittingEmptySubsequences: true) {
            if c == "." { continue }
            if c == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
            parts.append(c)
        }
        let norm = "/" + parts.joined(separator: "/")
        var best = "/"
        for m in view.mounts.map(\.path) where m != "/" {
            if (norm == m || norm.hasPrefix(m + "/")) && m.count > best.count { best = m }
        }
        if best != "/" && filesystems[best] == nil {
            throw WardenError.unsupported("\(best) is mounted from a filesystem that cannot be written: \(notWritable[best] ?? "unknown")")
        }
        guard let fs = filesystems[best] else { throw WardenError.notFound("no filesystem mounted at \(best)") }
        let inside = best == "/" ? norm : String(norm.dropFirst(best.count))
        return (fs, inside.isEmpty ? "/" : inside)
    }

    /// Flushes every writable filesystem.
    public func commit() throws {
        for fs in filesystems.values { try fs.commit() }
    }
}
