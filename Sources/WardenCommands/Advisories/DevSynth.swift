import ArgumentParser
import Foundation
import WardenCore
import Advisories
import Ledger
import AdvisoryStorage

/// Hidden `warden dev synth-advisories|synth-inventories`: a synthetic fleet for scripts/bench-rescan.
enum DevSynth {

    /// The seeded stream (``SeededRandom``), drawing below `n` by remainder as these synthetic
    /// fleets always have, so a seed gives the same fleet as before.
    struct Rng {
        private var random: SeededRandom
        init(state: UInt64) { random = SeededRandom(seed: state) }
        mutating func next() -> UInt64 { random.next() }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    static func packageName(_ i: Int) -> String { "synth-pkg\(i)" }
    /// Installed versions are 1.K-1 for K in 0..<5.
    static func installedVersion(_ k: Int) -> String { "1.\(k)-1" }

    struct Advisories: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "synth-advisories",
            abstract: "Store N synthetic Debian:12 OSV-shaped advisories (most fixed below installed versions).",
            discussion: """
                Example:
                  warden dev synth-advisories --count 10000
                """)
        @OptionGroup var database: DatabaseOption
        @Option var count = 100_000
        @Option var packages = 5_000
        @Option var seed: UInt64 = 1
        @Option(help: "Id prefix (a new prefix adds new advisories).") var prefix = "SYNTH"

        func run() throws {
            let store = SQLiteAdvisoryStore(try database.open())
            var rng = Rng(state: seed)
            var batch: [AdvisoryRecord] = []
            var total = ImportCounts()
            let modified = Date(timeIntervalSince1970: 1_700_000_000)
            for i in 0..<count {
                let pkg = DevSynth.packageName(rng.below(packages))
                var a = AffectedPackage(ecosystem: "Debian:12", package: pkg, severity: [.low, .medium, .high, .negligible][rng.below(4)])
                let roll = rng.below(100)
                switch roll {
                case 0..<93: a.ranges = [[.introduced("0"), .fixed("0.\(rng.below(50))-\(1 + rng.below(3))")]]
                case 93..<97: a.ranges = [[.introduced("0"), .fixed(DevSynth.installedVersion(1 + rng.below(5)))]]
                case 97..<98: a.ranges = [[.introduced("1.2-1"), .lastAffected("1.3-1")]]
                case 98..<99: a.versions = ["1.0-1", "1.4-1"]
                default: a.ranges = [[.introduced("0")]]
                }
                var r = AdvisoryRecord(id: "\(prefix)-\(i)", source: "osv", modified: modified, aliases: ["CVE-2099-\(100_000 + i)"],
                                       summary: "synthetic advisory \(i)", affected: [a])
                if rng.below(3) == 0 { r.cvssVector = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"; r.cvssScore = 9.8; r.severity = .critical }
                batch.append(r)
                if batch.count == 5_000 { total = total + (try store.importRecords(batch, file: "synthetic")); batch.removeAll() }
            }
            if !batch.isEmpty { total = total + (try store.importRecords(batch, file: "synthetic")) }
            try store.recordSource(name: "osv", format: .osv, location: "synthetic", counts: total)
            Output.stdout.line("\(total.seen) synthetic advisories: \(total.added) added, \(total.replaced) replaced, \(total.unchanged) unchanged")
        }
    }

    struct Inventories: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "synth-inventories",
            abstract: "Store N synthetic Debian 12 inventories of about M packages each.",
            discussion: """
                Example:
                  warden dev synth-inventories --count 1000
                """)
        @OptionGroup var database: DatabaseOption
        @Option var count = 1_000
        @Option(name: .customLong("packages-per-inventory")) var perInventory = 500
        @Option var packages = 5_000
        @Option var seed: UInt64 = 2
        @Option var start = 0

        func run() throws {
            let store = SQLiteAdvisoryStore(try database.open())
            var rng = Rng(state: seed)
            var batch: [NewInventory] = []
            for n in start..<(start + count) {
                var chosen = Set<Int>()
                while chosen.count < min(perInventory, packages) { chosen.insert(rng.below(packages)) }
                let pk = chosen.sorted().map { i -> MatchPackage in
                    let v = DevSynth.installedVersion(rng.below(5))
                    return MatchPackage(name: DevSynth.packageName(i), version: v, sourceName: DevSynth.packageName(i), sourceVersion: v)
                }
                let digits = String(n, radix: 16)
                let hex = String(repeating: "0", count: max(0, 64 - digits.count)) + digits
                batch.append(.init(key: WardenCore.Digest(algorithm: "synthetic", hex: hex), image: "/synthetic/vm\(n).qcow2",
                                   osID: "debian", versionID: "12", packages: pk))
                if batch.count == 500 { try store.storeInventories(batch); batch.removeAll() }
            }
            if !batch.isEmpty { try store.storeInventories(batch) }
            Output.stdout.line("\(count) synthetic inventories stored")
        }
    }
}
