import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Inspection

/// End of support from the host's distro-info-data (read independently by Python's csv module
/// as the oracle) and from os-release's SUPPORT_END; unknown, with a reason, elsewhere.
@Suite struct ReleaseSupportTests {
    func os(_ id: String, _ version: String, supportEnd: String? = nil) -> OSInfo {
        var o = OSInfo(osReleasePath: .known("/etc/os-release"), id: .known(id), versionId: .known(version), prettyName: .known(id),
                       idLike: .known([]), family: .unknown(reason: "-"), architecture: .unknown(reason: "-"),
                       initSystem: .unknown(reason: "-"), initEvidence: nil)
        o.supportEnd = supportEnd.map { .known($0) }
        return o
    }

    /// (eol, lts) for a release, by Python.
    func oracle(_ id: String, _ version: String, _ ltsColumn: String) throws -> (String, String) {
        let r = try Tool.run(["python3", "-c", """
        import csv, sys
        for row in csv.DictReader(open(sys.argv[1])):
            v = row["version"]
            if v == sys.argv[2] or v.startswith(sys.argv[2] + " "):
                print(row.get("eol", "") + "," + row.get(sys.argv[3], "")); break
        """, "/usr/share/distro-info/\(id).csv", version, ltsColumn])
        let parts = r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        return (parts.first ?? "", parts.count > 1 ? parts[1] : "")
    }

    @Test func debianAndUbuntuFromDistroInfoData() throws {
        guard FileManager.default.fileExists(atPath: "/usr/share/distro-info/debian.csv") else { print("skipped: no distro-info-data"); return }
        let now = ISO8601DateFormatter().date(from: "2026-12-06T00:00:00Z")!
        for (version, ended) in [("10", true), ("11", true), ("12", false)] {
            let s = try #require(Inspection.releaseSupport(os("debian", version), now: now).value, "debian \(version)")
            let (eol, lts) = try oracle("debian", version, "eol-lts")
            #expect(s.endOfLife == eol && s.endOfLongTermSupport == (lts.isEmpty ? nil : lts), "\(s)")
            #expect(s.ended == ended, "debian \(version): \(s)")
            #expect(s.source.contains("distro-info-data"))
        }
        if FileManager.default.fileExists(atPath: "/usr/share/distro-info/ubuntu.csv") {
            let s = try #require(Inspection.releaseSupport(os("ubuntu", "22.04"), now: now).value)
            let (eol, server) = try oracle("ubuntu", "22.04", "eol-server")
            #expect(s.endOfLife == eol && s.endOfLongTermSupport == (server.isEmpty ? nil : server) && !s.ended, "\(s)")
            #expect(Inspection.releaseSupport(os("ubuntu", "14.04"), now: now).value?.ended == true)
        }
        // A release the host's data does not list yet: unknown, saying so.
        #expect(Inspection.releaseSupport(os("debian", "99"), now: now).unknownReason?.contains("does not list debian 99") == true)
    }

    @Test func supportEndFromOSReleaseAndUnknownElsewhere() throws {
        let now = ISO8601DateFormatter().date(from: "2026-12-06T00:00:00Z")!
        let fedora = try #require(Inspection.releaseSupport(os("fedora", "39", supportEnd: "2024-11-26"), now: now).value)
        #expect(fedora.ended && fedora.endOfLife == "2024-11-26" && fedora.source == "os-release SUPPORT_END")
        #expect(Inspection.releaseSupport(os("fedora", "43", supportEnd: "2026-12-09"), now: now).value?.ended == false)
        let alpine = Inspection.releaseSupport(os("alpine", "3.19.1"), now: now)
        #expect(alpine.value == nil && alpine.unknownReason?.contains("no end-of-life data for alpine 3.19.1") == true)
        #expect(Inspection.releaseSupport(os("fedora", "39", supportEnd: "soon"), now: now).value == nil)
        // Parsed from a real os-release.
        #expect(OSRelease.parse("ID=fedora\nSUPPORT_END=2024-11-26\n")["SUPPORT_END"] == "2024-11-26")
    }
}
