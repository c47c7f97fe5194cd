import Foundation
import GRDB
import Testing
import WardenTestSupport
@testable import Ledger
import Advisories
import WardenCore
import Storage
@testable import AdvisoryStorage
import StoreTestSupport

/// The rescan's fast path (compact findings, their hash, direct encoding) against the plain path
/// (`Matcher.findings`, `findingsHash`, encoding through rows of strings) on generated data.
@Suite struct RescanFastPathTests {
    struct Gen {
        var rng: SeededRandom
        let names = (0..<20).map { "pkg\($0)" } + ["tab\there", "new\nline", "back\\slash"]
        mutating func n(_ k: Int) -> Int { Int(rng.next() % UInt64(k)) }
        mutating func version() -> String { "\(n(2) == 0 ? "" : "1:")\(n(3)).\(n(4))-\(1 + n(3))\(n(5) == 0 ? "~deb12u1" : "")" }

        mutating func advisories(_ count: Int, prefix: String, ecosystem: String = "Debian:12") -> [AdvisoryRecord] {
            (0..<count).map { i in
                var r = AdvisoryRecord(id: "\(prefix)-\(i)", source: n(4) == 0 ? "debian-tracker" : "osv",
                                       modified: Date(timeIntervalSince1970: 1_000), aliases: n(2) == 0 ? ["CVE-2099-\(i)", "GHSA-\(i)"] : [],
                                       summary: n(2) == 0 ? "summary\t\(i)" : nil, severity: Severity(rawValue: n(6))!)
                // The score depends on the id only: the findings hash leaves scores out, so a replaced
                // record with a new score and otherwise the same findings is not rewritten.
                if i % 3 == 0 { r.cvssScore = [9.8, 10.0, 0.1, 7.5, 5.0][i % 5]; r.cvssVector = "CVSS:3.1/AV:N" }
                for _ in 0..<(1 + n(2)) {
                    // Feeds cannot name packages with control characters (refused on import); inventories can.
                    let clean = names.filter(RangeCoding.isClean)
                    var a = AffectedPackage(ecosystem: ecosystem, package: clean[n(clean.count)], status: n(10) == 0 ? .notAffected : .affected,
                                            severity: n(2) == 0 ? Severity(rawValue: n(6)) : nil)
                    switch n(4) {
                    case 0: a.ranges = [[.introduced("0"), .fixed(version())]]
                    case 1: a.ranges = [[.introduced(version()), .lastAffected(version())]]
                    case 2: a.versions = [version(), version()]
                    default: a.ranges = [[.introduced("0")]]
                    }
                    r.affected.append(a)
                }
                return r
            }
        }

        mutating func packages(_ count: Int) -> [MatchPackage] {
            (0..<count).map { _ in
                // As in a real package database, a binary package's name and version decide its
                // source (some are built from another source, some with a source version of their own).
                let i = n(names.count), name = names[i], v = version()
                let source = i % 4 == 1 ? names[(i * 7 + 3) % names.count] : name
                return MatchPackage(name: name, version: v, sourceName: source, sourceVersion: i % 5 == 2 ? v + "~src" : v)
            }
        }
    }

    let debian12 = GuestEcosystem.from(osID: "debian", versionID: "12")!

    @Test func hashAndEncodingOfCompactFindingsEqualThePlainOnes() throws {
        var gen = Gen(rng: SeededRandom(seed: 11))
        let index = AdvisoryIndex(records: gen.advisories(300, prefix: "A"))
        let m = Matcher(index: index)
        var hasher = FindingsHasher()
        var withFindings = 0
        for _ in 0..<60 {
            let pk = gen.packages(25)
            let plain = m.findings(packages: pk, ecosystem: debian12)
            let compact = m.compactFindings(packages: pk, ecosystem: debian12)
            #expect(hasher.hash(compact, packages: pk, metas: index.metas, ecosystem: debian12) == AdvisoryCoding.findingsHash(plain))
            #expect(AdvisoryCoding.encodeFindings(plain) == AdvisoryCoding.encodeFindingsPlain(plain))
            #expect(AdvisoryCoding.decodeFindingsWithoutDetails(AdvisoryCoding.encodeFindings(plain))
                    == plain.map { var f = $0; f.aliases = []; f.summary = nil; return f })
            if !plain.isEmpty { withFindings += 1 }
        }
        #expect(withFindings > 20)
        // The hash covers every stored field: a changed CVSS score or status is a change.
        var some: Finding?
        for _ in 0..<100 where some == nil { some = m.findings(packages: gen.packages(25), ecosystem: debian12).first }
        let f = try #require(some)
        var rescored = f; rescored.cvssScore = (f.cvssScore ?? 0) + 1
        var restated = f; restated.status = f.status == .fixed ? .vulnerable : .fixed
        #expect(AdvisoryCoding.findingsHash([rescored]) != AdvisoryCoding.findingsHash([f]))
        #expect(AdvisoryCoding.findingsHash([restated]) != AdvisoryCoding.findingsHash([f]))
        #expect(hasher.hash([], packages: [], metas: [], ecosystem: debian12) == AdvisoryCoding.findingsHash([]))
    }

    @Test(arguments: StoreBackend.all) func rescanStoresAndReportsWhatThePlainPathGives(_ backend: StoreBackend) throws {
        try backend.with { ledger in
            let store = ledger.advisories
            var gen = Gen(rng: SeededRandom(seed: 5))
            let originals = gen.advisories(400, prefix: "A")
            _ = try store.importRecords(originals + gen.advisories(50, prefix: "OLD", ecosystem: "Debian:11"), file: "gen")
            var inventories: [(Digest, [MatchPackage])] = []
            for i in 0..<30 {
                let key = Digest(algorithm: "sha256", hex: String(format: "%064x", i + 1))
                let pk = gen.packages(30)
                try store.storeInventory(key: key, image: "/img/\(i).qcow2", osID: "debian", versionID: "12", packages: pk)
                inventories.append((key, pk))
            }
            func plain() throws -> [Digest: [Finding]] {
                let m = Matcher(index: try store.loadIndex(ecosystems: ["Debian:12"]))
                var out: [Digest: [Finding]] = [:]
                for (key, pk) in inventories { out[key] = m.findings(packages: pk, ecosystem: debian12) }
                return out
            }
            func checkStored(_ expected: [Digest: [Finding]]) throws {
                for (key, _) in inventories {
                    let want = try #require(expected[key])
                    #expect(try store.latestFindings(for: key) == want)
                    #expect(try store.lastAssessmentTime(of: key) != nil)
                }
            }
            let before = try plain()
            var r = try store.rescan()
            #expect(r.vulnerable == before.values.map(\.count).reduce(0, +))
            #expect(r.newFindings == r.vulnerable && r.goneFindings == 0)
            #expect(Set(r.changed.map(\.inventory)) == Set(before.filter { !$0.value.isEmpty }.keys.map(\.description)))
            for c in r.changed { #expect(c.newFindings == before[Digest(c.inventory)!]) }
            try checkStored(before)

            // New advisories, some of them replacing old ones (new ranges): the report is the plain diff.
            var replaced = gen.advisories(400, prefix: "A")
            for i in replaced.indices { replaced[i].modified = Date(timeIntervalSince1970: 2_000) }
            _ = try store.importRecords(Array(replaced.prefix(120)) + gen.advisories(80, prefix: "B"), file: "gen")
            var current: [String: AdvisoryRecord] = [:]
            for a in originals + replaced.prefix(120) { current[a.source + " " + a.id] = a }
            let after = try plain()
            let allVersions = try store.packageVersions(unassessedOnly: false).count
            r = try store.rescan()
            // Only the package versions the import named were matched again.
            #expect(r.advisoryChanges > 0 && r.packageVersions > 0 && r.packageVersions < allVersions, "\(r.packageVersions) of \(allVersions)")
            var added = 0, gone = 0
            for (key, _) in inventories {
                let d = Matcher.diff(old: before[key]!, new: after[key]!)
                added += d.added.count; gone += d.removed.count
                let c = r.changed.first { $0.inventory == key.description }
                #expect((c?.newFindings ?? []) == d.added)
                #expect((c?.goneFindings.map(\.key) ?? []) == d.removed.map(\.key))
                for g in c?.goneFindings ?? [] {
                    // Gone findings carry their advisory's (current) aliases and summary.
                    let a = try #require(current[g.source + " " + g.advisory])
                    #expect(g.aliases == a.aliases && g.summary == a.summary)
                }
            }
            #expect(r.newFindings == added && r.goneFindings == gone)
            #expect(added > 0 && gone > 0, "the generated update must both add and remove findings")
            try checkStored(after)
            r = try store.rescan()
            #expect(r.changed.isEmpty && r.newFindings == 0 && r.vulnerable == after.values.map(\.count).reduce(0, +))
            // Nothing imported since: nothing is matched; a full rescan agrees.
            #expect(r.packageVersions == 0 && r.advisoryChanges == 0)
            r = try store.rescan(full: true)
            #expect(r.packageVersions == allVersions && r.changed.isEmpty && r.vulnerable == after.values.map(\.count).reduce(0, +))
            try checkStored(after)
        }
    }
}
