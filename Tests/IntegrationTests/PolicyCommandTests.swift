import Foundation
import Testing
import WardenTestSupport

let examplePolicy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("docs/examples/policy").path

@Suite struct PolicyCommandTests {
    @Test func lintGoodAndBad() throws {
        let ok = try WardenRun.run(["policy", "lint", examplePolicy])
        #expect(ok.status == 0)
        #expect(ok.stdoutText.hasPrefix("3 files, 9 rules, default allow, revision sha256:"))
        try Fixtures.withTemporaryDirectory { dir in
            try """
            apiVersion: warden/v1
            kind: Policy
            rules:
              - name: a
                on: [start, teleport]
                require: { scanAge: 7days, window: { hours: "08:00-18:00", timezone: Mars/Olympus } }
            """.write(toFile: dir + "/a.yaml", atomically: true, encoding: .utf8)
            let bad = try WardenRun.run(["policy", "lint", dir])
            #expect(bad.status == 2)
            let lines = bad.stdoutText.split(separator: "\n").map(String.init)
            #expect(lines.contains { $0.hasPrefix(dir + "/a.yaml:5:") && $0.contains("error: rule 'a': unknown operation 'teleport'") })
            #expect(lines.contains { $0.hasPrefix(dir + "/a.yaml:6:") && $0.contains("'7days' is not a duration") })
            #expect(lines.contains { $0.hasPrefix(dir + "/a.yaml:6:") && $0.contains("unknown time zone 'Mars/Olympus'") })
            let json = try WardenRun.run(["policy", "lint", "--json", dir])
            #expect(json.status == 2)
            try JSONSchemaTests().validate(json.stdout, schema: "policy-lint.v1.json")
            let obj = try JSONSerialization.jsonObject(with: json.stdout) as? [String: Any]
            #expect(obj?["ok"] as? Bool == false)
            #expect((obj?["diagnostics"] as? [Any])?.count == 3)
        }
        try JSONSchemaTests().validate(try WardenRun.run(["policy", "lint", "--json", examplePolicy]).stdout, schema: "policy-lint.v1.json")
        let missing = try WardenRun.run(["policy", "lint", "/nonexistent/policy"])
        #expect(missing.status == 2)
        #expect(missing.stderr == "warden: /nonexistent/policy: no such policy directory\n")
    }

    @Test func testCommand() throws {
        let r = try WardenRun.run(["policy", "test", examplePolicy])
        #expect(r.status == 0, "\(r.stdoutText)")
        #expect(r.stdoutText.hasSuffix("11 passed, 0 failed\n"))
        let json = try WardenRun.run(["policy", "test", "--json", examplePolicy])
        try JSONSchemaTests().validate(json.stdout, schema: "policy-test.v1.json")
        try Fixtures.withTemporaryDirectory { dir in
            try FileManager.default.copyItem(atPath: examplePolicy + "/10-placement.yaml", toPath: dir + "/10-placement.yaml")
            try """
            apiVersion: warden/v1
            kind: PolicyTest
            tests:
              - name: expects the wrong thing
                op: start
                vm: { labels: { sensitivity: high } }
                host: { name: h1, labels: { zone: dmz } }
                expect: allow
            """.write(toFile: dir + "/wrong_test.yaml", atomically: true, encoding: .utf8)
            let failing = try WardenRun.run(["policy", "test", dir])
            #expect(failing.status == 1)
            #expect(failing.stdoutText.contains("FAIL wrong_test.yaml:4 expects the wrong thing: expected allow, got deny"))
            #expect(failing.stdoutText.contains("rule sensitive-only-in-secure-zone: host h1 has zone=dmz, needs zone=secure"))
        }
    }
}
