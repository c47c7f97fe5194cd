import WardenCore

/// An RPM version, `[epoch:]version[-release]`, ordered as `rpm.labelCompare`:
/// epoch numerically (missing = 0), then version and release with `rpmvercmp`.
/// A missing release is the empty string (which sorts before any release).
///
/// Errors: an empty version, or a non-numeric epoch before the first `:`.
public struct RPMVersion: Sendable, Equatable, Comparable, CustomStringConvertible {
    /// The epoch's digits ("0" when missing); compared by value, any length.
    public let epoch: String
    public let version: String
    public let release: String?

    public init(_ text: String) throws {
        func fail(_ why: String) -> WardenError {
            WardenError(.invalidArgument, "invalid RPM version '\(text)': \(why)")
        }
        var rest = Substring(text)
        var epoch = "0"
        if let colon = rest.firstIndex(of: ":") {
            let e = rest[..<colon]
            guard e.utf8.allSatisfy(isASCIIDigit) else { throw fail("epoch is not a number") }
            if !e.isEmpty { epoch = String(e) }
            rest = rest[rest.index(after: colon)...]
        }
        var release: String?
        if let hyphen = rest.lastIndex(of: "-") {
            release = String(rest[rest.index(after: hyphen)...])
            rest = rest[..<hyphen]
        }
        if rest.isEmpty { throw fail("version is empty") }
        self.epoch = epoch
        self.version = String(rest)
        self.release = release
    }

    public var description: String {
        (epoch != "0" ? "\(epoch):" : "") + version + (release.map { "-\($0)" } ?? "")
    }

    public func compare(to other: RPMVersion) -> VersionOrder {
        let e = compareDigitRuns(ArraySlice(epoch.utf8), ArraySlice(other.epoch.utf8))
        if e != .equal { return e }
        let v = Self.rpmvercmp(version, other.version)
        if v != .equal { return v }
        return Self.rpmvercmp(release ?? "", other.release ?? "")
    }

    public static func < (a: RPMVersion, b: RPMVersion) -> Bool { a.compare(to: b) == .less }
    public static func == (a: RPMVersion, b: RPMVersion) -> Bool { a.compare(to: b) == .equal }

    /// rpm's segment comparison. Separators are any bytes other than ASCII letters, digits,
    /// `~` and `^`. `~` sorts before anything (even the end); `^` sorts after the end but
    /// before any further segment. Digit segments beat letter segments and compare by value.
    public static func rpmvercmp(_ lhs: String, _ rhs: String) -> VersionOrder {
        let a = Array(lhs.utf8), b = Array(rhs.utf8)
        if a == b { return .equal }
        let tilde: UInt8 = 0x7E, caret: UInt8 = 0x5E
        func isAlnum(_ c: UInt8) -> Bool { isASCIIDigit(c) || isASCIILetter(c) }
        func isSeparator(_ c: UInt8) -> Bool { !isAlnum(c) && c != tilde && c != caret }
        var i = 0, j = 0
        while i < a.count || j < b.count {
            while i < a.count, isSeparator(a[i]) { i += 1 }
            while j < b.count, isSeparator(b[j]) { j += 1 }
            let x: UInt8? = i < a.count ? a[i] : nil
            let y: UInt8? = j < b.count ? b[j] : nil
            if x == tilde || y == tilde {
                if x != tilde { return .greater }
                if y != tilde { return .less }
                i += 1; j += 1; continue
            }
            if x == caret || y == caret {
                if x == nil { return .less }
                if y == nil { return .greater }
                if x != caret { return .greater }
                if y != caret { return .less }
                i += 1; j += 1; continue
            }
            guard let x else { break }
            guard y != nil else { break }
            let numeric = isASCIIDigit(x)
            func belongs(_ c: UInt8) -> Bool { numeric ? isASCIIDigit(c) : isASCIILetter(c) }
            let si = i, sj = j
            while i < a.count, belongs(a[i]) { i += 1 }
            while j < b.count, belongs(b[j]) { j += 1 }
            if sj == j { return numeric ? .greater : .less }
            let r: VersionOrder
            if numeric {
                r = compareDigitRuns(a[si..<i], b[sj..<j])
            } else {
                r = Self.bytewise(a[si..<i], b[sj..<j])
            }
            if r != .equal { return r }
        }
        let aLeft = i < a.count, bLeft = j < b.count
        if !aLeft && !bLeft { return .equal }
        return aLeft ? .greater : .less
    }

    static func bytewise(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> VersionOrder {
        for (x, y) in zip(a, b) where x != y { return x < y ? .less : .greater }
        return a.count == b.count ? .equal : (a.count < b.count ? .less : .greater)
    }
}
