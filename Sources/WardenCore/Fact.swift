/// A fact: known, or unknown with the reason it could not be established. Guest facts in an
/// inventory and the facts policy decides on are both `Fact`s; policy fails closed on unknown.
///
/// Encodes (when `T` is `Codable`) as the bare value when known, and as
/// `{"unknown": "reason"}` otherwise.
public enum Fact<T: Sendable>: Sendable {
    case known(T)
    case unknown(String)

    /// An unknown fact with its reason.
    public static func unknown(reason: String) -> Fact { .unknown(reason) }

    public var value: T? {
        if case .known(let v) = self { return v }
        return nil
    }

    public var unknownReason: String? {
        if case .unknown(let r) = self { return r }
        return nil
    }
}

extension Fact: Equatable where T: Equatable {}
extension Fact: Hashable where T: Hashable {}

extension Fact: Codable where T: Codable {
    private enum CodingKeys: String, CodingKey { case unknown }

    public init(from decoder: any Decoder) throws {
        if let c = try? decoder.container(keyedBy: CodingKeys.self),
           let reason = try? c.decode(String.self, forKey: .unknown), c.allKeys.count == 1 {
            self = .unknown(reason)
            return
        }
        self = .known(try T(from: decoder))
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .known(let v):
            try v.encode(to: encoder)
        case .unknown(let reason):
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(reason, forKey: .unknown)
        }
    }
}
