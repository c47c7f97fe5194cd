import Crypto
import Foundation
import WardenCore

/// Times in the ledger: integer microseconds since the Unix epoch, UTC.
public enum LedgerTime {
    /// `date` rounded to the nearest microsecond.
    public static func micros(_ date: Date) -> Int64 {
        let us = (date.timeIntervalSince1970 * 1_000_000).rounded()
        guard us.isFinite, us > -9.0e15, us < 9.0e15 else { return 0 }
        return Int64(us)
    }

    public static func date(_ micros: Int64) -> Date {
        Date(timeIntervalSince1970: Double(micros) / 1_000_000)
    }

    /// RFC 3339 with exactly six fractional digits and `Z`: `2026-11-26T18:43:46.123456Z`.
    public static func rfc3339(_ micros: Int64) -> String {
        var o: [UInt8] = []
        o.reserveCapacity(27)
        LedgerEntry.writeTime(micros, into: &o)
        return String(decoding: o, as: UTF8.self)
    }
}

/// The canonical byte encoding of a ledger event: the Merkle leaf's `entry`.
///
/// Compact JSON (no whitespace), keys sorted by byte order, every field present:
///
/// ```
/// {"actor":"alice@h1","generation_after":"…"|null,"generation_before":"…"|null,"host":"h1",
///  "kind":"cloned","payload":{…},"reported_by_caller":false,"seq":42,
///  "time":"2026-11-26T18:43:46.123456Z","v":1,"vm":"…"|null}
/// ```
///
/// Strings escape only `"`, `\` and control characters below 0x20 (as `\n`, `\r`, `\t`,
/// `\b`, `\f` or `\u00xx`); everything else is raw UTF-8. UUIDs are lower case. Numbers in
/// the payload are integers when integral and below 2^53 in magnitude, otherwise Swift's
/// shortest round-trip form; non-finite numbers become `null`. The payload's own objects
/// are sorted the same way. The leaf hash is `SHA-256(0x00 ‖ entry)` (RFC 9162).
public enum LedgerEntry {
    public static let version = 1

    /// The canonical payload text (stored as-is in `events.payload`).
    public static func payloadText(_ payload: [String: JSONValue]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        writeValue(.object(payload), into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Any JSON value in the canonical form.
    public static func jsonText(_ value: JSONValue) -> String {
        var out: [UInt8] = []
        writeValue(value, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// The entry bytes from stored column values; `payloadText` is embedded verbatim.
    public static func encode(seq: Int64, kind: String, vm: String?, actor: String, host: String, timeMicros: Int64,
                              generationBefore: String?, generationAfter: String?, payloadText: String,
                              reported: Bool) -> [UInt8] {
        var o: [UInt8] = []
        o.reserveCapacity(256 + payloadText.utf8.count)
        encode(into: &o, seq: seq, kind: kind.utf8, vm: vm?.utf8, actor: actor.utf8, host: host.utf8, timeMicros: timeMicros,
               generationBefore: generationBefore?.utf8, generationAfter: generationAfter?.utf8,
               payloadText: payloadText.utf8, reported: reported)
        return o
    }

    /// The one definition of the entry layout, over any byte sequences (column bytes as
    /// SQLite returns them, or Swift strings' UTF-8).
    @inlinable
    static func encode<B: Sequence<UInt8>>(into o: inout [UInt8], seq: Int64, kind: B, vm: B?, actor: B, host: B,
                                           timeMicros: Int64, generationBefore: B?, generationAfter: B?,
                                           payloadText: B, reported: Bool) {
        o.append(contentsOf: #"{"actor":"#.utf8); writeString(actor, into: &o)
        o.append(contentsOf: #","generation_after":"#.utf8); writeOptional(generationAfter, into: &o)
        o.append(contentsOf: #","generation_before":"#.utf8); writeOptional(generationBefore, into: &o)
        o.append(contentsOf: #","host":"#.utf8); writeString(host, into: &o)
        o.append(contentsOf: #","kind":"#.utf8); writeString(kind, into: &o)
        o.append(contentsOf: #","payload":"#.utf8); o.append(contentsOf: payloadText)
        o.append(contentsOf: #","reported_by_caller":"#.utf8); o.append(contentsOf: (reported ? "true" : "false").utf8)
        o.append(contentsOf: #","seq":"#.utf8); writeInt(seq, into: &o)
        o.append(contentsOf: #","time":""#.utf8); writeTime(timeMicros, into: &o)
        o.append(contentsOf: #"","v":"#.utf8); writeInt(Int64(version), into: &o)
        o.append(contentsOf: #","vm":"#.utf8); writeOptional(vm, into: &o)
        o.append(0x7D)
    }

    @usableFromInline
    static func writeInt(_ v: Int64, into o: inout [UInt8]) {
        if v == 0 { o.append(0x30); return }
        var x = v.magnitude
        var tmp: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                  UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = 0
        withUnsafeMutableBytes(of: &tmp) { buf in
            while x > 0 { buf[n] = UInt8(x % 10) + 0x30; x /= 10; n += 1 }
            if v < 0 { o.append(0x2D) }
            while n > 0 { n -= 1; o.append(buf[n]) }
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (the RFC 3339 form of ``LedgerTime/rfc3339(_:)``), without allocating.
    @usableFromInline
    static func writeTime(_ micros: Int64, into o: inout [UInt8]) {
        var secs = micros / 1_000_000
        var frac = micros % 1_000_000
        if frac < 0 { frac += 1_000_000; secs -= 1 }
        // Civil date from days since the epoch (Howard Hinnant's algorithm).
        var days = secs / 86_400
        var sod = secs % 86_400
        if sod < 0 { sod += 86_400; days -= 1 }
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func digits(_ v: Int64, _ w: Int) {
            var div: Int64 = 1
            for _ in 1..<w { div *= 10 }
            var v = v
            if v < 0 { o.append(0x2D); v = -v }
            while div > 0 { o.append(UInt8((v / div) % 10) + 0x30); div /= 10 }
        }
        digits(y, 4); o.append(0x2D); digits(m, 2); o.append(0x2D); digits(d, 2); o.append(0x54)
        digits(sod / 3600, 2); o.append(0x3A); digits(sod / 60 % 60, 2); o.append(0x3A); digits(sod % 60, 2)
        o.append(0x2E); digits(frac, 6); o.append(0x5A)
    }

    /// The entry bytes of a stored event.
    public static func encode(_ e: EventRecord) -> [UInt8] {
        encode(seq: e.seq, kind: e.kind.rawValue, vm: e.vm?.description, actor: e.actor, host: e.host.value,
               timeMicros: LedgerTime.micros(e.time), generationBefore: e.generationBefore.map(uuidText),
               generationAfter: e.generationAfter.map(uuidText), payloadText: payloadText(e.payload),
               reported: e.reportedByCaller)
    }

    static func uuidText(_ u: UUID) -> String { FastUUID.text(u) }

    @usableFromInline
    static func writeOptional<B: Sequence<UInt8>>(_ s: B?, into o: inout [UInt8]) {
        if let s { writeString(s, into: &o) } else { o.append(contentsOf: "null".utf8) }
    }

    @usableFromInline
    static func writeString(_ s: String, into o: inout [UInt8]) { writeString(s.utf8, into: &o) }

    @usableFromInline
    static func writeString<B: Sequence<UInt8>>(_ s: B, into o: inout [UInt8]) {
        let hexDigits: StaticString = "0123456789abcdef"
        o.append(0x22)
        for b in s {
            switch b {
            case 0x22: o.append(0x5C); o.append(0x22)
            case 0x5C: o.append(0x5C); o.append(0x5C)
            case 0x0A: o.append(0x5C); o.append(0x6E)
            case 0x0D: o.append(0x5C); o.append(0x72)
            case 0x09: o.append(0x5C); o.append(0x74)
            case 0x08: o.append(0x5C); o.append(0x62)
            case 0x0C: o.append(0x5C); o.append(0x66)
            case 0..<0x20:
                o.append(contentsOf: #"\u00"#.utf8)
                hexDigits.withUTF8Buffer { h in o.append(h[Int(b >> 4)]); o.append(h[Int(b & 15)]) }
            default: o.append(b)
            }
        }
        o.append(0x22)
    }

    static func writeValue(_ v: JSONValue, into o: inout [UInt8]) {
        switch v {
        case .null: o.append(contentsOf: "null".utf8)
        case .bool(let b): o.append(contentsOf: (b ? "true" : "false").utf8)
        case .string(let s): writeString(s, into: &o)
        case .number(let n):
            if !n.isFinite {
                o.append(contentsOf: "null".utf8)
            } else if n == n.rounded(), abs(n) < 9_007_199_254_740_992 {
                o.append(contentsOf: String(Int64(n)).utf8)
            } else {
                o.append(contentsOf: "\(n)".utf8)
            }
        case .array(let a):
            o.append(0x5B)
            for (i, x) in a.enumerated() {
                if i > 0 { o.append(0x2C) }
                writeValue(x, into: &o)
            }
            o.append(0x5D)
        case .object(let d):
            o.append(0x7B)
            // Byte order of the UTF-8 keys (Swift's String < is by Unicode scalars, which for
            // UTF-8 is the same order as bytes).
            for (i, k) in d.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
                if i > 0 { o.append(0x2C) }
                writeString(k, into: &o)
                o.append(0x3A)
                writeValue(d[k]!, into: &o)
            }
            o.append(0x7D)
        }
    }

    /// RFC 9162 leaf hash: `SHA-256(0x00 ‖ entry)`.
    public static func leafHash(_ entry: [UInt8]) -> Data {
        var h = SHA256()
        h.update(data: [0x00])
        h.update(data: entry)
        return Data(h.finalize())
    }
}

extension LedgerTime {
    /// An RFC 3339 time with a zone (`2026-12-01T10:00:00Z`, `…T10:00:00.123456+01:00`) or a
    /// date (`2026-12-01`, midnight UTC), to the microsecond (Foundation's formatter alone
    /// keeps milliseconds).
    public static func parse(_ text: String) -> Date? {
        guard text.utf8.count <= 64 else { return nil }
        let f = ISO8601DateFormatter()
        for options: ISO8601DateFormatter.Options in [[.withInternetDateTime, .withFractionalSeconds], [.withInternetDateTime], [.withFullDate]] {
            f.formatOptions = options
            guard let date = f.date(from: text) else { continue }
            if let dot = text.firstIndex(of: ".") {
                let digits = text[text.index(after: dot)...].prefix { $0.isASCII && $0.isNumber }
                if !digits.isEmpty, let us = Int64(String(digits.prefix(6)).padding(toLength: 6, withPad: "0", startingAt: 0)) {
                    let micros = micros(date)
                    let whole = micros - ((micros % 1_000_000) + 1_000_000) % 1_000_000
                    return LedgerTime.date(whole + us)
                }
            }
            return date
        }
        return nil
    }
}

/// The one JSON style for ledger documents, on the command line and over HTTP: sorted keys,
/// snake_case, RFC 3339 UTC times with microseconds, slashes unescaped.
public enum LedgerJSON {
    public static func encoder(pretty: Bool = true) -> JSONEncoder {
        let enc = JSONEncoder()
        enc.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        enc.keyEncodingStrategy = .convertToSnakeCase
        enc.dateEncodingStrategy = .custom { date, encoder in
            var c = encoder.singleValueContainer()
            try c.encode(LedgerTime.rfc3339(LedgerTime.micros(date)))
        }
        return enc
    }

    /// Reads what ``encoder(pretty:)`` writes (times: RFC 3339, fractions optional).
    public static func decoder() -> JSONDecoder {
        let dec = JSONDecoder()
        dec.keyDecodingStrategy = .convertFromSnakeCase
        dec.dateDecodingStrategy = .custom { d in
            let c = try d.singleValueContainer()
            guard let date = LedgerTime.parse(try c.decode(String.self)) else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an RFC 3339 time")
            }
            return date
        }
        return dec
    }
}
