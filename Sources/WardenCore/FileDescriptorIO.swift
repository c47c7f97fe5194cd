import CWardenSys
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Complete writes to file descriptors, retrying short writes and `EINTR`.
/// Errors name `name` (a path, or "standard output"), never the data.
public enum FileDescriptorIO {
    /// fsyncs the folder `dir` (after creating, linking or removing names in it); best effort:
    /// a folder that cannot be opened is left as it is.
    public static func syncDirectory(_ dir: String) {
        let fd = open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { _ = fsync(fd); close(fd) }
    }

    /// Replaces the file at `path` with `bytes`, whole or not at all: a temporary file beside it
    /// (created with `mode`), written, fsynced, renamed over `path`, and the folder synced unless
    /// `syncFolder` is false (a caller on a hot path whose file may lag after a crash).
    public static func replaceFile(_ path: String, with bytes: [UInt8], mode: mode_t = 0o600, syncFolder: Bool = true) throws {
        let tmp = path + ".tmp-\(getpid())"
        unlink(tmp)   // a leftover (or a planted symlink) is never written through
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { throw WardenError(.io, "cannot write: \(String(cString: strerror(errno)))", file: path) }
        do {
            try bytes.withUnsafeBytes { try writeAll(fd, $0, name: path) }
            guard fsync(fd) == 0 else { throw WardenError(.io, "cannot sync: \(String(cString: strerror(errno)))", file: path) }
            close(fd)
        } catch {
            close(fd); unlink(tmp); throw error
        }
        guard rename(tmp, path) == 0 else {
            unlink(tmp)
            throw WardenError(.io, "cannot replace: \(String(cString: strerror(errno)))", file: path)
        }
        guard syncFolder else { return }
        var dir = path
        if let slash = dir.lastIndex(of: "/") { dir = String(dir[..<slash]) } else { dir = "." }
        syncDirectory(dir)
    }

    /// A 0700 directory owned by this user, made when missing; one that others can enter, or
    /// that is not a directory, is refused (`what` names it in the error: "the vault directory").
    public static func ensurePrivateDirectory(_ path: String, what: String = "the directory") throws {
        var st = stat()
        if lstat(path, &st) != 0 {
            // mkdir -p, each missing folder 0700.
            var prefix = path.hasPrefix("/") ? "" : "."
            for part in path.split(separator: "/") {
                prefix += "/" + part
                if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                    throw WardenError(.io, "cannot make \(what): \(String(cString: strerror(errno)))", file: prefix)
                }
            }
        }
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw WardenError(.invalidArgument, "\(what) is not a directory", file: path)
        }
        guard st.st_mode & 0o077 == 0, st.st_uid == getuid() else {
            throw WardenError(.denied, "\(what) is open to others (it must be 0700 and yours)", file: path)
        }
    }

    /// Starts writing a file's dirty pages back without waiting, so that a later `fsync` has
    /// little left to do (the write-back overlaps whatever comes next). Best effort.
    public static func startWriteback(_ fd: Int32) { _ = warden_start_writeback(fd) }

    public static func writeAll(_ fd: Int32, _ buf: UnsafeRawBufferPointer, name: String) throws {
        guard let base = buf.baseAddress else { return }
        var done = 0
        while done < buf.count {
            let n = write(fd, base + done, buf.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw WardenError(.io, "cannot write: \(String(cString: strerror(errno)))", file: name)
            }
            done += n
        }
    }

    public static func pwriteAll(_ fd: Int32, _ buf: UnsafeRawBufferPointer, at offset: UInt64, name: String) throws {
        guard let base = buf.baseAddress else { return }
        var done = 0
        while done < buf.count {
            let (pos, o) = offset.addingReportingOverflow(UInt64(done))
            guard !o, pos <= UInt64(Int64.max) else { throw WardenError(.io, "write offset out of range", file: name) }
            let n = pwrite(fd, base + done, buf.count - done, off_t(pos))
            if n < 0 {
                if errno == EINTR { continue }
                throw WardenError(.io, "cannot write: \(String(cString: strerror(errno)))", file: name)
            }
            done += n
        }
    }
}
