import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// One connection of the maintenance appliance to its mirror, on standard input and output
/// (QEMU's user network starts `warden internal mirror-pipe` for each connection and hands
/// it the connection as fds 0 and 1; fd 2 is the connection too, so nothing is ever written
/// to standard error).
///
/// - ``serve(directory:input:output:)`` answers HTTP/1.1 `GET` and `HEAD` requests with
///   files under the directory (keep-alive; paths resolved and kept inside the directory;
///   requests and headers bounded);
/// - ``relay(host:port:input:output:)`` copies bytes to and from one TCP address.
public enum MirrorPipe {
    /// The longest request head read (request line and headers).
    static let headLimit = 16 * 1024
    /// The most requests one connection may make.
    static let requestLimit = 100_000
    /// A connection idle this long is closed.
    static let idleSeconds: Int32 = 120

    /// Serves `directory` on the connection until the client closes it, or a request is bad.
    public static func serve(directory: String, input: Int32 = 0, output: Int32 = 1) {
        guard let rootC = realpath(directory, nil) else {
            respond(output, status: "404 Not Found", body: "no mirror\n", head: false)
            return
        }
        let root = String(cString: rootC)
        free(rootC)
        var buffer: [UInt8] = []
        for _ in 0..<requestLimit {
            guard let head = readHead(input, buffer: &buffer) else { return }
            guard let request = parse(head) else {
                respond(output, status: "400 Bad Request", body: "bad request\n", head: false, close: true)
                return
            }
            guard request.method == "GET" || request.method == "HEAD" else {
                respond(output, status: "405 Method Not Allowed", body: "GET and HEAD only\n", head: false, close: true)
                return
            }
            if request.hasBody {
                respond(output, status: "400 Bad Request", body: "no request bodies\n", head: false, close: true)
                return
            }
            let ok: Bool
            if let file = resolve(request.path, root: root) {
                ok = sendFile(output, path: file, head: request.method == "HEAD", close: request.close)
            } else {
                ok = respond(output, status: "404 Not Found", body: "not found\n", head: request.method == "HEAD", close: request.close)
            }
            if !ok || request.close { return }
        }
    }

    struct Request {
        var method: String
        var path: String
        var close: Bool
        var hasBody: Bool
    }

    /// Reads up to the blank line ending a request head; nil at end of input, on idle timeout
    /// or when the head is too long.
    static func readHead(_ fd: Int32, buffer: inout [UInt8]) -> String? {
        let end: [UInt8] = [13, 10, 13, 10]
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let r = find(end, in: buffer) {
                let head = String(decoding: buffer[..<r], as: UTF8.self)
                buffer.removeSubrange(..<(r + 4))
                return head
            }
            guard buffer.count <= headLimit else { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, idleSeconds * 1000) > 0 else { return nil }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            buffer.append(contentsOf: chunk[..<n])
        }
    }

    static func find(_ needle: [UInt8], in hay: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle { return i }
        return nil
    }

    static func parse(_ head: String) -> Request? {
        let lines = head.split(separator: "\r\n", omittingEmptySubsequences: false)
        guard let first = lines.first else { return nil }
        let parts = first.split(separator: " ")
        guard parts.count == 3, parts[2] == "HTTP/1.1" || parts[2] == "HTTP/1.0" else { return nil }
        var close = parts[2] == "HTTP/1.0"
        var hasBody = false
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { return nil }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces).lowercased()
            if name == "connection" { close = value.contains("close") ? true : (value.contains("keep-alive") ? false : close) }
            if name == "content-length" && value != "0" { hasBody = true }
            if name == "transfer-encoding" { hasBody = true }
        }
        return Request(method: String(parts[0]), path: String(parts[1]), close: close, hasBody: hasBody)
    }

    /// The file a request path names, inside `root` after resolving links; nil otherwise.
    static func resolve(_ target: String, root: String) -> String? {
        var path = target
        if let q = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = String(path[..<q]) }
        guard path.hasPrefix("/"), let decoded = path.removingPercentEncoding, !decoded.utf8.contains(0) else { return nil }
        let parts = decoded.split(separator: "/")
        guard !parts.contains(where: { $0 == ".." }), parts.count < 64 else { return nil }
        let joined = root + "/" + parts.joined(separator: "/")
        guard let real = realpath(joined, nil) else { return nil }
        defer { free(real) }
        let resolved = String(cString: real)
        guard resolved.hasPrefix(root + "/") else { return nil }
        var st = stat()
        guard stat(resolved, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        return resolved
    }

    @discardableResult
    static func respond(_ fd: Int32, status: String, body: String, head: Bool, close: Bool = false) -> Bool {
        let bytes = Array(body.utf8)
        var text = "HTTP/1.1 \(status)\r\nContent-Type: text/plain\r\nContent-Length: \(bytes.count)\r\n"
        text += close ? "Connection: close\r\n\r\n" : "\r\n"
        return write(fd, Array(text.utf8) + (head ? [] : bytes))
    }

    static func sendFile(_ fd: Int32, path: String, head: Bool, close: Bool) -> Bool {
        let file = open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0 else { return respond(fd, status: "404 Not Found", body: "not found\n", head: head, close: close) }
        defer { Glibc.close(file) }
        var st = stat()
        guard fstat(file, &st) == 0 else { return false }
        var text = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: \(st.st_size)\r\n"
        text += "Last-Modified: \(httpDate(st.st_mtim.tv_sec))\r\n"
        text += close ? "Connection: close\r\n\r\n" : "\r\n"
        guard write(fd, Array(text.utf8)) else { return false }
        if head { return true }
        var remaining = Int64(st.st_size)
        var chunk = [UInt8](repeating: 0, count: 256 * 1024)
        while remaining > 0 {
            let n = chunk.withUnsafeMutableBytes { read(file, $0.baseAddress, min($0.count, Int(remaining))) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            guard write(fd, Array(chunk[..<n])) else { return false }
            remaining -= Int64(n)
        }
        return true
    }

    static func httpDate(_ seconds: Int) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        return f.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        (try? bytes.withUnsafeBytes { try FileDescriptorIO.writeAll(fd, $0, name: "the connection") }) != nil
    }

    /// Connects to `host:port` and copies bytes both ways until both sides have closed (or
    /// the connection is idle for two minutes). Returns false when the connection fails.
    @discardableResult
    public static func relay(host: String, port: Int, input: Int32 = 0, output: Int32 = 1) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else { return false }
        defer { freeaddrinfo(list) }
        var sock: Int32 = -1
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let s = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if s >= 0 {
                if connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { sock = s; break }
                Glibc.close(s)
            }
            ai = a.pointee.ai_next
        }
        guard sock >= 0 else { return false }
        defer { Glibc.close(sock) }
        var open = (fromClient: true, fromServer: true)
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while open.fromClient || open.fromServer {
            var fds = [pollfd(fd: input, events: open.fromClient ? Int16(POLLIN) : 0, revents: 0),
                       pollfd(fd: sock, events: open.fromServer ? Int16(POLLIN) : 0, revents: 0)]
            let r = poll(&fds, 2, idleSeconds * 1000)
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { return true }
            if open.fromClient && fds[0].revents != 0 {
                let n = chunk.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
                if n > 0 { if !write(sock, Array(chunk[..<n])) { return true } } else if !(n < 0 && errno == EINTR) {
                    open.fromClient = false
                    shutdown(sock, Int32(SHUT_WR))
                }
            }
            if open.fromServer && fds[1].revents != 0 {
                let n = chunk.withUnsafeMutableBytes { read(sock, $0.baseAddress, $0.count) }
                if n > 0 { if !write(output, Array(chunk[..<n])) { return true } } else if !(n < 0 && errno == EINTR) {
                    open.fromServer = false
                    shutdown(output, Int32(SHUT_WR))
                }
            }
        }
        return true
    }
}
