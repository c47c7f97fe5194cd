import ArgumentParser
import Foundation
import Ledger
import Storage
import WardenCore
import WardenNetwork

/// `warden dev net-bench`: the cost of network states at fleet size on one host (issue 14):
/// N VMs quarantined on interfaces PREFIX0…, applied in one transaction (`net sync`), and one
/// VM's change back and forth. Run inside a network namespace that has those interfaces
/// (scripts/bench-net makes them).
struct DevNetBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "net-bench", abstract: "Time network rule sets for N VMs (inside a namespace with the interfaces).",
        discussion: """
            Example:
              warden dev net-bench --policy /etc/warden/policy --vms 1000 --db /tmp/bench.db
            """)
    @Option(help: "A fresh database to make.") var db: String
    @Option(help: "The policy directory (its network/network.yaml applies).") var policy: String
    @Option(help: "VMs, each quarantined on interface PREFIX<i>.") var vms: Int = 1000
    @Option(help: "Interface name prefix.") var prefix: String = "wd"
    @Option(help: "Changes to time.") var changes: Int = 20

    func validate() throws {
        guard (1...10_000).contains(vms), (1...1000).contains(changes), Interface.isValid(prefix + "\(vms)") else {
            throw ValidationError("--vms 1-10000, --changes 1-1000, and PREFIX<n> must be an interface name")
        }
    }

    func run() throws {
        guard !FileManager.default.fileExists(atPath: db) else { throw ValidationError("\(db) exists; give a fresh path") }
        let ledger = SQLiteLedger(database: try WardenDatabase(path: db), signs: false)
        var records: [VMRecord] = []
        for i in 0..<vms {
            let vm = try ledger.createVM(VMRecord(name: "net-\(i)", owner: "bench", state: .running), disks: [],
                                         event: NewEvent(kind: .registered, vm: nil)).0
            let n = VMNetwork(vm: vm.id, name: vm.name, state: .quarantined, reason: "bench", interfaces: ["\(prefix)\(i)"], ports: [],
                              since: Date(), seq: 0)
            // Recorded as `warden net quarantine` records it (the rules come with the sync below).
            _ = try ledger.append(NewEvent(kind: .networkState, vm: vm.id, payload: n.payload))
            records.append(vm)
        }
        let svc = NetworkService(ledger: ledger, policyDirectory: policy)
        func ms(_ body: () throws -> Void) rethrows -> Double {
            let t = ContinuousClock.now
            try body()
            let d = ContinuousClock.now - t
            return Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
        }
        var syncs: [Double] = []
        var rules = 0
        for _ in 0..<5 { syncs.append(try ms { rules = try svc.sync().rules }) }
        var flips: [Double] = []
        let vm0 = records[0]
        for i in 0..<changes {
            flips.append(try ms {
                if i % 2 == 0 { try svc.set(vm0, to: .open, reason: "bench", interfaces: nil) }
                else { try svc.set(vm0, to: .quarantined, reason: "bench", interfaces: ["\(prefix)0"]) }
            })
        }
        // Where a change's time goes: reading the states, and the nft transaction alone.
        var reads: [Double] = [], applies: [Double] = []
        let config = try svc.config()
        for _ in 0..<changes {
            var all: [VMNetwork] = []
            reads.append(try ms { all = try svc.states() })
            let n = all.first { $0.vm == vm0.id }!
            applies.append(try ms { try svc.nft.apply(NFTRules.change(from: n, to: n, config: config)) })
        }
        func pct(_ a: [Double], _ p: Double) -> Double { let s = a.sorted(); return s[min(s.count - 1, Int(Double(s.count - 1) * p))] }
        struct Result: Encodable { var vms: Int; var rules: Int; var syncMsP50: Double; var syncMsMax: Double; var changeMsP50: Double; var changeMsP90: Double
                             var readStatesMsP50: Double; var nftChangeMsP50: Double; var nftChangeMsP90: Double }
        let r = Result(vms: vms, rules: rules, syncMsP50: pct(syncs, 0.5), syncMsMax: pct(syncs, 1), changeMsP50: pct(flips, 0.5), changeMsP90: pct(flips, 0.9),
                       readStatesMsP50: pct(reads, 0.5), nftChangeMsP50: pct(applies, 0.5), nftChangeMsP90: pct(applies, 0.9))
        Output.stdout.line(String(decoding: try JSONEncoder().encode(r), as: UTF8.self))
    }
}
