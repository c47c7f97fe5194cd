import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Advisories

/// Generated advisories and guests for comparing the matcher's fast (compact) path with the plain one.
struct GeneratedFleet {
    var rng: SeededRandom
    let names = (0..<24).map { "pkg\($0)" } + ["a\tb", "lib\\x", "zlib", "Zlib", "é-pkg"]
    let ecosystems = ["Debian:12", "Debian:11", "Ubuntu:22.04:LTS", "Ubuntu:22.04", "Alpine:v3.18", "Rocky Linux:9"]

    init(seed: UInt64) { rng = SeededRandom(seed: seed) }

    mutating func pick<T>(_ a: [T]) -> T { a[Int(rng.next() % UInt64(a.count))] }
    mutating func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }

    mutating func version(_ scheme: VersionScheme) -> String {
        let major = Int(rng.next() % 3), minor = Int(rng.next() % 4), rel = 1 + Int(rng.next() % 3)
        switch scheme {
        case .deb:
            let epoch = chance(10) ? "1:" : ""
            let tilde = chance(15) ? "~deb12u\(rel)" : ""
            return "\(epoch)\(major).\(minor)-\(rel)\(tilde)"
        case .rpm: return "\(major).\(minor)-\(rel).el9"
        case .apk: return "\(major).\(minor)\(chance(20) ? "_rc1" : "")-r\(rel)"
        }
    }

    mutating func advisories(_ n: Int) -> [AdvisoryRecord] {
        (0..<n).map { i in
            var r = AdvisoryRecord(id: "GEN-\(Int(rng.next() % 40))-\(i)", source: chance(70) ? "osv" : "debian-tracker",
                                   withdrawn: chance(5) ? Date(timeIntervalSince1970: 1) : nil,
                                   aliases: chance(60) ? ["CVE-2099-\(i)"] : [], summary: chance(50) ? "summary \(i)" : nil,
                                   severity: pick(Severity.allCases))
            if chance(30) { r.cvssScore = Double(rng.next() % 100) / 10; r.cvssVector = "CVSS:3.1/AV:N" }
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let eco = pick(ecosystems)
                let scheme = GuestEcosystem.scheme(ofEcosystem: eco)!
                var a = AffectedPackage(ecosystem: eco, package: pick(names), status: chance(8) ? .notAffected : .affected,
                                        severity: chance(40) ? pick(Severity.allCases) : nil)
                for _ in 0..<Int(rng.next() % 3) {
                    var range: [RangeEvent] = [chance(50) ? .introduced("0") : .introduced(version(scheme))]
                    switch rng.next() % 4 {
                    case 0: range.append(.fixed(version(scheme)))
                    case 1: range.append(.lastAffected(version(scheme)))
                    case 2: range.append(.limit(version(scheme)))
                    default: range += [.fixed(version(scheme)), .introduced(version(scheme)), .fixed(version(scheme))]
                    }
                    a.ranges.append(range)
                }
                if chance(20) { a.versions = [version(scheme), version(scheme)] }
                r.affected.append(a)
            }
            return r
        }
    }

    /// A guest's packages: some with a different source name or version, some listed twice.
    mutating func packages(_ n: Int, scheme: VersionScheme) -> [MatchPackage] {
        var out: [MatchPackage] = []
        for _ in 0..<n {
            let name = pick(names), v = version(scheme)
            let source = chance(30) ? pick(names) : name
            let sv = chance(20) ? version(scheme) : v
            out.append(MatchPackage(name: name, version: v, sourceName: chance(5) ? "" : source, sourceVersion: sv))
            if chance(5), let last = out.last { out.append(last) }
        }
        return out
    }

    static let guests: [GuestEcosystem] = [
        GuestEcosystem.from(osID: "debian", versionID: "12")!, GuestEcosystem.from(osID: "ubuntu", versionID: "22.04")!,
        GuestEcosystem.from(osID: "alpine", versionID: "3.18.4")!, GuestEcosystem.from(osID: "rocky", versionID: "9.3")!,
    ]
}

@Suite struct CompactMatcherTests {
    @Test(arguments: [false, true])
    func compactFindingsAreThePlainFindingsInTheSameOrder(includeResolved: Bool) throws {
        for seed in UInt64(1)...6 {
            var gen = GeneratedFleet(seed: seed)
            let index = AdvisoryIndex(records: gen.advisories(400))
            // One matcher shared by both paths (the memo is shared, as in a rescan), and fresh ones
            // where each path fills the memo first.
            let shared = Matcher(index: index, includeResolved: includeResolved)
            var compared = 0, nonEmpty = 0
            for g in 0..<40 {
                let eco = GeneratedFleet.guests[g % GeneratedFleet.guests.count]
                let pk = gen.packages(10 + g, scheme: eco.scheme)
                let plain = shared.findings(packages: pk, ecosystem: eco)
                let compact = shared.compactFindings(packages: pk, ecosystem: eco)
                #expect(!shared.mayDeduplicate(compact), "generated ids and aliases do not overlap")
                #expect(compact.count == plain.count)
                let fast = compact.map { shared.finding($0, packages: pk, ecosystem: eco) }
                #expect(fast == plain, "seed \(seed) guest \(g)")
                for (c, f) in zip(compact, plain) {
                    #expect(c.severity == f.severity && c.status == f.status && c.fixedVersion == f.fixedVersion)
                    #expect(index.metas[c.advisory].id == f.advisory)
                }
                let freshFirst = Matcher(index: index, includeResolved: includeResolved)
                let compactFirst = freshFirst.compactFindings(packages: pk, ecosystem: eco).map { freshFirst.finding($0, packages: pk, ecosystem: eco) }
                #expect(compactFirst == Matcher(index: index, includeResolved: includeResolved).findings(packages: pk, ecosystem: eco))
                compared += 1
                if !plain.isEmpty { nonEmpty += 1 }
            }
            #expect(compared == 40 && nonEmpty > 10, "the generated data must produce findings (\(nonEmpty) guests had some)")
        }
    }

    @Test func duplicatePackagesAndTwoEcosystemNamesGiveOneFindingEach() throws {
        // Ubuntu LTS guests match both `Ubuntu:22.04:LTS` and `Ubuntu:22.04`; a package listed twice counts once.
        let r = AdvisoryRecord(id: "USN-1", source: "osv", severity: .high, affected: [
            AffectedPackage(ecosystem: "Ubuntu:22.04:LTS", package: "tar", ranges: [[.introduced("0"), .fixed("2.0-1")]]),
            AffectedPackage(ecosystem: "Ubuntu:22.04", package: "tar", ranges: [[.introduced("0"), .fixed("2.0-1")]]),
        ])
        let m = Matcher(index: AdvisoryIndex(records: [r]))
        let eco = GuestEcosystem.from(osID: "ubuntu", versionID: "22.04")!
        let tar = MatchPackage(name: "tar", version: "1.0-1", sourceName: "tar", sourceVersion: "1.0-1")
        let pk = [tar, tar, MatchPackage(name: "tar-doc", version: "1.0-1", sourceName: "tar", sourceVersion: "1.0-1")]
        let plain = m.findings(packages: pk, ecosystem: eco)
        let compact = m.compactFindings(packages: pk, ecosystem: eco)
        #expect(plain.map(\.package) == ["tar", "tar-doc"])
        #expect(compact.map { m.finding($0, packages: pk, ecosystem: eco) } == plain)
        #expect(plain.allSatisfy { $0.ecosystem == "Ubuntu:22.04:LTS" })
        #expect(!m.mayDeduplicate(compact))
    }

    @Test func overlappingFeedsSendTheCallerToThePlainPath() throws {
        // A DSA with alias CVE-1 and the tracker's CVE-1: `findings` folds them; the compact path cannot.
        let dsa = AdvisoryRecord(id: "DSA-1", source: "osv", aliases: ["CVE-1"], severity: .high, affected: [
            AffectedPackage(ecosystem: "Debian:12", package: "tar", ranges: [[.introduced("0"), .fixed("2.0-1")]])])
        let cve = AdvisoryRecord(id: "CVE-1", source: "debian-tracker", severity: .medium, affected: [
            AffectedPackage(ecosystem: "Debian:12", package: "tar", ranges: [[.introduced("0"), .fixed("2.0-1")]])])
        let m = Matcher(index: AdvisoryIndex(records: [dsa, cve]))
        let eco = GuestEcosystem.from(osID: "debian", versionID: "12")!
        let pk = [MatchPackage(name: "tar", version: "1.0-1", sourceName: "tar", sourceVersion: "1.0-1")]
        let compact = m.compactFindings(packages: pk, ecosystem: eco)
        #expect(compact.count == 2 && m.findings(packages: pk, ecosystem: eco).count == 1)
        #expect(m.mayDeduplicate(compact))
    }
}
