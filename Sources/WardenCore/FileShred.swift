import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Destroying a file that held a secret (a wrapped key, a grace copy, a pool key, a key handed
/// to QEMU): overwritten in place, synced, unlinked, its directory synced.
public enum FileShred {
    /// Overwrites the file with zeros, syncs it, removes it and syncs its directory; throws
    /// when that cannot be done (a file that is not there is fine).
    public static func overwriteAndRemove(_ path: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 {
            if errno == ENOENT { return }
            throw WardenError(.io, "cannot open to destroy: \(String(cString: strerror(errno)))", file: path)
        }
        var st = stat()
        var ok = fstat(fd, &st) == 0
        if ok && st.st_size > 0 {
            let zeros = [UInt8](repeating: 0, count: Int(st.st_size))
            ok = pwrite(fd, zeros, zeros.count, 0) == zeros.count && fsync(fd) == 0
        }
        close(fd)
        guard ok, unlink(path) == 0 else { throw WardenError(.io, "cannot destroy: \(String(cString: strerror(errno)))", file: path) }
        let dfd = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }
}
