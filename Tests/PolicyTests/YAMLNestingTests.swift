import Testing
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
}
