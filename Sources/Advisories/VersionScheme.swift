import WardenCore

/// The order of two versions: `<`, `=` or `>`.
public enum VersionOrder: String, Sendable, Equatable, CustomStringConvertible {
    case less = "<"
    case equal = "="
    case greater = ">"

    public var description: String { rawValue }

    init<T: BinaryInteger>(sign value: T) {
        self = value < 0 ? .less : (value > 0 ? .greater : .equal)
    }

    var reversed: VersionOrder {
        switch self {
        case .less: return .greater
        case .equal: return .equal
        case .greater: return .less
        }
    }
}

/// A package manager's version syntax and ordering.
public enum VersionScheme: String, Sendable, CaseIterable {
    /// Debian (`dpkg --compare-versions`).
    case deb
    /// RPM (`rpmvercmp`, epoch and release as `rpm.labelCompare`).
    case rpm
    /// Alpine (`apk version -t`).
    case apk

    /// Orders `a` against `b` as the package manager does.
    /// Throws `WardenError` (`.invalidArgument`) for a version the scheme cannot order.
    public func compare(_ a: String, _ b: String) throws -> VersionOrder {
        switch self {
        case .deb: return try DebianVersion(a).compare(to: DebianVersion(b))
        case .rpm: return try RPMVersion(a).compare(to: RPMVersion(b))
        case .apk: return APKVersion(a).compare(to: APKVersion(b))
        }
    }

    /// Whether `version` is valid in this scheme: for apk as `apk version -c`,
    /// for deb and rpm whether it parses without error.
    public func isValid(_ version: String) -> Bool {
        switch self {
        case .deb: return (try? DebianVersion(version)) != nil
        case .rpm: return (try? RPMVersion(version)) != nil
        case .apk: return APKVersion(version).isValid
        }
    }
}

@inline(__always) func isASCIIDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
@inline(__always) func isASCIILetter(_ c: UInt8) -> Bool { (c | 0x20) >= 0x61 && (c | 0x20) <= 0x7A }

/// Compares two runs of ASCII digits by numeric value, any length, without converting to integers.
func compareDigitRuns(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> VersionOrder {
    let a = a.drop(while: { $0 == 0x30 }), b = b.drop(while: { $0 == 0x30 })
    if a.count != b.count { return a.count < b.count ? .less : .greater }
    for (x, y) in zip(a, b) where x != y { return x < y ? .less : .greater }
    return .equal
}
