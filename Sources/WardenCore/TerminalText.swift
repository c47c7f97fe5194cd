/// The one sanitiser for human-readable output.
///
/// Text that came from a guest, a domain, a feed, a policy file or a request can hold
/// characters that a terminal acts on: C0 controls (ESC starts an escape sequence, BEL rings,
/// CR and LF break lines), DEL, C1 controls (U+009B is a one-character CSI on many terminals)
/// and Unicode bidirectional controls (U+202E reverses what follows, so a name can display
/// as something it is not). Every human-readable line Warden prints passes through
/// ``line(_:)``; `--json` output carries the raw text, properly encoded.
public enum TerminalText {
    /// Whether `u` must not reach a terminal as it is.
    @inlinable
    public static func isUnsafe(_ u: Unicode.Scalar) -> Bool {
        let v = u.value
        if v < 0x20 || v == 0x7F { return true }
        if v < 0x80 { return false }
        if v <= 0x9F { return true }                       // C1 controls
        switch v {
        case 0x061C, 0x200E, 0x200F,                       // ALM, LRM, RLM
             0x202A...0x202E,                              // LRE RLE PDF LRO RLO
             0x2066...0x2069,                              // LRI RLI FSI PDI
             0x2028, 0x2029:                               // line and paragraph separators
            return true
        default:
            return false
        }
    }

    /// `s` on one safe line: C0 controls and DEL as `\xNN`, C1 and bidi controls as `\u{XXXX}`;
    /// everything else unchanged (plain text is returned as it is, without copying).
    public static func line(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: isUnsafe) else { return s }
        var out = ""
        for u in s.unicodeScalars {
            guard isUnsafe(u) else { out.unicodeScalars.append(u); continue }
            out += escape(u)
        }
        return out
    }

    /// The escape for one unsafe scalar.
    public static func escape(_ u: Unicode.Scalar) -> String {
        let hex = String(u.value, radix: 16)
        if u.value < 0x80 { return "\\x" + (u.value < 0x10 ? "0" : "") + hex }
        return "\\u{" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex + "}"
    }
}
