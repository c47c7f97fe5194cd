/// Names the set bits of an on-disk feature mask, for messages: known bits by name,
/// the rest as `unknown 0x…`, e.g. "extents, 64bit, unknown 0x40000".
public func describeFeatureBits<T: FixedWidthInteger & UnsignedInteger>(_ mask: T, names: [(T, String)]) -> String {
    var parts: [String] = []
    var rest = mask
    for (bit, name) in names where mask & bit != 0 {
        parts.append(name)
        rest &= ~bit
    }
    var bit: T = 1
    while bit != 0 {
        if rest & bit != 0 { parts.append("unknown " + hex(bit)) }
        bit = bit << 1
    }
    return parts.joined(separator: ", ")
}
