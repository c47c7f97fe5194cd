/// An Alpine package version, `digits{.digits}[letter]{_suffix[digits]}[~hash][-rN]`, ordered
/// as apk-tools' version.c orders it (`apk version -t`), in its current form:
///
/// - a digit component after a `.` that starts with `0` on either side is compared as a
///   string, byte by byte, the shorter first when one is a prefix of the other (so `8.2.0`
///   before `8.2.001`, and `8.2.0015` before `8.2.002`); other digit components as numbers;
/// - a `~` part (a commit hash, as in `1.0~1234`) is compared as a string; only `-rN` may
///   follow it, and the revision still counts.
///
/// apk-tools 2.12–2.14 compared leading-zero components by counting the zeros instead; the
/// two agree everywhere else (docs/decisions.md). apk never rejects a version when comparing:
/// it reads tokens until one is malformed and compares what it read. ``compare(to:)``
/// reproduces that, so invalid versions get the same (sometimes surprising) order apk gives
/// them; ``isValid`` is `apk version -c`.
public struct APKVersion: Sendable, CustomStringConvertible {
    public let text: String
    private let bytes: [UInt8]

    public init(_ text: String) {
        self.text = text
        // apk reads C strings: a NUL ends the version.
        self.bytes = Array(text.utf8.prefix(while: { $0 != 0 }))
    }

    public var description: String { text }

    /// Whether apk accepts the version (`apk version -c`).
    public var isValid: Bool {
        var r = Reader(bytes[...])
        var kind = Kind.digit
        while kind != .end && kind != .invalid { _ = r.take(&kind) }
        return kind == .end
    }

    public func compare(to other: APKVersion) -> VersionOrder {
        var ra = Reader(bytes[...]), rb = Reader(other.bytes[...])
        var ka = Kind.digit, kb = Kind.digit
        while ka == kb && ka != .end && ka != .invalid {
            let kind = ka
            let ta = ra.take(&ka), tb = rb.take(&kb)
            let order = Token.compare(ta, tb, as: kind)
            if order != .equal { return order }
        }
        if ka == kb { return .equal }
        // Same values so far: the longer version is newer, unless it goes on with a
        // pre-release suffix (or a malformed one).
        var probe = ka
        if ka == .suffix && ra.take(&probe).value < 0 { return .less }
        probe = kb
        if kb == .suffix && rb.take(&probe).value < 0 { return .greater }
        if ka.rawValue != kb.rawValue { return ka.rawValue > kb.rawValue ? .less : .greater }
        return .equal
    }

    /// One token read: its numeric value (digits, a letter's byte, a suffix's rank; -1 when
    /// malformed) and its bytes (for the parts compared as strings).
    struct Token {
        var value: Int64
        var text: ArraySlice<UInt8> = []

        static func compare(_ a: Token, _ b: Token, as kind: Kind) -> VersionOrder {
            let asString = kind == .hash
                || (kind == .dotDigits && (a.text.first == 0x30 || b.text.first == 0x30) && a.value >= 0 && b.value >= 0)
            if asString {
                for (x, y) in zip(a.text, b.text) where x != y { return x < y ? .less : .greater }
                return a.text.count == b.text.count ? .equal : (a.text.count < b.text.count ? .less : .greater)
            }
            return a.value == b.value ? .equal : (a.value < b.value ? .less : .greater)
        }
    }

    /// What the reader expects next. Raw values give apk's ordering of token kinds
    /// (a version that ends sooner, or goes on with a later kind, is older).
    enum Kind: Int {
        case invalid = -1
        case dotDigits = 0   // digits after a '.', leading zeros are special
        case digit
        case letter
        case suffix
        case suffixNumber
        case hash            // after '~': compared as a string
        case revision
        case end
    }

    struct Reader {
        var rest: ArraySlice<UInt8>
        init(_ rest: ArraySlice<UInt8>) { self.rest = rest }

        static let preReleases: [[UInt8]] = ["alpha", "beta", "pre", "rc"].map { Array($0.utf8) }
        static let postReleases: [[UInt8]] = ["cvs", "svn", "git", "hg", "p"].map { Array($0.utf8) }

        /// Reads the token of `kind`, returns it and sets `kind` to what follows.
        mutating func take(_ kind: inout Kind) -> Token {
            if rest.isEmpty { kind = .end; return Token(value: 0) }
            var used = 0
            var value: Int64 = 0
            switch kind {
            case .dotDigits where rest.first == 0x30:
                // A leading zero: the digits are compared as a string (any length).
                used = rest.prefix(while: isASCIIDigit).count
            case .dotDigits, .digit, .suffixNumber, .revision:
                let run = rest.prefix(while: isASCIIDigit)
                // apk gives up on 18 digits or more (its int64 would overflow).
                if run.count >= 18 { kind = .invalid; return Token(value: -1) }
                for d in run { value = value * 10 + Int64(d - 0x30) }
                used = run.count
            case .hash:
                used = rest.prefix(while: { isASCIIDigit($0) || ($0 >= 0x61 && $0 <= 0x7A) }).count
                if used == 0 { kind = .invalid; return Token(value: -1) }
            case .letter:
                value = Int64(rest.first!)
                used = 1
            case .suffix:
                if let k = Self.preReleases.firstIndex(where: { rest.starts(with: $0) }) {
                    value = Int64(k - Self.preReleases.count)
                    used = Self.preReleases[k].count
                } else if let k = Self.postReleases.firstIndex(where: { rest.starts(with: $0) }) {
                    value = Int64(k)
                    used = Self.postReleases[k].count
                } else {
                    kind = .invalid; return Token(value: -1)
                }
            case .invalid, .end:
                kind = .invalid; return Token(value: -1)
            }
            let text = rest.prefix(used)
            rest = rest.dropFirst(used)
            kind = rest.isEmpty ? .end : next(after: kind)
            return Token(value: value, text: text)
        }

        /// Decides the next token kind from the separator (consumed) or first byte (kept).
        mutating func next(after kind: Kind) -> Kind {
            guard let c = rest.first, c != 0 else { return .end }
            var n = Kind.invalid
            if (kind == .digit || kind == .dotDigits) && c >= 0x61 && c <= 0x7A {
                n = .letter
            } else if kind == .letter && isASCIIDigit(c) {
                n = .digit
            } else if kind == .suffix && isASCIIDigit(c) {
                n = .suffixNumber
            } else {
                switch c {
                case 0x2E: n = .dotDigits
                case 0x5F: n = .suffix
                case 0x7E: n = .hash
                case 0x2D:
                    if rest.count > 1 && rest[rest.startIndex + 1] == 0x72 {
                        n = .revision
                        rest = rest.dropFirst()
                    }
                default: break
                }
                rest = rest.dropFirst()
            }
            if n.rawValue < kind.rawValue {
                let allowed = (n == .dotDigits && kind == .digit)
                    || (n == .suffix && kind == .suffixNumber)
                    || (n == .digit && kind == .letter)
                if !allowed { n = .invalid }
            }
            return n
        }
    }
}
