/// An optional that JSON always carries: `null` when absent, instead of leaving the key out
/// (what synthesized `Encodable` does with `encodeIfPresent`). Warden's documented JSON
/// schemas list every key, so consumers never have to tell "absent" from "unknown key".
///
/// ```swift
/// struct VMJSON: Encodable { var id: String; @ExplicitNull var parent: String? }
/// ```
@propertyWrapper
public struct ExplicitNull<Value: Encodable>: Encodable {
    public var wrappedValue: Value?
    public init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        if let v = wrappedValue { try c.encode(v) } else { try c.encodeNil() }
    }
}

extension ExplicitNull: Sendable where Value: Sendable {}
extension ExplicitNull: Equatable where Value: Equatable {}
