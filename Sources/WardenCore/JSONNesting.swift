/// A bound on how deeply a JSON document nests, checked before a decoder sees it.
///
/// Hostile documents (registry manifests, HTTP bodies) can nest `[[[[…` deeply enough to make
/// a recursive decoder use unbounded stack. This scan counts brackets outside strings in one
/// pass and refuses anything deeper than the bound.
public enum JSONNesting {
    public static let maxDepth = 32

    /// True when `bytes` nests no deeper than `maxDepth`.
    public static func isShallow<C: Collection>(_ bytes: C, maxDepth: Int = JSONNesting.maxDepth) -> Bool where C.Element == UInt8 {
        var depth = 0
        var inString = false
        var escaped = false
        for b in bytes {
            if inString {
                if escaped { escaped = false } else if b == 0x5C { escaped = true } else if b == 0x22 { inString = false }
                continue
            }
            switch b {
            case 0x22: inString = true
            case 0x5B, 0x7B:
                depth += 1
                if depth > maxDepth { return false }
            case 0x5D, 0x7D: depth -= 1
            default: break
            }
        }
        return true
    }
}
