import Foundation
import Testing
import WardenTestSupport

/// `warden advisories`, `warden scan` and `warden fleet rescan` as a user runs them.
@Suite(.serialized) struct AdvisoryCommandTests {
    static func warden(_ args: [String], env: [String: String] = [:]) throws -> ToolResult {
        try Tool.run(["timeout", "-s", "KILL", "300", Fixtures.wardenBinary] + args, environment: env, check: false)
    }

    static func json(_ r: ToolResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any], "stdout: \(r.stdoutText.prefix(500)) stderr: \(r.stderr)")
    }

    static func osv(id: String, eco: String = "Debian:12", package: String, events: String, modified: String = "2024-01-01T00:00:00Z",
                    extra: String = "", affectedExtra: String = "") -> String {
        """
        {"schema_version": "1.6.0", "id": "\(id)", "modified": "\(modified)", "aliases": ["CVE-\(id)"]\(extra),
         "affected": [{"package": {"ecosystem": "\(eco)", "name": "\(package)"},
                       "ranges": [{"type": "ECOSYSTEM", "events": \(events)}]\(affectedExtra)}]}
        """
    }

    // MARK: import, status, hostile input

    @Test func importStatusAndIdempotence() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let db = tmp + "/w.db"
            try FileManager.default.createDirectory(atPath: tmp + "/osv", withIntermediateDirectories: true)
            try Self.osv(id: "DSA-1", package: "openssl", events: #"[{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]"#)
                .write(toFile: tmp + "/osv/DSA-1.json", atomically: true, encoding: .utf8)
            try Self.osv(id: "ALPINE-1", eco: "Alpine:v3.18", package: "openssl", events: #"[{"introduced": "0"}, {"fixed": "3.1.4-r1"}]"#)
                .write(toFile: tmp + "/osv/ALPINE-1.json", atomically: true, encoding: .utf8)
            try Tool.sh("cd '\(tmp)/osv' && zip -q ../all.zip *.json")
            try #"{"zlib": {"CVE-2099-1": {"releases": {"bookworm": {"status": "open", "urgency": "low"}}}}}"#
                .write(toFile: tmp + "/tracker.json", atomically: true, encoding: .utf8)
            try #"{"distroversion": "v3.18", "reponame": "main", "packages": [{"pkg": {"name": "busybox", "secfixes": {"0": ["CVE-2099-2"]}}}]}"#
                .write(toFile: tmp + "/secdb.json", atomically: true, encoding: .utf8)
            var r = try Self.warden(["advisories", "import", "--db", db, "--json", tmp + "/all.zip", tmp + "/tracker.json", tmp + "/secdb.json"])
            #expect(r.status == 0, "\(r.stderr)")
            var doc = try Self.json(r)
            #expect(doc["advisories"] as? Int == 4)
            let imports = try #require(doc["imports"] as? [[String: Any]])
            #expect(imports.map { $0["formats"] as? [String] ?? [] } == [["osv"], ["debian-tracker"], ["alpine-secdb"]])
            #expect((imports[0]["counts"] as? [String: Any])?["added"] as? Int == 2)
            // Re-import: nothing changes.
            r = try Self.warden(["advisories", "import", "--db", db, "--json", tmp + "/all.zip", tmp + "/osv"])
            doc = try Self.json(r)
            #expect(doc["advisories"] as? Int == 4)
            for i in try #require(doc["imports"] as? [[String: Any]]) {
                let c = try #require(i["counts"] as? [String: Any])
                #expect(c["unchanged"] as? Int == 2 && c["added"] as? Int == 0)
            }
            r = try Self.warden(["advisories", "status", "--db", db, "--json"])
            doc = try Self.json(r)
            let sources = try #require(doc["sources"] as? [[String: Any]])
            #expect(sources.map { $0["name"] as? String ?? "" } == ["alpine-secdb:v3.18/main", "debian-tracker", "osv"])
            #expect(sources.map { $0["records"] as? Int ?? -1 } == [1, 1, 2])
            let ecos = try #require(doc["ecosystems"] as? [[String: Any]])
            #expect(ecos.map { $0["ecosystem"] as? String ?? "" } == ["Alpine:v3.18", "Debian:12"])
            r = try Self.warden(["advisories", "status", "--db", db])
            #expect(r.stdoutText.contains("source osv (osv): 2 records, 0 withdrawn"))

            // Hostile inputs: one line naming the file, exit 2, and the good files still import.
            try "{\"id\": \"X\",".write(toFile: tmp + "/bad.json", atomically: true, encoding: .utf8)
            r = try Self.warden(["advisories", "import", "--db", db, tmp + "/bad.json"])
            #expect(r.status == 2)
            #expect(r.stderr.hasPrefix("warden: \(tmp)/bad.json: malformed JSON"), "\(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1)
            try Data([0x50, 0x4B, 0x05, 0x06] + [UInt8](repeating: 0xFF, count: 18)).write(to: URL(fileURLWithPath: tmp + "/cut.zip"))
            r = try Self.warden(["advisories", "import", "--db", db, tmp + "/cut.zip"])
            #expect(r.status == 2 && r.stderr.hasPrefix("warden: \(tmp)/cut.zip: "), "\(r.stderr)")
            r = try Self.warden(["advisories", "import", "--db", db, tmp + "/missing.json"])
            #expect(r.status == 2 && r.stderr == "warden: \(tmp)/missing.json: cannot open: No such file or directory\n")
        }
    }

    // MARK: update

    @Test func updateFailsQuicklyOffline() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let r = try Self.warden(["advisories", "update", "--db", tmp + "/w.db", "--source", "debian", "--timeout", "5"],
                                    env: ["WARDEN_DEBIAN_TRACKER_URL": "http://127.0.0.1:9/json"])
            #expect(r.status == 4)
            #expect(r.stderr.hasPrefix("warden: cannot fetch http://127.0.0.1:9/json: "), "\(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1)
            // A server that accepts connections and never answers (a listening socket on
            // loopback that is never accepted): --timeout ends the fetch with exit 4. Tests send
            // no traffic beyond loopback, so the real feeds are never asked.
            let hung = try Tool.run(["timeout", "-s", "KILL", "60", "python3", "-c", """
            import socket, subprocess, sys
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
            port = s.getsockname()[1]
            env = {"WARDEN_DEBIAN_TRACKER_URL": "http://127.0.0.1:%d/json" % port, "PATH": "/usr/bin:/bin"}
            r = subprocess.run([sys.argv[1], "advisories", "update", "--db", sys.argv[2], "--source", "debian", "--timeout", "2"],
                               env=env, capture_output=True, text=True)
            print(r.returncode); print(r.stderr.strip())
            """, Fixtures.wardenBinary, tmp + "/w.db"]).stdoutText.split(separator: "\n")
            #expect(hung.first == "4", "\(hung)")
            #expect(hung.dropFirst().first?.hasPrefix("warden: cannot fetch http://127.0.0.1:") == true, "\(hung)")
            let bad = try Self.warden(["advisories", "update", "--db", tmp + "/w.db", "--source", "nonsense"])
            #expect(bad.status == 2)
        }
    }

    @Test func updateFromALocalMirror() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let www = tmp + "/www"
            for d in ["Debian", "Rocky Linux", "v3.18"] { try FileManager.default.createDirectory(atPath: "\(www)/\(d)", withIntermediateDirectories: true) }
            try Self.osv(id: "DSA-9", package: "openssl", events: #"[{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]"#)
                .write(toFile: tmp + "/DSA-9.json", atomically: true, encoding: .utf8)
            try Self.osv(id: "RLSA-9", eco: "Rocky Linux:9", package: "openssl-libs", events: #"[{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9_3"}]"#)
                .write(toFile: tmp + "/RLSA-9.json", atomically: true, encoding: .utf8)
            try Tool.sh("cd '\(tmp)' && zip -q 'www/Debian/all.zip' DSA-9.json && zip -q 'www/Rocky Linux/all.zip' RLSA-9.json")
            try #"{"zlib": {"CVE-2099-1": {"releases": {"bookworm": {"status": "open", "urgency": "low"}}}}}"#
                .write(toFile: www + "/tracker.json", atomically: true, encoding: .utf8)
            try #"{"distroversion": "v3.18", "reponame": "main", "packages": [{"pkg": {"name": "busybox", "secfixes": {"1.36.1-r2": ["CVE-2099-2"]}}}]}"#
                .write(toFile: www + "/v3.18/main.json", atomically: true, encoding: .utf8)
            // python3 -m http.server on a free port, written to a file once bound.
            let server = Process()
            server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            server.arguments = ["python3", "-c", """
            import http.server, functools, sys
            h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
            h.log_message = lambda *a: None
            s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
            open(sys.argv[2] + ".tmp", "w").write(str(s.server_address[1]))
            import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
            s.serve_forever()
            """, www, tmp + "/port"]
            server.standardOutput = FileHandle.nullDevice
            server.standardError = FileHandle.nullDevice
            try server.run()
            // SIGKILL: the test runner's blocked signal mask (SIGTERM included) is inherited by children.
            defer { kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
            var port = ""
            for _ in 0..<100 where port.isEmpty {
                port = (try? String(contentsOfFile: tmp + "/port", encoding: .utf8)) ?? ""
                if port.isEmpty { usleep(100_000) }
            }
            try #require(!port.isEmpty, "http.server did not start")
            let base = "http://127.0.0.1:\(port)"
            let env = ["WARDEN_OSV_URL": base, "WARDEN_DEBIAN_TRACKER_URL": base + "/tracker.json", "WARDEN_ALPINE_SECDB_URL": base]
            let r = try Self.warden(["advisories", "update", "--db", tmp + "/w.db", "--json", "--source", "osv:Debian", "--source", "osv:Rocky Linux",
                                     "--source", "debian", "--source", "alpine:v3.18"], env: env)
            #expect(r.status == 0, "\(r.stderr)")
            let doc = try Self.json(r)
            #expect(doc["advisories"] as? Int == 4)
            let imports = try #require(doc["imports"] as? [[String: Any]])
            #expect(imports.map { $0["path"] as? String ?? "" } == [base + "/Debian/all.zip", base + "/Rocky%20Linux/all.zip", base + "/tracker.json", base + "/v3.18/main.json"])
            let status = try Self.json(try Self.warden(["advisories", "status", "--db", tmp + "/w.db", "--json"]))
            let sources = try #require(status["sources"] as? [[String: Any]])
            #expect(sources.first { $0["name"] as? String == "debian-tracker" }?["location"] as? String == base + "/tracker.json")
            // A missing file on the mirror: exit 4, one line, the rest still imported.
            let miss = try Self.warden(["advisories", "update", "--db", tmp + "/w.db", "--source", "alpine:v3.99"], env: env)
            #expect(miss.status == 4)
            #expect(miss.stderr.hasPrefix("warden: cannot fetch \(base)/v3.99/main.json: "), "\(miss.stderr)")
        }
    }
}
