import AdvisoryStorage
import Advisories
import AsyncHTTPClient
import Crypto
import Attestation
import Foundation
import NIOSSL
import Policy
import X509
import Ledger
import NIOCore
import NIOFoundationCompat
import WardenCore

/// How an agent reaches its server: written by `warden agent enrol`, 0600 in a 0700 folder.
/// The host's identity is its client certificate beside it (`host.key`, `host.pem`), issued by
/// the server's CA (`ca.pem`) at enrolment (docs/fleet.md, "Hosts and mutual TLS").
public struct AgentConfiguration: Codable, Sendable, Equatable {
    /// `https://server:8480` (no trailing slash).
    public var server: String
    /// The host this agent speaks for.
    public var host: String
    /// Seconds the pulled fleet facts stay good on this host (default 300).
    public var maxStalenessSeconds: Double?

    public init(server: String, host: HostName, maxStalenessSeconds: Double? = nil) throws {
        self.server = try Self.serverURL(server)
        self.host = host.value
        if let m = maxStalenessSeconds, !(m >= 1 && m <= 30 * 86_400) {
            throw WardenError(.invalidArgument, "the staleness bound is 1 s to 30 days")
        }
        self.maxStalenessSeconds = maxStalenessSeconds
    }

    /// An https URL with a host and no path, without trailing slashes.
    static func serverURL(_ text: String) throws -> String {
        var s = text
        while s.hasSuffix("/") { s.removeLast() }
        guard let u = URL(string: s), u.host != nil, u.path.isEmpty, u.query == nil else {
            throw WardenError(.invalidArgument, "the server URL must be https://host:port")
        }
        guard u.scheme == "https" else {
            throw WardenError(.invalidArgument, "hosts enrol and report over https only (mutual TLS); start the server with --tls")
        }
        return s
    }

    /// `agent/` beside the database.
    public static func directory(databasePath: String) -> String { FleetSyncState.directory(databasePath: databasePath) }

    public static func load(directory: String) throws -> AgentConfiguration {
        let path = directory + "/agent.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw WardenError(.unavailable, "this host is not enrolled (run warden agent enrol URL --token T --ca-file CA)", file: path)
        }
        for file in [path, directory + "/host.key"] {
            var st = stat()
            if stat(file, &st) == 0, st.st_mode & 0o077 != 0 {
                throw WardenError(.denied, "the file is readable by others; chmod 600 it", file: file)
            }
        }
        do { return try JSONDecoder().decode(AgentConfiguration.self, from: data) } catch {
            throw WardenError(.corrupt, "the agent file is not an agent configuration", file: path)
        }
    }

    public func save(directory: String) throws {
        try AgentFiles.store(try JSONEncoder().encode(self), to: directory + "/agent.json", directory: directory)
    }

    /// When the host's certificate ends (re-enrol with a new host token before then); nil when
    /// it cannot be read.
    public static func certificateNotAfter(directory: String) -> Date? {
        guard let data = FileManager.default.contents(atPath: directory + "/host.pem"), data.count <= 64 << 10,
              let text = String(data: data, encoding: .utf8), let cert = try? Certificate(pemEncoded: text) else { return nil }
        return cert.notValidAfter
    }

    /// The TLS client configuration: trust only the fleet's CA, present the host's certificate.
    public func tls(directory: String) throws -> TLSConfiguration {
        var tls = try FleetClient.trusting(caFile: directory + "/ca.pem")
        let certPath = directory + "/host.pem", keyPath = directory + "/host.key"
        do {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certPath).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyPath, format: .pem))
        } catch {
            throw WardenError(.corrupt, "the host's certificate or key is unreadable (enrol again)", file: certPath)
        }
        return tls
    }

    /// Enrols this host: makes its key (which never leaves it), sends a certificate request
    /// with the one-time token, and keeps the certificate the server issues. The server is
    /// trusted only through `caFile`, the fleet CA an administrator handed over
    /// (`warden serve ca`), never on first use.
    /// `signingKey`: the host's ledger signing key (Ed25519, public): the server records it at the
    /// first enrolment and refuses the host's name with any other key.
    public static func enrol(server: String, host: HostName, token: String, caFile: String, maxStalenessSeconds: Double?,
                             directory: String, signingKey: Data? = nil) async throws -> AgentConfiguration {
        guard token.hasPrefix("wdn_"), token.utf8.count <= 128 else { throw WardenError(.invalidArgument, "not a Warden token") }
        let config = try AgentConfiguration(server: server, host: host, maxStalenessSeconds: maxStalenessSeconds)
        let tls = try FleetClient.trusting(caFile: caFile)
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName(String(host.value.prefix(64))) },
            privateKey: .init(key), attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256)
        let client = FleetClient(server: config.server, token: token, tls: tls)
        let answer: EnrolReply
        do {
            struct Body: Encodable { var csr: String; var signingKey: String? }
            answer = try await client.call(.POST, "/v1/enrol", body: Body(csr: try csr.serializeAsPEM().pemString, signingKey: signingKey?.hexEncoded))
            await client.shutdown()
        } catch {
            await client.shutdown()
            throw error
        }
        guard answer.host == host.value else {
            throw WardenError(.denied, "the token was made for host \(answer.host), not \(host.value)")
        }
        let caPEM = (try? String(contentsOfFile: caFile, encoding: .utf8)) ?? ""
        guard (try? Certificate(pemEncoded: answer.ca)) == (try? Certificate(pemEncoded: caPEM)),
              let cert = try? Certificate(pemEncoded: answer.certificate),
              cert.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw WardenError(.denied, "the server's answer does not match the CA file and this host's key")
        }
        try AgentFiles.store(Data(key.pemRepresentation.utf8), to: directory + "/host.key", directory: directory)
        try AgentFiles.store(Data(answer.certificate.utf8), to: directory + "/host.pem", directory: directory)
        try AgentFiles.store(Data(caPEM.utf8), to: directory + "/ca.pem", directory: directory)
        try config.save(directory: directory)
        return config
    }

    struct EnrolReply: Decodable { var host: String; var certificate: String; var ca: String }
}

/// Small files the agent keeps, written whole (temporary file, fsync, rename), 0600 in 0700.
enum AgentFiles {
    static func store(_ data: Data, to path: String, directory: String) throws {
        try FileDescriptorIO.ensurePrivateDirectory(directory, what: "the agent directory")
        try FileDescriptorIO.replaceFile(path, with: Array(data))
    }
}

/// `warden agent`: ships this host's ledger to the server and brings back the fleet's VMs.
///
/// **At least once, idempotent, in order.** The outbox is the local SQLite ledger itself: the
/// agent remembers the last local sequence number the server acknowledged (`agent/state.json`),
/// sends the events after it in log order, each under the id `ev:<leaf hash>` (stable: the
/// leaf hash covers the event's sequence number, time and content), and advances the mark only
/// after the server answered for all of them. A crash or a lost answer means the same events are
/// sent again, and the server records them once. Nothing acknowledged locally is lost while the
/// server is unreachable: the events stay in the local ledger until they drain.
public final class Agent: Sendable {
    public let local: any LedgerQueries
    public let configuration: AgentConfiguration
    public let directory: String
    let client: FleetClient
    /// Events per request.
    public static let batch = 500

    /// Inspects one image on this host for a scan job and returns its inventory (the command
    /// layer gives ScanService; nil: this agent takes no scan jobs).
    public typealias Scanner = @Sendable (String) throws -> NewInventory
    let scanner: Scanner?

    /// Where the fleet's policy files are installed (the folder the libvirt hook reads); nil:
    /// policy is not pulled.
    let policyDirectory: String?

    public init(local: any LedgerQueries, configuration: AgentConfiguration, directory: String, scanner: Scanner? = nil,
                policyDirectory: String? = nil) throws {
        self.local = local
        self.policyDirectory = policyDirectory
        self.configuration = configuration
        self.directory = directory
        self.scanner = scanner
        self.client = FleetClient(server: configuration.server, token: nil, tls: try configuration.tls(directory: directory))
    }

    public func shutdown() async { await client.shutdown() }

    /// What the server said of this host's attestation.
    public struct Attestation: Codable, Sendable {
        public var host: String
        public var trusted: Bool
        public var reasons: [String]
        public var baseline: String?
        public var mismatchedPcrs: [String]
        public var validForSeconds: Int64?
    }

    /// Attests this host to the server (docs/attestation.md): the server's nonce, a quote by
    /// this host's enrolled attestation key over the PCRs the server asks for, the server's
    /// verdict (recorded in the fleet ledger). The host's `host-enrolled` event must have
    /// reached the server first (an ordinary sync round ships it).
    public func attest(tpm: HostTPM) async throws -> Attestation {
        struct Empty: Codable {}
        struct Challenge: Codable { var nonce: String; var pcrs: [String]; var expiresInSeconds: Int }
        struct Evidence: Codable { var nonce: String; var quote: String; var signature: String; var pcrs: String }
        let host = configuration.host
        let c: Challenge = try await client.call(.POST, "/v1/hosts/\(host)/attestation-nonce", body: Empty?.none)
        guard let nonce = Data(hexEncoded: c.nonce), (1...64).contains(nonce.count), (1...16).contains(c.pcrs.count) else {
            throw WardenError(.unavailable, "the server's attestation challenge is malformed")
        }
        let selection = try c.pcrs.map { spec in
            guard let s = PCRSelection(toolSpec: spec) else { throw WardenError(.unavailable, "the server asked for PCRs \(spec)") }
            return s
        }
        let e = try tpm.quote(selection: selection, nonce: Array(nonce))
        let answer: Attestation = try await client.call(.POST, "/v1/hosts/\(host)/attestation",
                                     body: Evidence(nonce: c.nonce, quote: Data(e.quote).base64EncodedString(),
                                                    signature: Data(e.signature).base64EncodedString(), pcrs: Data(e.pcrValues).base64EncodedString()))
        // The server's verdict is recorded here too: this host's own decisions (the libvirt
        // hook, `vm start`, key releases) read `attested` from the local ledger.
        let validFor = answer.validForSeconds.flatMap { $0 > 0 ? PolicyDuration(seconds: min($0, 30 * 86_400)) : nil }
        try HostTrustService(store: local, host: .current, policyDirectory: nil).recordRemote(
            AttestationVerdict(trusted: answer.trusted, reasons: answer.reasons, baseline: answer.baseline, mismatchedPCRs: answer.mismatchedPcrs),
            validFor: validFor, source: "fleet \(configuration.server)")
        return answer
    }

    /// What one round did.
    public struct Round: Codable, Sendable, Equatable {
        public var eventsSent = 0
        public var eventsNew = 0
        public var vmsReported = 0
        public var vmsRefused = 0
        public var vmsPulled = 0
        public var acked: Int64 = 0
        public var pending: Int64 = 0
        public var jobsDone = 0
        public var jobsFailed = 0
        public var advisoriesPulled = 0
        public var inventoriesReported = 0
        public var policyRevision: String?
        public var policyProblem: String?
    }

    var statePath: String { directory + "/state.json" }

    /// The last local sequence number the server acknowledged.
    public func acked() -> Int64 { max(0, FleetSyncState.read(directory: directory)?.ackedSeq ?? 0) }

    func saveState(acked: Int64, pulledAt: Date?, advisoryCursor: String? = nil, policyRevision: String? = nil,
                   inventoriesReportedUntil: Double? = nil) throws {
        let old = FleetSyncState.read(directory: directory)
        var state = FleetSyncState(ackedSeq: acked, lastPullUs: pulledAt.map(LedgerTime.micros) ?? old?.lastPullUs,
                                   maxStalenessSeconds: configuration.maxStalenessSeconds,
                                   advisoryCursor: advisoryCursor ?? old?.advisoryCursor, policyRevision: policyRevision ?? old?.policyRevision)
        state.inventoriesReportedUntil = inventoriesReportedUntil ?? old?.inventoriesReportedUntil
        try AgentFiles.store(try JSONEncoder().encode(state), to: statePath, directory: directory)
    }

    /// Sends the local events after the acknowledged mark, in order, in batches; the mark
    /// moves after each answered batch. Returns the new mark.
    func pushEvents(_ round: inout Round) async throws -> Int64 {
        var mark = acked()
        while true {
            let events = try local.events(after: mark, limit: Self.batch)
            if events.isEmpty { break }
            struct Wire: Encodable {
                var id: String; var kind: String; var vm: VMID?; var actor: String; var time: Date
                var generationBefore: UUID?; var generationAfter: UUID?; var payload: [String: JSONValue]
            }
            struct Batch: Encodable { var events: [Wire] }
            let body = Batch(events: events.map {
                Wire(id: "ev:" + $0.leafHash.hexString, kind: $0.kind.rawValue, vm: $0.vm,
                     actor: $0.actor, time: $0.time, generationBefore: $0.generationBefore, generationAfter: $0.generationAfter,
                     payload: $0.payload)
            })
            struct Answer: Decodable { var results: [IngestOutcome] }
            let answer: Answer = try await client.call(.POST, "/v1/hosts/\(configuration.host)/events", body: body)
            guard answer.results.count == events.count else {
                throw WardenError(.unavailable, "the server answered for \(answer.results.count) of \(events.count) events")
            }
            round.eventsSent += events.count
            round.eventsNew += answer.results.filter { !$0.duplicate }.count
            mark = events.last!.seq
            try saveState(acked: mark, pulledAt: nil)
        }
        return mark
    }

    /// One round: push the events after the mark, push the VMs this host holds with its
    /// residency, pull the fleet's VMs this ledger does not hold.
    public func syncOnce() async throws -> Round {
        var round = Round()
        // 1. Events, in order, in batches; the mark moves after each answered batch.
        var mark = try await pushEvents(&round)
        round.acked = mark
        // 2. The VMs this host holds (an open interval here), parents first, with its intervals.
        guard let me = HostName(configuration.host) else { throw WardenError(.invalidArgument, "the agent file names a malformed host") }
        var held: [VMRecord] = []
        var intervals: [ResidencyRecord] = []
        let all = try local.listVMs()
        let byID = Dictionary(uniqueKeysWithValues: all.map { ($0.id, $0) })
        var include = Set<VMID>()
        for vm in all {
            let res = try local.residency(of: vm.id).filter { $0.host == me }
            guard !res.isEmpty else { continue }
            intervals += res
            // The ancestors travel too (a clone's parent must be known first).
            var v: VMRecord? = vm
            var steps = 0
            while let cur = v, steps < 10_000, include.insert(cur.id).inserted {
                v = cur.parent.flatMap { byID[$0] }; steps += 1
            }
        }
        held = all.filter { include.contains($0.id) }.sorted { $0.createdAt < $1.createdAt }
        if !held.isEmpty {
            struct Report: Encodable { var vms: [VMRecord]; var residency: [ResidencyRecord] }
            struct Outcome: Decodable { var recorded: [VMID]; var refused: [Refusal]; struct Refusal: Decodable { var vm: VMID; var reason: String } }
            let outcome: Outcome = try await client.call(.PUT, "/v1/hosts/\(configuration.host)/vms", body: Report(vms: held, residency: intervals))
            round.vmsReported = outcome.recorded.count
            round.vmsRefused = outcome.refused.count
        }
        // 3. Inventories of this host's own scans (`warden scan`, a scan job) not reported yet.
        try await pushInventories(&round, acked: mark)
        // 4. Scan jobs for this host's images: inspect, report the inventory, complete. The
        // server's rescan then assesses it against the fleet's advisories.
        if let scanner {
            try await runScanJobs(scanner, round: &round, acked: mark)
            // The scans' `scanned` events go now, so the server names the VMs at once.
            if round.jobsDone > 0 { mark = try await pushEvents(&round); round.acked = mark }
        }
        // 5. The fleet's VMs: unknown ones are recorded here (the libvirt hook decides on them
        // without the network); known ones this host does not hold follow the server.
        let pulledAt = Date()
        let fleet: [VMRecord] = try await client.call(.GET, "/v1/vms", body: Optional<Int>.none)
        for vm in fleet.sorted(by: { $0.createdAt < $1.createdAt }) {
            if let mine = byID[vm.id] {
                if mine == vm || include.contains(vm.id) { continue }
            }
            do { try local.upsertVM(vm); round.vmsPulled += 1 } catch let e as WardenError where e.code == .conflict { continue }
        }
        // 6. The fleet's advisories (into the local store the hook's findings rules read) and
        // its policy (into the folder the hook reads).
        try await pullAdvisories(&round, acked: mark)
        if let policyDirectory {
            // A policy that cannot be installed (the server's does not lint, or names unsafe
            // files) leaves the last good one in place; the round says why.
            do { try await pullPolicy(into: policyDirectory, round: &round, acked: mark) } catch let e as WardenError {
                round.policyProblem = e.message
            }
        }
        // The pull is complete: decisions on this host may count the fleet's replicas again.
        try saveState(acked: mark, pulledAt: pulledAt)
        round.pending = try local.eventCount() - mark
        return round
    }

    /// Reports the inventories stored here since the last report (by their images' paths on
    /// this host), 50 a request; the mark moves after each answered request.
    func pushInventories(_ round: inout Round, acked: Int64) async throws {
        let since = FleetSyncState.read(directory: directory)?.inventoriesReportedUntil ?? -1
        let fresh = try local.advisories.inventories().filter { $0.inspectedAt.timeIntervalSince1970 > since }
            .sorted { $0.inspectedAt < $1.inspectedAt }
        guard !fresh.isEmpty else { return }
        let images = try local.advisories.imagesByInventory()
        struct Upload: Encodable { var inventories: [Item] }
        struct Item: Encodable { var key: String; var image: String; var osId: String?; var versionId: String?; var packages: [MatchPackage] }
        struct Stored: Decodable { var stored: Int }
        var start = 0
        while start < fresh.count {
            let chunk = fresh[start..<min(start + 50, fresh.count)]
            start += 50
            let items = chunk.flatMap { inv in
                (images[inv.key.description] ?? []).map {
                    Item(key: inv.key.description, image: $0, osId: inv.osID, versionId: inv.versionID, packages: inv.packages)
                }
            }
            if !items.isEmpty {
                for part in stride(from: 0, to: items.count, by: 100) {
                    let answer: Stored = try await client.call(.PUT, "/v1/hosts/\(configuration.host)/inventories",
                                                               body: Upload(inventories: Array(items[part..<min(part + 100, items.count)])))
                    round.inventoriesReported += answer.stored
                }
            }
            try saveState(acked: acked, pulledAt: nil, inventoriesReportedUntil: chunk.last!.inspectedAt.timeIntervalSince1970)
        }
    }

    /// Pages of the fleet's advisories after the saved cursor, imported into the local store
    /// page by page (the cursor moves after each stored page).
    func pullAdvisories(_ round: inout Round, acked: Int64) async throws {
        struct Page: Decodable { var records: [AdvisoryRecord]; var next: String? }
        var cursor = FleetSyncState.read(directory: directory)?.advisoryCursor
        for _ in 0..<10_000 {
            let query = cursor.map { "?limit=1000&after=" + ($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "") } ?? "?limit=1000"
            let page: Page = try await client.call(.GET, "/v1/advisories/records" + query, body: Optional<Int>.none)
            guard let next = page.next, !page.records.isEmpty else { return }
            _ = try local.advisories.importRecords(page.records, at: Date(), file: "the fleet server")
            round.advisoriesPulled += page.records.count
            cursor = next
            try saveState(acked: acked, pulledAt: nil, advisoryCursor: next)
        }
    }

    /// Prefix of the policy files the agent installs (and removes when the fleet drops them).
    public static let policyPrefix = "fleet--"

    /// The fleet's policy, when its revision changed: checked whole (names, size, lint) in a
    /// staging folder first, then installed file by file (each an atomic replace) as
    /// `fleet--NAME`; fleet files the server no longer has are removed. A bad set is refused
    /// and the last good one stays.
    func pullPolicy(into dir: String, round: inout Round, acked: Int64) async throws {
        struct Files: Decodable { var revision: String; var files: [File]; struct File: Decodable { var name: String; var content: String } }
        let policy: Files
        do { policy = try await client.call(.GET, "/v1/policy", body: Optional<Int>.none) } catch let e as WardenError where e.code == .notFound {
            return // the server serves no fleet policy: the host's own folder decides
        }
        round.policyRevision = policy.revision
        if FleetSyncState.read(directory: directory)?.policyRevision == policy.revision { return }
        guard policy.files.count <= 256, policy.files.allSatisfy({ PolicySet.isSafeFileName($0.name) && $0.content.utf8.count <= 1 << 20 }),
              Set(policy.files.map(\.name)).count == policy.files.count else {
            throw WardenError(.invalidArgument, "the server's policy has unsafe file names or oversized files; kept the installed one")
        }
        let staging = directory + "/policy-staging"
        try? FileManager.default.removeItem(atPath: staging)
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: staging) }
        for f in policy.files { try FileDescriptorIO.replaceFile(staging + "/" + f.name, with: Array(f.content.utf8), syncFolder: false) }
        do { _ = try PolicySet.load(directory: staging) } catch let e as WardenError {
            throw WardenError(.invalidArgument, "the server's policy does not lint here (\(e.message)); kept the installed one")
        }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let wanted = Set(policy.files.map { Self.policyPrefix + $0.name })
        for f in policy.files {
            try FileDescriptorIO.replaceFile(dir + "/" + Self.policyPrefix + f.name, with: Array(f.content.utf8), mode: 0o644)
        }
        for old in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where old.hasPrefix(Self.policyPrefix) && !wanted.contains(old) {
            try? FileManager.default.removeItem(atPath: dir + "/" + old)
        }
        try saveState(acked: acked, pulledAt: nil, policyRevision: policy.revision)
    }

    /// Jobs a round claims at most, and how long it holds each.
    public static let jobsPerRound = 5
    public static let jobLease: Double = 900

    func runScanJobs(_ scanner: Scanner, round: inout Round, acked: Int64) async throws {
        struct Claim: Encodable { var limit: Int; var leaseSeconds: Double }
        let jobs: [Job] = try await client.call(.POST, "/v1/hosts/\(configuration.host)/jobs/claim",
                                                body: Claim(limit: Self.jobsPerRound, leaseSeconds: Self.jobLease))
        if jobs.isEmpty { return }
        // Only images that are disks of VMs this host's ledger knows: the server cannot make
        // an agent read an arbitrary file.
        var known = Set<String>()
        for vm in try local.listVMs() { for d in try local.disks(of: vm.id) { known.insert(d.path) } }
        struct Outcome: Encodable { var result: String?; var reason: String? }
        struct Ack: Decodable { var id: Int64 }
        var scanned: [(Job, NewInventory)] = []
        for job in jobs {
            do {
                guard job.kind == .scan else { throw WardenError(.invalidArgument, "this agent runs scan jobs only") }
                guard known.contains(job.target) else {
                    throw WardenError(.denied, "\(job.target) is not a disk of a VM in this host's ledger")
                }
                scanned.append((job, try scanner(job.target)))
            } catch let e as WardenError {
                // The image could not be scanned (or is not ours): the job goes back, and fails
                // for good after its attempts.
                let _: Ack? = try? await client.call(.POST, "/v1/hosts/\(configuration.host)/jobs/\(job.id)/fail", body: Outcome(reason: e.message))
                round.jobsFailed += 1
            }
        }
        guard !scanned.isEmpty else { return }
        // The scans' inventories are reported before any job is completed: a job is done only
        // when its result is on the server. (A lost server: the leases end, the jobs come back.)
        try await pushInventories(&round, acked: acked)
        for (job, inv) in scanned {
            let _: Ack = try await client.call(.POST, "/v1/hosts/\(configuration.host)/jobs/\(job.id)/complete",
                                               body: Outcome(result: "inventory \(inv.key.description)"))
            round.jobsDone += 1
        }
    }

    /// Rounds every `interval` until cancelled; a failed round (server or network down) is
    /// retried with backoff up to `interval × 8`, and `report` hears of every round.
    public func run(interval: Duration, report: @Sendable (Result<Round, Error>) -> Void) async {
        var delay = interval
        while !Task.isCancelled {
            do {
                report(.success(try await syncOnce()))
                delay = interval
            } catch {
                report(.failure(error))
                delay = min(delay * 2, interval * 8)
            }
            try? await Task.sleep(for: delay)
        }
    }
}

/// The server's error body.
struct ServerError: Decodable {
    struct Inner: Decodable { var message: String }
    var error: Inner
}

/// A client of the fleet API: with the host's client certificate (the agent), or a bearer token
/// (a person's, for the CLI; a host's one-time token, to enrol).
public struct FleetClient: Sendable {
    public let server: String
    let token: String?
    let http: HTTPClient

    public init(server: String, token: String?, tls: TLSConfiguration? = nil) {
        var s = server
        while s.hasSuffix("/") { s.removeLast() }
        self.server = s
        self.token = token
        var c = HTTPClient.Configuration()
        if let tls { c.tlsConfiguration = tls }
        c.timeout = .init(connect: .seconds(5), read: .seconds(30))
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
    }

    public func shutdown() async { try? await http.shutdown() }

    public enum Method: Sendable { case GET, POST, PUT }

    public func call<B: Encodable, R: Decodable>(_ method: Method, _ path: String, body: B?) async throws -> R {
        var req = HTTPClientRequest(url: server + path)
        switch method {
        case .GET: req.method = .GET
        case .POST: req.method = .POST
        case .PUT: req.method = .PUT
        }
        if let token { req.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            req.headers.add(name: "Content-Type", value: "application/json")
            req.body = .bytes(ByteBuffer(data: try LedgerJSON.encoder(pretty: false).encode(body)))
        }
        let response: HTTPClientResponse
        do { response = try await http.execute(req, timeout: .seconds(30)) } catch {
            throw WardenError(.unavailable, "cannot reach the server \(server): \(error)", cause: error)
        }
        let bytes = try await response.body.collect(upTo: 64 << 20)
        guard (200..<300).contains(response.status.code) else {
            let message = (try? JSONDecoder().decode(ServerError.self, from: Data(buffer: bytes)))?.error.message ?? "HTTP \(response.status.code)"
            let code: WardenError.Code = response.status.code == 401 || response.status.code == 403 ? .denied
                : response.status.code == 404 ? .notFound : response.status.code >= 500 ? .unavailable : .invalidArgument
            throw WardenError(code, "the server refused \(path): \(message)")
        }
        do { return try LedgerJSON.decoder().decode(R.self, from: Data(buffer: bytes)) } catch {
            throw WardenError(.unavailable, "the server's answer to \(path) is not what this agent expects")
        }
    }
}

extension FleetClient {
    /// A TLS client configuration that trusts only the CA in `caFile`.
    public static func trusting(caFile: String) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        do {
            let roots = try NIOSSLCertificate.fromPEMFile(caFile)
            guard !roots.isEmpty else { throw WardenError(.corrupt, "no certificate in it") }
            tls.trustRoots = .certificates(roots)
        } catch {
            throw WardenError(.invalidArgument, "not a PEM CA certificate", file: caFile)
        }
        return tls
    }

}
