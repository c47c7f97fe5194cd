import Foundation
import WardenCore

/// Finds whether a destination path lies on removable media.
///
/// path → the mount holding it (`/proc/self/mountinfo`, longest mount point, topmost mount)
/// → its block device (major:minor; for filesystems with anonymous devices such as btrfs,
/// the mount source under /dev) → `/sys/dev/block/MAJ:MIN` → the whole disk if that is a
/// partition → `removable` of the disk. Device-mapper and md devices count as removable when
/// any device below them (`slaves/`) is; a loop device when its backing file is. A disk
/// attached through USB counts as removable even when it reports `removable = 0` (USB hard
/// disks do). Filesystems without a block device (tmpfs, NFS, overlay) are not removable.
public struct DestinationProbe: Sendable {
    public var mountinfoPath: String
    public var sysRoot: String

    public init(mountinfoPath: String = "/proc/self/mountinfo", sysRoot: String = "/sys") {
        self.mountinfoPath = mountinfoPath; self.sysRoot = sysRoot
    }

    public func probe(_ path: String) -> DestinationFacts {
        let resolved = Self.resolve(path)
        do {
            let (removable, device) = try removable(resolved, depth: 0)
            return DestinationFacts(path: path, resolved: resolved, removable: .known(removable), device: device)
        } catch let e as WardenError {
            return DestinationFacts(path: path, resolved: resolved, removable: .unknown(e.message))
        } catch {
            return DestinationFacts(path: path, resolved: resolved, removable: .unknown("\(error)"))
        }
    }

    /// Absolute, with `.`/`..` removed and the symlinks of its longest existing prefix resolved.
    public static func resolve(_ path: String) -> String {
        var abs = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        // Lexical clean-up first, so that `..` cannot walk out of a resolved prefix.
        var parts: [String] = []
        for c in abs.split(separator: "/") {
            if c == "." { continue }
            if c == ".." { _ = parts.popLast(); continue }
            parts.append(String(c))
        }
        abs = "/" + parts.joined(separator: "/")
        var existing = parts
        var rest: [String] = []
        while !existing.isEmpty {
            let candidate = "/" + existing.joined(separator: "/")
            if let real = realpath(candidate, nil) {
                defer { free(real) }
                let base = String(cString: real)
                return rest.isEmpty ? base : (base == "/" ? "" : base) + "/" + rest.joined(separator: "/")
            }
            rest.insert(existing.removeLast(), at: 0)
        }
        return abs
    }

    struct Mount { var point: String; var major: UInt32; var minor: UInt32; var fstype: String; var source: String }

    /// Unescapes mountinfo's octal escapes (`\040` for a space).
    static func unescape(_ s: Substring) -> String {
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v); i += 4
            } else {
                out.append(b[i]); i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func parseMountinfo(_ text: String) -> [Mount] {
        var mounts: [Mount] = []
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: false)
            guard f.count >= 10, let dash = f.firstIndex(of: "-"), dash + 2 < f.count else { continue }
            let mm = f[2].split(separator: ":")
            guard mm.count == 2, let major = UInt32(mm[0]), let minor = UInt32(mm[1]) else { continue }
            mounts.append(Mount(point: unescape(f[4]), major: major, minor: minor, fstype: String(f[dash + 1]), source: unescape(f[dash + 2])))
        }
        return mounts
    }

    func mount(for path: String) throws -> Mount {
        guard let text = try? String(contentsOfFile: mountinfoPath, encoding: .utf8) else {
            throw WardenError(.io, "cannot read \(mountinfoPath)")
        }
        var best: Mount? = nil
        for m in Self.parseMountinfo(text) {
            let inside = m.point == "/" || path == m.point || path.hasPrefix(m.point + "/")
            // Later lines are mounted on top of earlier ones: >= keeps the topmost.
            if inside, m.point.count >= (best?.point.count ?? -1) { best = m }
        }
        guard let best else { throw WardenError(.notFound, "no mount holds \(path)") }
        return best
    }

    func removable(_ path: String, depth: Int) throws -> (Bool, String?) {
        guard depth < 4 else { throw WardenError(.limitExceeded, "loop devices nested too deep") }
        let m = try mount(for: path)
        var major = m.major, minor = m.minor
        if major == 0 {
            // Anonymous device (btrfs, tmpfs, overlay, nfs): use the source if it is a block device.
            var st = stat()
            guard m.source.hasPrefix("/dev/"), stat(m.source, &st) == 0, (st.st_mode & S_IFMT) == S_IFBLK else {
                return (false, nil)
            }
            major = UInt32(truncatingIfNeeded: (st.st_rdev >> 8) & 0xfff | ((st.st_rdev >> 32) & ~0xfff))
            minor = UInt32(truncatingIfNeeded: (st.st_rdev & 0xff) | ((st.st_rdev >> 12) & ~0xff))
        }
        return try removableDevice(major: major, minor: minor, depth: depth)
    }

    func removableDevice(major: UInt32, minor: UInt32, depth: Int) throws -> (Bool, String?) {
        let link = "\(sysRoot)/dev/block/\(major):\(minor)"
        guard let real = realpath(link, nil) else {
            throw WardenError(.notFound, "no sysfs entry for block device \(major):\(minor)")
        }
        var dir = String(cString: real)
        free(real)
        if FileManager.default.fileExists(atPath: dir + "/partition") {
            dir = (dir as NSString).deletingLastPathComponent
        }
        let name = (dir as NSString).lastPathComponent
        return (try diskRemovable(dir, depth: depth), name)
    }

    func diskRemovable(_ dir: String, depth: Int) throws -> Bool {
        guard let flag = try? String(contentsOfFile: dir + "/removable", encoding: .utf8) else {
            throw WardenError(.io, "cannot read \(dir)/removable")
        }
        if flag.trimmingCharacters(in: .whitespacesAndNewlines) == "1" { return true }
        if dir.contains("/usb") { return true }
        // dm-*, md*: removable if anything below is.
        if let slaves = try? FileManager.default.contentsOfDirectory(atPath: dir + "/slaves"), depth < 4 {
            for s in slaves {
                var sdir = dir + "/slaves/" + s
                if let r = realpath(sdir, nil) { sdir = String(cString: r); free(r) }
                if FileManager.default.fileExists(atPath: sdir + "/partition") { sdir = (sdir as NSString).deletingLastPathComponent }
                if try diskRemovable(sdir, depth: depth + 1) { return true }
            }
        }
        // loop: removable if its backing file is.
        if let backing = try? String(contentsOfFile: dir + "/loop/backing_file", encoding: .utf8) {
            let file = backing.trimmingCharacters(in: .newlines)
            if !file.isEmpty, file.hasPrefix("/") { return try removable(Self.resolve(file), depth: depth + 1).0 }
        }
        return false
    }
}
