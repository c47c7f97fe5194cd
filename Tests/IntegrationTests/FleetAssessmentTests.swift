import Foundation
import Testing
import WardenCore
import WardenTestSupport

/// Fleet-wide assessment as work on PostgreSQL: the server queues scan jobs, the host's agent
/// takes the ones for its own images and reports inventories, the server rescans exactly the
/// inventories an advisory import touched, and a job whose agent died is taken by another
/// worker once its lease ends — done once.
@Suite(.serialized) struct FleetAssessmentTests {
    struct Call {
        let server: ServeProcess
        let tmp: String
        /// One HTTPS request as `token`, or as host h1's certificate when `token` is nil.
        func callAs(_ token: String?, _ method: String, _ path: String, body: String? = nil) throws -> (status: Int, json: Any?) {
            var args = ["curl", "-sS", "--max-time", "30", "-o", tmp + "/body", "-w", "%{http_code}", "-X", method] + server.curlTrust
            if let token { args += ["-H", "Authorization: Bearer \(token)"] } else {
                args += ["--cert", tmp + "/h1/agent/host.pem", "--key", tmp + "/h1/agent/host.key"]
            }
            if let body {
                try Data(body.utf8).write(to: URL(fileURLWithPath: tmp + "/request"))
                args += ["-H", "Content-Type: application/json", "--data-binary", "@" + tmp + "/request"]
            }
            let r = try Tool.run(args + [server.url + path])
            let data = FileManager.default.contents(atPath: tmp + "/body") ?? Data()
            return (Int(r.stdoutText) ?? -1, try? JSONSerialization.jsonObject(with: data))
        }
    }

    static func osv(id: String, package: String, fixed: String) -> String {
        """
        {"schema_version": "1.6.0", "id": "\(id)", "modified": "2026-11-01T00:00:00Z", "aliases": ["CVE-2026-\(id.count)000"],
         "summary": "\(package) - security update", "database_specific": {"severity": "critical"},
         "affected": [{"package": {"ecosystem": "Debian:12", "name": "\(package)"},
                       "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "\(fixed)"}]}]}]}
        """
    }

    /// One `agent run --once --json` round on h1.
    static func round(_ home: String) throws -> [String: Any] {
        let out = try wardenOn(nil, "h1", home: home, ["agent", "run", "--once", "--json"]).stdout
        return (try JSONSerialization.jsonObject(with: out) as? [String: Any]) ?? [:]
    }

    @Test func scanJobsRescansAndAnAgentThatDiedMidJob() throws {
        let (disk, _) = try RollbackFixtures.impactDisk()   // openssl 3.0.15-1~deb12u1, Debian 12
        try Fixtures.withTemporaryDirectory { tmp in
            for d in ["srv", "h1/policy"] { try FileManager.default.createDirectory(atPath: "\(tmp)/\(d)", withIntermediateDirectories: true) }
            let pg = try PostgresServer.shared()
            let dbName = try pg.createDatabase()
            defer { pg.dropDatabase(dbName) }
            let server = ServeProcess(dir: tmp + "/srv", listen: "127.0.0.1:0", database: pg.url(dbName), environment: pg.environment)
            // The fleet policy the agents install: no critical findings on a running VM.
            try FileManager.default.createDirectory(atPath: tmp + "/srv/policy", withIntermediateDirectories: true)
            try PolicyFiles.writeFile(PolicyFiles.noCriticalsOnline, at: tmp + "/srv/policy/criticals.yaml")
            server.extraArguments = ["--policy", tmp + "/srv/policy"]
            let admin = try server.token("root", role: "admin")
            try server.start()
            defer { server.kill9() }
            let h1 = tmp + "/h1", image = tmp + "/h1/web.qcow2"
            try FileManager.default.copyItem(atPath: disk, toPath: image)
            _ = try wardenOn(nil, "h1", home: h1, ["vm", "register", "--name", "web", "--owner", "alice", "--host", "h1", image])
            try server.enrol(nil, "h1", home: h1)
            _ = try wardenOn(nil, "h1", home: h1, ["agent", "run", "--once"])
            let c = Call(server: server, tmp: tmp)

            // Scan jobs: one for the VM's disk, one for a file that is no disk of this host.
            var r = try c.callAs(admin, "POST", "/v1/jobs", body: #"{"kind":"scan","host":"h1","target":"\#(image)"}"#)
            #expect(r.status == 201, "\(String(describing: r.json))")
            r = try c.callAs(admin, "POST", "/v1/jobs", body: #"{"kind":"scan","host":"h1","target":"/etc/shadow"}"#)
            #expect(r.status == 201)
            #expect(try c.callAs(admin, "POST", "/v1/jobs", body: #"{"kind":"scan","host":"h1","target":"\#(image)"}"#).status == 200, "deduplicated")
            let round = try Self.round(h1)
            #expect(round["jobs_done"] as? Int == 1 && round["jobs_failed"] as? Int == 1, "\(round)")
            // The inventory is on the server, and its first assessment ran there (no advisories yet).
            func jobs(_ state: String) throws -> [[String: Any]] {
                ((try c.callAs(admin, "GET", "/v1/jobs?state=\(state)").json as? [String: Any])?["jobs"] as? [[String: Any]]) ?? []
            }
            try waitUntil("the server ran the first rescan", timeout: 30) { try jobs("done").contains { $0["kind"] as? String == "rescan" } }
            let refused = try jobs("queued").first { $0["target"] as? String == "/etc/shadow" }
            #expect((refused?["result"] as? String)?.contains("not a disk of a VM") == true, "\(String(describing: refused))")

            // An advisory for openssl touches the inventory; one for zlib does not.
            r = try c.callAs(admin, "POST", "/v1/advisories?source=test", body: Self.osv(id: "DSA-9-1", package: "zlib", fixed: "9.9-1"))
            #expect(r.status == 200 && (r.json as? [String: Any])?["rescans_queued"] as? Int == 0, "\(String(describing: r.json))")
            r = try c.callAs(admin, "POST", "/v1/advisories?source=test", body: Self.osv(id: "DSA-77-1", package: "openssl", fixed: "3.0.16-1~deb12u1"))
            #expect(r.status == 200 && (r.json as? [String: Any])?["rescans_queued"] as? Int == 1, "\(String(describing: r.json))")
            #expect(try c.callAs(admin, "POST", "/v1/advisories", body: "{not a feed").status == 400)
            var findings: [String: Any] = [:]
            try waitUntil("the fleet's findings name the VM", timeout: 30) {
                findings = (try c.callAs(admin, "GET", "/v1/findings").json as? [String: Any]) ?? [:]
                return ((findings["inventories"] as? [[String: Any]])?.first?["vms"] as? [[String: Any]])?.contains { $0["name"] as? String == "web" } == true
            }
            let item = try #require((findings["inventories"] as? [[String: Any]])?.first)
            #expect((item["findings"] as? [[String: Any]])?.map { $0["advisory"] as? String } == ["DSA-77-1"])
            #expect((findings["by_severity"] as? [String: Int])?["critical"] == 1)

            // The agent pulls the fleet's advisories and policy: the host decides offline (as
            // its libvirt hook would) that the VM may not start, from its own scan and the
            // fleet's advisory, under the fleet's rule.
            let pulled = try Self.round(h1)
            #expect(pulled["advisories_pulled"] as? Int == 2 && pulled["policy_revision"] != nil, "\(pulled)")
            #expect(FileManager.default.fileExists(atPath: h1 + "/policy/fleet--criticals.yaml"))
            let check = try wardenOn(nil, "h1", home: h1, ["policy", "check", "--op", "start", "web", "--json"], check: false)
            #expect(check.status != 0 && check.stdoutText.contains("DSA-77-1"), "\(check.stdoutText) \(check.stderr)")
            #expect(try Self.round(h1)["advisories_pulled"] as? Int == 0, "the cursor moved")
            let status = try JSONSerialization.jsonObject(with: try wardenOn(nil, "h1", home: h1, ["agent", "status", "--json"]).stdout) as? [String: Any]
            #expect(status?["policy_revision"] as? String == pulled["policy_revision"] as? String)
            #expect((status?["certificate_not_after"] as? String)?.hasPrefix("20") == true, "\(String(describing: status))")
            // A broken policy on the server never reaches the host: it keeps the last good one.
            try "apiVersion: warden/v1\nkind: Policy\nrules: [oops".write(toFile: tmp + "/srv/policy/criticals.yaml", atomically: true, encoding: .utf8)
            let broken = try Self.round(h1)
            #expect((broken["policy_problem"] as? String)?.contains("does not lint") == true, "\(broken)")
            #expect(try String(contentsOfFile: h1 + "/policy/fleet--criticals.yaml", encoding: .utf8).contains("no-criticals-online"))

            // An agent that dies holding a job: its lease (2 s) ends, the real agent takes the
            // job and completes it; the dead claimant's late answer is refused.
            r = try c.callAs(admin, "POST", "/v1/jobs", body: #"{"kind":"scan","host":"h1","target":"\#(image)"}"#)
            let id = try #require((r.json as? [String: Any])?["id"] as? Int)
            let claimed = try c.callAs(nil, "POST", "/v1/hosts/h1/jobs/claim", body: #"{"limit":10,"lease_seconds":2}"#)
            #expect((claimed.json as? [[String: Any]])?.contains { $0["id"] as? Int == id } == true, "\(String(describing: claimed.json))")
            Thread.sleep(forTimeInterval: 2.5)
            // (The dead claimant and the restarted agent are both h1's certificate: the late
            // answer is refused because the lease it held ended and the job was taken again.)
            let again = try Self.round(h1)
            #expect(again["jobs_done"] as? Int == 1, "\(again)")
            let job = try #require(try jobs("done").first { $0["id"] as? Int == id })
            #expect(job["attempts"] as? Int == 2)
            #expect(try c.callAs(nil, "POST", "/v1/hosts/h1/jobs/\(id)/complete", body: #"{"result":"late"}"#).status == 409)
            #expect(try jobs("done").first { $0["id"] as? Int == id }?["result"] as? String != "late")

            // A scan made on the host by hand is reported too, and the server rescans it.
            let copy = tmp + "/h1/web-copy.qcow2"
            try FileManager.default.copyItem(atPath: image, toPath: copy)
            _ = try wardenOn(nil, "h1", home: h1, ["scan", copy], check: false)
            let reported = try Self.round(h1)
            #expect(reported["inventories_reported"] as? Int ?? 0 >= 1, "\(reported)")
            try waitUntil("the server lists the hand-made scan's image", timeout: 30) {
                let f = (try c.callAs(admin, "GET", "/v1/findings").json as? [String: Any]) ?? [:]
                return ((f["inventories"] as? [[String: Any]])?.first?["images"] as? [String])?.contains(copy) == true
            }
            #expect(try Self.round(h1)["inventories_reported"] as? Int == 0, "reported once")
        }
    }
}
