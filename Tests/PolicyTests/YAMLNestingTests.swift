import Testing
import WardenCore
@testable import Policy

@Suite struct YAMLNestingTests {
    @Test func realPoliciesPass() throws {
        try YAMLNesting.check("""
        apiVersion: warden/v1
        kind: Policy
        rules:
          - name: "[not a bracket]"
            on: [copy, clone]
            when: {vm: {labels: {team: "a{b"}}}  # [[[[ in a comment
            require: {maxReplicas: 2}
          - name: 'it''s [fine'
            on: [start]
        """)
    }

    @Test func deepFlowNestingIsRefusedWithItsPosition() {
        let text = "a: 1\nrules: " + String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(throws: YAMLNesting.TooDeep(line: 2, column: 8 + 63)) { try YAMLNesting.check(text) }
        let d = YAMLNesting.tooDeep(text, file: "p.yaml")
        #expect(d?.description.hasPrefix("p.yaml:2:") == true)
    }

    @Test func deepBlockNestingIsRefused() {
        let text = (0..<70).map { String(repeating: " ", count: $0 * 2) + "k\($0):" }.joined(separator: "\n")
        #expect(throws: YAMLNesting.TooDeep.self) { try YAMLNesting.check(text) }
        let dashes = "rules:\n  " + String(repeating: "- ", count: 80) + "x"
        #expect(throws: YAMLNesting.TooDeep.self) { try YAMLNesting.check(dashes) }
    }

    /// The parser itself refuses, with a diagnostic, never a crash (5,000 levels overflowed
    /// libyaml's stack before the bound).
    @Test func theParserRefusesDeepDocuments() {
        let text = "apiVersion: warden/v1\nkind: Policy\nrules: " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000)
        let (doc, diags) = PolicyParser.parse(text, file: "deep.yaml")
        #expect(doc == nil)
        #expect(diags.first?.message.contains("nested deeper than") == true)
    }

    /// Truncated at every length and garbled: the scanner answers (passes or TooDeep), never traps.
    @Test func truncatedAndGarbledTextNeverTraps() {
        let text = "rules:\n  - name: 'it''s'\n    on: [copy, \"clone\\\"\"]\n    when: {a: [b, {c: d}]}  # x\n" + String(repeating: "[", count: 80)
        let bytes = Array(text.utf8)
        var refused = 0
        for n in 0...bytes.count {
            if (try? YAMLNesting.check(String(decoding: bytes[0..<n], as: UTF8.self))) == nil { refused += 1 }
        }
        #expect(refused > 0 && refused < bytes.count)
        var rng = SeededRandom(seed: 3)
        let alphabet = Array("[]{}'\"\\#- ?:\n\tab".utf8)
        for _ in 0..<2000 {
            let t = (0..<Int(rng.below(200))).map { _ in alphabet[rng.below(alphabet.count)] }
            _ = try? YAMLNesting.check(String(decoding: t, as: UTF8.self))
        }
    }
}
