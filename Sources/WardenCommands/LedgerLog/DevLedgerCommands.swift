import ArgumentParser
import Foundation
import WardenConfig
import Ledger
import WardenCore

// `warden dev synth`, `append-loop`, `bench-proof` and `bench-append` (registered in ../DevCommand.swift).

struct DevLedgerSynth: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth",
        abstract: "Generate a realistic synthetic fleet (lineage, residency, snapshots, every event kind) in bulk.",
        discussion: """
            Appends to the ledger at --db like any other writer (one signed checkpoint per batch). The same --seed gives the same fleet.
            
            Example:
              warden dev synth --vms 10000 --events 1000000 --db /tmp/synth.db
            """)
    @OptionGroup var options: LedgerLogOptions
    @Option(help: "VMs to create.") var vms: Int
    @Option(help: "Events in total, including one creation event per VM.") var events: Int
    @Option(help: "Seed for the generator.") var seed: UInt64 = 1
    @Option(help: "Hosts to spread the fleet over.") var hosts: Int = 16
    @Option(help: "Events per transaction and checkpoint.") var batch: Int = 20_000
    @Option(help: "SQLite page cache while synthesizing, in MiB.") var cacheMib: Int = 1024
    @Flag(help: "Print the summary as JSON.") var json = false

    func validate() throws {
        guard vms >= 1, events >= vms else { throw ValidationError("--events must be at least --vms (each VM has a creation event)") }
        guard hosts >= 2, hosts <= 10_000 else { throw ValidationError("--hosts must be 2…10000") }
        guard batch >= 1, batch <= 1_000_000 else { throw ValidationError("--batch must be 1…1000000") }
        guard cacheMib >= 2, cacheMib <= 65_536 else { throw ValidationError("--cache-mib must be 2…65536") }
    }

    func run() throws {
        let ledger = try options.open(create: true)
        var o = LedgerSynth.Options(vms: vms, events: events)
        o.seed = seed; o.hosts = hosts; o.batch = batch; o.cacheMiB = cacheMib
        let meter = ProgressMeter("synthesize", total: UInt64(events), unit: .items("events"))
        let summary = try LedgerSynth(ledger: ledger, options: o).run { done, _ in meter.set(done: UInt64(max(0, done))) }
        meter.finish()
        try Output.render(summary, json: json) {
            Output.stdout.line("synthesized \(summary.vms) VMs and \(summary.events) events on \(summary.hosts) hosts in \(String(format: "%.1f", summary.seconds)) s (\(Int(summary.eventsPerSecond)) events/s)")
            Output.stdout.line("snapshots: \(summary.snapshots), residency intervals: \(summary.residencyIntervals), deepest lineage: \(summary.maxLineageDepth)")
            Output.stdout.line("events: " + summary.kinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
    }
}

/// Appends events one transaction at a time and prints each acknowledged seq after its commit
/// (for the crash test: kill -9 at any point, and every printed seq must survive).
struct DevAppendLoop: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "append-loop",
        abstract: "Append events one commit at a time, printing each acknowledged seq (crash testing).",
        discussion: """
            Example:
              warden dev append-loop --count 1000 --db /tmp/crash.db
            """,
        shouldDisplay: false)
    @OptionGroup var options: LedgerLogOptions
    @Option(help: "Stop after this many commits (default: never).") var count: Int?

    func run() throws {
        let ledger = try options.open(create: true)
        try Array("ready\n".utf8).withUnsafeBytes { try FileDescriptorIO.writeAll(1, $0, name: "standard output") }
        var n = 0
        var vm: VMID?
        while count.map({ n < $0 }) ?? true {
            let rec: EventRecord
            switch (n % 5, vm) {
            case (0, _), (_, nil):
                // A VM row, its disk and its event in one transaction.
                let record = VMRecord(name: "crash-\(n)", owner: "crash")
                // One live VM per disk: each VM gets a disk path of its own.
                let (v, e) = try ledger.createVM(record,
                                                 disks: [DiskRecord(vm: record.id, index: 0, path: "/dev/null/crash-\(record.id)", format: "raw")],
                                                 event: NewEvent(kind: .registered, vm: nil, payload: ["n": .number(Double(n))]))
                vm = v.id; rec = e
            case (1, let v?), (3, let v?):
                rec = try ledger.updateVM(v, event: NewEvent(kind: n % 5 == 1 ? .started : .stopped, vm: v)) {
                    $0.state = n % 5 == 1 ? .running : .stopped
                }.1
            default:
                let evs = try ledger.append([NewEvent(kind: .scanned, vm: vm, payload: ["n": .number(Double(n))]),
                                             NewEvent(kind: .patched, vm: vm, payload: ["n": .number(Double(n))])])
                rec = evs[1]
            }
            // Unbuffered: the line is written only after the commit returned.
            let line = Array("ack \(rec.seq)\n".utf8)
            try line.withUnsafeBytes { try FileDescriptorIO.writeAll(1, $0, name: "standard output") }
            n += 1
        }
    }
}

/// Times inclusion and consistency proofs in-process (scripts/bench-ledger), so process
/// start-up is not counted.
struct DevBenchProof: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-proof",
        abstract: "Time random inclusion and consistency proofs against the latest checkpoint.",
        discussion: """
            Example:
              warden dev bench-proof --count 1000 --db /tmp/synth.db
            """,
        shouldDisplay: false)
    @OptionGroup var options: LedgerLogOptions
    @Option(help: "Proofs of each kind.") var count: Int = 1000
    @Option(help: "Seed for the random events.") var seed: UInt64 = 7

    func run() throws {
        let ledger = try options.open(create: false, readOnly: true)
        guard let cp = try ledger.latestCheckpoint(), cp.treeSize > 0 else {
            throw WardenError(.notFound, "the ledger has no signed checkpoint of a non-empty log", file: ledger.database.path)
        }
        var rng = SeededRandom(seed: seed)
        func rand(_ n: Int64) -> Int64 { Int64(rng.next() % UInt64(n)) }
        func measure(_ body: () throws -> Void) rethrows -> [Double] {
            var t: [Double] = []
            for _ in 0..<count {
                let s = DispatchTime.now().uptimeNanoseconds
                try body()
                t.append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6)
            }
            return t.sorted()
        }
        let inclusion = try measure {
            let seq = 1 + rand(cp.treeSize)
            let p = try ledger.inclusionProof(seq: seq, treeSize: cp.treeSize)
            guard Merkle.rootFromInclusion(index: seq - 1, size: cp.treeSize, leaf: p.leafHash, path: p.path) == cp.root else {
                throw WardenError(.corrupt, "proof of \(seq) does not verify", file: ledger.database.path)
            }
        }
        let consistency = try measure {
            let m = 1 + rand(cp.treeSize)
            let p = try ledger.consistencyProof(from: m, to: cp.treeSize)
            guard Merkle.verifyConsistency(from: m, to: cp.treeSize, oldRoot: p.oldRoot, newRoot: cp.root, proof: p.proof) else {
                throw WardenError(.corrupt, "consistency proof from \(m) does not verify", file: ledger.database.path)
            }
        }
        func line(_ name: String, _ t: [Double]) -> String {
            let mean = t.reduce(0, +) / Double(t.count)
            return "\(name): \(t.count) proofs in a tree of \(cp.treeSize): mean \(String(format: "%.3f", mean)) ms, median \(String(format: "%.3f", t[t.count / 2])) ms, p99 \(String(format: "%.3f", t[min(t.count - 1, t.count * 99 / 100)])) ms, max \(String(format: "%.3f", t.last!)) ms"
        }
        Output.stdout.line(line("inclusion", inclusion))
        Output.stdout.line(line("consistency", consistency))
    }
}

/// Times appends through the public API (``SQLiteLedger/append(_:)-([NewEvent])``: one
/// transaction, Merkle update and signed checkpoint per batch) on an existing ledger, so the
/// append rate is measured at the ledger's size (scripts/bench-ledger).
struct DevBenchAppend: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-append",
        abstract: "Append scan events to random VMs of an existing ledger in batches, and time it.",
        discussion: """
            Example:
              warden dev bench-append --events 100000 --batch 100 --db /tmp/synth.db
            """,
        shouldDisplay: false)
    @OptionGroup var options: LedgerLogOptions
    @Option(help: "Events to append.") var events: Int = 200_000
    @Option(help: "Events per append call (one transaction and checkpoint each).") var batch: Int = 1000
    @Option(help: "Seed for the VM choice.") var seed: UInt64 = 11

    func validate() throws {
        guard events >= 1, batch >= 1, batch <= 1_000_000 else { throw ValidationError("--events and --batch must be positive") }
    }

    func run() throws {
        let ledger = try options.open(create: false)
        let ids = try ledger.vmIDs(limit: 100_000)
        guard !ids.isEmpty else { throw WardenError(.notFound, "the ledger has no VMs", file: ledger.database.path) }
        let before = try ledger.eventCount()
        var rng = SeededRandom(seed: seed)
        func rand(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
        var done = 0
        let (_, wall, cpu) = try timed {
            while done < events {
                let n = min(batch, events - done)
                var evs: [NewEvent] = []
                evs.reserveCapacity(n)
                for _ in 0..<n {
                    evs.append(NewEvent(kind: .scanned, vm: ids[rand(ids.count)], actor: "bench@synth-host-00",
                                        host: HostName("synth-host-00")!,
                                        payload: ["findings": .number(Double(rand(40))), "critical": .number(Double(rand(3)))]))
                }
                _ = try ledger.append(evs)
                done += n
            }
        }
        Output.stdout.line(String(format: "append: %d events in batches of %d onto a log of %lld: %.0f events/s wall (%.2f s), %.0f events per CPU second (%.2f s)",
                                  events, batch, before, Double(events) / (wall / 1000), wall / 1000,
                                  Double(events) / (cpu / 1000), cpu / 1000))
    }
}
