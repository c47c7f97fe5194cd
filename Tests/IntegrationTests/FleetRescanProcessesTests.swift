import Foundation
import Testing
import WardenCore
import WardenTestSupport
import Ledger
import AdvisoryStorage
import Advisories

/// `warden fleet rescan` run by several processes at once on one database, after an import
/// that changes many inventories' findings: each change is counted once (every inventory's
/// stored count equals its stored findings), whichever process saved it.
@Suite struct FleetRescanProcessesTests {
    func record(_ id: String, package: String, fixed: String, modified: TimeInterval) -> AdvisoryRecord {
        AdvisoryRecord(id: id, source: "osv", modified: Date(timeIntervalSince1970: modified), aliases: ["CVE-\(id)"], severity: .high,
                       affected: [AffectedPackage(ecosystem: "Debian:12", package: package, ranges: [[.introduced("0"), .fixed(fixed)]])])
    }

    @Test func concurrentRescanProcessesCountEachChangeOnce() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("warden-rescan-procs-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let db = dir + "/warden.db"
        let names = (0..<12).map { "pkg\($0)" }
        var keys: [Digest] = []
        do {
            let store = try SQLiteLedger(path: db).advisories
            var rng = SeededRandom(seed: 7)
            for i in 0..<30 {
                let key = Digest(algorithm: "sha256", hex: String(format: "%064x", i + 1))
                let packages = names.filter { _ in rng.next() % 2 == 0 }.map {
                    MatchPackage(name: $0, version: "1.\(rng.next() % 3)-1", sourceName: $0, sourceVersion: "1.0-1")
                }
                try store.storeInventory(key: key, image: "/img/\(i).qcow2", osID: "debian", versionID: "12", packages: packages)
                keys.append(key)
            }
            _ = try store.importRecords(names.prefix(6).map { record("A-\($0)", package: $0, fixed: "1.1-1", modified: 1) },
                                        at: Date(timeIntervalSince1970: 1_000), file: "first")
            _ = try store.rescan(at: Date(timeIntervalSince1970: 2_000))
            // Changes for every package: new advisories, and the first ones now fixed later.
            _ = try store.importRecords(names.map { record("B-\($0)", package: $0, fixed: "1.2-1", modified: 1) }
                                        + names.prefix(6).map { record("A-\($0)", package: $0, fixed: "1.3-1", modified: 2) },
                                        at: Date(timeIntervalSince1970: 3_000), file: "second")
        }
        let results = Locked<[(status: Int32, stderr: String)]>([])
        DispatchQueue.concurrentPerform(iterations: 6) { _ in
            let r = try? AdvisoryCommandTests.warden(["fleet", "rescan", "--db", db, "--json"])
            results.withLock { $0.append(r.map { ($0.status, $0.stderr) } ?? (-1, "could not start")) }
        }
        #expect(results.withLock { $0 }.count == 6)
        for r in results.withLock({ $0 }) { #expect(r.status == 0, "\(r.stderr)") }

        let store = try SQLiteLedger(path: db).advisories
        let counts = try store.assessedVulnerable(keys.map(\.description))
        var total = 0, changedSomething = 0
        for k in keys {
            let n = try #require(try store.storedFindings(of: k)).count
            total += n
            if n > 0 { changedSomething += 1 }
            #expect(counts[k.description] == n, "\(k.description.prefix(16))")
        }
        #expect(changedSomething > 20, "the import touched most inventories")
        #expect(try store.totalVulnerable() == total)
    }
}
