import Testing
import Foundation
import Hypervisor
import Ledger
import WardenCore
import WardenTestSupport
import Storage

@Suite struct StateProtocolTests {
    @Test func parsesRequests() throws {
        #expect(try StateProtocol.parse("GENERATION").get() == .generation)
        #expect(try StateProtocol.parse("RANDOM 32").get() == .random(32))
        #expect(try StateProtocol.parse("COUNTER otp.seq-1_a").get() == .counter("otp.seq-1_a"))
        for bad in ["", "GENERATION x", "RANDOM", "RANDOM 0", "RANDOM 4097", "RANDOM -1", "RANDOM x", "COUNTER",
                    "COUNTER a b", "COUNTER ../x", "COUNTER " + String(repeating: "a", count: 65), "generation", "HELLO",
                    String(repeating: "A", count: 300)] {
            if case .success(let r) = StateProtocol.parse(bad) { Issue.record("accepted \(bad.prefix(20)): \(r)") }
        }
    }

    @Test func countersNeverGoBackwardsAndAnswersAreLines() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let db = try WardenDatabase(path: dir + "/warden.db")
            let counters = CounterStore(database: db)
            let vm = VMID(), other = VMID()
            let gen = UUID()
            var last: Int64 = 0
            for _ in 0..<20 {
                let a = StateProtocol.answer("COUNTER otp", vm: vm, generation: { gen }, counters: counters)
                #expect(a.hasPrefix("OK "))
                let v = try #require(Int64(a.dropFirst(3)))
                #expect(v == last + 1)
                last = v
            }
            // Another VM's counter of the same name is independent.
            #expect(StateProtocol.answer("COUNTER otp", vm: other, generation: { gen }, counters: counters) == "OK 1")
            #expect(StateProtocol.answer("GENERATION", vm: vm, generation: { gen }, counters: counters) == "OK " + gen.uuidString.lowercased())
            let r = StateProtocol.answer("RANDOM 16", vm: vm, generation: { gen }, counters: counters)
            #expect(r.count == 3 + 32 && r.dropFirst(3).allSatisfy(\.isHexDigit))
            #expect(StateProtocol.answer("RANDOM 99999", vm: vm, generation: { gen }, counters: counters).hasPrefix("ERR "))
            #expect(StateProtocol.answer("NOPE", vm: vm, generation: { gen }, counters: counters) == "ERR unknown request")
            // Reopening the database keeps the value (what a rollback of the VM cannot touch).
            let db2 = try WardenDatabase(path: dir + "/warden.db")
            #expect(try CounterStore(database: db2).next(vm: vm, name: "otp") == last + 1)
            // A SQLite oracle: the stored row.
            let out = try Tool.run(["sqlite3", dir + "/warden.db", "SELECT value FROM counters WHERE vm='\(vm)' AND name='otp'"]).stdoutText
            #expect(out.trimmingCharacters(in: .whitespacesAndNewlines) == "\(last + 1)")
        }
    }

    @Test func counterCapPerVM() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let counters = CounterStore(database: try WardenDatabase(path: dir + "/warden.db"))
            let vm = VMID()
            for i in 0..<CounterStore.maxCountersPerVM { _ = try counters.next(vm: vm, name: "c\(i)") }
            #expect(StateProtocol.answer("COUNTER one-more", vm: vm, generation: { UUID() }, counters: counters) == "ERR too many counters")
            #expect(try counters.next(vm: vm, name: "c0") == 2)
        }
    }

    @Test func snapshotNames() {
        #expect(VMRunner.isValidSnapshotName("before-upgrade.1"))
        #expect(!VMRunner.isValidSnapshotName("42"))
        #expect(!VMRunner.isValidSnapshotName("a b"))
        #expect(!VMRunner.isValidSnapshotName("a,b"))
        #expect(!VMRunner.isValidSnapshotName(""))
    }
}

@Suite struct QMPTests {
    /// A real QEMU with no machine: QMP greeting, a command, an error, and quit.
    @Test func talksToRealQEMU() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64") else { print("skipped: no qemu-system-x86_64"); return }
        try Fixtures.withTemporaryDirectory { dir in
            let sock = dir + "/qmp.sock"
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-system-x86_64")
            p.arguments = ["-machine", "none", "-nodefaults", "-display", "none", "-sandbox", "on", "-qmp", "unix:\(sock),server=on,wait=off"]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            defer { if p.isRunning { p.terminate() }; p.waitUntilExit() }
            let qmp = try QMPClient(path: sock, timeout: 30)
            #expect(qmp.version.hasPrefix(String(try Tool.run(["qemu-system-x86_64", "--version"]).stdoutText
                .split(separator: " ")[3].split(separator: ".").prefix(2).joined(separator: "."))))
            let status = try #require(try qmp.execute("query-status") as? [String: Any])
            #expect(status["status"] != nil)
            #expect(throws: QMPClient.CommandError.self) { try qmp.execute("no-such-command") }
            try qmp.execute("quit")
            p.waitUntilExit()
            #expect(!p.isRunning)
        }
    }

    @Test func kvmProbeAgreesWithQEMU() throws {
        // The probe must not claim KVM where QEMU cannot use it.
        guard QEMULauncher.kvmUsable() else { return }
        let r = try Tool.run(["qemu-system-x86_64", "-accel", "kvm", "-machine", "none", "-nodefaults", "-display", "none",
                              "-S", "-qmp", "stdio"], stdin: Data("{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n".utf8), check: false)
        #expect(r.status == 0, "KVM probe said usable but QEMU failed: \(r.stderr)")
    }
}
