import Advisories
import AdvisoryStorage
import Foundation
import HTTPTypes
import Hummingbird
import Ledger
import NIOCore
import NIOPosix
import Policy
import WardenCore

/// Fleet-wide assessment as work on the database (docs/fleet.md): advisories imported on the
/// server, inventories reported by agents, scan jobs agents claim for their own host, and
/// rescan jobs the server runs for the inventories an import touched (found through the
/// package-version index; each rescan re-matches only the package versions that changed).
extension FleetAPI {
    /// Largest advisory feed one request may carry (split bigger feeds).
    public static let maxFeedBytes = 64 << 20
    /// Largest inventory report (a Debian server's ~2,000 packages are ~150 KB).
    public static let maxInventoryBytes = 16 << 20

    static let assessmentRoutes: [(method: String, path: String, allowed: Set<Role>)] = [
        ("POST", "/v1/advisories", [.admin]),
        ("GET", "/v1/advisories", [.admin, .operator, .auditor]),
        ("GET", "/v1/advisories/records", [.admin, .operator, .auditor, .host]),
        ("GET", "/v1/policy", [.admin, .operator, .auditor, .host]),
        ("PUT", "/v1/hosts/{host}/inventories", [.admin, .host]),
        ("GET", "/v1/findings", [.admin, .operator, .auditor]),
        ("POST", "/v1/jobs", [.admin]),
        ("GET", "/v1/jobs", [.admin, .auditor]),
        ("POST", "/v1/hosts/{host}/jobs/claim", [.host]),
        ("POST", "/v1/hosts/{host}/jobs/{id}/complete", [.host]),
        ("POST", "/v1/hosts/{host}/jobs/{id}/fail", [.host]),
    ]

    func addAssessment(to router: Router<WardenRequestContext>) {
        router.post("/v1/advisories") { request, ctx in
            try ctx.require(Self.allowed("POST", "/v1/advisories"))
            var request = request
            let bytes: ByteBuffer
            do { bytes = try await request.collectBody(upTo: Self.maxFeedBytes) } catch {
                throw APIError(.contentTooLarge, "the feed is larger than \(Self.maxFeedBytes) bytes; split it")
            }
            let data = Data(buffer: bytes)
            let name = request.uri.queryParameters.get("source") ?? "api"
            guard (1...200).contains(name.utf8.count), name.allSatisfy({ !$0.isNewline }) else { throw APIError(.badRequest, "source= is 1-200 bytes") }
            let (records, format): ([AdvisoryRecord], AdvisoryFormat)
            do { (records, format) = try AdvisoryImporter.decode(data, file: "request body") } catch let e as WardenError {
                throw APIError(.badRequest, e.message)
            }
            struct Answer: Encodable { var format: String; var counts: ImportCounts; var rescansQueued: Int }
            return try Self.json(try await blocking { s in
                let counts = try s.advisories.importRecords(records, at: Date(), file: "request body")
                try s.advisories.recordSource(name: name, format: format, location: "api", counts: counts, at: Date())
                // Only the inventories these records can change are rescanned.
                var queued = 0
                if counts.added + counts.replaced > 0 {
                    for key in try s.advisories.inventoriesTouched(by: records) {
                        if try s.jobs.enqueue(.rescan, host: nil, target: key, at: Date()).created { queued += 1 }
                    }
                }
                return Answer(format: format.rawValue, counts: counts, rescansQueued: queued)
            })
        }
        router.get("/v1/advisories") { _, ctx in
            try ctx.require(Self.allowed("GET", "/v1/advisories"))
            struct Status: Encodable { var advisories: Int; var sources: [AdvisorySourceStatus]; var lastImport: Date? }
            return try Self.json(try await blocking { s in
                Status(advisories: try s.advisories.advisoryCount(), sources: try s.advisories.sources(), lastImport: try s.advisories.lastAdvisoryImport())
            })
        }
        router.get("/v1/advisories/records") { request, ctx in
            try ctx.require(Self.allowed("GET", "/v1/advisories/records"))
            let q = request.uri.queryParameters
            let cursor = try q.get("after").map { t -> AdvisoryCursor in
                guard let c = AdvisoryCursor(text: t) else { throw APIError(.badRequest, "after= is not a cursor this server gave") }
                return c
            }
            let limit = try q.get("limit").map { t -> Int in
                guard let n = Int(t), (1...5000).contains(n) else { throw APIError(.badRequest, "limit must be 1-5000") }
                return n
            } ?? 1000
            struct Page: Encodable { var records: [AdvisoryRecord]; var next: String? }
            return try Self.json(try await blocking { s in
                let page = try s.advisories.advisoryRecords(after: cursor, limit: limit)
                return Page(records: page.records, next: page.next?.text)
            })
        }
        router.get("/v1/policy") { _, ctx in
            try ctx.require(Self.allowed("GET", "/v1/policy"))
            guard let dir = policyDirectory else { throw APIError(.notFound, "this server serves no fleet policy (start it with --policy DIR)") }
            return try Self.json(try await NIOThreadPool.singleton.runIfActive { try FleetPolicy.read(directory: dir) })
        }
        router.put("/v1/hosts/:host/inventories") { request, ctx in
            try ctx.require(Self.allowed("PUT", "/v1/hosts/{host}/inventories"))
            _ = try ctx.reportingHost()
            let report = try await Self.body(InventoryReport.self, of: request, limit: Self.maxInventoryBytes, what: "an inventory report")
            let items = try report.validated()
            struct Answer: Encodable { var stored: Int; var rescansQueued: Int }
            return try Self.json(try await blocking { s in
                try s.advisories.storeInventories(items, at: Date())
                var queued = 0
                for key in Set(items.map(\.key.description)).sorted() {
                    if try s.jobs.enqueue(.rescan, host: nil, target: key, at: Date()).created { queued += 1 }
                }
                return Answer(stored: items.count, rescansQueued: queued)
            })
        }
        router.get("/v1/findings") { request, ctx in
            try ctx.require(Self.allowed("GET", "/v1/findings"))
            let minimum = try request.uri.queryParameters.get("severity").map { text -> Severity in
                guard let s = Severity(word: text) else { throw APIError(.badRequest, "severity= is unknown, low, medium, high or critical") }
                return s
            } ?? .unknown
            return try Self.json(try await blocking { s in try FindingsReport.build(s, minimum: minimum) })
        }
        router.post("/v1/jobs") { request, ctx in
            try ctx.require(Self.allowed("POST", "/v1/jobs"))
            struct Body: Decodable { var kind: String; var host: String?; var target: String }
            let b = try await Self.body(Body.self, of: request, limit: 64 << 10, what: "a job")
            guard let kind = Job.Kind(rawValue: b.kind) else { throw APIError(.badRequest, "kind is scan or rescan") }
            if kind == .scan { guard let h = b.host, HostName(h) != nil else { throw APIError(.badRequest, "a scan job needs the host of the image") } }
            if kind == .rescan, b.host != nil { throw APIError(.badRequest, "rescan jobs are the server's: no host") }
            let (job, created) = try await blocking { s in try s.jobs.enqueue(kind, host: b.host, target: b.target, at: Date()) }
            return try Self.json(job, status: created ? .created : .ok)
        }
        router.get("/v1/jobs") { request, ctx in
            try ctx.require(Self.allowed("GET", "/v1/jobs"))
            let state = try request.uri.queryParameters.get("state").map { t -> Job.State in
                guard let s = Job.State(rawValue: t) else { throw APIError(.badRequest, "state= is queued, leased, done or failed") }
                return s
            }
            struct Answer: Encodable { var depth: [String: Int]; var jobs: [Job] }
            return try Self.json(try await blocking { s in
                let depth = try s.jobs.depth()
                return Answer(depth: Dictionary(uniqueKeysWithValues: Job.State.allCases.map { ($0.rawValue, depth[$0] ?? 0) }),
                              jobs: try s.jobs.jobs(state: state, limit: 1000))
            })
        }
        router.post("/v1/hosts/:host/jobs/claim") { request, ctx in
            try ctx.require(Self.allowed("POST", "/v1/hosts/{host}/jobs/claim"))
            let host = try ctx.reportingHost()
            struct Body: Decodable { var limit: Int?; var leaseSeconds: Double? }
            let b = try await Self.body(Body.self, of: request, limit: 64 << 10, what: "a claim")
            let worker = ctx.principal!.name
            return try Self.json(try await blocking { s in
                try s.jobs.claim(host: host.value, worker: worker, lease: b.leaseSeconds ?? 300, limit: b.limit ?? 5, at: Date())
            })
        }
        for verb in ["complete", "fail"] {
            router.post("/v1/hosts/:host/jobs/:id/\(verb)") { request, ctx in
                try ctx.require(Self.allowed("POST", "/v1/hosts/{host}/jobs/{id}/\(verb)"))
                _ = try ctx.reportingHost()
                guard let raw = ctx.parameters.get("id"), let id = Int64(raw), id > 0 else { throw APIError(.badRequest, "malformed job id") }
                struct Body: Decodable { var result: String?; var reason: String? }
                let b = try await Self.body(Body.self, of: request, limit: 64 << 10, what: "a job outcome")
                let worker = ctx.principal!.name
                let held = try await blocking { s in
                    verb == "complete" ? try s.jobs.complete(id, worker: worker, result: b.result ?? "", at: Date())
                                       : try s.jobs.fail(id, worker: worker, reason: b.reason ?? "", at: Date())
                }
                // Not (or no longer) this worker's: the lease ended and the job went elsewhere.
                guard held else { throw APIError(.conflict, "job \(id) is not leased to \(worker) (its lease may have ended)") }
                return try Self.json(["id": id])
            }
        }
    }

    /// Runs the server's own jobs (rescans) until cancelled: claims with a lease, re-matches
    /// the inventory against the advisories stored now, completes. Several servers share the
    /// queue; a server that dies leaves its leases to expire and another takes the work.
    func runServerJobs(worker: String, interval: Duration = .seconds(1)) async {
        while !Task.isCancelled {
            let ran = (try? await blocking { s -> Int in
                let jobs = try s.jobs.claim(host: nil, worker: worker, lease: 120, limit: 100, at: Date())
                if jobs.isEmpty { return 0 }
                // One incremental rescan takes in every pending change: the queued inventories and
                // any others the same imports touched.
                let report = try s.advisories.rescan(at: Date())
                for j in jobs {
                    _ = try s.jobs.complete(j.id, worker: worker, result: "rescanned: \(report.newFindings) new, \(report.goneFindings) gone findings", at: Date())
                }
                return jobs.count
            }) ?? 0
            metrics.jobsRan(ran)
            if ran == 0 { try? await Task.sleep(for: interval) }
        }
    }
}

/// The body of `PUT /v1/hosts/{host}/inventories`.
struct InventoryReport: Decodable {
    struct Item: Decodable {
        var key: String
        var image: String
        var osId: String?
        var versionId: String?
        var packages: [MatchPackage]
    }
    var inventories: [Item]

    func validated() throws -> [NewInventory] {
        guard inventories.count <= 100 else { throw APIError(.contentTooLarge, "at most 100 inventories per report") }
        return try inventories.map { i in
            guard let key = WardenCore.Digest(i.key) else { throw APIError(.badRequest, "inventory key is not algorithm:hex") }
            guard (1...4096).contains(i.image.utf8.count), !i.image.contains("\0") else { throw APIError(.badRequest, "image path is 1-4096 bytes") }
            guard i.packages.count <= 100_000 else { throw APIError(.contentTooLarge, "at most 100000 packages per inventory") }
            for text in [i.osId, i.versionId].compactMap({ $0 }) + i.packages.flatMap({ [$0.name, $0.version, $0.sourceName, $0.sourceVersion] }) {
                guard text.utf8.count <= 1024 else { throw APIError(.badRequest, "a package field is longer than 1024 bytes") }
            }
            return NewInventory(key: key, image: i.image, osID: i.osId, versionID: i.versionId, packages: i.packages)
        }
    }
}

/// The fleet's open findings: each assessed inventory with its images, the VMs that carry it,
/// and its vulnerable findings at or above a severity; totals by severity.
struct FindingsReport: Encodable {
    struct Item: Encodable {
        var inventory: String
        var images: [String]
        var vms: [AffectedVM]
        var assessedAt: Date
        var vulnerable: Int
        var maxSeverity: String?
        var findings: [Finding]
    }
    var bySeverity: [String: Int]
    var inventories: [Item]

    static func build(_ s: any LedgerQueries, minimum: Severity) throws -> FindingsReport {
        let images = try s.advisories.imagesByInventory()
        // Disk paths are host-local, so the server names VMs by what their hosts reported: each
        // live VM's last `scanned` event names the inventory it was scanned with.
        var scannedWith: [String: [AffectedVM]] = [:]
        for vm in try s.listVMs() where vm.state != .retired {
            guard let e = try s.events(of: vm.id).last(where: { $0.kind == .scanned }),
                  let key = e.payload["inventory"]?.stringValue else { continue }
            scannedWith[key, default: []].append(AffectedVM(id: vm.id.description, name: vm.name, disk: e.payload["image"]?.stringValue ?? ""))
        }
        var out = FindingsReport(bySeverity: Dictionary(uniqueKeysWithValues: Severity.allCases.map { ($0.description, 0) }), inventories: [])
        for inv in try s.advisories.inventories() {
            guard let a = try s.advisories.assessment(of: inv.key) else { continue }
            let found = a.findings.filter { $0.status == .vulnerable && $0.severity >= minimum }
            for f in found { out.bySeverity[f.severity.description, default: 0] += 1 }
            guard !found.isEmpty else { continue }
            let paths = images[inv.key.description] ?? []
            var vms = try s.advisories.vms(withContent: inv.key, paths: paths)
            for v in scannedWith[inv.key.description] ?? [] where !vms.contains(where: { $0.id == v.id }) { vms.append(v) }
            out.inventories.append(Item(inventory: inv.key.description, images: paths, vms: vms, assessedAt: a.assessedAt,
                                        vulnerable: found.count, maxSeverity: found.map(\.severity).max()?.description, findings: found))
        }
        out.inventories.sort { ($0.maxSeverity.flatMap(Severity.init(word:)) ?? .unknown, $0.vulnerable) > ($1.maxSeverity.flatMap(Severity.init(word:)) ?? .unknown, $1.vulnerable) }
        return out
    }
}

/// The fleet's policy as the server hands it to agents: its files and their revision, served
/// only when the set lints (a broken edit on the server never reaches the hosts; they keep
/// the last good copy).
public struct FleetPolicy: Codable, Sendable {
    public struct File: Codable, Sendable { public var name: String; public var content: String }
    public var revision: String
    public var files: [File]

    static func read(directory: String) throws -> FleetPolicy {
        let set: PolicySet
        do { set = try PolicySet.load(directory: directory) } catch let e as WardenError {
            throw APIError(.serviceUnavailable, "the server's policy does not lint: \(e.message)")
        }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter(PolicySet.isSafeFileName).sorted()
        guard names.count <= 256 else { throw APIError(.serviceUnavailable, "the server's policy has more than 256 files") }
        var files: [File] = []
        for n in names {
            guard let d = FileManager.default.contents(atPath: directory + "/" + n), d.count <= 1 << 20,
                  let text = String(data: d, encoding: .utf8) else { throw APIError(.serviceUnavailable, "policy file \(n) is unreadable or over 1 MiB") }
            files.append(File(name: n, content: text))
        }
        return FleetPolicy(revision: set.revision, files: files)
    }
}
