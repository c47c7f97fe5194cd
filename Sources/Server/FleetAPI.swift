import Foundation
import HTTPTypes
import Hummingbird
import Ledger
import NIOCore
import NIOPosix
import WardenCore
import X509

/// The request context: the principal the auth middleware found.
public struct WardenRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var principal: Principal?
    /// The connection (for the peer's TLS certificate).
    public let channel: any Channel
    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        principal = nil
        channel = source.channel
    }
    /// Request bodies larger than this are refused with 413 (docs/fleet.md, "Limits").
    public var maxUploadSize: Int { FleetAPI.maxBodyBytes }
}

/// An error answer: `{"error": {"status": 403, "message": "…"}}`.
struct APIError: Error, HTTPResponseError {
    var status: HTTPResponse.Status
    var message: String
    init(_ status: HTTPResponse.Status, _ message: String) { self.status = status; self.message = message }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        let data = try JSONEncoder().encode(APIErrorBody(error: .init(status: status.code, message: TerminalText.line(message))))
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// The answer for a store error: bad input 400, unknown 404, conflicts 409, the rest 503 —
    /// never a 500 for something a caller sent.
    static func from(_ e: WardenError) -> APIError {
        switch e.code {
        case .invalidArgument, .unsupported, .limitExceeded: return APIError(.badRequest, e.message)
        case .notFound: return APIError(.notFound, e.message)
        case .conflict: return APIError(.conflict, e.message)
        case .denied: return APIError(.forbidden, e.message)
        default: return APIError(.serviceUnavailable, e.message)
        }
    }
}

struct APIErrorBody: Encodable {
    struct Inner: Encodable { var status: Int; var message: String }
    var error: Inner
}

/// The fleet API (docs/openapi.yaml): every route, its permission, and its answer.
public struct FleetAPI: Sendable {
    public static let maxBodyBytes = 1 << 20
    /// Events one ingest request may carry.
    public static let maxEventsPerRequest = 1000

    let store: any LedgerQueries
    let metrics: ServerMetrics
    let tokens: TokenStore
    let pki: FleetPKI?
    /// The fleet policy served to agents (`warden serve --policy DIR`).
    let policyDirectory: String?
    /// Attestation nonces this server issued (one set per server process).
    var nonces = AttestationNonces()

    /// Runs blocking store work on the thread pool, never on an event loop (docs/decisions.md).
    func blocking<T: Sendable>(_ body: @escaping @Sendable (any LedgerQueries) throws -> T) async throws -> T {
        let store = self.store
        do {
            return try await NIOThreadPool.singleton.runIfActive { try body(store) }
        } catch let e as WardenError {
            throw APIError.from(e)
        }
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try LedgerJSON.encoder(pretty: false).encode(value)
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// The routes with the permission each needs. The OpenAPI document lists exactly these
    /// (a test compares them).
    public static let routes: [(method: String, path: String, allowed: Set<Role>)] = [
        ("GET", "/v1/vms", [.admin, .operator, .auditor, .host]),
        ("GET", "/v1/vms/{ref}", [.admin, .operator, .auditor]),
        ("GET", "/v1/vms/{ref}/events", [.admin, .operator, .auditor]),
        ("GET", "/v1/vms/{ref}/lineage", [.admin, .operator, .auditor]),
        ("GET", "/v1/vms/{ref}/residency", [.admin, .operator, .auditor]),
        ("POST", "/v1/vms/{ref}/retire", [.admin, .operator]),
        ("GET", "/v1/hosts", [.admin, .operator, .auditor]),
        ("POST", "/v1/hosts/{host}/events", [.admin, .host]),
        ("PUT", "/v1/hosts/{host}/vms", [.admin, .host]),
        ("GET", "/v1/events", [.admin, .auditor]),
        ("GET", "/v1/exposure", [.admin, .operator, .auditor]),
        ("GET", "/v1/census", [.admin, .operator, .auditor]),
        ("GET", "/metrics", [.admin, .auditor]),
        ("POST", "/v1/login-links", [.admin, .operator, .auditor]),
        ("POST", "/v1/enrol", [.host]),
    ] + assessmentRoutes + attestationRoutes

    static func allowed(_ method: String, _ path: String) -> Set<Role> {
        routes.first { $0.method == method && $0.path == path }?.allowed ?? []
    }

    func add(to router: Router<WardenRequestContext>) {
        router.get("/healthz") { _, _ in try Self.json(["status": "ok"]) }
        addAssessment(to: router)
        addAttestation(to: router)
        router.get("/v1/vms") { _, ctx in
            try ctx.require(Self.allowed("GET", "/v1/vms"))
            return try Self.json(try await blocking { try $0.listVMs() })
        }
        router.get("/v1/vms/:ref") { _, ctx in
            try ctx.require(Self.allowed("GET", "/v1/vms/{ref}"))
            let ref = try ctx.reference()
            struct Page: Encodable { var vm: VMRecord; var disks: [DiskRecord]; var residency: [ResidencyRecord]; var snapshots: [SnapshotRecord] }
            return try Self.json(try await blocking { s in
                let vm = try s.resolveVM(ref)
                return Page(vm: vm, disks: try s.disks(of: vm.id), residency: try s.residency(of: vm.id), snapshots: try s.snapshots(of: vm.id))
            })
        }
        router.get("/v1/vms/:ref/events") { _, ctx in
            try ctx.require(Self.allowed("GET", "/v1/vms/{ref}/events"))
            let ref = try ctx.reference()
            return try Self.json(try await blocking { s in try s.events(of: try s.resolveVM(ref).id) })
        }
        router.get("/v1/vms/:ref/lineage") { _, ctx in
            try ctx.require(Self.allowed("GET", "/v1/vms/{ref}/lineage"))
            let ref = try ctx.reference()
            return try Self.json(try await blocking { s in try s.lineage(of: try s.resolveVM(ref).id) })
        }
        router.get("/v1/vms/:ref/residency") { _, ctx in
            try ctx.require(Self.allowed("GET", "/v1/vms/{ref}/residency"))
            let ref = try ctx.reference()
            return try Self.json(try await blocking { s in try s.residency(of: try s.resolveVM(ref).id) })
        }
        router.post("/v1/vms/:ref/retire") { _, ctx in
            try ctx.require(Self.allowed("POST", "/v1/vms/{ref}/retire"))
            let ref = try ctx.reference()
            let who = ctx.principal!
            return try Self.json(try await blocking { s in
                try s.atomically(family: nil) {
                    let vm = try s.resolveVM(ref)
                    // An operator acts only on the VMs it owns.
                    if who.role == .operator, vm.owner != who.owner {
                        throw WardenError(.denied, "\(who.name) may act only on VMs owned by \(who.owner ?? "")")
                    }
                    if vm.state == .retired { throw WardenError(.conflict, "VM \(vm.name) is already retired") }
                    return try s.updateVM(vm.id, event: NewEvent(kind: .retired, vm: vm.id, actor: "api:\(who.name)")) { $0.state = .retired }.0
                }
            })
        }
        router.post("/v1/enrol") { request, ctx in
            try ctx.require(Self.allowed("POST", "/v1/enrol"))
            guard let pki else { throw APIError(.badRequest, "this server runs without TLS: hosts cannot enrol (start it with --tls)") }
            guard ctx.principal?.credential == .token, let token = request.headers[.authorization]?.split(separator: " ", maxSplits: 1).last else {
                throw APIError(.forbidden, "enrolment takes the host's one-time token")
            }
            struct Body: Decodable { var csr: String; var signingKey: String? }
            let body = try await Self.body(Body.self, of: request, limit: 64 << 10, what: "an enrolment request")
            // Checked before the token is spent: a bad request leaves the token usable.
            let csr: CertificateSigningRequest
            do { csr = try FleetPKI.request(body.csr) } catch let e as WardenError { throw APIError.from(e) }
            var signingKey: Data?
            if let k = body.signingKey {
                guard let d = Data(hexEncoded: k), d.count == 32 else { throw APIError(.badRequest, "signing_key is an Ed25519 public key, 64 hex digits") }
                signingKey = d
            }
            let tokens = self.tokens, store = self.store, pinnedKey = signingKey
            let issued = try await NIOThreadPool.singleton.runIfActive { () throws -> (String, FleetPKI.Issued)? in
                guard let host = try tokens.spendEnrolment(token: String(token)) else { return nil }
                // The host's ledger signing key: recorded at its first enrolment, and a host
                // that comes back with another key is refused (docs/attestation.md).
                if let signingKey = pinnedKey {
                    let name = host
                    if let known = try store.host(name) {
                        if let had = known.publicKey, had != signingKey {
                            throw APIError(.conflict, "host \(host) is known with a different signing key (\(had.hexEncoded.prefix(16))…): refused")
                        }
                    } else {
                        try store.addHost(HostRecord(name: name, publicKey: signingKey))
                    }
                }
                return try pki.issue(host: host, csr: csr)
            }
            guard let issued else { throw APIError(.unauthorized, "unknown, revoked or spent token") }
            let record = issued.1
            return try Self.json(EnrolAnswer(host: record.host, certificate: issued.0, ca: pki.caPEM, serial: record.serial, notAfter: record.notAfter))
        }
        router.get("/v1/hosts") { _, ctx in
            try ctx.require(Self.allowed("GET", "/v1/hosts"))
            return try Self.json(try await blocking { try $0.listHosts() })
        }
        router.post("/v1/hosts/:host/events") { request, ctx in
            try ctx.require(Self.allowed("POST", "/v1/hosts/{host}/events"))
            let host = try ctx.reportingHost()
            let batch = try await IngestBatch.decode(request, limit: Self.maxBodyBytes)
            let events = try batch.events.map { try $0.ingested(actorFallback: "agent@\(host.value)") }
            let started = ContinuousClock.now
            let outcomes = try await blocking { try $0.ingest(events, from: host) }
            metrics.ingested(host: host, count: outcomes.filter { !$0.duplicate }.count,
                             newest: batch.events.compactMap(\.time).max(), took: ContinuousClock.now - started)
            return try Self.json(["results": outcomes])
        }
        router.put("/v1/hosts/:host/vms") { request, ctx in
            try ctx.require(Self.allowed("PUT", "/v1/hosts/{host}/vms"))
            let host = try ctx.reportingHost()
            let report = try await HostReport.decode(request, limit: Self.maxBodyBytes)
            return try Self.json(try await blocking { s in try report.apply(to: s, host: host) })
        }
        router.get("/v1/events") { request, ctx in
            try ctx.require(Self.allowed("GET", "/v1/events"))
            let after = try request.uri.queryParameters.get("after").map { v -> Int64 in
                guard let n = Int64(v), n >= 0 else { throw APIError(.badRequest, "after must be a sequence number ≥ 0") }
                return n
            } ?? 0
            let limit = try request.uri.queryParameters.get("limit").map { v -> Int64 in
                guard let n = Int64(v), (1...10_000).contains(n) else { throw APIError(.badRequest, "limit must be 1-10000") }
                return n
            } ?? 1000
            return try Self.json(try await blocking { s in try s.events(after: after, limit: Int(limit)) })
        }
        router.get("/v1/exposure") { request, ctx in
            try ctx.require(Self.allowed("GET", "/v1/exposure"))
            let q = request.uri.queryParameters
            guard let hostText = q.get("host"), let host = HostName(hostText) else { throw APIError(.badRequest, "host= is required") }
            let from = try Self.time(q.get("from"), "from"), to = try Self.time(q.get("to"), "to")
            // The hand-written writer the CLI streams with (byte for byte JSONEncoder's pretty
            // output, a test checks): thousands of VMs encode in a few milliseconds.
            let bytes: [UInt8] = try await blocking { s in
                let report = try s.exposure(host: host, from: from, to: to, now: Date())
                var out: [UInt8] = []
                try report.writeJSON { out += $0 }
                return out
            }
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        }
        router.get("/v1/census") { _, ctx in
            try ctx.require(Self.allowed("GET", "/v1/census"))
            return try Self.json(try await blocking { s in try s.census(now: Date()) })
        }
        router.get("/metrics") { _, ctx in
            try ctx.require(Self.allowed("GET", "/metrics"))
            let (size, depth) = try await blocking { (try $0.eventCount(), try $0.jobs.depth()) }
            metrics.ledgerSize(size)
            metrics.queueDepth(depth)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(bytes: metrics.registry.emitToBuffer())))
        }
    }

    /// A request body of at most `limit` bytes decoded as `T` (snake_case keys, RFC 3339 times):
    /// 413 when larger, 400 naming what is wrong otherwise.
    static func body<T: Decodable>(_ type: T.Type, of request: Request, limit: Int, what: String) async throws -> T {
        var request = request
        let bytes: ByteBuffer
        do { bytes = try await request.collectBody(upTo: limit) } catch {
            throw APIError(.contentTooLarge, "the body is larger than \(limit) bytes")
        }
        do { return try LedgerJSON.decoder().decode(T.self, from: Data(buffer: bytes)) } catch let e as APIError {
            throw e
        } catch {
            throw APIError(.badRequest, "the body is not \(what): \(IngestBatch.describe(error))")
        }
    }

    /// An RFC 3339 time (`2026-12-01T00:00:00Z`, fractions allowed) or a date (`2026-12-01`).
    static func time(_ text: String?, _ name: String) throws -> Date {
        guard let text else { throw APIError(.badRequest, "\(name)= is required (RFC 3339 time)") }
        if let d = LedgerTime.parse(text) { return d }
        throw APIError(.badRequest, "\(name)= is not an RFC 3339 time")
    }
}

extension WardenRequestContext {
    /// Refuses the request unless the caller's role is one of `roles` (401 without a caller).
    func require(_ roles: Set<Role>) throws {
        guard let p = principal else { throw APIError(.unauthorized, "a bearer token (or a host's client certificate) is required") }
        guard roles.contains(p.role) else { throw APIError(.forbidden, "role \(p.role.rawValue) may not do this") }
    }

    /// The `{host}` path parameter; a host principal may speak only for itself.
    func reportingHost() throws -> HostName {
        guard let raw = parameters.get("host"), let host = HostName(raw) else { throw APIError(.badRequest, "malformed host name") }
        let who = principal!
        if who.role == .host, who.host != host {
            throw APIError(.forbidden, "\(who.name) may report for host \(who.host?.value ?? "?") only")
        }
        return host
    }

    /// The `{ref}` path parameter, percent-decoded and bounded.
    func reference() throws -> String {
        guard let raw = parameters.get("ref"), let ref = raw.removingPercentEncoding, (1...256).contains(ref.utf8.count) else {
            throw APIError(.badRequest, "malformed VM reference")
        }
        return ref
    }
}

/// The body of `POST /v1/hosts/{host}/events`.
struct IngestBatch: Decodable {
    struct Event: Decodable {
        var id: String
        var kind: String
        var vm: String?
        var actor: String?
        var time: Date?
        var generationBefore: String?
        var generationAfter: String?
        var payload: [String: JSONValue]?

        func ingested(actorFallback: String) throws -> IngestedEvent {
            guard IngestedEvent.isValidID(id) else { throw APIError(.badRequest, "event id is not 1-128 of A-Z a-z 0-9 . _ : -") }
            guard let k = EventKind(rawValue: kind) else { throw APIError(.badRequest, "event \(id): unknown kind") }
            var vmid: VMID?
            if let vm { guard let v = VMID(vm) else { throw APIError(.badRequest, "event \(id): vm is not a UUID") }; vmid = v }
            func gen(_ s: String?) throws -> UUID? {
                guard let s else { return nil }
                guard let u = UUID(uuidString: s) else { throw APIError(.badRequest, "event \(id): a generation is not a UUID") }
                return u
            }
            if let actor, !(1...256).contains(actor.utf8.count) { throw APIError(.badRequest, "event \(id): actor must be 1-256 bytes") }
            return IngestedEvent(id: id, event: NewEvent(kind: k, vm: vmid, actor: actor ?? actorFallback, time: time ?? Date(),
                                                         generationBefore: try gen(generationBefore), generationAfter: try gen(generationAfter),
                                                         payload: payload ?? [:]))
        }
    }
    var events: [Event]

    static func decode(_ request: Request, limit: Int) async throws -> IngestBatch {
        let batch = try await FleetAPI.body(IngestBatch.self, of: request, limit: limit, what: "an event batch")
        guard batch.events.count <= FleetAPI.maxEventsPerRequest else {
            throw APIError(.contentTooLarge, "at most \(FleetAPI.maxEventsPerRequest) events per request")
        }
        return batch
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let k, _): return "missing \(k.stringValue)"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "wrong type at \(c.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.dataCorrupted(let c):
            return c.codingPath.isEmpty ? "malformed JSON" : "bad value at \(c.codingPath.map(\.stringValue).joined(separator: "."))"
        default: return "malformed JSON"
        }
    }
}

/// The answer to `POST /v1/enrol`: the host's certificate and the CA that issued it.
public struct EnrolAnswer: Codable, Sendable {
    public var host: String
    public var certificate: String
    public var ca: String
    public var serial: String
    public var notAfter: Date
}

/// The body of `PUT /v1/hosts/{host}/vms`: the VMs a host holds and its residency intervals.
struct HostReport: Decodable {
    var vms: [VMRecord]
    var residency: [ResidencyRecord]

    /// What became of the report: VMs recorded, and VMs refused with the reason.
    struct Outcome: Encodable, Sendable {
        var recorded: [VMID]
        var refused: [Refusal]
        struct Refusal: Encodable, Sendable { var vm: VMID; var reason: String }
    }

    /// Records each VM in order (parents first) and this host's intervals of it. The host that
    /// holds a VM speaks for it: a VM already known with an open interval on another host only
    /// is not changed by this host's report (its residency on this host still is).
    func apply(to s: any LedgerQueries, host: HostName) throws -> Outcome {
        var out = Outcome(recorded: [], refused: [])
        let mine = Dictionary(grouping: residency.filter { $0.host == host }, by: \.vm)
        for vm in vms.sorted(by: { $0.createdAt < $1.createdAt }) {
            do {
                if let existing = try s.vm(vm.id) {
                    let open = try s.residency(of: vm.id).filter { $0.to == nil }
                    let heldElsewhere = !open.isEmpty && !open.contains { $0.host == host } && !(mine[vm.id] ?? []).contains { $0.to == nil }
                    if heldElsewhere {
                        if existing != vm { out.refused.append(.init(vm: vm.id, reason: "held by another host")) }
                    } else if existing != vm {
                        try s.upsertVM(vm)
                    }
                } else {
                    try s.upsertVM(vm)
                }
                try s.replaceResidency(vm: vm.id, host: host, with: mine[vm.id] ?? [])
                out.recorded.append(vm.id)
            } catch let e as WardenError {
                out.refused.append(.init(vm: vm.id, reason: e.message))
            }
        }
        return out
    }

    static func decode(_ request: Request, limit: Int) async throws -> HostReport {
        let report = try await FleetAPI.body(HostReport.self, of: request, limit: limit, what: "a host report")
        guard report.vms.count <= 10_000, report.residency.count <= 100_000 else {
            throw APIError(.contentTooLarge, "at most 10000 VMs and 100000 intervals per report")
        }
        return report
    }
}
