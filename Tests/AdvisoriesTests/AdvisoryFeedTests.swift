import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Advisories

@Suite struct AdvisoryFeedTests {
    func decode(_ text: String, file: String = "fixture.json") throws -> ([AdvisoryRecord], AdvisoryFormat) {
        try AdvisoryImporter.decode(Data(text.utf8), file: file)
    }

    @Test func osvDebianRecordWithTwoReleasesAndCVSS() throws {
        let (recs, format) = try decode(FeedFixtures.dsaOpenSSL)
        #expect(format == .osv)
        let r = try #require(recs.first)
        #expect(r.id == "DSA-5532-1" && r.source == "osv")
        #expect(r.aliases == ["CVE-2023-5363"])
        #expect(r.cvssScore == 7.5)
        #expect(r.severity == .high)
        #expect(r.modified == Date(timeIntervalSince1970: 1_704_873_600))
        #expect(r.affected.map(\.ecosystem) == ["Debian:12", "Debian:11"])
        #expect(r.affected[0].ranges == [[.introduced("0"), .fixed("3.0.11-1~deb12u2")]])
        #expect(r.affected[0].fixedVersion(scheme: .deb) == "3.0.11-1~deb12u2")
    }

    @Test func osvUrgencyFractionalTimesOffsetsAndSkippedRanges() throws {
        let open = try #require(try decode(FeedFixtures.debianCVEOpen).0.first)
        #expect(open.severity == .low && open.cvssScore == nil)
        #expect(open.affected[0].severity == .low)
        #expect(open.affected[0].fixedVersion(scheme: .deb) == nil)
        #expect(open.summary == "A flaw in tar")
        #expect(abs(open.modified!.timeIntervalSince1970 - 1_709_251_200.123456) < 1e-5)
        let ranges = try #require(try decode(FeedFixtures.ranges).0.first)
        #expect(ranges.modified == Date(timeIntervalSince1970: 1_704_063_600))
        #expect(ranges.affected[0].ranges.count == 1, "the GIT range is skipped")
        #expect(ranges.affected[0].versions == ["1:1.1.4-1"])
        let rocky = try #require(try decode(FeedFixtures.rocky).0.first)
        #expect(rocky.severity == .high, "database_specific severity Important")
        let w = try #require(try decode(FeedFixtures.withdrawn).0.first)
        #expect(w.withdrawn != nil)
    }

    @Test func debianTrackerStatuses() throws {
        let (recs, format) = try decode(FeedFixtures.tracker)
        #expect(format == .debianTracker)
        #expect(recs.map(\.id) == ["CVE-2023-39804", "CVE-2023-5363", "TEMP-0290435-0B57B5"])
        let ssl = recs[1]
        #expect(ssl.source == "debian-tracker")
        let byEco = Dictionary(uniqueKeysWithValues: ssl.affected.map { ($0.ecosystem, $0) })
        #expect(byEco["Debian:12"]?.ranges == [[.introduced("0"), .fixed("3.0.11-1~deb12u2")]])
        #expect(byEco["Debian:11"]?.status == .notAffected)
        #expect(byEco["Debian:unstable"]?.ranges == [[.introduced("0"), .fixed("3.0.12-1")]])
        let tar = recs[0]
        #expect(tar.severity == .medium)
        #expect(tar.affected.first { $0.ecosystem == "Debian:11" }?.severity == .low, "low** is low")
        #expect(tar.affected.first { $0.ecosystem == "Debian:11" }?.ranges == [[.introduced("0")]])
        let temp = recs[2]
        #expect(temp.affected.map(\.ecosystem) == ["Debian:12", "Debian:14"], "unknown codenames are skipped")
        #expect(temp.affected[0].severity == .negligible)
    }

    @Test func alpineSecdbWithZeroEntriesAndSeveralIDsPerLine() throws {
        let (recs, format) = try decode(FeedFixtures.secdb)
        #expect(format == .alpineSecdb)
        #expect(recs.map(\.id) == ["CVE-2022-1234", "CVE-2022-48174", "CVE-2023-3817", "CVE-2023-42363", "CVE-2023-5678"])
        #expect(Set(recs.map(\.source)) == ["alpine-secdb:v3.18/main"])
        #expect(recs[0].affected == [AffectedPackage(ecosystem: "Alpine:v3.18", package: "openssl", status: .notAffected)])
        #expect(recs[4].affected[0].ranges == [[.introduced("0"), .fixed("3.1.4-r1")]])
        #expect(recs[1].affected[0].package == "busybox")
    }

    @Test func hostileJSONGivesOneLineTypedErrors() throws {
        let cases: [(String, WardenError.Code, String)] = [
            ("{\"id\": \"X\", ", .corrupt, "malformed JSON"),
            ("42", .corrupt, "malformed JSON"),
            ("[42]", .corrupt, "OSV list element 0 is not an object"),
            ("{\"hello\": 1}", .corrupt, "not an advisory feed"),
            ("{\"id\": 5, \"modified\": \"2024-01-01T00:00:00Z\"}", .corrupt, "not an advisory feed"),
            ("{\"id\": \"X\", \"modified\": \"yesterday\"}", .corrupt, "RFC 3339"),
            ("{\"id\": \"X\", \"modified\": \"2024-01-01T00:00:00Z\", \"affected\": [{\"package\": {\"ecosystem\": \"Debian:12\"}}]}", .corrupt, "needs an ecosystem and a name"),
            ("{\"id\": \"X\", \"modified\": \"2024-01-01T00:00:00Z\", \"affected\": [{\"package\": {\"ecosystem\": \"Debian:12\", \"name\": \"a\"}, \"ranges\": [{\"type\": \"ECOSYSTEM\", \"events\": [{\"introduced\": \"0\", \"fixed\": \"1\"}]}]}]}", .corrupt, "malformed event"),
            ("{\"id\": \"X\", \"modified\": \"2024-01-01T00:00:00Z\", \"affected\": [{\"package\": {\"ecosystem\": \"Debian:12\", \"name\": \"a\"}, \"ranges\": [{\"type\": \"ECOSYSTEM\", \"events\": [{\"broken\": \"1\"}]}]}]}", .corrupt, "unknown range event"),
            ("{\"pkg\": {\"CVE-1\": {\"releases\": {\"bookworm\": {\"status\": \"resolved\"}}}}}", .corrupt, "without a fixed_version"),
            ("{\"pkg\": {\"CVE-1\": {\"releases\": {\"bookworm\": {\"status\": \"weird\"}}}}}", .corrupt, "unknown status"),
            ("{\"distroversion\": \"3.18\", \"packages\": []}", .corrupt, "distroversion"),
            ("{\"distroversion\": \"v3.18\", \"reponame\": \"main\", \"packages\": [{\"pkg\": {\"name\": \"a\", \"secfixes\": {\"1-r0\": [7]}}}]}", .corrupt, "non-string id"),
        ]
        for (text, code, words) in cases {
            do {
                _ = try decode(text, file: "bad.json")
                Issue.record("accepted: \(text)")
            } catch let e as WardenError {
                #expect(e.code == code, "\(text): \(e)")
                #expect(e.description.hasPrefix("bad.json: "), "\(e)")
                #expect(e.description.contains(words), "\(e)")
                #expect(!e.description.contains("\n"))
            }
        }
    }

    @Test func hugeCountsAreLimits() throws {
        let many = (0..<(OSV.Limits.maxAffected + 1)).map { _ in "{\"package\": {\"ecosystem\": \"Debian:12\", \"name\": \"a\"}}" }.joined(separator: ",")
        let text = "{\"id\": \"X\", \"modified\": \"2024-01-01T00:00:00Z\", \"affected\": [\(many)]}"
        #expect(throws: WardenError.self) { try decode(text) }
        do { _ = try decode(text) } catch let e as WardenError { #expect(e.code == .limitExceeded) }
        let aliases = (0...OSV.Limits.maxAliases).map { "\"A\($0)\"" }.joined(separator: ",")
        do {
            _ = try decode("{\"id\": \"X\", \"modified\": \"2024-01-01T00:00:00Z\", \"aliases\": [\(aliases)]}")
            Issue.record("too many aliases accepted")
        } catch let e as WardenError { #expect(e.code == .limitExceeded) }
    }

    @Test func truncatedFeedsNeverTrap() throws {
        for text in [FeedFixtures.dsaOpenSSL, FeedFixtures.tracker, FeedFixtures.secdb] {
            let bytes = Array(text.utf8)
            var cuts = Rejections(.corrupt, .unsupported)
            var n = 0
            while n < bytes.count {
                cuts.feed { try AdvisoryImporter.decode(Data(bytes[0..<n]), file: "t.json") }
                n += 7
            }
            // Every proper prefix of a JSON document is refused (at most one that ends in the
            // document's trailing whitespace is whole).
            #expect(cuts.accepted <= 1 && cuts.rejected >= (bytes.count + 6) / 7 - 1, "\(cuts.accepted) prefixes accepted")
        }
    }

    @Test func ecosystemsFromOSRelease() {
        #expect(GuestEcosystem.from(osID: "debian", versionID: "12")?.names == ["Debian:12"])
        #expect(GuestEcosystem.from(osID: "debian", versionID: nil)?.names == ["Debian:unstable"])
        #expect(GuestEcosystem.from(osID: "ubuntu", versionID: "22.04")?.names == ["Ubuntu:22.04:LTS", "Ubuntu:22.04"])
        #expect(GuestEcosystem.from(osID: "ubuntu", versionID: "23.10")?.names == ["Ubuntu:23.10"])
        #expect(GuestEcosystem.from(osID: "alpine", versionID: "3.18.4")?.names == ["Alpine:v3.18"])
        #expect(GuestEcosystem.from(osID: "rocky", versionID: "9.3")?.names == ["Rocky Linux:9"])
        #expect(GuestEcosystem.from(osID: "almalinux", versionID: "9.3")?.scheme == .rpm)
        #expect(GuestEcosystem.from(osID: "rhel", versionID: "9.3")?.names.first == "Red Hat:9")
        #expect(GuestEcosystem.from(osID: "sles", versionID: "15.5")?.names.first == "SUSE:Linux Enterprise Server 15 SP5")
        #expect(GuestEcosystem.from(osID: "windows", versionID: "10") == nil)
        #expect(GuestEcosystem.normalise("Red Hat:enterprise_linux:9::appstream") == "Red Hat:9")
    }
}
