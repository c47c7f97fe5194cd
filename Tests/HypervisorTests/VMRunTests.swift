import Testing
import Foundation
import Hypervisor
import Ledger
import WardenCore
import WardenTestSupport
#if canImport(Glibc)
import Glibc
import Storage
#endif

/// A real QEMU (software emulation) running the test guest: start, live snapshot, rollback
/// (new vmgenid → the guest kernel reseeds), counters through the state port, stop, and
/// stale-run recovery after `kill -9`. One boot plus one restore, to keep CI time modest.
@Suite(.serialized) struct VMRunTests {
    static func waitFor(_ what: String, timeout: TimeInterval = 240, _ check: () throws -> Bool) throws {
        try waitUntil(what, timeout: timeout, check)
    }

    static func counterValues(_ text: Substring, name: String) -> [Int64] {
        text.split(whereSeparator: \.isNewline).compactMap { line in  // the console writes \r\n: one Character
            guard let r = line.range(of: "WARDEN-COUNTER \(name)=") else { return nil }
            return Int64(line[r.upperBound...].trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// Serves the state port in this process (the CLI spawns `warden vm state-server` instead).
    static func serveStatePort(run: RunDirectory, vm: VMID, store: SQLiteLedger, counters: CounterStore, announce: Bool) {
        let server = StateServer(vm: vm, socketPath: run.stateSocket,
                                 generation: { try store.vm(vm)!.generation }, counters: counters,
                                 announceAtStart: announce, log: { print("state server: \($0)") })
        Thread.detachNewThread {
            do { try server.run() } catch { print("state server failed: \(error)") }
        }
    }

    @Test func startSnapshotRollbackStopAndStaleRecovery() throws {
        if let why = TestGuest.unavailableReason { print("skipped: \(why)"); return }
        let guest = try TestGuest.build()
        // A short home: Unix socket paths hold 107 bytes.
        let home = "/tmp/wvm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: home) }
        let disk = home + "/data.qcow2"
        try TestGuest.makeDataDisk(disk)
        let db = try WardenDatabase(path: home + "/warden.db")
        let store = SQLiteLedger(database: db, keysDirectory: home + "/keys", signs: false)
        let counters = CounterStore(database: db)
        let (vm0, _) = try store.createVM(VMRecord(name: "tg", owner: "test"),
                                          disks: [DiskRecord(vm: VMID(), index: 0, path: disk, format: "qcow2")],
                                          event: NewEvent(kind: .registered, vm: nil))
        var gateCalls: [String] = []
        let runner = VMRunner(store: store, counters: counters, home: home, gate: { op, _, _ in gateCalls.append(op.rawValue) })
        let run = runner.runDirectory(vm0.id)
        var options = LaunchOptions()
        options.kernel = guest.kernel
        options.initrd = guest.initrd
        options.append = guest.append("warden.counter=otp warden.probe=1")
        options.memoryMiB = 256
        options.accel = "tcg"

        let started = try runner.start(vm0, options: options)
        var pidToClean: pid_t? = started.pid
        defer { if let p = pidToClean { kill(p, SIGKILL) } }
        Self.serveStatePort(run: run, vm: vm0.id, store: store, counters: counters, announce: false)
        #expect(runner.status(try store.vm(vm0.id)!).state == "running")
        #expect(try store.vm(vm0.id)!.state == .running)
        #expect(try store.residency(of: vm0.id).contains { $0.kind == .ran && $0.to == nil })
        let args = try String(contentsOfFile: "/proc/\(started.pid)/cmdline", encoding: .utf8).replacingOccurrences(of: "\0", with: " ")
        #expect(args.contains("vmgenid,guid=\(vm0.generation.uuidString.lowercased())"))
        #expect(args.contains("-sandbox on") && args.contains("-nodefaults") && args.contains("virtio-rng-pci"))

        // The console log may hold bytes that are not UTF-8: decode leniently.
        func log() -> String { String(decoding: FileManager.default.contents(atPath: run.serialLog) ?? Data(), as: UTF8.self) }
        try Self.waitFor("two counter values from the guest") { Self.counterValues(Substring(log()), name: "otp").count >= 2 }
        #expect(log().contains("WARDEN-GUEST-READY"))
        try Self.waitFor("the generation and random bytes from the state port") { log().contains("WARDEN-RANDOM ") }
        #expect(log().contains("WARDEN-GEN \(vm0.generation.uuidString.lowercased())"))
        let random = log().split(whereSeparator: \.isNewline).first { $0.hasPrefix("WARDEN-RANDOM ") }.map { $0.dropFirst(14) } ?? ""
        #expect(random.count == 32 && random.allSatisfy(\.isHexDigit))
        #expect(!log().contains("virtual machine fork"))

        // Live snapshot through QMP, recorded with the generation.
        let snap = try runner.snapshot(try store.vm(vm0.id)!, name: "before")
        #expect(snap.generation == vm0.generation)
        #expect(try QEMUImg.snapshots(disk).contains { $0.name == "before" && $0.vmStateSize > 0 })
        try Self.waitFor("a counter value after the snapshot") { Self.counterValues(Substring(log()), name: "otp").count >= 3 }

        // Rollback: new generation and the branch in the ledger; QEMU restarts with -loadvm and the new GUID.
        let mark = log().utf8.count
        let beforeRollback = Self.counterValues(Substring(log()), name: "otp")
        let rb = try runner.rollback(try store.vm(vm0.id)!, name: "before")
        #expect(rb.restarted)
        #expect(rb.oldGeneration == vm0.generation && rb.newGeneration != vm0.generation)
        let vm1 = try #require(try store.vm(vm0.id))
        #expect(vm1.generation == rb.newGeneration)
        let ev = try #require(try store.events(of: vm0.id).last { $0.kind == .rolledBack })
        #expect(ev.generationBefore == vm0.generation && ev.generationAfter == rb.newGeneration)
        #expect(ev.payload["snapshot"] == .string("before"))
        #expect(ev.payload["snapshot_generation"] == .string(vm0.generation.uuidString.lowercased()))
        let newPid = try #require(run.livePid)
        pidToClean = newPid
        let args2 = try String(contentsOfFile: "/proc/\(newPid)/cmdline", encoding: .utf8).replacingOccurrences(of: "\0", with: " ")
        #expect(args2.contains("vmgenid,guid=\(rb.newGeneration.uuidString.lowercased())") && args2.contains("-loadvm before"))
        Self.serveStatePort(run: run, vm: vm0.id, store: store, counters: counters, announce: true)

        func after() -> Substring {
            let l = log()
            return l[l.utf8.index(l.startIndex, offsetBy: min(mark, l.utf8.count))...]
        }
        try Self.waitFor("the guest kernel's reseed after the rollback") { after().contains("crng reseeded due to virtual machine fork") }
        try Self.waitFor("a counter value after the rollback") { !Self.counterValues(after(), name: "otp").isEmpty }
        let afterValues = Self.counterValues(after(), name: "otp")
        // The guest's memory went back to before the snapshot; the counter did not.
        #expect(afterValues.min()! > beforeRollback.max()!)
        #expect(try counters.value(vm: vm0.id, name: "otp") >= afterValues.max()!)
        // The state port told the guest about the new generation.
        try Self.waitFor("the GENERATION-CHANGED notification in the guest") {
            after().contains("generation changed to \(rb.newGeneration.uuidString.lowercased())")
        }

        // Stop (the busybox guest ignores ACPI powerdown: quit after the timeout).
        let stopped = try runner.stop(vm1, timeout: 1)
        #expect(["quit", "powerdown"].contains(stopped.how))
        #expect(run.livePid == nil && !FileManager.default.fileExists(atPath: run.pidFile))
        #expect(try store.vm(vm0.id)!.state == .stopped)
        #expect(try store.residency(of: vm0.id).allSatisfy { $0.to != nil })
        pidToClean = nil

        // Stale run: start, kill -9 QEMU, then the next start recovers it.
        let s2 = try runner.start(try store.vm(vm0.id)!, options: options)
        pidToClean = s2.pid
        kill(s2.pid, SIGKILL)
        try Self.waitFor("QEMU to die") { !RunDirectory.processMentions(s2.pid, run.qmpSocket) }
        #expect(runner.status(try store.vm(vm0.id)!).state == "stale")
        #expect(FileManager.default.fileExists(atPath: run.pidFile) && run.livePid == nil)
        let s3 = try runner.start(try store.vm(vm0.id)!, options: options)
        pidToClean = s3.pid
        #expect(s3.recoveredStale)
        let staleStop = try #require(try store.events(of: vm0.id).last { $0.kind == .stopped && $0.payload["reason"] == .string("stale") })
        #expect(staleStop.payload["pid"] == .number(Double(s2.pid)))
        #expect(try store.residency(of: vm0.id).filter { $0.to == nil }.count == 1)
        _ = try runner.stop(try store.vm(vm0.id)!, timeout: 0)
        pidToClean = nil
        #expect(gateCalls == ["start", "snapshot", "rollback", "stop", "start", "start", "stop"])
    }
}
