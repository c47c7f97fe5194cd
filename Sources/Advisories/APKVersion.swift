/// An Alpine package version, `digits{.digits}[letter]{_suffix[digits]}[-rN]`, ordered as
/// apk-tools 2.12–2.14 (`apk version -t`) orders it.
///
/// apk never rejects a version when comparing: it reads tokens until one is malformed and
/// compares what it read. ``compare(to:)`` reproduces that, so invalid versions get the
/// same (sometimes surprising) order apk gives them; ``isValid`` is `apk version -c`.
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
        var va: Int64 = 0, vb: Int64 = 0
        while ka == kb && ka != .end && ka != .invalid && va == vb {
            va = ra.take(&ka)
            vb = rb.take(&kb)
        }
        if va != vb { return va < vb ? .less : .greater }
        if ka == kb { return .equal }
        // Same values so far: the longer version is newer, unless it goes on with a
        // pre-release suffix (or a malformed one).
        var probe = ka
        if ka == .suffix && ra.take(&probe) < 0 { return .less }
        probe = kb
        if kb == .suffix && rb.take(&probe) < 0 { return .greater }
        if ka.rawValue != kb.rawValue { return ka.rawValue > kb.rawValue ? .less : .greater }
        return .equal
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
        case revision
        case end
    }

    struct Reader {
        var rest: ArraySlice<UInt8>
        init(_ rest: ArraySlice<UInt8>) { self.rest = rest }

        static let preReleases: [[UInt8]] = ["alpha", "beta", "pre", "rc"].map { Array($0.utf8) }
        static let postReleases: [[UInt8]] = ["cvs", "svn", "git", "hg", "p"].map { Array($0.utf8) }

        /// Reads the token of `kind`, returns its value and sets `kind` to what follows.
        mutating func take(_ kind: inout Kind) -> Int64 {
            if rest.isEmpty { kind = .end; return 0 }
            var used = 0
            var value: Int64 = 0
            var forced: Kind?
            switch kind {
            case .dotDigits where rest.first == 0x30:
                // All but the last of a run of zeros count as a negative value.
                let zeros = rest.prefix(while: { $0 == 0x30 }).count
                used = zeros - 1
                value = -Int64(used)
                forced = .digit
            case .dotDigits, .digit, .suffixNumber, .revision:
                let run = rest.prefix(while: isASCIIDigit)
                // apk gives up on 18 digits or more (its int64 would overflow).
                if run.count >= 18 { kind = .invalid; return -1 }
                for d in run { value = value * 10 + Int64(d - 0x30) }
                used = run.count
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
                    kind = .invalid; return -1
                }
            case .invalid, .end:
                kind = .invalid; return -1
            }
            rest = rest.dropFirst(used)
            if rest.isEmpty {
                kind = .end
            } else if let forced {
                kind = forced
            } else {
                kind = next(after: kind)
            }
            return value
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
