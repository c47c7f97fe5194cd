import Foundation
import Testing
import WardenCore
import WardenTestSupport

/// Two hosts in network namespaces, each with its own local ledger and `warden agent`, and one
/// `warden serve` on PostgreSQL: one history and one lineage across a migration, and no event
/// lost or doubled when a host's link is cut while it records.
@Suite(.serialized) struct FleetTests {
    @Test(.enabled(if: FleetNet.available, "needs root and iproute2 (network namespaces)"))
    func oneLineageAcrossAMigrationAndACutLink() throws {
        let net = try FleetNet(hosts: ["h1", "h2"])
        defer { net.destroy() }
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("warden-fleet-\(UUID().uuidString.prefix(8))").path
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        for d in ["srv", "h1/policy", "h2/policy"] { try FileManager.default.createDirectory(atPath: "\(tmp)/\(d)", withIntermediateDirectories: true) }
        let pg = try PostgresServer.shared()
        let dbName = try pg.createDatabase()
        defer { pg.dropDatabase(dbName) }
        let server = ServeProcess(dir: tmp + "/srv", listen: "\(net.serverAddress):0", database: pg.url(dbName), environment: pg.environment)
        let auditor = try server.token("audit", role: "auditor")
        try server.start()
        defer { server.kill9() }
        let h1 = tmp + "/h1", h2 = tmp + "/h2"

        // h1 registers a base image and copies it; the copy runs on h1.
        try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", h1 + "/base.qcow2", "16M"])
        _ = try wardenOn(net, "h1", home: h1, ["vm", "register", "--name", "base", "--owner", "alice", "--host", "h1", h1 + "/base.qcow2"])
        _ = try wardenOn(net, "h1", home: h1, ["vm", "copy", "base", h1 + "/child.qcow2", "--name", "child", "--host", "h1"])
        _ = try wardenOn(net, "h1", home: h1, ["event", "record", "--vm", "child", "--kind", "started", "--host", "h1"])
        // Each host enrols over TLS with a one-time token; from then on it is its certificate.
        try server.enrol(net, "h1", home: h1)
        try server.enrol(net, "h2", home: h2)
        _ = try wardenOn(net, "h1", home: h1, ["agent", "run", "--once"])
        // h2 learns the fleet's VMs from the server (its hook will decide on them offline).
        _ = try wardenOn(net, "h2", home: h2, ["agent", "run", "--once"])
        let onH2 = try wardenOn(net, "h2", home: h2, ["vm", "list", "--json"]).stdoutText
        #expect(onH2.contains("\"child\"") && onH2.contains("\"base\""), "\(onH2)")

        // The migration: h1 sees the VM leave, h2 sees it arrive and run.
        _ = try wardenOn(net, "h1", home: h1, ["event", "record", "--vm", "child", "--kind", "migrated", "--host", "h2"])
        _ = try wardenOn(net, "h2", home: h2, ["event", "record", "--vm", "child", "--kind", "started", "--host", "h2"])
        _ = try wardenOn(net, "h1", home: h1, ["agent", "run", "--once"])
        _ = try wardenOn(net, "h2", home: h2, ["agent", "run", "--once"])

        // One history on the server: h1's and h2's events of the VM, in one log.
        let events = try #require(try server.get("/v1/vms/child/events", token: auditor) as? [[String: Any]])
        let byHost = events.map { "\($0["host"] ?? "")/\($0["kind"] ?? "")" }
        #expect(byHost == ["h1/copied", "h1/started", "h1/migrated", "h2/started"], "\(byHost)")
        // Residency closed on h1 and open on h2.
        let residency = try #require(try server.get("/v1/vms/child/residency", token: auditor) as? [[String: Any]])
        let ran = residency.filter { $0["kind"] as? String == "ran" }
        #expect(ran.contains { $0["host"] as? String == "h1" && $0["to"] != nil })
        #expect(ran.contains { $0["host"] as? String == "h2" && $0["to"] == nil })
        // One lineage: base → child, whichever host reported what.
        let lineage = try #require(try server.get("/v1/vms/child/lineage", token: auditor) as? [String: Any])
        let nodes = try #require(lineage["nodes"] as? [[String: Any]])
        #expect(nodes.map { "\($0["name"] ?? "")/\($0["role"] ?? "")" } == ["base/ancestor", "child/self"], "\(nodes)")
        // Exposure of h1 names the copy that now runs on h2.
        let exposure = try #require(try server.get("/v1/exposure?host=h1&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z", token: auditor) as? [String: Any])
        let exposed = try #require(exposure["vms"] as? [[String: Any]]).compactMap { $0["name"] as? String }
        #expect(exposed.contains("child"), "\(exposure)")

        // A cut link: h2 keeps recording; its agent cannot reach the server; nothing is lost.
        try net.link("h2", up: false)
        for kind in ["stopped", "started", "stopped", "started"] {
            _ = try wardenOn(net, "h2", home: h2, ["event", "record", "--vm", "child", "--kind", kind, "--host", "h2"])
        }
        let cut = try wardenOn(net, "h2", home: h2, ["agent", "run", "--once"], check: false)
        #expect(cut.status != 0)
        let status = try wardenOn(net, "h2", home: h2, ["agent", "status", "--json"]).stdoutText
        #expect(status.contains("\"pending\" : 4"), "\(status)")
        try net.link("h2", up: true)
        _ = try wardenOn(net, "h2", home: h2, ["agent", "run", "--once"])
        // Sent once more (as if the answer had been lost): still recorded once.
        try Tool.run(["rm", "-f", h2 + "/agent/state.json"])
        _ = try wardenOn(net, "h2", home: h2, ["agent", "run", "--once"])
        let all = try #require(try server.get("/v1/events?limit=10000", token: auditor) as? [[String: Any]])
        let h2Local = try #require(try JSONSerialization.jsonObject(with: Data(try wardenOn(net, "h2", home: h2, ["agent", "status", "--json"]).stdout)) as? [String: Any])
        let fromH2 = all.filter { $0["host"] as? String == "h2" }
        #expect(fromH2.count == (h2Local["acked"] as? Int ?? -1), "h2 reported \(fromH2.count), its ledger has \(h2Local["acked"] ?? "?")")
        #expect(fromH2.count == 5)
        let fromH1 = all.filter { $0["host"] as? String == "h1" }
        let h1Local = try #require(try JSONSerialization.jsonObject(with: Data(try wardenOn(net, "h1", home: h1, ["agent", "status", "--json"]).stdout)) as? [String: Any])
        #expect(fromH1.count == (h1Local["acked"] as? Int ?? -1) && (h1Local["pending"] as? Int) == 0)
        // Every event on the server once: its ids are unique per host (the ingested table's key).
        #expect(all.count == fromH1.count + fromH2.count)
    }

    /// kill -9 of the server in the middle of an ingest, then PostgreSQL stopped for 30 s:
    /// afterwards every event the host recorded is on the server exactly once, and
    /// `warden ledger verify` passes on the PostgreSQL ledger.
    @Test func serverCrashAndDatabaseOutageLoseNothing() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("warden-faults-\(UUID().uuidString.prefix(8))").path
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        for d in ["srv", "h1/policy"] { try FileManager.default.createDirectory(atPath: "\(tmp)/\(d)", withIntermediateDirectories: true) }
        // A cluster of its own: this test stops it.
        let pg = try PostgresServer(durable: true)
        let dbName = try pg.createDatabase()
        let server = ServeProcess(dir: tmp + "/srv", listen: "127.0.0.1:0", database: pg.url(dbName), environment: pg.environment)
        let auditor = try server.token("audit", role: "auditor")
        try server.start()
        defer { server.kill9() }
        let h1 = tmp + "/h1"
        let total = 20_000
        _ = try wardenOn(nil, "h1", home: h1, ["dev", "synth", "--vms", "200", "--events", "\(total)", "--hosts", "2", "--seed", "7"])
        try server.enrol(nil, "h1", home: h1)
        let agent = Process()
        agent.executableURL = URL(fileURLWithPath: Fixtures.wardenBinary)
        agent.arguments = ["agent", "run", "--interval", "0.2"]
        var env = ProcessInfo.processInfo.environment
        env["WARDEN_HOME"] = h1
        agent.environment = env
        agent.standardOutput = FileHandle.nullDevice
        agent.standardError = FileHandle.nullDevice
        try agent.run()
        defer { kill(agent.processIdentifier, SIGKILL); agent.waitUntilExit() }
        func onServer() -> Int {
            guard let all = try? server.get("/v1/events?after=0&limit=10000", token: auditor) as? [[String: Any]] else { return -1 }
            if all.count < 10_000 { return all.count }
            let rest = (try? server.get("/v1/events?after=10000&limit=10000", token: auditor) as? [[String: Any]])?.count ?? 0
            return 10_000 + rest
        }
        // Mid-ingest: some of the events are in, most are not.
        try waitUntil("the server has some of the events", timeout: 120, interval: 0.05) { onServer() >= 1_000 }
        server.kill9()
        #expect(onServer() == -1)
        try server.start()
        // PostgreSQL away for 30 s while the agent keeps trying.
        try waitUntil("the server has more events", timeout: 120, interval: 0.05) { onServer() >= 3_000 }
        try pg.stop()
        Thread.sleep(forTimeInterval: 30)
        try pg.start()
        try waitUntil("the agent drained", timeout: 300, interval: 0.5) {
            let status = try wardenOn(nil, "h1", home: h1, ["agent", "status", "--json"]).stdoutText
            return status.contains("\"pending\" : 0")
        }
        #expect(onServer() == total)
        let verify = try Tool.run([Fixtures.wardenBinary, "ledger", "verify", "--database", pg.url(dbName), "--json"],
                                  environment: pg.environment, check: false)
        #expect(verify.status == 0, "\(verify.stdoutText.prefix(2000)) \(verify.stderr)")
        #expect(verify.stdoutText.contains("\"entries_checked\" : \(total)"))
        try? pg.stop()
    }
}
