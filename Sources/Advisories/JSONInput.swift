import Foundation
import WardenCore

/// Helpers for reading untrusted JSON feeds: size caps, typed errors, RFC 3339 dates.
enum JSONInput {
    /// Parses `data` as JSON; malformed input is a one-line `.corrupt` error naming `file`.
    static func parse(_ data: Data, file: String) throws -> Any {
        do {
            return try JSONSerialization.jsonObject(with: data, options: [])
        } catch {
            let ns = error as NSError
            let detail = (ns.userInfo[NSDebugDescriptionErrorKey] as? String).map { ": " + oneLine($0) } ?? ""
            throw WardenError(.corrupt, "malformed JSON\(detail)", file: file)
        }
    }

    /// Reads a whole file, refusing more than `limit` bytes.
    static func readFile(_ path: String, limit: Int) throws -> Data {
        let attrs: [FileAttributeKey: Any]
        do { attrs = try FileManager.default.attributesOfItem(atPath: path) } catch {
            throw WardenError(.notFound, "cannot open: No such file or directory", file: path)
        }
        if let size = (attrs[.size] as? NSNumber)?.intValue, size > limit {
            throw WardenError(.limitExceeded, "file is \(size) bytes; the limit is \(limit)", file: path)
        }
        guard let fh = FileHandle(forReadingAtPath: path) else {
            throw WardenError(.io, "cannot open for reading", file: path)
        }
        defer { try? fh.close() }
        let data = (try? fh.read(upToCount: limit + 1)) ?? Data()
        if data.count > limit { throw WardenError(.limitExceeded, "file is larger than \(limit) bytes", file: path) }
        return data
    }

    /// RFC 3339 timestamp (`2023-10-05T12:34:56Z`, fractional seconds and offsets allowed), or nil.
    static func date(_ s: String) -> Date? {
        let b = Array(s.utf8)
        guard b.count >= 20, b.count <= 40 else { return nil }
        func num(_ r: Range<Int>) -> Int? {
            var v = 0
            for i in r { guard isASCIIDigit(b[i]) else { return nil }; v = v * 10 + Int(b[i] - 0x30) }
            return v
        }
        guard let y = num(0..<4), b[4] == 0x2D, let mo = num(5..<7), b[7] == 0x2D, let d = num(8..<10),
              b[10] == 0x54 || b[10] == 0x74 || b[10] == 0x20,
              let h = num(11..<13), b[13] == 0x3A, let mi = num(14..<16), b[16] == 0x3A, let sec = num(17..<19),
              (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, sec < 61 else { return nil }
        var i = 19
        var frac = 0.0
        if i < b.count, b[i] == 0x2E {
            i += 1
            var scale = 0.1
            let start = i
            while i < b.count, isASCIIDigit(b[i]) { frac += Double(b[i] - 0x30) * scale; scale /= 10; i += 1 }
            if i == start { return nil }
        }
        guard i < b.count else { return nil }
        var offset = 0
        if b[i] == 0x5A || b[i] == 0x7A {
            i += 1
        } else if b[i] == 0x2B || b[i] == 0x2D, i + 6 == b.count, let oh = num(i + 1..<i + 3), b[i + 3] == 0x3A, let om = num(i + 4..<i + 6) {
            offset = (oh * 60 + om) * 60 * (b[i] == 0x2D ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        guard i == b.count else { return nil }
        // Days from the civil date (proleptic Gregorian), after H. Hinnant's algorithm.
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        let t = Double(days * 86_400 + h * 3600 + mi * 60 + sec - offset) + frac
        return Date(timeIntervalSince1970: t)
    }
}

/// A feed value on one terminal-safe line (``TerminalText/line(_:)``).
func oneLine(_ s: String) -> String { TerminalText.line(s) }
