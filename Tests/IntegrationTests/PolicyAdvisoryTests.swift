import Foundation
import Testing
import WardenTestSupport

/// Policy facts from the advisory store, as a user meets them: a real ledger, advisories
/// imported with `warden advisories import`, an inventory stored by `warden scan` of the VM's
/// disk, and `warden policy check` deciding `findings` and `scanCurrent` rules from them.
@Suite(.serialized) struct PolicyAdvisoryTests {
    static func warden(_ args: [String], home: String) throws -> ToolResult {
        try Tool.run(["timeout", "-s", "KILL", "300", Fixtures.wardenBinary] + args,
                     environment: ["WARDEN_HOME": home, "WARDEN_DB": "", "WARDEN_POLICY": ""], check: false)
    }

    /// An OSV record for Debian 12's openssl (severity as a database_specific word).
    static func osv(id: String, cve: String, fixed: String, severity: String, modified: String) -> String {
        """
        {"schema_version": "1.6.0", "id": "\(id)", "modified": "\(modified)", "aliases": ["\(cve)"],
         "summary": "openssl - security update", "database_specific": {"severity": "\(severity)"},
         "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
                       "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "\(fixed)"}]}]}]}
        """
    }

    static func check(_ policy: String, home: String) throws -> (status: Int32, doc: [String: Any]) {
        let r = try warden(["policy", "check", "--op", "start", "web", "--policy", policy, "--json"], home: home)
        let doc = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any], "stderr: \(r.stderr)")
        return (r.status, doc)
    }

    @Test func findingsAndScanCurrencyComeFromTheAdvisoryStore() throws {
        // The rollback fixture's current state has openssl 3.0.15-1~deb12u1 (Debian 12).
        let (disk, _) = try RollbackFixtures.impactDisk()
        try Fixtures.withTemporaryDirectory { home in
            let image = home + "/web.qcow2"
            try FileManager.default.copyItem(atPath: disk, toPath: image)
            let critical = home + "/critical", current = home + "/current"
            try FileManager.default.createDirectory(atPath: critical, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: current, withIntermediateDirectories: true)
            try PolicyFiles.writeFile(PolicyFiles.noCriticalsOnline, at: critical + "/p.yaml")
            try """
            apiVersion: warden/v1
            kind: Policy
            rules:
              - name: dormant-vms-rescan-first
                on: [start]
                require: { scanAge: 7d, scanCurrent: true }
                otherwise: quarantine
            """.write(toFile: current + "/p.yaml", atomically: true, encoding: .utf8)
            #expect(try Self.warden(["vm", "register", "--name", "web", "--owner", "test", image], home: home).status == 0)

            // Never scanned: the findings are unknown and the rule fails closed.
            var (status, doc) = try Self.check(critical, home: home)
            #expect(status == 3)
            #expect((doc["reasons"] as? [String])?.first?.contains("never scanned") == true, "\(doc)")

            let feed = home + "/feed"
            try FileManager.default.createDirectory(atPath: feed, withIntermediateDirectories: true)
            try Self.osv(id: "DSA-9901-1", cve: "CVE-2026-9901", fixed: "3.0.16-1~deb12u1", severity: "critical", modified: "2026-01-01T00:00:00Z")
                .write(toFile: feed + "/DSA-9901-1.json", atomically: true, encoding: .utf8)
            #expect(try Self.warden(["advisories", "import", feed + "/DSA-9901-1.json"], home: home).status == 0)
            let scan = try Self.warden(["scan", "--json", image], home: home)
            #expect(scan.status == 0, "\(scan.stderr)")
            #expect(scan.stdoutText.contains("DSA-9901-1"))

            // Vulnerable now: denied, the finding named in the reason.
            (status, doc) = try Self.check(critical, home: home)
            #expect(status == 3)
            #expect(doc["effect"] as? String == "deny" && doc["rules"] as? [String] == ["no-criticals-online"])
            let reason = (doc["reasons"] as? [String])?.first ?? ""
            #expect(reason.contains("1 open finding at or above critical") && reason.contains("DSA-9901-1 (CVE-2026-9901) in openssl 3.0.15-1~deb12u1"),
                    "\(reason)")
            // Scanned after the import: current.
            (status, doc) = try Self.check(current, home: home)
            #expect(status == 0 && doc["effect"] as? String == "allow", "\(doc)")

            // The advisory is corrected (fixed in an older version than installed): allowed,
            // without a rescan, because the stored inventory is matched against the store now.
            try Self.osv(id: "DSA-9901-1", cve: "CVE-2026-9901", fixed: "3.0.14-1~deb12u1", severity: "critical", modified: "2026-02-01T00:00:00Z")
                .write(toFile: feed + "/DSA-9901-1.json", atomically: true, encoding: .utf8)
            #expect(try Self.warden(["advisories", "import", feed + "/DSA-9901-1.json"], home: home).status == 0)
            (status, doc) = try Self.check(critical, home: home)
            #expect(status == 0 && doc["effect"] as? String == "allow", "\(doc)")
            // …but an advisory was imported after the last scan: quarantined until rescanned.
            (status, doc) = try Self.check(current, home: home)
            #expect(status == 0 && doc["effect"] as? String == "quarantine", "\(doc)")
            #expect((doc["reasons"] as? [String])?.contains { $0.contains("1 advisory imported since the last scan") } == true, "\(doc)")
            #expect(try Self.warden(["scan", image], home: home).status == 0)
            (status, doc) = try Self.check(current, home: home)
            #expect(status == 0 && doc["effect"] as? String == "allow", "\(doc)")

            // Every decision is in the ledger.
            let history = try Self.warden(["vm", "history", "web", "--json"], home: home).stdoutText
            #expect(history.contains("no-criticals-online") && history.contains("dormant-vms-rescan-first"))
        }
    }
}
