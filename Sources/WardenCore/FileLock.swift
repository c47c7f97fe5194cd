import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive `flock(2)` on a file, held until released (or the process dies). Opened with
/// `O_CLOEXEC`, so QEMU and the state server never inherit it. `flock` locks belong to the
/// open file: a second `FileLock` on the same path in the same process waits like any other.
public final class FileLock: @unchecked Sendable {
    let fd: Int32
    /// Waits up to `timeout` for the lock; then throws `.conflict` with `holder` (who has it).
    public init(path: String, timeout: TimeInterval, holder: String) throws {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw WardenError(.io, "cannot open the lock file: \(String(cString: strerror(errno)))", file: path) }
        let deadline = Date().addingTimeInterval(timeout)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno != EWOULDBLOCK && errno != EINTR {
                let e = errno; close(fd)
                throw WardenError(.io, "cannot lock: \(String(cString: strerror(e)))", file: path)
            }
            if Date() >= deadline {
                close(fd)
                throw WardenError(.conflict, holder, file: path)
            }
            usleep(20_000)
        }
    }
    deinit { flock(fd, LOCK_UN); close(fd) }
}
