import Foundation
import WardenCore

/// Writes a cpio archive in the "newc" format (SVR4 without checksums), the format the
/// Linux kernel unpacks as an initramfs. Appliances are built from it, and a boot's own
/// plan is a second, tiny archive the kernel unpacks over the first (the kernel accepts
/// concatenated archives).
public struct CPIOArchive: Sendable {
    public private(set) var data = Data()
    private var inode: UInt32 = 1
    private var names = Set<String>()

    public init() {}

    /// A directory entry (mode 0755 unless given).
    public mutating func directory(_ path: String, mode: UInt32 = 0o755) throws {
        try entry(path, mode: 0o040000 | (mode & 0o7777), contents: Data())
    }

    /// A regular file.
    public mutating func file(_ path: String, contents: Data, mode: UInt32 = 0o644) throws {
        try entry(path, mode: 0o100000 | (mode & 0o7777), contents: contents)
    }

    /// A symbolic link to `target`.
    public mutating func symlink(_ path: String, target: String) throws {
        try entry(path, mode: 0o120777, contents: Data(target.utf8))
    }

    /// Ends the archive (the `TRAILER!!!` entry) and returns it.
    public func finished() -> Data {
        var copy = self
        copy.append(name: "TRAILER!!!", mode: 0, ino: 0, nlink: 1, contents: Data())
        return copy.data
    }

    mutating func entry(_ path: String, mode: UInt32, contents: Data) throws {
        // Names are relative ("bin/busybox"), without "..", NUL or a leading slash.
        guard !path.isEmpty, !path.hasPrefix("/"), !path.utf8.contains(0),
              !path.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
            throw WardenError(.invalidArgument, "cpio: bad entry name \(path)")
        }
        guard contents.count < Int(UInt32.max) else { throw WardenError(.limitExceeded, "cpio: \(path) is too large") }
        guard names.insert(path).inserted else { throw WardenError(.invalidArgument, "cpio: \(path) twice") }
        append(name: path, mode: mode, ino: inode, nlink: mode & 0o170000 == 0o040000 ? 2 : 1, contents: contents)
        inode += 1
    }

    private mutating func append(name: String, mode: UInt32, ino: UInt32, nlink: UInt32, contents: Data) {
        let nameBytes = Array(name.utf8) + [0]
        func hex(_ v: UInt32) -> String {
            let s = String(v, radix: 16, uppercase: true)
            return String(repeating: "0", count: 8 - s.count) + s
        }
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
        let fields: [UInt32] = [ino, mode, 0, 0, nlink, 0, UInt32(contents.count), 0, 0, 0, 0, UInt32(nameBytes.count), 0]
        data.append(contentsOf: Array(("070701" + fields.map(hex).joined()).utf8))
        data.append(contentsOf: nameBytes)
        pad()
        data.append(contents)
        pad()
    }

    private mutating func pad() {
        while data.count % 4 != 0 { data.append(0) }
    }
}
