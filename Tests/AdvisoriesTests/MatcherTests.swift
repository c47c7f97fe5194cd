import Foundation
import Testing
import WardenCore
@testable import Advisories

@Suite struct MatcherTests {
    func records(_ texts: String...) throws -> [AdvisoryRecord] {
        try texts.flatMap { try AdvisoryImporter.decode(Data($0.utf8), file: "f.json").0 }
    }
    let debian12 = GuestEcosystem.from(osID: "debian", versionID: "12")!
    let debian11 = GuestEcosystem.from(osID: "debian", versionID: "11")!

    func pkg(_ name: String, _ version: String, source: String? = nil, sourceVersion: String? = nil) -> MatchPackage {
        MatchPackage(name: name, version: version, sourceName: source ?? name, sourceVersion: sourceVersion ?? version)
    }

    @Test func debianMatchesBySourceAndOnlyItsRelease() throws {
        let idx = AdvisoryIndex(records: try records(FeedFixtures.dsaOpenSSL, FeedFixtures.withdrawn, FeedFixtures.debianCVEOpen))
        let m = Matcher(index: idx, includeResolved: true)
        let installed = [pkg("libssl3", "3.0.11-1~deb12u1", source: "openssl"), pkg("openssl", "3.0.11-1~deb12u1"),
                         pkg("tar", "1.34+dfsg-1.2+deb12u1")]
        let f = m.findings(packages: installed, ecosystem: debian12)
        let vuln = f.filter { $0.status == .vulnerable }
        #expect(Set(vuln.map { "\($0.package) \($0.advisory)" }) == ["libssl3 DSA-5532-1", "openssl DSA-5532-1", "tar DEBIAN-CVE-2024-0001"])
        let ssl = try #require(vuln.first { $0.package == "libssl3" })
        #expect(ssl.sourcePackage == "openssl" && ssl.matchedName == "openssl")
        #expect(ssl.fixedVersion == "3.0.11-1~deb12u2")
        #expect(ssl.severity == .high && ssl.cvssScore == 7.5)
        #expect(ssl.aliases == ["CVE-2023-5363"])
        let tar = try #require(vuln.first { $0.package == "tar" })
        #expect(tar.fixedVersion == nil, "no fix yet")
        #expect(tar.severity == .low)
        #expect(!f.contains { $0.advisory == "DEBIAN-CVE-2023-9999" }, "withdrawn advisories never match")

        // Installed at the fixed version: fixed, not vulnerable.
        let patched = m.findings(packages: [pkg("libssl3", "3.0.11-1~deb12u2", source: "openssl")], ecosystem: debian12)
        #expect(patched.map(\.status) == [.fixed])
        // A Debian 11 guest with a Debian 12 version string is judged by the Debian:11 range only.
        let eleven = Matcher(index: idx).findings(packages: [pkg("openssl", "1.1.1w-0+deb11u1")], ecosystem: debian11)
        #expect(eleven.isEmpty)
        let elevenOld = Matcher(index: idx).findings(packages: [pkg("openssl", "1.1.1n-0+deb11u5")], ecosystem: debian11)
        #expect(elevenOld.map(\.advisory) == ["DSA-5532-1"])
        #expect(elevenOld.first?.fixedVersion == "1.1.1w-0+deb11u1")
    }

    @Test func sameCVEFromOSVAndTheTrackerIsOneFinding() throws {
        let tracker = try records(FeedFixtures.tracker)
        let osv = try records(FeedFixtures.dsaOpenSSL)
        let installed = [pkg("openssl", "3.0.11-1~deb12u1"), pkg("libssl3", "3.0.11-1~deb12u1", source: "openssl")]
        // Each feed alone finds it.
        #expect(Matcher(index: AdvisoryIndex(records: tracker)).findings(packages: installed, ecosystem: debian12)
            .filter { $0.package == "openssl" }.map(\.advisory) == ["CVE-2023-5363"])
        // Both: one finding per package, the DSA (its ids include the CVE), in either import order.
        for recs in [osv + tracker, tracker + osv] {
            let f = Matcher(index: AdvisoryIndex(records: recs)).findings(packages: installed, ecosystem: debian12)
            #expect(f.map { "\($0.package) \($0.advisory)" } == ["libssl3 DSA-5532-1", "openssl DSA-5532-1"])
            #expect(f.allSatisfy { $0.aliases == ["CVE-2023-5363"] && $0.severity == .high })
        }
        // Only overlapping ids: both kept.
        var a = Finding(package: "p", installedVersion: "1", sourcePackage: "p", matchedName: "p", ecosystem: "Debian:12", advisory: "DSA-1",
                        source: "osv", aliases: ["CVE-1", "CVE-2"], severity: .medium, cvssScore: nil, fixedVersion: "2", status: .vulnerable, summary: nil)
        var b = a
        b.advisory = "CVE-3"; b.aliases = ["CVE-2"]; b.source = "debian-tracker"
        #expect(Matcher.deduplicated([a, b]).count == 2)
        // Contained, weaker record first: dropped, and its severity kept if higher.
        b.advisory = "CVE-1"; b.aliases = []; b.severity = .critical
        let d = Matcher.deduplicated([b, a])
        #expect(d.count == 1 && d[0].advisory == "DSA-1" && d[0].severity == .critical)
        // Equal id sets: the stronger stays.
        a.aliases = []; a.advisory = "CVE-9"; b.advisory = "CVE-9"; b.severity = .low
        #expect(Matcher.deduplicated([b, a]).map(\.severity) == [.medium])
    }

    @Test func binNMUsUseTheSourceVersion() throws {
        let idx = AdvisoryIndex(records: try records(FeedFixtures.dsaOpenSSL))
        // binary 3.0.11-1~deb12u2+b1 of source 3.0.11-1~deb12u2: fixed.
        let f = Matcher(index: idx).findings(packages: [pkg("libssl3", "3.0.11-1~deb12u2+b1", source: "openssl", sourceVersion: "3.0.11-1~deb12u2")],
                                             ecosystem: debian12)
        #expect(f.isEmpty)
    }

    @Test func severalRangesLastAffectedAndExplicitVersions() throws {
        let idx = AdvisoryIndex(records: try records(FeedFixtures.ranges))
        func status(_ v: String) -> (FindingStatus?, String?) {
            let f = Matcher(index: idx, includeResolved: true).findings(packages: [pkg("zlib1g", v, source: "zlib")], ecosystem: debian12)
            return (f.first?.status, f.first?.fixedVersion)
        }
        #expect(status("1:1.1.4-1").0 == .vulnerable, "explicit version")
        #expect(status("1:1.1.9-1").0 == nil, "below the first range, not listed")
        #expect(status("1:1.2.0-1") == (.vulnerable, "1:1.2.5-1"))
        #expect(status("1:1.2.4-9") == (.vulnerable, "1:1.2.5-1"))
        #expect(status("1:1.2.5-1") == (.fixed, "1:1.2.5-1"))
        #expect(status("1:1.2.7-1") == (.fixed, "1:1.2.5-1"))
        #expect(status("1:1.2.8-1") == (.vulnerable, nil), "second range has no fix: last_affected only")
        #expect(status("1:1.2.13-1").0 == .vulnerable)
        #expect(status("1:1.2.13-1+b1").0 != .vulnerable, "after last_affected")
        #expect(status("1:1.3-1").0 != .vulnerable)
        #expect(status("1.2.4-1").0 == nil, "epoch 0 sorts below every epoch-1 version")
    }

    @Test func trackerNotAffectedAndAlpineZero() throws {
        let idx = AdvisoryIndex(records: try records(FeedFixtures.tracker, FeedFixtures.secdb))
        let eleven = Matcher(index: idx, includeResolved: true).findings(packages: [pkg("openssl", "1.1.1n-0+deb11u5")], ecosystem: debian11)
        #expect(eleven.map(\.status) == [.notAffected])
        #expect(Matcher(index: idx).findings(packages: [pkg("openssl", "1.1.1n-0+deb11u5")], ecosystem: debian11).isEmpty)
        let alpine = GuestEcosystem.from(osID: "alpine", versionID: "3.18.4")!
        let f = Matcher(index: idx, includeResolved: true).findings(packages: [pkg("libssl3", "3.1.3-r0", source: "openssl"),
                                                                                 pkg("busybox", "1.36.1-r2")], ecosystem: alpine)
        let byID = Dictionary(f.map { ($0.advisory, $0) }, uniquingKeysWith: { a, _ in a })
        #expect(byID["CVE-2023-5678"]?.status == .vulnerable && byID["CVE-2023-5678"]?.fixedVersion == "3.1.4-r1")
        #expect(byID["CVE-2023-3817"]?.status == .fixed)
        #expect(byID["CVE-2022-1234"]?.status == .notAffected)
        #expect(byID["CVE-2023-42363"]?.status == .fixed)
        #expect(byID["CVE-2023-5678"]?.matchedName == "openssl", "apk matches the origin (source) name too")
        // Tar on Debian 12: resolved in the installed version → fixed; TEMP undetermined → vulnerable, no fix.
        let tar = Matcher(index: idx, includeResolved: true).findings(packages: [pkg("tar", "1.34+dfsg-1.2+deb12u1")], ecosystem: debian12)
        #expect(Set(tar.map { "\($0.advisory) \($0.status.rawValue)" }) == ["CVE-2023-39804 fixed", "TEMP-0290435-0B57B5 vulnerable"])
        #expect(tar.first { $0.advisory.hasPrefix("TEMP") }?.severity == .negligible)
    }

    @Test func rpmMatchesBinaryNameAndScheme() throws {
        let idx = AdvisoryIndex(records: try records(FeedFixtures.rocky))
        let rocky = GuestEcosystem.from(osID: "rocky", versionID: "9.3")!
        let f = Matcher(index: idx).findings(packages: [pkg("openssl-libs", "1:3.0.7-24.el9", source: "openssl")], ecosystem: rocky)
        #expect(f.map(\.advisory) == ["RLSA-2024:0001"])
        #expect(f.first?.severity == .high)
        #expect(Matcher(index: idx).findings(packages: [pkg("openssl-libs", "1:3.0.7-25.el9_3", source: "openssl")], ecosystem: rocky).isEmpty)
        #expect(Matcher(index: idx).findings(packages: [pkg("openssl-libs", "1:3.0.7-24.el9")],
                                             ecosystem: GuestEcosystem.from(osID: "almalinux", versionID: "9")!).isEmpty)
    }

    @Test func diffReportsNewAndGone() throws {
        let idx = AdvisoryIndex(records: try records(FeedFixtures.dsaOpenSSL, FeedFixtures.debianCVEOpen))
        let m = Matcher(index: idx)
        let before = m.findings(packages: [pkg("openssl", "3.0.11-1~deb12u1")], ecosystem: debian12)
        let after = m.findings(packages: [pkg("openssl", "3.0.11-1~deb12u2"), pkg("tar", "1.34+dfsg-1.2")], ecosystem: debian12)
        let d = Matcher.diff(old: before, new: after)
        #expect(d.added.map(\.advisory) == ["DEBIAN-CVE-2024-0001"])
        #expect(d.removed.map(\.advisory) == ["DSA-5532-1"])
    }

    @Test func rangeCodingRoundTrips() {
        let r: [[RangeEvent]] = [[.introduced("0"), .fixed("1:2.3-4")], [.introduced("5"), .lastAffected("6"), .limit("7")]]
        #expect(RangeCoding.decode(RangeCoding.encode(r)) == r)
        #expect(RangeCoding.decode("") == [])
        #expect(RangeCoding.decodeVersions(RangeCoding.encodeVersions(["a", "b:c"])) == ["a", "b:c"])
    }
}
