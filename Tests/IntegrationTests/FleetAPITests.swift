import Foundation
import Server
import Testing
import WardenCore
import WardenTestSupport

/// The fleet API against a `warden serve --tls` process (real HTTPS on loopback, curl as the
/// client; the host calls with the client certificate it got at enrolment) over each ledger
/// backend. A separate process and a synchronous client: the server's async
/// handlers never wait for this test process's two cooperative threads, which blocking tests
/// elsewhere in the run may hold.
@Suite struct FleetAPITests {
    enum Backend: String, CaseIterable, CustomTestStringConvertible, Sendable {
        case sqlite, postgres
        var testDescription: String { rawValue }
    }

    struct Fixture {
        let server: ServeProcess
        var tokens: [String: String]
        let tmp: String

        /// Client certificates by caller: the agent's files after `warden agent enrol`.
        var certificates: [String: (cert: String, key: String)] = [:]

        /// One request: status and body (status 0 when the TLS handshake failed).
        func call(_ method: String, _ path: String, as who: String?, body: String? = nil) throws -> (status: Int, body: String) {
            try? FileManager.default.removeItem(atPath: tmp + "/body")
            var args = ["curl", "-sS", "--max-time", "60", "-o", tmp + "/body", "-w", "%{http_code}", "-X", method] + server.curlTrust
            if let who, let t = tokens[who] { args += ["-H", "Authorization: Bearer \(t)"] }
            if let who, let c = certificates[who] { args += ["--cert", c.cert, "--key", c.key] }
            if let body {
                try Data(body.utf8).write(to: URL(fileURLWithPath: tmp + "/request"))
                args += ["-H", "Content-Type: application/json", "--data-binary", "@" + tmp + "/request"]
            }
            let r = try Tool.run(args + [server.url + path], check: false)
            let text = (try? String(contentsOfFile: tmp + "/body", encoding: .utf8)) ?? ""
            return (Int(r.stdoutText) ?? -1, text)
        }

        func eventCount() throws -> Int {
            let r = try call("GET", "/v1/events?limit=10000", as: "admin")
            return (try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [Any])?.count ?? -1
        }
    }

    /// A server over a fresh ledger of `backend`, with a VM `web` owned by alice and tokens for
    /// every role (and one revoked).
    func withServer(_ backend: Backend, _ body: (Fixture) throws -> Void) throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let home = tmp + "/srv"
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
            // The VM is registered in the host ledger and, for PostgreSQL, copied there.
            try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", tmp + "/web.qcow2", "16M"])
            try Tool.run([Fixtures.wardenBinary, "vm", "register", "--name", "web", "--owner", "alice", "--host", "h1",
                          tmp + "/web.qcow2", "--db", home + "/warden.db"])
            var database: String?
            var env: [String: String] = [:]
            var dropped: (() -> Void)?
            if backend == .postgres {
                let pg = try PostgresServer.shared()
                let name = try pg.createDatabase()
                dropped = { pg.dropDatabase(name) }
                database = pg.url(name)
                env = pg.environment
                try Tool.run([Fixtures.wardenBinary, "ledger", "copy", "--db", home + "/warden.db", "--database", pg.url(name)], environment: env)
            }
            defer { dropped?() }
            let server = ServeProcess(dir: home, listen: "127.0.0.1:0", database: database, environment: env)
            var tokens: [String: String] = [:]
            tokens["admin"] = try server.token("root", role: "admin")
            tokens["operator-alice"] = try Tool.run([Fixtures.wardenBinary, "serve", "token", "add", "alice", "--role", "operator", "--owner", "alice",
                                                     "--db", home + "/warden.db"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            tokens["operator-bob"] = try Tool.run([Fixtures.wardenBinary, "serve", "token", "add", "bob", "--role", "operator", "--owner", "bob",
                                                   "--db", home + "/warden.db"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            tokens["auditor"] = try server.token("audit", role: "auditor")
            tokens["revoked"] = try server.token("old", role: "admin")
            try Tool.run([Fixtures.wardenBinary, "serve", "token", "revoke", "old", "--db", home + "/warden.db"])
            tokens["forged"] = "wdn_" + String(repeating: "A", count: 43)
            try server.start()
            defer { server.kill9() }
            // Host h1 enrols as an agent would, and calls with its certificate.
            try server.enrol(nil, "h1", home: tmp + "/h1")
            var fixture = Fixture(server: server, tokens: tokens, tmp: tmp)
            fixture.certificates["host-h1"] = (tmp + "/h1/agent/host.pem", tmp + "/h1/agent/host.key")
            try body(fixture)
        }
    }

    static let callers = ["none", "admin", "operator-alice", "auditor", "host-h1", "revoked", "forged", "enrol-token"]

    /// The concrete request for each route of the API.
    static func request(_ method: String, _ path: String) -> (String, String, String?) {
        let uri = path.replacingOccurrences(of: "{ref}", with: "web").replacingOccurrences(of: "{host}", with: "h1")
            .replacingOccurrences(of: "{id}", with: "1")
            + (path == "/v1/exposure" ? "?host=h1&from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z" : "")
        var body: String?
        if method == "POST", path.hasSuffix("/events") { body = #"{"events":[{"id":"matrix-\#(UUID().uuidString)","kind":"started"}]}"# }
        if method == "PUT" { body = #"{"vms":[],"residency":[]}"# }
        return (method, uri, body)
    }

    /// Every role × every endpoint: no token or a bad one is 401, a role the route does not
    /// allow is 403, an allowed one is answered (never 401/403, never 5xx).
    @Test(arguments: Backend.allCases) func authorisationMatrix(_ b: Backend) throws {
        try withServer(b) { f in
            var f = f
            // An unspent host token: good for enrolment only, refused on every other route.
            f.tokens["enrol-token"] = try f.server.token("enrol-h9", role: "host", host: "h9")
            for route in FleetAPI.routes where route.path != "/v1/enrol" {
                for who in Self.callers {
                    let (method, uri, body) = Self.request(route.method, route.path)
                    let r = try f.call(method, uri, as: who == "none" ? nil : who, body: body)
                    let role = ["admin": Role.admin, "operator-alice": .operator, "auditor": .auditor, "host-h1": .host][who]
                    // (a host token is no host: it only enrols)
                    let expected = role.map { route.allowed.contains($0) ? "answered" : "403" } ?? "401"
                    let got = r.status == 401 ? "401" : r.status == 403 ? "403" : (r.status > 0 && r.status < 500 ? "answered" : "\(r.status)")
                    #expect(got == expected, "\(who) \(route.method) \(route.path): \(r.status) \(r.body.prefix(200))")
                }
            }
        }
    }

    /// Enrolment: a host token buys one certificate, once, for the host it was made for; no
    /// other caller may enrol; a bad request leaves the token unspent; a revoked certificate
    /// and one from another CA are refused.
    @Test func enrolmentIsOneTimeAndCertificatesAreRevocable() throws {
        try withServer(.sqlite) { f in
            var f = f
            let csr = try Self.certificateRequest(in: f.tmp, cn: "h2-claims-this")
            f.tokens["enrol-h7"] = try f.server.token("enrol-h7", role: "host", host: "h7")
            let body = try JSONSerialization.data(withJSONObject: ["csr": csr])
            let json = String(decoding: body, as: UTF8.self)
            // Nobody else enrols; the host's certificate cannot enrol again.
            for who in ["none", "revoked", "forged"] { #expect(try f.call("POST", "/v1/enrol", as: who, body: json).status == 401, "\(who)") }
            for who in ["admin", "operator-alice", "auditor", "host-h1"] { #expect(try f.call("POST", "/v1/enrol", as: who, body: json).status == 403, "\(who)") }
            // Bad requests: 400 and the token stays good.
            for bad in [#"{"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----"}"#, "{", #"{"csr": 5}"#,
                        #"{"csr": "\#(String(repeating: "A", count: 20_000))"}"#] {
                let r = try f.call("POST", "/v1/enrol", as: "enrol-h7", body: bad)
                #expect(r.status == 400 || r.status == 413, "\(bad.prefix(60)): \(r.status) \(r.body)")
            }
            let ok = try f.call("POST", "/v1/enrol", as: "enrol-h7", body: json)
            #expect(ok.status == 200, "\(ok.body)")
            let answer = try #require(try JSONSerialization.jsonObject(with: Data(ok.body.utf8)) as? [String: Any])
            #expect(answer["host"] as? String == "h7")
            // The certificate names the token's host, whatever the request asked.
            try Data((answer["certificate"] as? String ?? "").utf8).write(to: URL(fileURLWithPath: f.tmp + "/h7.pem"))
            let subject = try Tool.run(["openssl", "x509", "-in", f.tmp + "/h7.pem", "-noout", "-subject", "-ext", "extendedKeyUsage"]).stdoutText
            #expect(subject.contains("CN = h7") && !subject.contains("h2-claims-this") && subject.contains("TLS Web Client Authentication"), "\(subject)")
            let verify = try Tool.run(["openssl", "verify", "-CAfile", f.server.caFile, f.tmp + "/h7.pem"], check: false)
            #expect(verify.status == 0, "\(verify.stdoutText)")
            // Spent: the same token again is refused.
            #expect(try f.call("POST", "/v1/enrol", as: "enrol-h7", body: json).status == 401)
            // h7 reports with its certificate; after revocation it is refused from the next request.
            f.certificates["h7"] = (f.tmp + "/h7.pem", f.tmp + "/h7.key")
            #expect(try f.call("POST", "/v1/hosts/h7/events", as: "h7", body: #"{"events":[{"id":"e7","kind":"started"}]}"#).status == 200)
            #expect(try f.call("POST", "/v1/hosts/h1/events", as: "h7", body: #"{"events":[{"id":"e8","kind":"started"}]}"#).status == 403)
            let written = try f.eventCount()
            try Tool.run([Fixtures.wardenBinary, "serve", "certs", "revoke", "h7", "--db", f.server.dir + "/warden.db"])
            #expect(try f.call("POST", "/v1/hosts/h7/events", as: "h7", body: #"{"events":[{"id":"e9","kind":"started"}]}"#).status == 401)
            // A certificate from another CA, for the same name, never gets in.
            try Tool.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                          "-subj", "/CN=h1", "-keyout", f.tmp + "/rogue.key", "-out", f.tmp + "/rogue.pem"])
            f.certificates["rogue"] = (f.tmp + "/rogue.pem", f.tmp + "/rogue.key")
            let rogue = try f.call("POST", "/v1/hosts/h1/events", as: "rogue", body: #"{"events":[{"id":"e10","kind":"started"}]}"#)
            #expect(rogue.status == 0 || rogue.status == 401, "\(rogue)")
            let all = try f.call("GET", "/v1/events?limit=10000", as: "auditor").body
            #expect(all.contains("\"host\":\"h7\""))
            #expect(try f.eventCount() == written)
        }
    }

    /// A P-256 key and certificate request made by openssl (another implementation than ours).
    static func certificateRequest(in dir: String, cn: String) throws -> String {
        try Tool.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-subj", "/CN=\(cn)", "-keyout", dir + "/h7.key", "-out", dir + "/h7.csr"])
        return try String(contentsOfFile: dir + "/h7.csr", encoding: .utf8)
    }

    /// A host cannot report another host's events; an operator cannot act on another owner's
    /// VM; nothing is written by either attempt.
    @Test(arguments: Backend.allCases) func hostsAndOperatorsStayInTheirLane(_ b: Backend) throws {
        try withServer(b) { f in
            let before = try f.eventCount()
            #expect(try f.call("POST", "/v1/hosts/h2/events", as: "host-h1", body: #"{"events":[{"id":"x1","kind":"started"}]}"#).status == 403)
            #expect(try f.call("POST", "/v1/vms/web/retire", as: "operator-bob").status == 403)
            #expect(try f.eventCount() == before)
            #expect(try f.call("GET", "/v1/vms/web", as: "auditor").body.contains(#""state":"registered""#))
            // The owner may; the event names the token, not a person it claims to be.
            #expect(try f.call("POST", "/v1/vms/web/retire", as: "operator-alice").status == 200)
            let events = try f.call("GET", "/v1/vms/web/events", as: "auditor").body
            #expect(events.contains(#""actor":"api:alice""#) && events.contains(#""kind":"retired""#))
            // The host's own report is recorded as from h1, whatever the body claims.
            #expect(try f.call("POST", "/v1/hosts/h1/events", as: "host-h1", body: #"{"events":[{"id":"x1","kind":"started","actor":"root@h2"}]}"#).status == 200)
            let all = try f.call("GET", "/v1/events?after=\(before + 1)", as: "auditor").body
            #expect(all.contains(#""host":"h1""#) && !all.contains(#""host":"h2""#), "\(all.prefix(400))")
        }
    }

    /// Bad input on every endpoint that takes any: 4xx with a JSON error naming the problem,
    /// never 5xx, and nothing written.
    @Test(arguments: Backend.allCases) func badInputIsRefusedWithNothingWritten(_ b: Backend) throws {
        try withServer(b) { f in
            let before = try f.eventCount()
            let huge = String(repeating: "x", count: FleetAPI.maxBodyBytes + 1)
            let tooMany = "{\"events\":[" + (0...FleetAPI.maxEventsPerRequest).map { #"{"id":"m\#($0)","kind":"started"}"# }.joined(separator: ",") + "]}"
            let posts: [(String, Int)] = [
                ("", 400), ("{", 400), ("[]", 400), ("null", 400), (#"{"events":{}}"#, 400), (#"{"events":[{"kind":"started"}]}"#, 400),
                (#"{"events":[{"id":"a","kind":5}]}"#, 400), (#"{"events":[{"id":"a","kind":"no-such-kind"}]}"#, 400),
                (#"{"events":[{"id":"a b","kind":"started"}]}"#, 400), (#"{"events":[{"id":"a","kind":"started","vm":"not-a-uuid"}]}"#, 400),
                (#"{"events":[{"id":"a","kind":"started","time":"yesterday"}]}"#, 400),
                (#"{"events":[{"id":"ok1","kind":"started"},{"id":"a","kind":"started","generation_after":"zz"}]}"#, 400),
                ("{\"events\":[{\"id\":\"a\",\"kind\":\"started\",\"payload\":\(String(repeating: "[", count: 100_000))}]}", 400),
                (huge, 413), (tooMany, 413),
            ]
            for (body, status) in posts {
                let r = try f.call("POST", "/v1/hosts/h1/events", as: "admin", body: body)
                #expect(r.status == status, "\(body.prefix(80)): \(r.status) \(r.body.prefix(200))")
                let json = try? JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any]
                let error = json?["error"] as? [String: Any]
                #expect(error?["status"] as? Int == r.status, "\(body.prefix(80)): \(r.body.prefix(200))")
                #expect((error?["message"] as? String)?.contains("\n") == false)
            }
            let puts: [(String, Int)] = [("{", 400), (#"{"vms":5,"residency":[]}"#, 400), (#"{"vms":[{"id":"x"}],"residency":[]}"#, 400), (huge, 413)]
            for (body, status) in puts {
                let r = try f.call("PUT", "/v1/hosts/h1/vms", as: "admin", body: body)
                #expect(r.status == status, "PUT \(body.prefix(80)): \(r.status) \(r.body.prefix(200))")
            }
            let gets: [(String, Int)] = [
                ("/v1/events?after=-1", 400), ("/v1/events?limit=0", 400), ("/v1/events?limit=x", 400),
                ("/v1/exposure", 400), ("/v1/exposure?host=h1&from=now&to=2030-01-01T00:00:00Z", 400),
                ("/v1/exposure?host=h1&from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z", 400),
                ("/v1/exposure?host=bad%20host&from=2020-01-01T00:00:00Z&to=2030-01-01T00:00:00Z", 400),
                ("/v1/vms/no-such-vm", 404), ("/v1/vms/" + String(repeating: "a", count: 300), 400), ("/v1/vms/%ff%fe", 400),
                ("/v1/no-such-route", 404),
            ]
            for (uri, status) in gets {
                let r = try f.call("GET", uri, as: "admin")
                #expect(r.status == status, "\(uri): \(r.status) \(r.body.prefix(200))")
            }
            #expect(try f.eventCount() == before)
        }
    }

    /// Reports are idempotent over HTTP too: the same batch three times appends once.
    @Test(arguments: Backend.allCases) func repeatedReportsAppendOnce(_ b: Backend) throws {
        try withServer(b) { f in
            let before = try f.eventCount()
            for _ in 0..<3 {
                #expect(try f.call("POST", "/v1/hosts/h1/events", as: "host-h1", body: #"{"events":[{"id":"r1","kind":"started"},{"id":"r2","kind":"stopped"}]}"#).status == 200)
            }
            #expect(try f.eventCount() == before + 2)
            let text = try f.call("GET", "/metrics", as: "auditor").body
            #expect(text.contains(#"warden_ingest_events_total{host="h1"} 2"#), "\(text.prefix(2000))")
            #expect(text.contains("warden_ledger_events \(before + 2)"))
        }
    }
}

/// Hostile configuration and token files: one line naming the file and the problem, a non-zero
/// exit, and no server started.
@Suite struct ServeFilesTests {
    @Test func garbledConfigAndTokenFilesAreRefused() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let configs = ["listen: [", String(repeating: "[", count: 10_000), "listen: 5\ndatabase: {a: b}", "\u{0}\u{1}\u{2}binary"]
            for (i, text) in configs.enumerated() {
                let path = tmp + "/serve-\(i).yaml"
                try Data(text.utf8).write(to: URL(fileURLWithPath: path))
                let r = try Tool.run([Fixtures.wardenBinary, "serve", "--config", path, "--db", tmp + "/w.db", "--listen", "127.0.0.1:0"],
                                     check: false, timeout: 60)
                #expect(r.status != 0 && !r.stdoutText.contains("listening"), "config \(i): \(r.stdoutText)")
                let lines = r.stderr.split(separator: "\n")
                #expect(lines.count == 1 && lines[0].contains(path), "config \(i): \(r.stderr)")
            }
            let tokens = tmp + "/tokens.json"
            for (i, text) in ["{", #"{"tokens": 5}"#, String(repeating: "x", count: 1000)].enumerated() {
                try Data(text.utf8).write(to: URL(fileURLWithPath: tokens))
                let r = try Tool.run([Fixtures.wardenBinary, "serve", "token", "list", "--tokens", tokens], check: false)
                #expect(r.status != 0, "token file \(i)")
                let lines = r.stderr.split(separator: "\n")
                #expect(lines.count == 1 && lines[0].contains(tokens), "token file \(i): \(r.stderr)")
                // Adding to a garbled list refuses too, and leaves the file as it was.
                let add = try Tool.run([Fixtures.wardenBinary, "serve", "token", "add", "x", "--role", "auditor", "--tokens", tokens], check: false)
                #expect(add.status != 0 && add.stdoutText.isEmpty)
                #expect(try String(contentsOfFile: tokens, encoding: .utf8) == text)
            }
        }
    }
}
