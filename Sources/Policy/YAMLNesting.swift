import WardenCore

/// A bound on how deeply a YAML document nests, checked before the YAML parser sees it.
///
/// libyaml (under Yams) builds nested collections recursively, so a few kilobytes of `[[[[…`
/// overflow the stack and kill the process. Policy is hand-written and shallow: this scanner
/// counts flow brackets (outside quotes and comments) and block nesting (indentation levels,
/// plus `- ` and `? ` entries that open a collection on the same line) and refuses anything
/// deeper than ``maxDepth``, naming the line and column where the limit is passed. It
/// over-approximates (a `[` inside a plain scalar counts), which only matters past the bound.
public enum YAMLNesting {
    /// The deepest nesting accepted (docs/policy.md). The deepest real policy needs about 8.
    public static let maxDepth = 64

    public struct TooDeep: Error, Sendable, Equatable {
        public var line: Int
        public var column: Int
    }

    /// Throws ``TooDeep`` at the first place the nesting exceeds `maxDepth`.
    public static func check(_ text: String, maxDepth: Int = YAMLNesting.maxDepth) throws {
        var flow = 0
        var indents: [Int] = []
        var line = 1
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            defer { line += 1 }
            let bytes = Array(raw.utf8)
            var col = 0
            while col < bytes.count, bytes[col] == 0x20 { col += 1 }
            if col == bytes.count || bytes[col] == UInt8(ascii: "#") { continue }
            // Block structure only counts outside flow collections.
            var block = 0
            if flow == 0 {
                while let last = indents.last, last >= col { indents.removeLast() }
                indents.append(col)
                block = indents.count
                // `- - - x` and `? ` open one collection per indicator.
                var k = col
                while k + 1 < bytes.count, bytes[k] == UInt8(ascii: "-") || bytes[k] == UInt8(ascii: "?"), bytes[k + 1] == 0x20 {
                    block += 1
                    k += 2
                    while k < bytes.count, bytes[k] == 0x20 { k += 1 }
                }
                if block > maxDepth { throw TooDeep(line: line, column: col + 1) }
            } else {
                block = indents.count
            }
            var quote: UInt8? = nil
            var i = col
            while i < bytes.count {
                let b = bytes[i]
                if let q = quote {
                    if q == UInt8(ascii: "'") && b == q && i + 1 < bytes.count && bytes[i + 1] == q { i += 2; continue }
                    if q == UInt8(ascii: "\"") && b == UInt8(ascii: "\\") { i += 2; continue }
                    if b == q { quote = nil }
                    i += 1
                    continue
                }
                switch b {
                case UInt8(ascii: "'"), UInt8(ascii: "\""):
                    quote = b
                case UInt8(ascii: "#") where i == 0 || bytes[i - 1] == 0x20 || bytes[i - 1] == 0x09:
                    i = bytes.count
                    continue
                case UInt8(ascii: "["), UInt8(ascii: "{"):
                    flow += 1
                    if flow + block > maxDepth { throw TooDeep(line: line, column: i + 1) }
                case UInt8(ascii: "]"), UInt8(ascii: "}"):
                    flow = max(0, flow - 1)
                default:
                    break
                }
                i += 1
            }
        }
    }
}

extension YAMLNesting {
    /// The diagnostic for a document nested deeper than ``maxDepth``, or nil.
    static func tooDeep(_ text: String, file: String) -> PolicyDiagnostic? {
        do { try check(text) } catch let e as TooDeep {
            return PolicyDiagnostic(file: file, line: e.line, column: e.column,
                                    message: "nested deeper than \(maxDepth) levels (refused before parsing)")
        } catch { return nil }
        return nil
    }
}

import Yams

extension YAMLNesting {
    /// Composes the YAML of a configuration file (vault, network, host trust) after the
    /// nesting check: every strict reader goes through here, so no file can overflow the stack.
    public static func compose(_ text: String, file: String) throws -> Node? {
        do { try check(text) } catch let d as TooDeep {
            throw WardenError(.invalidArgument, "line \(d.line), column \(d.column): nests deeper than \(maxDepth) levels", file: file)
        }
        do { return try Yams.compose(yaml: text) } catch { throw WardenError(.invalidArgument, "not YAML", file: file) }
    }
}
