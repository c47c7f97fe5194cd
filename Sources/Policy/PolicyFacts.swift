import Foundation
import Ledger
import WardenCore
import AdvisoryStorage

/// Where the engine's facts come from. Each call may fail; a failure makes that fact unknown,
/// and an unknown fact fails closed in every rule that needs it.
public protocol PolicyFacts {
    /// The host's labels; nil when the ledger does not know the host.
    func hostLabels(_ host: HostName) throws -> [String: String]?
    /// Live (not retired) members of the VM's lineage family, itself included.
    func liveReplicaCount(of vm: VMID) throws -> Int
    /// The VM's last scan, nil if never scanned.
    func lastScan(of vm: VMID) throws -> Date?
    /// Open findings of the VM's latest scan, per severity.
    func openFindings(of vm: VMID) throws -> [Severity: Int]
    /// The open findings themselves (to name them in reasons); nil when the source only counts.
    func openFindingList(of vm: VMID) throws -> [OpenFinding]?
    /// Advisories imported after `date`.
    func advisoriesImported(after date: Date) throws -> Int
    /// Whether the VM's owner is recorded and present.
    func ownerPresent(_ vm: VMRecord) throws -> Bool
    /// The host's latest attestation; nil when it was never attested.
    func hostAttestation(_ host: HostName) throws -> HostAttestationFact?
    /// The VM's latest malware scan; nil when it was never scanned for malware.
    func latestMalwareScan(of vm: VMID) throws -> MalwareScanFact?
}

/// A VM's latest malware scan as the ledger recorded it (`malware-scanned` events).
public struct MalwareScanFact: Sendable, Equatable {
    public var time: Date
    public var detections: Int
    public var infectedFiles: Int
    /// The signatures that matched (at most the event's list).
    public var signatures: [String]
    public init(time: Date, detections: Int, infectedFiles: Int, signatures: [String]) {
        self.time = time; self.detections = detections; self.infectedFiles = infectedFiles; self.signatures = signatures
    }

    /// Reads a `malware-scanned` event; a payload without counts reads as a detection (fail closed).
    public init(event: EventRecord) {
        time = event.time
        func number(_ k: String) -> Int? { if case .number(let n)? = event.payload[k], n >= 0, n < 1e12 { return Int(n) }; return nil }
        detections = number("detections") ?? 1
        infectedFiles = number("infected_files") ?? detections
        var names: [String] = []
        if case .array(let found)? = event.payload["found"] {
            for f in found { if case .object(let o) = f, case .string(let s)? = o["signature"], !names.contains(s) { names.append(s) } }
        }
        signatures = names
    }
}

/// A host's latest attestation as the ledger recorded it (`host-attested` events).
public struct HostAttestationFact: Sendable, Equatable {
    public var host: String
    public var time: Date
    public var trusted: Bool
    public var reasons: [String]
    public var baseline: String?
    /// How long it counts: the host trust policy's maxAge when it was made.
    public var validFor: PolicyDuration
    public init(host: String, time: Date, trusted: Bool, reasons: [String], baseline: String?, validFor: PolicyDuration) {
        self.host = host; self.time = time; self.trusted = trusted; self.reasons = reasons; self.baseline = baseline; self.validFor = validFor
    }

    /// Until when the verdict counts (by the trust policy's maxAge when it was made).
    public var validUntil: Date { time.addingTimeInterval(Double(validFor.seconds)) }

    /// Trusted and not expired at `now`: what `attested: true` without its own maxAge sees.
    public func isCurrent(at now: Date) -> Bool { trusted && now <= validUntil }

    /// Reads a `host-attested` event; a malformed one is an untrusted attestation.
    public init(event e: EventRecord) {
        let p = e.payload
        var reasons: [String] = []
        if case .array(let items)? = p["reasons"] { reasons = items.compactMap { if case .string(let s) = $0 { return s } else { return nil } } }
        var trusted = false
        if case .bool(let b)? = p["trusted"] { trusted = b }
        var validFor = PolicyDuration(seconds: 1)
        if case .number(let n)? = p["valid_for_seconds"], n >= 1, n <= 30 * 86_400 { validFor = PolicyDuration(seconds: Int64(n)) }
        var baseline: String?
        if case .string(let b)? = p["baseline"] { baseline = b }
        if trusted && reasons.isEmpty == false { trusted = false }
        self.init(host: e.host.value, time: e.time, trusted: trusted, reasons: reasons, baseline: baseline, validFor: validFor)
    }
}

extension PolicyFacts {
    public func openFindingList(of vm: VMID) throws -> [OpenFinding]? { nil }
}

/// What the caller knows about the operation besides the VM.
public struct PolicyRequest: Sendable {
    public var operation: VMOperation
    public var host: HostName
    public var time: Date
    /// The destination path (export, copy, clone).
    public var destination: String?
    /// Findings the rollback target would re-open; nil when not computed.
    public var reexposure: [ReexposedFinding]?
    /// The patch source (patch): `dir:/srv/mirror` or its URL.
    public var mirror: String?
    /// The registry repository (push, pull): `host[:port]/repository`.
    public var registry: String?
    /// The pulled image's signature verdict (pull).
    public var signature: String?
    /// The pull keeps the pushed VM's identity.
    public var keepIdentity = false
    /// The image is encrypted (push, pull).
    public var encrypted: Bool?
    public var decisionID: UUID

    public init(operation: VMOperation, host: HostName = .current, time: Date = Date(), destination: String? = nil,
                reexposure: [ReexposedFinding]? = nil, decisionID: UUID = UUID()) {
        self.operation = operation; self.host = host; self.time = time; self.destination = destination
        self.reexposure = reexposure; self.decisionID = decisionID
    }
}

extension PolicySet {
    /// Which facts the rules applying to this operation and VM need (so the hook queries only those).
    public func neededFacts(_ operation: VMOperation, vm: VMRecord) -> Set<String> {
        var need = Set<String>()
        for i in rulesByOperation[operation] ?? [] {
            let r = rules[i]
            guard PolicyEngine.matches(r.match, vm) else { continue }
            let c = r.conditions
            if c.host != nil { need.insert("host") }
            if c.maxReplicas != nil { need.insert("replicas") }
            if c.scanAge != nil || c.scanCurrent != nil { need.insert("lastScan") }
            if c.scanCurrent != nil { need.insert("advisories") }
            if c.findings != nil { need.insert("findings") }
            if c.ownerPresent != nil { need.insert("owner") }
            if c.destination != nil { need.insert("destination") }
            if c.attested != nil { need.insert("attestation") }
            if c.malware != nil { need.insert("malware") }
        }
        return need
    }

    /// Gathers the facts this set needs for `request` on `vm`. Query failures become unknown facts.
    public func gather(_ request: PolicyRequest, vm: VMRecord, facts: PolicyFacts,
                       probe: DestinationProbe = DestinationProbe()) -> PolicyContext {
        let need = neededFacts(request.operation, vm: vm)
        var ctx = PolicyContext(decisionID: request.decisionID, time: request.time)
        func attempt<T>(_ what: String, _ body: () throws -> T) -> Fact<T> {
            do { return .known(try body()) } catch let e as WardenError { return .unknown("\(what) unavailable: \(e.description)") }
            catch { return .unknown("\(what) unavailable: \(error)") }
        }
        if need.contains("host") {
            switch attempt("host labels", { try facts.hostLabels(request.host) }) {
            case .known(let labels?): ctx.host = .known(HostFacts(name: request.host.value, labels: labels))
            case .known(nil): ctx.host = .known(HostFacts(name: request.host.value, labels: [:]))
            case .unknown(let why): ctx.host = .unknown(why)
            }
        } else {
            ctx.host = .known(HostFacts(name: request.host.value, labels: [:]))
        }
        if need.contains("replicas") { ctx.replicas = attempt("replica count") { try facts.liveReplicaCount(of: vm.id) } }
        if need.contains("lastScan") { ctx.lastScan = attempt("scan history") { try facts.lastScan(of: vm.id) } }
        if need.contains("advisories") {
            if case .known(let last?) = ctx.lastScan {
                ctx.advisoriesSinceScan = attempt("advisory store") { try facts.advisoriesImported(after: last) }
            }
        }
        if need.contains("findings") {
            switch attempt("findings", { try facts.openFindingList(of: vm.id) }) {
            case .known(let list?):
                var counts: [Severity: Int] = [:]
                for f in list { counts[f.severity, default: 0] += 1 }
                ctx.openFindings = .known(counts)
                ctx.openFindingList = list
            case .known(nil): ctx.openFindings = attempt("findings") { try facts.openFindings(of: vm.id) }
            case .unknown(let why): ctx.openFindings = .unknown(why)
            }
        }
        if need.contains("owner") { ctx.ownerPresent = attempt("owner") { try facts.ownerPresent(vm) } }
        if need.contains("attestation") { ctx.attestation = attempt("attestation") { try facts.hostAttestation(request.host) } }
        if need.contains("malware") { ctx.malwareScan = attempt("malware scans") { try facts.latestMalwareScan(of: vm.id) } }
        if let r = request.reexposure { ctx.reexposure = .known(r) } else { ctx.reexposure = .unknown("not computed for this operation") }
        if let dest = request.destination { ctx.destination = probe.probe(dest) }
        ctx.mirror = request.mirror
        ctx.registry = request.registry
        ctx.signature = request.signature
        ctx.keepIdentity = request.keepIdentity
        ctx.encrypted = request.encrypted
        return ctx
    }
}

/// Facts from the ledger. Findings and advisories come from closures so that the advisory
/// store can provide them; without one they are unknown (and fail closed where needed).
/// ``wired(_:)`` connects them to the advisory store in the same database.
public struct LedgerPolicyFacts: PolicyFacts {
    public let store: any LedgerStore
    public var findings: (@Sendable (VMID) throws -> [Severity: Int])?
    public var findingList: (@Sendable (VMID) throws -> [OpenFinding])?
    public var advisoriesAfter: (@Sendable (Date) throws -> Int)?

    public init(store: any LedgerStore, findings: (@Sendable (VMID) throws -> [Severity: Int])? = nil,
                findingList: (@Sendable (VMID) throws -> [OpenFinding])? = nil,
                advisoriesAfter: (@Sendable (Date) throws -> Int)? = nil) {
        self.store = store; self.findings = findings; self.findingList = findingList; self.advisoriesAfter = advisoriesAfter
    }

    /// Ledger facts with findings and advisory imports from the ``AdvisoryStore`` in the
    /// ledger's own database (every Warden command and the libvirt hook decide with these).
    /// A VM's open findings are its stored inventories (the last `warden scan` of its disks)
    /// matched against the advisories stored now. A store that is not the SQLite ledger has
    /// no advisory store: those facts stay unknown and fail closed.
    public static func wired(_ store: any LedgerStore) -> LedgerPolicyFacts {
        guard let advisories = store.advisoryFacts else { return LedgerPolicyFacts(store: store) }
        return LedgerPolicyFacts(
            store: store,
            findingList: { vm in
                let disks = try store.disks(of: vm)
                return try advisories.openFindings(disks: disks).findings.map {
                    OpenFinding(id: $0.advisory, aliases: $0.aliases, severity: $0.severity, package: $0.package,
                                version: $0.installedVersion, fixedVersion: $0.fixedVersion)
                }
            },
            advisoriesAfter: { date in try advisories.advisoryCountImported(after: date) })
    }

    public func hostLabels(_ host: HostName) throws -> [String: String]? { try store.host(host)?.labels }
    /// On a host of a fleet, the count includes the fleet's VMs the agent pulled; when that copy
    /// is older than its bound the count is unknown (and `maxReplicas` fails closed, saying why).
    public func liveReplicaCount(of vm: VMID) throws -> Int {
        if let fleet = try store.fleetFreshness() { try fleet.requireFresh() }
        return try store.liveReplicas(of: vm).count
    }
    public func lastScan(of vm: VMID) throws -> Date? { try store.lastScan(of: vm) }
    public func openFindings(of vm: VMID) throws -> [Severity: Int] {
        if let findings { return try findings(vm) }
        guard let findingList else { throw WardenError(.unavailable, "no advisory store for this ledger") }
        var counts: [Severity: Int] = [:]
        for f in try findingList(vm) { counts[f.severity, default: 0] += 1 }
        return counts
    }
    public func openFindingList(of vm: VMID) throws -> [OpenFinding]? {
        guard findings == nil, let findingList else { return nil }
        return try findingList(vm)
    }
    public func advisoriesImported(after date: Date) throws -> Int {
        guard let advisoriesAfter else { throw WardenError(.unavailable, "no advisory store for this ledger") }
        return try advisoriesAfter(date)
    }
    /// Present: the VM has a recorded owner (not empty, not `unknown`), and the VM is not retired.
    public func ownerPresent(_ vm: VMRecord) throws -> Bool {
        let o = vm.owner.trimmingCharacters(in: .whitespaces)
        return !o.isEmpty && o != "unknown" && vm.state != .retired
    }
    public func hostAttestation(_ host: HostName) throws -> HostAttestationFact? {
        try store.latestHostEvent(kind: .hostAttested, host: host).map { HostAttestationFact(event: $0) }
    }
    public func latestMalwareScan(of vm: VMID) throws -> MalwareScanFact? {
        try store.events(of: vm).last { $0.kind == .malwareScanned }.map { MalwareScanFact(event: $0) }
    }
}
