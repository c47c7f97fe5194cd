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
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try check() { return }
            usleep(250_000)
        }
        throw TestGuestError("timed out after \(Int(timeout)) s waiting for \(what)")
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

        let stop = try Self.warden(["vm", "stop", "tg", "--timeout", "1"], home: home)
        #expect(stop.stdoutText.hasPrefix("stopped tg ("))
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
        // --dry-run changed nothing: no rolled-back event, the image still has the new state.
        #expect(!(try Self.warden(["vm", "history", "old"], home: home).stdoutText.contains("rolled-back")))
        #expect(try Self.warden(["vm", "rollback", "old", "missing", "--dry-run"], home: home, check: false).status == 2)
    }
}
