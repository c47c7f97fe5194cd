import Foundation
import WardenConfig
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// Buffered writes to a file descriptor (stdout by default), and error lines on stderr.
final class Output: @unchecked Sendable {
    static let stdout = Output(fd: 1)

    let fd: Int32
    private var buffer: [UInt8] = []
    private let limit = 1 << 16

    init(fd: Int32) {
        self.fd = fd
        buffer.reserveCapacity(limit)
    }

    func line(_ s: String) {
        buffer.append(contentsOf: s.utf8)
        buffer.append(0x0A)
        if buffer.count >= limit { flush() }
    }

    func write(_ bytes: [UInt8]) throws {
        if buffer.count + bytes.count > limit { flush() }
        if bytes.count >= limit {
            try bytes.withUnsafeBytes { try FileDescriptorIO.writeAll(fd, $0, name: "standard output") }
        } else {
            buffer.append(contentsOf: bytes)
        }
    }

    func flush() {
        guard !buffer.isEmpty else { return }
        _ = try? buffer.withUnsafeBytes { try FileDescriptorIO.writeAll(fd, $0, name: "standard output") }
        buffer.removeAll(keepingCapacity: true)
    }

    /// Writes `warden: message` on stderr, on one line.
    static func error(_ message: String) {
        FileHandle.standardError.write(Data("warden: \(oneLine(message))\n".utf8))
    }

    /// A note on stderr (the chosen volume, what was skipped): a notice-level log message,
    /// so `--log-level warning` quiets it.
    static func note(_ message: String) {
        WardenLog.logger.notice("\(oneLine(message))")
    }

    /// How a document is written as JSON: `plain` (``json(_:)``) or `ledger` (``ledgerJSON(_:)``:
    /// times as RFC 3339 strings in UTC with microseconds).
    enum JSONStyle { case plain, ledger }

    /// The one output path of a command: with `json`, `doc` as JSON on standard output (its
    /// documented schema); otherwise `human` writes the table or text.
    static func render<T: Encodable>(_ doc: @autoclosure () throws -> T, json: Bool, style: JSONStyle = .plain,
                                     human: () throws -> Void) throws {
        if json {
            let d = try doc()
            stdout.line(try style == .ledger ? ledgerJSON(d) : Output.json(d))
        } else {
            try human()
        }
    }

    /// Encodes `value` as pretty, sorted-key JSON with snake_case keys.
    static func json<T: Encodable>(_ value: T) throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        enc.keyEncodingStrategy = .convertToSnakeCase
        return String(decoding: try enc.encode(value), as: UTF8.self)
    }
}

/// "1 GiB", "512 KiB", "3.5 MiB": sizes as qemu-img prints them.
func humanSize(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    if u == 0 { return "\(n) B" }
    let rounded = (v * 100).rounded() / 100
    if rounded == rounded.rounded() { return "\(Int(rounded)) \(units[u])" }
    return String(format: "%.3g %@", v, units[u])
}
