import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// A connected Unix stream socket with line-oriented reads (blocking, with a timeout).
///
/// Lines are capped (`maxLine`): a peer that sends an endless line gets an error, not
/// unbounded memory.
final class UnixLineSocket: @unchecked Sendable {
    let fd: Int32
    let path: String
    private var buffer: [UInt8] = []
    let maxLine: Int

    /// Connects to the socket at `path`; retries until `timeout` while it does not exist yet.
    init(connect path: String, timeout: TimeInterval = 5, maxLine: Int = 1 << 20) throws {
        self.path = path
        self.maxLine = maxLine
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw WardenError(.corrupt, "socket path is too long (\(bytes.count) bytes)", file: path)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard s >= 0 else { throw WardenError(.io, "socket(): \(String(cString: strerror(errno)))", file: path) }
            let r = withUnsafePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if r == 0 { fd = s; break }
            let err = errno
            close(s)
            if Date() >= deadline || (err != ENOENT && err != ECONNREFUSED) {
                throw WardenError(.unavailable, "cannot connect: \(String(cString: strerror(err)))", file: path)
            }
            usleep(50_000)
        }
    }

    deinit { close(fd) }

    /// Thrown by ``readLine()`` when the read timeout passes with no complete line.
    struct SocketTimeout: Error {}

    /// Drops buffered input (after a line that was too long).
    func discardBuffer() { buffer.removeAll() }

    /// Sets the receive timeout (0 = block forever).
    func setReadTimeout(_ seconds: TimeInterval) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Writes all of `data`.
    func write(_ data: [UInt8]) throws {
        var off = 0
        while off < data.count {
            let n = data[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw WardenError(.io, "write: \(String(cString: strerror(errno)))", file: path)
            }
            off += n
        }
    }

    func write(line: String) throws { try write(Array((line + "\n").utf8)) }

    /// Reads the next line without its newline; nil at end of stream. Throws on timeout.
    func readLine() throws -> String? {
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                var line = Array(buffer[..<nl])
                buffer.removeFirst(nl + 1)
                if line.last == 0x0D { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            if buffer.count > maxLine {
                throw WardenError(.corrupt, "line longer than \(maxLine) bytes", file: path)
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 {
                if buffer.isEmpty { return nil }
                let rest = buffer; buffer = []
                return String(decoding: rest, as: UTF8.self)
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw SocketTimeout() }
                throw WardenError(.io, "read: \(String(cString: strerror(errno)))", file: path)
            }
            buffer.append(contentsOf: chunk[..<n])
        }
    }
}
