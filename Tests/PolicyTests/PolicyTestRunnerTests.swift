import Foundation
import Testing
import WardenTestSupport
@testable import Policy

/// The documented example policy and its tests (docs/examples/policy).
let examplePolicyDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("docs/examples/policy").path

@Suite struct PolicyTestRunnerTests {
    @Test func exampleTestsPass() throws {
        let (results, diags, revision) = try PolicyTestRunner.run(directory: examplePolicyDir)
        #expect(diags.isEmpty, "\(diags)")
        #expect(results.count == 24)
        for r in results where !r.passed { Issue.record("\(r.file):\(r.line) \(r.name): \(r.failure ?? "")") }
        #expect(revision == (try PolicySet.load(directory: examplePolicyDir)).revision)
    }

    @Test func failuresAreReported() throws {
        try Fixtures.withTemporaryDirectory { dir in
            for f in ["10-placement.yaml", "20-copies.yaml", "30-hygiene.yaml"] {
                try FileManager.default.copyItem(atPath: examplePolicyDir + "/" + f, toPath: dir + "/" + f)
            }
            try """
            apiVersion: warden/v1
            kind: PolicyTest
            tests:
              - name: wrongly expects allow
                op: start
                vm: { labels: { sensitivity: high } }
                host: { name: h9, labels: { zone: dmz } }
                facts: { lastScan: never, findings: {} }
                expect: allow
              - name: wrong rules
                op: rollback
                facts: { reexposes: [] }
                expect: { effect: allow, rules: [nope] }
            """.write(toFile: dir + "/x_test.yaml", atomically: true, encoding: .utf8)
            let (results, diags, _) = try PolicyTestRunner.run(directory: dir)
            #expect(diags.isEmpty)
            #expect(results.map(\.passed) == [false, false])
            #expect(results[0].failure == "expected allow, got deny")
            #expect(results[0].line == 4)
            #expect(results[1].failure == "expected rules [nope], got []")
            // A malformed test file is a diagnostic with its line.
            try "apiVersion: warden/v1\nkind: PolicyTest\ntests:\n  - op: start\n    expect: allwo\n".write(toFile: dir + "/y_test.yaml", atomically: true, encoding: .utf8)
            let (_, d2, _) = try PolicyTestRunner.run(directory: dir)
            #expect(d2.contains { $0.file.hasSuffix("y_test.yaml") && $0.line == 5 && $0.message.contains("expect must be") })
        }
    }

    /// Rules on attestation can be tested offline: `facts.attested` is `never` or the host's
    /// latest verdict (when, trusted, for how long).
    @Test func attestationFacts() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try """
            apiVersion: warden/v1
            kind: Policy
            rules:
              - name: attested-only
                on: [start, unlock]
                require: { attested: { maxAge: 1h } }
            """.write(toFile: dir + "/p.yaml", atomically: true, encoding: .utf8)
            try """
            apiVersion: warden/v1
            kind: PolicyTest
            tests:
              - name: fresh and trusted
                op: unlock
                at: 2026-03-29T10:30:00Z
                facts: { attested: { at: 2026-03-29T10:00:00Z } }
                expect: allow
              - name: too old for the rule
                op: start
                at: 2026-03-29T12:00:00Z
                facts: { attested: { at: 2026-03-29T10:00:00Z } }
                expect: { effect: deny, reason: "rule attested-only: host test-host was attested 2h ago, at most 1h allowed" }
              - name: a changed PCR
                op: start
                at: 2026-03-29T10:05:00Z
                facts: { attested: { at: 2026-03-29T10:00:00Z, trusted: false, reason: "PCR 7 (sha256) differs" } }
                expect: deny
              - name: never attested
                op: start
                facts: { attested: never }
                expect: deny
              - name: not given is unknown, and fails closed
                op: start
                expect: deny
            """.write(toFile: dir + "/a_test.yaml", atomically: true, encoding: .utf8)
            let (results, diags, _) = try PolicyTestRunner.run(directory: dir)
            #expect(diags.isEmpty, "\(diags)")
            #expect(results.map(\.passed) == [true, true, true, true, true], "\(results.map { "\($0.name): \($0.failure ?? "ok") \($0.reasons)" })")
            try "apiVersion: warden/v1\nkind: PolicyTest\ntests:\n  - op: start\n    facts: { attested: soon }\n    expect: deny\n"
                .write(toFile: dir + "/b_test.yaml", atomically: true, encoding: .utf8)
            let (_, d2, _) = try PolicyTestRunner.run(directory: dir)
            #expect(d2.contains { $0.file.hasSuffix("b_test.yaml") && $0.message.contains("facts.attested is never or a mapping") })
        }
    }
}
