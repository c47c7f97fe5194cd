import WardenCore

/// A Debian version, `[epoch:]upstream[-revision]`, ordered as `dpkg --compare-versions`.
///
/// Parsing follows dpkg: surrounding whitespace is ignored; empty versions (which
/// `dpkg --compare-versions` would read as the blank version), embedded
/// whitespace, an empty, non-numeric, negative or too large (> 2147483647) epoch (read like
/// C `strtol`, so a leading `+` is accepted), nothing after the
/// colon, an empty upstream part or an empty revision are errors. Like dpkg, an upstream part
/// not starting with a digit and unusual characters are accepted (dpkg only warns) and ordered.
public struct DebianVersion: Sendable, Equatable, Comparable, CustomStringConvertible {
    public let epoch: Int
    public let upstream: String
    public let revision: String
    /// The bytes of ``upstream`` and ``revision``, kept for comparisons.
    private let upstreamBytes: [UInt8]
    private let revisionBytes: [UInt8]

    public init(_ text: String) throws {
        let bytes = Array(text.utf8)
        func isSpace(_ c: UInt8) -> Bool { c == 0x20 || (c >= 0x09 && c <= 0x0D) }
        var lo = 0, hi = bytes.count
        while lo < hi, isSpace(bytes[lo]) { lo += 1 }
        while hi > lo, isSpace(bytes[hi - 1]) { hi -= 1 }
        func fail(_ why: String) -> WardenError {
            WardenError(.invalidArgument, "invalid Debian version '\(text)': \(why)")
        }
        guard lo < hi else { throw fail("version string is empty") }
        var body = bytes[lo..<hi]
        if body.contains(where: isSpace) { throw fail("version string has embedded spaces") }
        var epoch = 0
        if let colon = body.firstIndex(of: 0x3A) {
            var digits = body[body.startIndex..<colon]
            if digits.isEmpty { throw fail("epoch in version is empty") }
            // dpkg reads the epoch with strtol: one sign is accepted, "-0" is zero.
            var negative = false
            if let sign = digits.first, sign == 0x2B || sign == 0x2D {
                negative = sign == 0x2D
                digits = digits.dropFirst()
                if digits.isEmpty { throw fail("epoch in version is not number") }
            }
            guard digits.allSatisfy(isASCIIDigit) else { throw fail("epoch in version is not number") }
            for d in digits {
                epoch = epoch * 10 + Int(d - 0x30)
                if epoch > Int(Int32.max) { throw fail("epoch in version is too big") }
            }
            if negative && epoch != 0 { throw fail("epoch in version is negative") }
            body = body[(colon + 1)...]
            if body.isEmpty { throw fail("nothing after colon in version number") }
        }
        var revision: ArraySlice<UInt8> = []
        if let hyphen = body.lastIndex(of: 0x2D) {
            revision = body[(hyphen + 1)...]
            body = body[body.startIndex..<hyphen]
            if revision.isEmpty { throw fail("revision number is empty") }
        }
        if body.isEmpty { throw fail("version number is empty") }
        self.epoch = epoch
        self.upstream = String(decoding: body, as: UTF8.self)
        self.revision = String(decoding: revision, as: UTF8.self)
        self.upstreamBytes = Array(self.upstream.utf8)
        self.revisionBytes = Array(self.revision.utf8)
    }

    public var description: String {
        (epoch != 0 ? "\(epoch):" : "") + upstream + (revision.isEmpty ? "" : "-\(revision)")
    }

    public func compare(to other: DebianVersion) -> VersionOrder {
        if epoch != other.epoch { return epoch < other.epoch ? .less : .greater }
        let u = Self.compareParts(upstreamBytes, other.upstreamBytes)
        if u != .equal { return u }
        return Self.compareParts(revisionBytes, other.revisionBytes)
    }

    public static func < (a: DebianVersion, b: DebianVersion) -> Bool { a.compare(to: b) == .less }
    public static func == (a: DebianVersion, b: DebianVersion) -> Bool { a.compare(to: b) == .equal }

    /// Sort weight of one byte in a non-digit run (nil = end of string or a digit).
    /// `~` sorts before the end, the end before letters, letters before everything else.
    private static func weight(_ c: UInt8?) -> Int {
        guard let c, !isASCIIDigit(c) else { return 0 }
        if c == 0x7E { return -1 }
        if isASCIILetter(c) { return Int(c) }
        return Int(c) + 256
    }

    /// dpkg's string ordering: alternate non-digit runs (byte by byte, by ``weight``) and
    /// digit runs (by numeric value, any length).
    static func compareParts(_ a: [UInt8], _ b: [UInt8]) -> VersionOrder {
        var i = 0, j = 0
        func at(_ s: [UInt8], _ k: Int) -> UInt8? { k < s.count ? s[k] : nil }
        while i < a.count || j < b.count {
            while true {
                let x = at(a, i), y = at(b, j)
                let xText = x.map { !isASCIIDigit($0) } ?? false
                let yText = y.map { !isASCIIDigit($0) } ?? false
                if !xText && !yText { break }
                let wx = weight(x), wy = weight(y)
                if wx != wy { return wx < wy ? .less : .greater }
                i += 1; j += 1
            }
            let si = i, sj = j
            while i < a.count, isASCIIDigit(a[i]) { i += 1 }
            while j < b.count, isASCIIDigit(b[j]) { j += 1 }
            let r = compareDigitRuns(a[si..<i], b[sj..<j])
            if r != .equal { return r }
        }
        return .equal
    }
}
