import Testing
import Foundation
import WardenTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `warden vm start|status|console|snapshot|rollback|stop` as a user runs them, on the test
/// guest under real QEMU (software emulation), with the state server spawned by `vm start`.
@Suite(.serialized) struct VMRunCommandTests {
    static func warden(_ args: [String], home: String, check: Bool = true) throws -> ToolResult {
        let r = try Tool.run(["timeout", "-s", "KILL", "600", Fixtures.wardenBinary] + args,
                             environment: ["WARDEN_HOME": home, "WARDEN_DB": ""], check: false)
        if check && r.status != 0 { throw TestGuestError("warden \(args.joined(separator: " ")) exited \(r.status): \(r.stderr.prefix(500))") }
        return r
    }

    static func waitFor(_ what: String, timeout: TimeInterval = 240, _ check: () throws -> Bool) throws {
        try waitUntil(what, timeout: timeout, check)
    }

    static func counters(_ text: String) -> [Int64] {
        text.split(whereSeparator: \.isNewline).compactMap { line in
            guard let r = line.range(of: "WARDEN-COUNTER otp=") else { return nil }
            return Int64(line[r.upperBound...].trimmingCharacters(in: .whitespaces))
        }
    }

    @Test func startSnapshotRollbackStop() throws {
        if let why = TestGuest.unavailableReason { print("skipped: \(why)"); return }
        let guest = try TestGuest.build()
        let home = "/tmp/wvc-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        var vm = ""
        defer {
            if !vm.isEmpty, let pid = try? String(contentsOfFile: "\(home)/run/\(vm)/qemu.pid", encoding: .utf8),
               let p = Int32(pid.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(p, SIGKILL) }
            try? FileManager.default.removeItem(atPath: home)
        }
        try TestGuest.makeDataDisk(home + "/data.qcow2")
        vm = try Self.warden(["vm", "register", "--name", "tg", "--owner", "test", home + "/data.qcow2"], home: home)
            .stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let start = try Self.warden(["vm", "start", "tg", "--kernel", guest.kernel, "--initrd", guest.initrd, "--memory", "256",
                                     "--accel", "tcg", "--append", guest.append("warden.counter=otp")], home: home)
        #expect(start.stdoutText.hasPrefix("started tg (pid "))
        // Starting twice is a conflict (exit 2), not a second QEMU.
        #expect(try Self.warden(["vm", "start", "tg"], home: home, check: false).status == 2)

        let statusJSON = try Self.warden(["vm", "status", "tg", "--json"], home: home).stdout
        let status = try #require(try JSONSerialization.jsonObject(with: statusJSON) as? [String: Any])
        let st = try #require(status["status"] as? [String: Any])
        #expect(status["schema"] as? String == "warden.vm-status/v1")
        #expect(st["state"] as? String == "running" && st["accel"] as? String == "tcg")
        let gen0 = try #require(st["generation"] as? String)

        func console() throws -> String { try Self.warden(["vm", "console", "tg"], home: home).stdoutText }
        try Self.waitFor("counter values through the state server") { Self.counters(try console()).count >= 2 }
        let snap = try Self.warden(["vm", "snapshot", "tg", "s1"], home: home)
        #expect(snap.stdoutText.contains("snapshot s1 of tg taken (generation \(gen0))"))
        // The state server is a separate process that vm start spawned.
        let sp = try #require(st["state_server_pid"] as? Int)
        #expect(kill(pid_t(sp), 0) == 0)

        let before = Self.counters(try console())
        let marker = try console().utf8.count
        let rb = try Self.warden(["vm", "rollback", "tg", "s1"], home: home)
        #expect(rb.stdoutText.contains("rolled back tg to s1: generation \(gen0) -> "))
        let after = { () throws -> String in let c = try console(); return String(decoding: c.utf8.dropFirst(marker), as: UTF8.self) }
        try Self.waitFor("the reseed in the guest kernel log") { try after().contains("crng reseeded due to virtual machine fork") }
        try Self.waitFor("a counter value after the rollback") { !Self.counters(try after()).isEmpty }
        #expect(Self.counters(try after()).min()! > before.max()!)
        let st2 = try #require((try JSONSerialization.jsonObject(with: Self.warden(["vm", "status", "tg", "--json"], home: home).stdout)
                                as? [String: Any])?["status"] as? [String: Any])
        let gen1 = try #require(st2["generation"] as? String)
        #expect(gen1 != gen0)
        try Self.waitFor("GENERATION-CHANGED in the guest") { try after().contains("generation changed to \(gen1)") }
        // The ledger's history shows the branch.
        let history = try Self.warden(["vm", "history", "tg", "--json"], home: home).stdoutText
        #expect(history.contains("rolled-back") && history.contains(gen1))

        // Stop is policy-checked: denied, it exits 3 and the VM keeps running; --force stops it
        // and records the override (docs/decisions.md).
        try FileManager.default.createDirectory(atPath: home + "/policy", withIntermediateDirectories: true)
        try """
        apiVersion: warden/v1
        kind: Policy
        rules:
          - name: keep-running
            on: [stop]
            deny: {}
        """.write(toFile: home + "/policy/p.yaml", atomically: true, encoding: .utf8)
        let deniedStop = try Self.warden(["vm", "stop", "tg", "--timeout", "1"], home: home, check: false)
        #expect(deniedStop.status == 3 && deniedStop.stderr.contains("rule keep-running"), "\(deniedStop.stderr)")
        let stillRunning = try JSONSerialization.jsonObject(with: Self.warden(["vm", "status", "tg", "--json"], home: home).stdout) as? [String: Any]
        #expect((stillRunning?["status"] as? [String: Any])?["state"] as? String == "running")
        let stop = try Self.warden(["vm", "stop", "tg", "--timeout", "1", "--force"], home: home)
        #expect(stop.stdoutText.hasPrefix("stopped tg ("))
        #expect(stop.stderr.contains("override recorded"))
        let stopHistory = try JSONSerialization.jsonObject(with: Self.warden(["vm", "history", "tg", "--json"], home: home).stdout) as? [String: Any]
        let payloads = ((stopHistory?["events"] as? [[String: Any]]) ?? []).compactMap { $0["payload"] as? [String: Any] }
        #expect(payloads.contains { $0["op"] as? String == "stop" && $0["effect"] as? String == "deny" })
        #expect(payloads.contains { $0["op"] as? String == "stop" && $0["override"] as? Bool == true && $0["effect"] as? String == "allow" })
        try FileManager.default.removeItem(atPath: home + "/policy")
        let st3 = try #require((try JSONSerialization.jsonObject(with: Self.warden(["vm", "status", "tg", "--json"], home: home).stdout)
                                as? [String: Any])?["status"] as? [String: Any])
        #expect(st3["state"] as? String == "stopped" && st3["ledger_state"] as? String == "stopped")
        #expect(try Self.warden(["vm", "stop", "tg"], home: home, check: false).status == 2)
        vm = ""
    }

    @Test func rollbackDryRunListsWhatComesBack() throws {
        let (disk, oldKey) = try RollbackFixtures.impactDisk()
        let home = "/tmp/wvd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: home) }
        let copy = home + "/guest.qcow2"
        try FileManager.default.copyItem(atPath: disk, toPath: copy)
        _ = try Self.warden(["vm", "register", "--name", "old", "--owner", "test", copy], home: home)
        let human = try Self.warden(["vm", "rollback", "old", "old", "--dry-run"], home: home).stdoutText
        #expect(human.contains("package openssl \(RollbackFixtures.oldSSL) (now \(RollbackFixtures.newSSL))"))
        #expect(human.contains("account alice: re-enabled"))
        #expect(human.contains("account bob: password-changes-back"))
        #expect(human.contains("SSH host key \(oldKey)"))
        #expect(human.contains("sshd PermitRootLogin yes (now no)"))
        let json = try Self.warden(["vm", "rollback", "old", "old", "--dry-run", "--json"], home: home).stdout
        let doc = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
        #expect(doc["schema"] as? String == "warden.rollback-impact/v1")
        #expect((doc["accounts"] as? [[String: Any]])?.contains { $0["name"] as? String == "alice" && $0["change"] as? String == "re-enabled" } == true)
        // No advisories imported yet: vulnerabilities were not checked (and the report says so).
        #expect(doc["advisories_checked"] as? Bool == false)
        #expect(human.contains("vulnerabilities not checked"))
        // --dry-run changed nothing: no rolled-back event, the image still has the new state.
        #expect(!(try Self.warden(["vm", "history", "old"], home: home).stdoutText.contains("rolled-back")))
        #expect(try Self.warden(["vm", "rollback", "old", "missing", "--dry-run"], home: home, check: false).status == 2)

        // The same vulnerability from two feeds: OSV's DSA (alias CVE-2024-5678, high) and the
        // Debian Security Tracker's CVE-2024-5678 (medium). It is listed once, as the DSA.
        try """
        {"schema_version": "1.6.0", "id": "DSA-5678-1", "modified": "2024-06-01T00:00:00Z", "aliases": ["CVE-2024-5678"],
         "summary": "openssl - security update", "database_specific": {"severity": "high"},
         "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
                       "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "\(RollbackFixtures.fixedIn)"}]}]}]}
        """.write(toFile: home + "/DSA-5678-1.json", atomically: true, encoding: .utf8)
        try """
        {"openssl": {"CVE-2024-5678": {"description": "openssl flaw", "releases": {"bookworm": {"status": "resolved",
          "repositories": {"bookworm": "\(RollbackFixtures.newSSL)"}, "fixed_version": "\(RollbackFixtures.fixedIn)", "urgency": "medium"}}}}}
        """.write(toFile: home + "/tracker.json", atomically: true, encoding: .utf8)
        _ = try Self.warden(["advisories", "import", home + "/DSA-5678-1.json", home + "/tracker.json"], home: home)
        let withAdvisories = try Self.warden(["vm", "rollback", "old", "old", "--dry-run", "--json"], home: home).stdout
        try JSONSchemaTests().validate(withAdvisories, schema: "rollback-impact.v1.json")
        let doc2 = try #require(try JSONSerialization.jsonObject(with: withAdvisories) as? [String: Any])
        #expect(doc2["advisories_checked"] as? Bool == true)
        let vulns = try #require(doc2["reexposed_vulnerabilities"] as? [[String: Any]])
        #expect(vulns.count == 1, "\(vulns)")
        #expect(vulns.first?["id"] as? String == "DSA-5678-1")
        #expect(vulns.first?["aliases"] as? [String] == ["CVE-2024-5678"])
        #expect(vulns.first?["severity"] as? String == "high" && vulns.first?["package"] as? String == "openssl")
        #expect(vulns.first?["version_then"] as? String == RollbackFixtures.oldSSL && vulns.first?["version_now"] as? String == RollbackFixtures.newSSL)
        #expect((doc2["accounts"] as? [[String: Any]])?.contains { $0["name"] as? String == "alice" && $0["change"] as? String == "re-enabled" } == true)
        let human2 = try Self.warden(["vm", "rollback", "old", "old", "--dry-run"], home: home).stdoutText
        #expect(human2.contains("vulnerability DSA-5678-1 [CVE-2024-5678] (high) in openssl \(RollbackFixtures.oldSSL) (now \(RollbackFixtures.newSSL))"))

        // Policy denies the rollback on the report; nothing changes.
        try FileManager.default.createDirectory(atPath: home + "/policy", withIntermediateDirectories: true)
        try """
        apiVersion: warden/v1
        kind: Policy
        rules:
          - name: rollback-must-not-reexpose
            on: [rollback]
            deny: { reexposes: { severity: high } }
        """.write(toFile: home + "/policy/p.yaml", atomically: true, encoding: .utf8)
        let denied = try Self.warden(["vm", "rollback", "old", "old"], home: home, check: false)
        #expect(denied.status == 3)
        #expect(denied.stderr.contains("rollback-must-not-reexpose") && denied.stderr.contains("DSA-5678-1"), "\(denied.stderr)")
        #expect(!(try Self.warden(["vm", "history", "old"], home: home).stdoutText.contains("rolled-back")))
        let stillNew = try Self.warden(["vm", "rollback", "old", "old", "--dry-run", "--json"], home: home).stdout
        #expect(((try JSONSerialization.jsonObject(with: stillNew) as? [String: Any])?["reexposed_vulnerabilities"] as? [Any])?.count == 1)
    }
}
