import Foundation
import Testing
import WardenTestSupport

/// `warden scan` and `warden fleet rescan` on the debootstrapped Debian 12 guest, with advisories
/// derived at test time from the versions really installed (read with `dpkg-query --admindir`).
@Suite(.serialized) struct ScanGuestTests {
    struct Installed { var package: String; var version: String; var source: String; var sourceVersion: String }

    /// Every installed binary package of the guest tree, from dpkg itself.
    static func installed(root: String) throws -> [Installed] {
        let r = try Tool.run(["dpkg-query", "--admindir=\(root)/var/lib/dpkg", "-W",
                              "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\t${source:Package}\t${source:Version}\n"])
        return r.stdoutText.split(separator: "\n").compactMap { line in
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 5, f[0].hasPrefix("ii") else { return nil }
            return Installed(package: f[1], version: f[2], source: f[3], sourceVersion: f[4])
        }
    }

    static func write(_ text: String, _ path: String) throws { try text.write(toFile: path, atomically: true, encoding: .utf8) }

    @Test(.enabled(if: GuestFixtures.available, "needs root, debootstrap and the Debian mirror"))
    func scanAndRescanTheDebianGuest() throws {
        let root = try GuestFixtures.rootTree() + "/root"
        let image = try GuestFixtures.guestA() + "/disk.qcow2"
        let pkgs = try Self.installed(root: root)
        func sourceVersion(_ s: String) throws -> String { try #require(pkgs.first { $0.source == s }?.sourceVersion, "no \(s) in the guest") }
        func binaries(_ s: String) -> Set<String> { Set(pkgs.filter { $0.source == s }.map(\.package)) }
        let sudo = try sourceVersion("sudo"), bash = try sourceVersion("bash"), ssh = try sourceVersion("openssh")
        let coreutils = try sourceVersion("coreutils"), tar = try sourceVersion("tar"), gzip = try sourceVersion("gzip")

        try Fixtures.withTemporaryDirectory { tmp in
            let db = tmp + "/w.db"
            let adv = tmp + "/osv"
            try FileManager.default.createDirectory(atPath: adv, withIntermediateDirectories: true)
            let osv = AdvisoryCommandTests.osv
            // Affects sudo: fixed above the installed version; CVSS 7.8 (high).
            try Self.write(osv("WARDEN-SUDO", "Debian:12", "sudo", #"[{"introduced": "0"}, {"fixed": "\#(sudo)+warden1"}]"#, "2024-01-01T00:00:00Z",
                               #", "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"}]"#, ""), adv + "/sudo.json")
            // Spares bash: fixed at exactly the installed version.
            try Self.write(osv("WARDEN-BASH", "Debian:12", "bash", #"[{"introduced": "0"}, {"fixed": "\#(bash)"}]"#, "2024-01-01T00:00:00Z", "", ""), adv + "/bash.json")
            // Another release of openssh: must not apply.
            try Self.write(osv("WARDEN-SSH-11", "Debian:11", "openssh", #"[{"introduced": "0"}, {"fixed": "\#(ssh)+warden1"}]"#, "2024-01-01T00:00:00Z", "", ""), adv + "/ssh11.json")
            // openssh in Debian 12 with no fix yet, urgency low.
            try Self.write(osv("WARDEN-SSH-NOFIX", "Debian:12", "openssh", #"[{"introduced": "0"}]"#, "2024-01-01T00:00:00Z", "",
                               #", "ecosystem_specific": {"urgency": "low"}"#), adv + "/ssh12.json")
            // Withdrawn: never a finding.
            try Self.write(osv("WARDEN-CORE", "Debian:12", "coreutils", #"[{"introduced": "0"}, {"fixed": "\#(coreutils)+warden1"}]"#, "2024-01-01T00:00:00Z",
                               #", "withdrawn": "2024-01-02T00:00:00Z""#, ""), adv + "/core.json")
            // The tracker: tar vulnerable (medium) in bookworm, another tar CVE not affected.
            try Self.write("""
            {"tar": {"CVE-2099-1001": {"description": "tar test issue", "releases": {
                        "bookworm": {"status": "resolved", "fixed_version": "\(tar)+warden1", "urgency": "medium"},
                        "bullseye": {"status": "open", "urgency": "high"}}},
                     "CVE-2099-1002": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "0", "urgency": "high"}}}}}
            """, tmp + "/tracker.json")
            var r = try AdvisoryCommandTests.warden(["advisories", "import", "--db", db, adv, tmp + "/tracker.json"])
            #expect(r.status == 0, "\(r.stderr)")

            r = try AdvisoryCommandTests.warden(["scan", "--db", db, "--json", image])
            #expect(r.status == 0, "\(r.stderr)")
            let doc = try AdvisoryCommandTests.json(r)
            let img = try #require((doc["images"] as? [[String: Any]])?.first)
            #expect(img["ecosystems"] as? [String] == ["Debian:12"])
            #expect(img["packages"] as? Int == pkgs.count)
            let findings = try #require(img["findings"] as? [[String: Any]])
            let got = Set(findings.map { "\($0["package"] as? String ?? "") \($0["advisory"] as? String ?? "")" })
            var want = Set<String>()
            for b in binaries("sudo") { want.insert("\(b) WARDEN-SUDO") }
            for b in binaries("openssh") { want.insert("\(b) WARDEN-SSH-NOFIX") }
            for b in binaries("tar") { want.insert("\(b) CVE-2099-1001") }
            #expect(got == want)
            let sudoF = try #require(findings.first { $0["advisory"] as? String == "WARDEN-SUDO" })
            #expect(sudoF["severity"] as? String == "high" && sudoF["cvss_score"] as? Double == 7.8)
            #expect(sudoF["fixed_version"] as? String == "\(sudo)+warden1")
            #expect(sudoF["installed_version"] as? String == pkgs.first { $0.package == "sudo" }?.version)
            #expect(sudoF["aliases"] as? [String] == ["CVE-WARDEN-SUDO"])
            #expect(sudoF["status"] as? String == "vulnerable")
            let sshF = try #require(findings.first { $0["advisory"] as? String == "WARDEN-SSH-NOFIX" })
            #expect(sshF["fixed_version"] == nil || sshF["fixed_version"] is NSNull)
            #expect(sshF["severity"] as? String == "low" && sshF["source_package"] as? String == "openssh")
            let tarF = try #require(findings.first { $0["advisory"] as? String == "CVE-2099-1001" })
            #expect(tarF["severity"] as? String == "medium" && tarF["source"] as? String == "debian-tracker")
            let summary = try #require(img["summary"] as? [String: Int])
            #expect(summary["high"] == binaries("sudo").count && summary["medium"] == binaries("tar").count)
            #expect(img["vulnerable"] as? Int == want.count)

            // --all shows the spared bash as fixed and the tracker's not-affected entry.
            r = try AdvisoryCommandTests.warden(["scan", "--db", db, "--json", "--all", image])
            let all = try #require(((try AdvisoryCommandTests.json(r))["images"] as? [[String: Any]])?.first?["findings"] as? [[String: Any]])
            #expect(all.contains { $0["advisory"] as? String == "WARDEN-BASH" && $0["status"] as? String == "fixed" })
            #expect(all.contains { $0["advisory"] as? String == "CVE-2099-1002" && $0["status"] as? String == "not-affected" })
            #expect(!all.contains { ($0["advisory"] as? String ?? "").hasPrefix("WARDEN-SSH-11") || $0["advisory"] as? String == "WARDEN-CORE" })

            // Human output and --fail-on.
            r = try AdvisoryCommandTests.warden(["scan", "--db", db, image])
            #expect(r.stdoutText.contains("vulnerable: \(want.count)  critical 0  high \(binaries("sudo").count)"), "\(r.stdoutText)")
            #expect(r.stdoutText.contains("no fix yet"))
            #expect(try AdvisoryCommandTests.warden(["scan", "--db", db, "--fail-on", "critical", image]).status == 0)
            #expect(try AdvisoryCommandTests.warden(["scan", "--db", db, "--fail-on", "high", image]).status == 1)
            #expect(try AdvisoryCommandTests.warden(["scan", "--db", db, "--fail-on", "low", image]).status == 1)
            #expect(try AdvisoryCommandTests.warden(["scan", "--db", db, "--fail-on", "bogus", image]).status == 2)
            let missing = try AdvisoryCommandTests.warden(["scan", "--db", db, "--fail-on", "low", tmp + "/nope.qcow2"])
            #expect(missing.status == 2 && missing.stderr.hasPrefix("warden: \(tmp)/nope.qcow2: "))
            // No advisories for the guest's release: fail closed with --fail-on.
            let emptyDB = try AdvisoryCommandTests.warden(["scan", "--db", tmp + "/empty.db", "--fail-on", "critical", image])
            #expect(emptyDB.status == 2 && emptyDB.stderr.contains("no advisories imported for Debian:12"), "\(emptyDB.stderr)")

            // Rescan without the image: nothing changed yet.
            r = try AdvisoryCommandTests.warden(["fleet", "rescan", "--db", db, "--json"])
            #expect(r.status == 0, "\(r.stderr)")
            var rescan = try AdvisoryCommandTests.json(r)
            #expect(rescan["inventories"] as? Int == 1)
            #expect((rescan["changed"] as? [Any])?.isEmpty == true)
            // A new advisory for gzip, and the sudo one superseded by a newer record fixed below.
            try Self.write(osv("WARDEN-GZIP", "Debian:12", "gzip", #"[{"introduced": "0"}, {"fixed": "\#(gzip)+warden1"}]"#, "2024-01-01T00:00:00Z", "", ""), tmp + "/gzip.json")
            try Self.write(osv("WARDEN-SUDO", "Debian:12", "sudo", #"[{"introduced": "0"}, {"fixed": "0.1-1"}]"#, "2024-06-01T00:00:00Z", "", ""), tmp + "/sudo2.json")
            r = try AdvisoryCommandTests.warden(["advisories", "import", "--db", db, "--json", tmp + "/gzip.json", tmp + "/sudo2.json"])
            #expect(r.status == 0)
            r = try AdvisoryCommandTests.warden(["fleet", "rescan", "--db", db, "--json"])
            rescan = try AdvisoryCommandTests.json(r)
            let changed = try #require((rescan["changed"] as? [[String: Any]])?.first)
            #expect(changed["images"] as? [String] == [image])
            #expect(Set((changed["new_findings"] as? [[String: Any]] ?? []).map { "\($0["package"] as? String ?? "") \($0["advisory"] as? String ?? "")" })
                    == Set(binaries("gzip").map { "\($0) WARDEN-GZIP" }))
            #expect(Set((changed["gone_findings"] as? [[String: Any]] ?? []).map { $0["advisory"] as? String ?? "" }) == ["WARDEN-SUDO"])
            #expect(rescan["new_findings"] as? Int == binaries("gzip").count)
            // Human form, then steady state.
            r = try AdvisoryCommandTests.warden(["fleet", "rescan", "--db", db])
            #expect(r.stdoutText.hasPrefix("rescanned 1 inventories"), "\(r.stdoutText)")
            #expect(r.stdoutText.contains("0 changed"))
            // Re-importing the original files is idempotent except the superseded sudo record, which stays newer.
            r = try AdvisoryCommandTests.warden(["advisories", "import", "--db", db, "--json", adv])
            let counts = try #require(((try AdvisoryCommandTests.json(r))["imports"] as? [[String: Any]])?.first?["counts"] as? [String: Any])
            #expect(counts["unchanged"] as? Int == 4 && counts["older"] as? Int == 1 && counts["added"] as? Int == 0)
        }
    }
}
