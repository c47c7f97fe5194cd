import ArgumentParser
import Foundation
import Ledger
import Policy
import WardenCore

extension PolicyCommand {
    /// `warden policy bench-decide DIR`: times the in-process evaluator (scripts/bench-hook runs it).
    struct BenchDecide: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench-decide",
            abstract: "Time PolicyEngine.decide in-process on a policy directory (for scripts/bench-hook).",
            discussion: """
                Example:
                  warden policy bench-decide /etc/warden/policy --iterations 100000
                """,
            shouldDisplay: false
        )
        @Argument(help: "The policy directory.") var directory: String
        @Option(help: "Decisions to time.") var iterations = 100_000

        func run() throws {
            let set = try PolicySet.load(directory: directory)
            let vm = VMRecord(name: "db1", owner: "alice", labels: ["sensitivity": "high", "tier": "db"], state: .stopped)
            let now = Date(timeIntervalSince1970: 1_775_030_400) // 2026-04-01T08:00:00Z, a Wednesday
            var ctx = PolicyContext(time: now, host: .known(HostFacts(name: "h1", labels: ["zone": "secure"])), replicas: .known(1),
                                    lastScan: .known(now.addingTimeInterval(-86_400)), openFindings: .known([.high: 2]),
                                    advisoriesSinceScan: .known(0), reexposure: .known([]), ownerPresent: .known(true))
            var samples = [UInt64]()
            samples.reserveCapacity(iterations)
            var effects = [Effect: Int]()
            let ops: [VMOperation] = [.start, .copy, .migrate, .rollback]
            for i in 0..<max(1, iterations) {
                ctx.destination = DestinationFacts(path: "/srv/vms/x.qcow2", resolved: "/srv/vms/x.qcow2", removable: .known(false))
                let op = ops[i % ops.count]
                let t0 = DispatchTime.now().uptimeNanoseconds
                let d = PolicyEngine.decide(set, op, vm: vm, context: ctx)
                samples.append(DispatchTime.now().uptimeNanoseconds - t0)
                effects[d.effect, default: 0] += 1
            }
            samples.sort()
            func us(_ ns: UInt64) -> String { String(format: "%.2f", Double(ns) / 1000) }
            let mean = samples.reduce(0, +) / UInt64(samples.count)
            Output.stdout.line("decide: \(samples.count) decisions over \(set.rules.count) rules: median \(us(samples[samples.count / 2])) µs, p99 \(us(samples[samples.count * 99 / 100])) µs, mean \(us(mean)) µs; effects \(effects.sorted { $0.key < $1.key }.map { "\($0.key.rawValue)=\($0.value)" }.joined(separator: " "))")
        }
    }
}
