import Foundation
import WardenCore

/// UUID text without `sscanf`/`sprintf`: the exposure query handles tens of thousands of ids,
/// and Foundation's `UUID(uuidString:)` and `uuidString` dominated its profile.
package enum FastUUID {
    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case); nil for anything else.
    package static func parse(_ text: String) -> UUID? {
        var text = text
        return text.withUTF8 { parse(UnsafeRawBufferPointer($0)) }
    }

    /// Parses UUID text from raw bytes (a SQLite column).
    static func parse(_ b: UnsafeRawBufferPointer) -> UUID? {
        guard b.count == 36 else { return nil }
        var bytes: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        let ok = withUnsafeMutableBytes(of: &bytes) { out -> Bool in
            var j = 0, i = 0
            while i < 36 {
                if i == 8 || i == 13 || i == 18 || i == 23 {
                    guard b[i] == UInt8(ascii: "-") else { return false }
                    i += 1
                    continue
                }
                guard let hi = nibble(b[i]), let lo = nibble(b[i + 1]) else { return false }
                out[j] = hi << 4 | lo
                j += 1; i += 2
            }
            return true
        }
        return ok ? UUID(uuid: bytes) : nil
    }

    package static func vmid(_ text: String) -> VMID? { parse(text).map { VMID($0) } }

    /// Lower-case text, the same as `VMID.description`.
    static func text(_ u: UUID) -> String {
        withUnsafeBytes(of: u.uuid) { raw in
            String(unsafeUninitializedCapacity: 36) { out in
                var o = 0
                for (k, byte) in raw.enumerated() {
                    if k == 4 || k == 6 || k == 8 || k == 10 { out[o] = UInt8(ascii: "-"); o += 1 }
                    out[o] = hexDigits[Int(byte >> 4)]; out[o + 1] = hexDigits[Int(byte & 0xF)]
                    o += 2
                }
                return o
            }
        }
    }

    /// Appends the lower-case text of `u` to `o`.
    static func write(_ u: UUID, into o: inout [UInt8]) {
        withUnsafeBytes(of: u.uuid) { raw in
            for (k, byte) in raw.enumerated() {
                if k == 4 || k == 6 || k == 8 || k == 10 { o.append(UInt8(ascii: "-")) }
                o.append(hexDigits[Int(byte >> 4)]); o.append(hexDigits[Int(byte & 0xF)])
            }
        }
    }

    @inline(__always) private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
