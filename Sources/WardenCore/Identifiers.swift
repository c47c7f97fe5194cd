import Foundation

/// A value that JSON holds as its `description` string and reads back with a failable
/// parser; a string the parser refuses is a decoding error naming `codedKind`.
public protocol StringCoded: Codable, CustomStringConvertible {
    static func parse(codedString: String) -> Self?
    static var codedKind: String { get }
}

extension StringCoded {
    public init(from decoder: Decoder) throws { self = try Self.decodeCoded(from: decoder) }
    public func encode(to encoder: Encoder) throws { try encodeCoded(to: encoder) }

    /// The string coding itself, for types whose own `init(from:)`/`encode(to:)` must call it
    /// explicitly (an Int-backed enum would otherwise get the standard number coding).
    public static func decodeCoded(from decoder: Decoder) throws -> Self {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let v = Self.parse(codedString: s) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not \(Self.codedKind)"))
        }
        return v
    }
    public func encodeCoded(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// A VM's stable identity: a UUID, printed lower-case.
public struct VMID: Hashable, Comparable, StringCoded, Sendable {
    public let uuid: UUID
    public init(_ uuid: UUID = UUID()) { self.uuid = uuid }
    /// Parses a full UUID string (any case).
    public init?(_ string: String) {
        guard let u = UUID(uuidString: string) else { return nil }
        uuid = u
    }
    public var description: String { uuid.uuidString.lowercased() }
    public static func < (a: VMID, b: VMID) -> Bool { a.description < b.description }
    public static func parse(codedString s: String) -> Self? { Self(s) }
    public static var codedKind: String { "a UUID" }
}

/// A content digest, `algorithm:hex` (e.g. `sha256:9f86…`).
public struct Digest: Hashable, StringCoded, Sendable {
    public let algorithm: String
    public let hex: String
    public init(algorithm: String = "sha256", hex: String) {
        self.algorithm = algorithm
        self.hex = hex.lowercased()
    }
    /// Parses `algorithm:hex`.
    public init?(_ string: String) {
        guard let colon = string.firstIndex(of: ":") else { return nil }
        let alg = String(string[..<colon]), h = String(string[string.index(after: colon)...])
        guard !alg.isEmpty, !h.isEmpty, h.allSatisfy(\.isHexDigit) else { return nil }
        self.init(algorithm: alg, hex: h)
    }
    public var description: String { "\(algorithm):\(hex)" }
    public static func parse(codedString s: String) -> Self? { Self(s) }
    public static var codedKind: String { "a digest" }
}

/// How bad a finding is. Ordered: unknown < negligible < low < medium < high < critical.
///
/// Distro urgencies map onto it (Debian `unimportant` → negligible, `not yet assigned` → unknown);
/// CVSS base scores map by the CVSS v3 bands (0.1–3.9 low, 4.0–6.9 medium, 7.0–8.9 high, 9.0–10 critical).
public enum Severity: Int, Comparable, StringCoded, Sendable, CaseIterable {
    case unknown = 0, negligible, low, medium, high, critical

    public static func < (a: Severity, b: Severity) -> Bool { a.rawValue < b.rawValue }
    public var description: String {
        switch self {
        case .unknown: "unknown"
        case .negligible: "negligible"
        case .low: "low"
        case .medium: "medium"
        case .high: "high"
        case .critical: "critical"
        }
    }
    /// Parses a severity or urgency word (case-insensitive): `low`, `moderate`, `important`, `unimportant`…
    public init?(word: String) {
        switch word.lowercased().trimmingCharacters(in: .whitespaces) {
        case "critical": self = .critical
        case "high", "important": self = .high
        case "medium", "moderate": self = .medium
        case "low": self = .low
        case "negligible", "unimportant", "none": self = .negligible
        case "unknown", "not yet assigned", "": self = .unknown
        default: return nil
        }
    }
    public static func parse(codedString s: String) -> Self? { Self(word: s) }
    public static var codedKind: String { "a severity" }
    // Explicit: for an Int-backed enum, the standard library's RawRepresentable coding (a number)
    // would otherwise win over StringCoded's (the word), and JSON would carry 4 for "high".
    public init(from decoder: Decoder) throws { self = try Self.decodeCoded(from: decoder) }
    public func encode(to encoder: Encoder) throws { try encodeCoded(to: encoder) }
    /// The CVSS v3 qualitative band of a base score.
    public init(cvssScore score: Double) {
        switch score {
        case 9.0...: self = .critical
        case 7.0..<9.0: self = .high
        case 4.0..<7.0: self = .medium
        case 0.1..<4.0: self = .low
        default: self = .negligible
        }
    }
}

/// A host's name as the ledger knows it: one non-empty token without whitespace or `/`.
public struct HostName: Hashable, Comparable, StringCoded, Sendable {
    public let value: String
    public init?(_ value: String) {
        guard !value.isEmpty, value.count <= 253,
              !value.contains(where: { $0.isWhitespace || $0 == "/" || $0.isNewline }) else { return nil }
        self.value = value
    }
    /// This machine's host name (from `gethostname`), or `localhost`.
    public static var current: HostName {
        HostName(ProcessInfo.processInfo.hostName) ?? HostName("localhost")!
    }
    public var description: String { value }
    public static func < (a: HostName, b: HostName) -> Bool { a.value < b.value }
    public static func parse(codedString s: String) -> Self? { Self(s) }
    public static var codedKind: String { "a host name" }
}

/// Formats 16 bytes as a lowercase canonical UUID, byte order as stored (as blkid prints ext4,
/// XFS and btrfs UUIDs, and as VHD stores its ids); "" for any other length.
public func formatUUID(_ b: [UInt8]) -> String {
    guard b.count == 16 else { return "" }
    let hexDigits = Array("0123456789abcdef")
    var s = ""
    for (i, byte) in b.enumerated() {
        if i == 4 || i == 6 || i == 8 || i == 10 { s.append("-") }
        s.append(hexDigits[Int(byte >> 4)])
        s.append(hexDigits[Int(byte & 0xf)])
    }
    return s
}
