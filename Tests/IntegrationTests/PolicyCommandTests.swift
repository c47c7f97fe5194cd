import Foundation
import Ledger
import Testing
import WardenCore
import WardenTestSupport

let examplePolicy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("docs/examples/policy").path

@Suite struct PolicyCommandTests {
    @Test func lintGoodAndBad() throws {
        let ok = try WardenRun.run(["policy", "lint", examplePolicy])
        #expect(ok.status == 0)
        #expect(ok.stdoutText.hasPrefix("5 files, 15 rules, default allow, revision sha256:"))
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
        #expect(r.stdoutText.hasSuffix("24 passed, 0 failed\n"))
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

    @Test func checkExplainsAndRecords() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let db = dir + "/warden.db"
            let ledger = try SQLiteLedger(path: db)
            try ledger.addHost(HostRecord(name: HostName("h1")!, labels: ["zone": "secure"]))
            try ledger.addHost(HostRecord(name: HostName("h2")!, labels: ["zone": "dmz"]))
            let vm = VMRecord(name: "db1", owner: "alice", labels: ["sensitivity": "high"], state: .stopped)
            _ = try ledger.createVM(vm, disks: [], event: NewEvent(kind: .registered, vm: vm.id))
            _ = try ledger.append(NewEvent(kind: .scanned, vm: vm.id, time: Date()))
            func check(_ args: [String]) throws -> WardenRun {
                try WardenRun.run(["policy", "check", "--db", db, "--policy", examplePolicy] + args)
            }
            // Denied on h2 (wrong zone) and on Sunday after the spring-forward (outside office hours).
            let denied = try check(["--op", "start", "db1", "--host", "h2", "--at", "2026-03-29T08:30:00+02:00"])
            #expect(denied.status == 3)
            let lines = denied.stdoutText.split(separator: "\n").map(String.init)
            #expect(lines.first?.hasPrefix("deny  start db1 on h2 at 2026-03-29T06:30:00Z  (revision sha256:") == true)
            #expect(lines.contains("  rule sensitive-only-in-secure-zone: host h2 has zone=dmz, needs zone=secure"))
            #expect(lines.contains("  rule office-hours: Sun 2026-03-29 08:30 Europe/Berlin is outside the window Mon,Tue,Wed,Thu,Fri 08:00-18:00 Europe/Berlin"))
            #expect(lines.contains { $0.hasPrefix("  office-hours (") && $0.hasSuffix("10-placement.yaml:11): fired deny") })
            // Allowed on h1 on a Monday morning; quarantine is exit 0 with the effect printed.
            let ok = try check(["--op", "start", vm.id.description, "--host", "h1", "--at", "2026-03-30T09:30:00+02:00", "--json"])
            try JSONSchemaTests().validate(ok.stdout, schema: "policy-check.v1.json")
            let obj = try #require(try JSONSerialization.jsonObject(with: ok.stdout) as? [String: Any])
            // The scan is from today, so on 2026-03-30 it lies in the future: scanAge holds; no findings store: no-criticals fails closed.
            #expect(ok.status == 3 && obj["effect"] as? String == "deny")
            #expect((obj["reasons"] as? [String])?.first?.contains("unknown: open findings") == true)
            #expect(obj["recorded_seq"] as? Int != nil)
            // Every check is in the ledger.
            let decisions = try ledger.events(of: vm.id).filter { $0.kind == .policyDecision }
            #expect(decisions.count == 2)
            #expect(decisions.last?.payload["decision"] == .string(obj["decision"] as? String ?? "?"))
            // Copy to a folder outside the VM roots.
            let copy = try check(["--op", "copy", "db1", "--dest", dir + "/elsewhere/db1.qcow2"])
            #expect(copy.status == 3 && copy.stdoutText.contains("rule copies-stay-in-vm-storage: "))
            // No database: fail closed, not recorded.
            let gone = try WardenRun.run(["policy", "check", "--db", dir + "/none.db", "--policy", examplePolicy, "--op", "start", "db1"])
            #expect(gone.status == 3)
            #expect(gone.stdoutText.contains("failing closed: ledger unavailable: \(dir)/none.db: no Warden database"))
            #expect(gone.stdoutText.contains("(not recorded: the ledger is unavailable)"))
            // An unknown VM is bad input.
            #expect(try check(["--op", "start", "nope"]).status == 2)
        }
    }
}
