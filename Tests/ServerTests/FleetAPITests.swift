import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Ledger
import NIOCore
import Server
import StoreTestSupport
import Testing
import WardenCore
import WardenTestSupport
import Yams

/// The fleet API against a live server (real HTTP on loopback) over each ledger backend.
@Suite struct FleetAPITests {
    /// The principals of the matrix: name → token (nil: no Authorization header).
    struct Callers: Sendable {
        var tokens: [String: String] = [:]
        func headers(_ who: String) -> HTTPFields {
            guard let t = tokens[who] else { return [:] }
            return [.authorization: "Bearer \(t)"]
        }
    }

    /// A server over a fresh store of backend `b`, with a VM `web` owned by alice and tokens
    /// for every role (and one revoked); runs `body` with an HTTP client.
    func withServer(_ b: StoreBackend, _ body: @escaping @Sendable (any TestClientProtocol, any LedgerQueries, Callers) async throws -> Void) async throws {
        try await b.withAsync { store in
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("warden-serve-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let tokens = TokenStore(path: dir + "/tokens.json")
            var callers = Callers()
            callers.tokens["admin"] = try tokens.add(name: "root", role: .admin, owner: nil, host: nil)
            callers.tokens["operator-alice"] = try tokens.add(name: "alice", role: .operator, owner: "alice", host: nil)
            callers.tokens["operator-bob"] = try tokens.add(name: "bob", role: .operator, owner: "bob", host: nil)
            callers.tokens["auditor"] = try tokens.add(name: "audit", role: .auditor, owner: nil, host: nil)
            callers.tokens["host-h1"] = try tokens.add(name: "agent-h1", role: .host, owner: nil, host: HostName("h1")!)
            callers.tokens["revoked"] = try tokens.add(name: "old", role: .admin, owner: nil, host: nil)
            try tokens.revoke(name: "old")
            callers.tokens["forged"] = "wdn_" + String(repeating: "A", count: 43)
            let web = VMRecord(name: "web", owner: "alice", state: .stopped)
            _ = try store.createVM(web, disks: [], event: NewEvent(kind: .registered, vm: web.id))
            try store.openResidency(vm: web.id, host: HostName("h1")!, kind: .ran, at: Date(timeIntervalSinceNow: -3600))
            let server = FleetServer(configuration: .init(host: "127.0.0.1", port: 0, tokensFile: dir + "/tokens.json", logLevel: .critical),
                                     store: store)
            let cs = callers
            try await server.application().test(.live) { client in try await body(client, store, cs) }
        }
    }

    static let callers = ["none", "admin", "operator-alice", "auditor", "host-h1", "revoked", "forged"]

    /// The concrete request for each route of the API.
    static func request(_ method: String, _ path: String) -> (HTTPRequest.Method, String, ByteBuffer?) {
        let uri = path.replacingOccurrences(of: "{ref}", with: "web").replacingOccurrences(of: "{host}", with: "h1")
            + (path == "/v1/exposure" ? "?host=h1&from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z" : "")
        let body = method == "POST" && path.hasSuffix("/events")
            ? ByteBuffer(string: #"{"events":[{"id":"matrix-\#(UUID().uuidString)","kind":"started"}]}"#) : nil
        let put = method == "PUT" ? ByteBuffer(string: #"{"vms":[],"residency":[]}"#) : nil
        return (method == "POST" ? .post : method == "PUT" ? .put : .get, uri, body ?? put)
    }

    /// Every role × every endpoint: no token or a bad one is 401, a role the route does not
    /// allow is 403, an allowed one is answered (never 401/403, never 5xx).
    @Test(arguments: StoreBackend.all) func authorisationMatrix(_ b: StoreBackend) async throws {
        try await withServer(b) { client, _, callers in
            for route in FleetAPI.routes {
                for who in Self.callers {
                    let (method, uri, body) = Self.request(route.method, route.path)
                    let r = try await client.executeRequest(uri: uri, method: method, headers: callers.headers(who), body: body)
                    let role = ["admin": Role.admin, "operator-alice": .operator, "auditor": .auditor, "host-h1": .host][who]
                    let expected: String
                    if let role {
                        expected = route.allowed.contains(role) ? "answered" : "403"
                    } else {
                        expected = "401"
                    }
                    let got = r.status.code == 401 ? "401" : r.status.code == 403 ? "403" : (r.status.code < 500 ? "answered" : "\(r.status.code)")
                    #expect(got == expected, "\(who) \(route.method) \(route.path): \(r.status.code) \(String(buffer: r.body).prefix(200))")
                }
            }
        }
    }

    /// A host cannot report another host's events; an operator cannot act on another owner's
    /// VM; nothing is written by either attempt.
    @Test(arguments: StoreBackend.all) func hostsAndOperatorsStayInTheirLane(_ b: StoreBackend) async throws {
        try await withServer(b) { client, store, callers in
            let before = try store.eventCount()
            let r = try await client.executeRequest(uri: "/v1/hosts/h2/events", method: .post, headers: callers.headers("host-h1"),
                                                    body: ByteBuffer(string: #"{"events":[{"id":"x1","kind":"started"}]}"#))
            #expect(r.status == .forbidden)
            let bob = try await client.executeRequest(uri: "/v1/vms/web/retire", method: .post, headers: callers.headers("operator-bob"), body: nil)
            #expect(bob.status == .forbidden)
            #expect(try store.eventCount() == before)
            #expect(try store.resolveVM("web").state == .stopped)
            // The owner may; the event names the token, not a person it claims to be.
            let alice = try await client.executeRequest(uri: "/v1/vms/web/retire", method: .post, headers: callers.headers("operator-alice"), body: nil)
            #expect(alice.status == .ok)
            let last = try #require(try store.event(seq: try store.eventCount()))
            #expect(last.kind == .retired && last.actor == "api:alice")
            // The host's own report is recorded as from h1, whatever the body claims.
            let own = try await client.executeRequest(uri: "/v1/hosts/h1/events", method: .post, headers: callers.headers("host-h1"),
                                                      body: ByteBuffer(string: #"{"events":[{"id":"x1","kind":"started","actor":"root@h2"}]}"#))
            #expect(own.status == .ok)
            #expect(try store.event(seq: try store.eventCount())?.host == HostName("h1")!)
        }
    }

    /// Bad input on every endpoint that takes any: 4xx with a JSON error naming the problem,
    /// never 5xx, and nothing written.
    @Test(arguments: StoreBackend.all) func badInputIsRefusedWithNothingWritten(_ b: StoreBackend) async throws {
        try await withServer(b) { client, store, callers in
            let admin = callers.headers("admin")
            let before = try store.eventCount()
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
                let r = try await client.executeRequest(uri: "/v1/hosts/h1/events", method: .post, headers: admin, body: ByteBuffer(string: body))
                #expect(r.status.code == status, "\(body.prefix(80)): \(r.status.code) \(String(buffer: r.body).prefix(200))")
                let json = try? JSONSerialization.jsonObject(with: Data(buffer: r.body)) as? [String: Any]
                let error = json?["error"] as? [String: Any]
                #expect(error?["status"] as? Int == r.status.code, "\(body.prefix(80)): \(String(buffer: r.body).prefix(200))")
                #expect((error?["message"] as? String)?.contains("\n") == false)
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
                let r = try await client.executeRequest(uri: uri, method: .get, headers: admin, body: nil)
                #expect(r.status.code == status, "\(uri): \(r.status.code) \(String(buffer: r.body).prefix(200))")
            }
            #expect(try store.eventCount() == before)
        }
    }

    /// Reports are idempotent over HTTP too: the same batch twice appends once.
    @Test(arguments: StoreBackend.all) func repeatedReportsAppendOnce(_ b: StoreBackend) async throws {
        try await withServer(b) { client, store, callers in
            let before = try store.eventCount()
            let body = #"{"events":[{"id":"r1","kind":"started"},{"id":"r2","kind":"stopped"}]}"#
            for _ in 0..<3 {
                let r = try await client.executeRequest(uri: "/v1/hosts/h1/events", method: .post, headers: callers.headers("host-h1"),
                                                        body: ByteBuffer(string: body))
                #expect(r.status == .ok)
            }
            #expect(try store.eventCount() == before + 2)
            let m = try await client.executeRequest(uri: "/metrics", method: .get, headers: callers.headers("auditor"), body: nil)
            let text = String(buffer: m.body)
            #expect(text.contains(#"warden_ingest_events_total{host="h1"} 2"#), "\(text.prefix(2000))")
            #expect(text.contains("warden_ledger_events \(before + 2)"))
        }
    }
}

/// The OpenAPI document in docs/ lists exactly the server's routes, with the same roles.
@Suite struct OpenAPIDocumentTests {
    @Test func documentMatchesTheRoutes() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("docs/openapi.yaml"), encoding: .utf8)
        let doc = try #require(try Yams.load(yaml: text) as? [String: Any])
        #expect(doc["openapi"] as? String == "3.1.0")
        let paths = try #require(doc["paths"] as? [String: Any])
        var documented: [String: Set<String>] = [:]
        for (path, ops) in paths {
            for (method, op) in try #require(ops as? [String: Any]) {
                let roles = try #require((op as? [String: Any])?["x-warden-roles"] as? [String], "\(method) \(path) has no x-warden-roles")
                documented["\(method.uppercased()) \(path)"] = Set(roles)
            }
        }
        var served: [String: Set<String>] = ["GET /healthz": []]
        for r in FleetAPI.routes { served["\(r.method) \(r.path)"] = Set(r.allowed.map(\.rawValue)) }
        #expect(documented == served)
    }
}
