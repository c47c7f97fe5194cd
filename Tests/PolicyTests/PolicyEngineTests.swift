import Foundation
import Ledger
import Testing
import WardenCore
@testable import Policy
import AdvisoryStorage

/// Parses an RFC 3339 time for tests.
func t(_ s: String) -> Date {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime]
    return f.date(from: s)!
}

func policy(_ rules: String, defaultEffect: String? = nil) throws -> PolicySet {
    try PolicySet.parse("apiVersion: warden/v1\nkind: Policy\n" + (defaultEffect.map { "defaultEffect: \($0)\n" } ?? "") + "rules:\n" + rules)
}

let sensitive = VMRecord(id: VMID(UUID(uuidString: "11111111-1111-4111-8111-111111111111")!), name: "db1", owner: "alice",
                         labels: ["sensitivity": "high"], state: .stopped)
let plain = VMRecord(id: VMID(UUID(uuidString: "22222222-2222-4222-8222-222222222222")!), name: "web1", owner: "bob",
                     labels: [:], state: .stopped)

/// A context where every fact is known and harmless.
func ctx(at: Date = t("2026-01-05T12:00:00Z"), host: String = "h1", labels: [String: String] = ["zone": "secure"]) -> PolicyContext {
    PolicyContext(decisionID: UUID(uuidString: "00000000-0000-4000-8000-0000000000aa")!, time: at,
                  host: .known(HostFacts(name: host, labels: labels)), replicas: .known(1), lastScan: .known(at.addingTimeInterval(-3600)),
                  openFindings: .known([:]), advisoriesSinceScan: .known(0), reexposure: .known([]), destination: nil,
                  ownerPresent: .known(true))
}

@Suite struct PolicyEngineTests {
    @Test func issueExampleDecisions() throws {
        let set = try PolicySet.parse(issueExample)
        // Sensitive VM, secure host, Monday noon Berlin, freshly scanned: allowed by the require rules.
        let ok = PolicyEngine.decide(set, .start, vm: sensitive, context: ctx())
        #expect(ok.effect == .allow)
        #expect(Set(ok.rules) == ["sensitive-only-in-secure-zone", "office-hours", "dormant-vms-rescan-first"])
        #expect(ok.revision == set.revision)
        #expect(ok.id.uuidString.lowercased() == "00000000-0000-4000-8000-0000000000aa")
        // Wrong zone: denied, with the reason naming host and label.
        let wrong = PolicyEngine.decide(set, .start, vm: sensitive, context: ctx(labels: ["zone": "dmz"]))
        #expect(wrong.effect == .deny)
        #expect(wrong.rules == ["sensitive-only-in-secure-zone"])
        #expect(wrong.reasons == ["rule sensitive-only-in-secure-zone: host h1 has zone=dmz, needs zone=secure"])
        #expect(wrong.summary.hasPrefix("denied start of db1 by Warden policy: rule sensitive-only-in-secure-zone"))
        // Dormant: quarantine, not deny.
        var dormant = ctx()
        dormant.lastScan = .known(t("2025-12-01T00:00:00Z"))
        let q = PolicyEngine.decide(set, .start, vm: plain, context: dormant)
        #expect(q.effect == .quarantine)
        #expect(q.rules == ["dormant-vms-rescan-first"])
        #expect(q.reasons.first?.contains("last scanned 35d12h ago, at most 7d allowed") == true)
        // Dormant and a critical finding: deny beats quarantine.
        dormant.openFindings = .known([.critical: 1, .low: 4])
        let both = PolicyEngine.decide(set, .start, vm: plain, context: dormant)
        #expect(both.effect == .deny)
        #expect(both.rules == ["no-criticals-online"])
        #expect(both.outcomes.count == 2)
        // An operation no rule mentions: allowed by default.
        let snap = PolicyEngine.decide(set, .snapshot, vm: sensitive, context: ctx())
        #expect(snap.effect == .allow && snap.rules.isEmpty && snap.outcomes.isEmpty)
        #expect(snap.reasons == ["no rule applies to snapshot of this VM; default allow"])
    }

    @Test func deterministic() throws {
        let set = try PolicySet.parse(issueExample)
        let a = PolicyEngine.decide(set, .start, vm: sensitive, context: ctx(labels: [:]))
        for _ in 0..<50 { #expect(PolicyEngine.decide(set, .start, vm: sensitive, context: ctx(labels: [:])) == a) }
    }

    @Test func defaultEffectDeny() throws {
        let set = try policy("""
          - name: copies-need-owner
            on: [copy]
            require: { ownerPresent: true }
          - name: no-usb
            on: [export]
            deny: { destination: { removable: true } }
          - name: starts-in-lab
            match: { labels: { env: [lab, test] } }
            on: [start]
            allow: { host: { labels: { zone: lab } } }
        """, defaultEffect: "deny")
        #expect(PolicyEngine.decide(set, .retire, vm: plain, context: ctx()).effect == .deny)
        #expect(PolicyEngine.decide(set, .retire, vm: plain, context: ctx()).reasons == ["no rule applies to retire of this VM; default deny"])
        #expect(PolicyEngine.decide(set, .copy, vm: plain, context: ctx()).effect == .allow)
        // A deny rule that does not fire grants nothing under defaultEffect: deny.
        var c = ctx()
        c.destination = DestinationFacts(path: "/srv/x", resolved: "/srv/x", removable: .known(false))
        let e = PolicyEngine.decide(set, .export, vm: plain, context: c)
        #expect(e.effect == .deny)
        #expect(e.reasons == ["no rule allows export of this VM; default deny"])
        var lab = plain
        lab.labels = ["env": "test"]
        #expect(PolicyEngine.decide(set, .start, vm: lab, context: ctx(labels: ["zone": "lab"])).effect == .allow)
        #expect(PolicyEngine.decide(set, .start, vm: lab, context: ctx(labels: ["zone": "prod"])).effect == .deny)
        // An unknown fact never makes an allow rule fire.
        var unknownHost = ctx()
        unknownHost.host = .unknown("ledger unreachable")
        #expect(PolicyEngine.decide(set, .start, vm: lab, context: unknownHost).effect == .deny)
    }

    @Test func matching() throws {
        let set = try policy("""
          - name: by-name
            match: { names: ["db*", "cache?"], owners: [alice], states: [stopped] }
            on: [start]
            deny: {}
          - name: any-tier
            match: { labels: { tier: "*" } }
            on: [copy]
            deny: {}
        """)
        #expect(PolicyEngine.decide(set, .start, vm: sensitive, context: ctx()).effect == .deny)
        var other = sensitive
        other.owner = "carol"
        #expect(PolicyEngine.decide(set, .start, vm: other, context: ctx()).effect == .allow)
        other = sensitive
        other.name = "cache12"
        #expect(PolicyEngine.decide(set, .start, vm: other, context: ctx()).effect == .allow)
        other.name = "cache1"
        #expect(PolicyEngine.decide(set, .start, vm: other, context: ctx()).effect == .deny)
        other.state = .running
        #expect(PolicyEngine.decide(set, .start, vm: other, context: ctx()).effect == .allow)
        var tiered = plain
        #expect(PolicyEngine.decide(set, .copy, vm: tiered, context: ctx()).effect == .allow)
        tiered.labels["tier"] = "anything"
        #expect(PolicyEngine.decide(set, .copy, vm: tiered, context: ctx()).effect == .deny)
    }

    @Test func hostConditions() throws {
        let set = try policy("""
          - name: hosts
            on: [start, migrate]
            require: { host: { names: [h1, h2], labels: { zone: secure, rack: "*" } } }
        """)
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: ctx(labels: ["zone": "secure", "rack": "r7"])).effect == .allow)
        let noRack = PolicyEngine.decide(set, .start, vm: plain, context: ctx(labels: ["zone": "secure"]))
        #expect(noRack.effect == .deny && noRack.reasons == ["rule hosts: host h1 has no label rack (needs rack=*)"])
        let h3 = PolicyEngine.decide(set, .migrate, vm: plain, context: ctx(host: "h3", labels: ["zone": "secure", "rack": "r1"]))
        #expect(h3.effect == .deny && h3.reasons == ["rule hosts: host h3 is not one of h1, h2"])
    }

    @Test func replicasCountTheOperation() throws {
        let set = try policy("""
          - name: two
            on: [copy, clone, start]
            require: { maxReplicas: 2 }
        """)
        var c = ctx()
        c.replicas = .known(1)
        #expect(PolicyEngine.decide(set, .copy, vm: plain, context: c).effect == .allow)
        c.replicas = .known(2)
        let d = PolicyEngine.decide(set, .clone, vm: plain, context: c)
        #expect(d.effect == .deny)
        #expect(d.reasons == ["rule two: 3 live copies in the lineage after this clone, at most 2 allowed"])
        // start does not add a copy.
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .allow)
        c.replicas = .unknown("database unreachable")
        #expect(PolicyEngine.decide(set, .copy, vm: plain, context: c).reasons == ["rule two: unknown: replica count: database unreachable"])
    }

    @Test func destinations() throws {
        let set = try policy("""
          - name: no-usb
            on: [export, copy]
            deny: { destination: { removable: true } }
          - name: only-vm-roots
            on: [copy, clone]
            require: { destination: { roots: [/srv/vms, /var/lib/libvirt/images/] } }
        """)
        func dest(_ path: String, _ removable: Fact<Bool>) -> PolicyContext {
            var c = ctx(); c.destination = DestinationFacts(path: path, resolved: path, removable: removable, device: "sdb"); return c
        }
        let usb = PolicyEngine.decide(set, .export, vm: plain, context: dest("/media/usb/db.qcow2", .known(true)))
        #expect(usb.effect == .deny && usb.reasons == ["rule no-usb: /media/usb/db.qcow2 is on removable media (sdb)"])
        #expect(PolicyEngine.decide(set, .export, vm: plain, context: dest("/srv/x.qcow2", .known(false))).effect == .allow)
        #expect(PolicyEngine.decide(set, .export, vm: plain, context: dest("/srv/x.qcow2", .unknown("no sysfs"))).effect == .deny)
        #expect(PolicyEngine.decide(set, .export, vm: plain, context: ctx()).reasons == ["rule no-usb: unknown: no destination given"])
        #expect(PolicyEngine.decide(set, .copy, vm: plain, context: dest("/srv/vms/a/b.qcow2", .known(false))).effect == .allow)
        #expect(PolicyEngine.decide(set, .copy, vm: plain, context: dest("/var/lib/libvirt/images/b.qcow2", .known(false))).effect == .allow)
        let outside = PolicyEngine.decide(set, .copy, vm: plain, context: dest("/srv/vmsX/b.qcow2", .known(false)))
        #expect(outside.effect == .deny)
        #expect(outside.reasons == ["rule only-vm-roots: /srv/vmsX/b.qcow2 is not under /srv/vms, /var/lib/libvirt/images/"])
    }

    @Test func scans() throws {
        let set = try policy("""
          - name: fresh
            on: [start]
            require: { scanAge: 1d12h, scanCurrent: true }
        """)
        let now = t("2026-06-01T12:00:00Z")
        var c = ctx(at: now)
        c.lastScan = .known(now.addingTimeInterval(-36 * 3600))
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .allow)
        c.lastScan = .known(now.addingTimeInterval(-36 * 3600 - 1))
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .deny)
        c.lastScan = .known(now.addingTimeInterval(-60))
        c.advisoriesSinceScan = .known(3)
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).reasons == ["rule fresh: 3 advisories imported since the last scan"])
        c.lastScan = .known(nil)
        let never = PolicyEngine.decide(set, .start, vm: plain, context: c)
        #expect(never.reasons == ["rule fresh: never scanned (scans must be at most 1d12h old)", "rule fresh: never scanned, so the scan is not current"])
        c.lastScan = .unknown("database unreachable")
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .deny)
    }

    @Test func findingsAndReexposure() throws {
        let set = try policy("""
          - name: no-highs
            on: [start]
            deny: { findings: { severity: high, count: 2 } }
          - name: no-reexposure
            on: [rollback]
            deny: { reexposes: { severity: high } }
        """)
        var c = ctx()
        c.openFindings = .known([.high: 1, .medium: 9])
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .allow)
        c.openFindings = .known([.high: 1, .critical: 1])
        let two = PolicyEngine.decide(set, .start, vm: plain, context: c)
        #expect(two.effect == .deny && two.reasons == ["rule no-highs: 2 open findings at or above high"])
        c.openFindings = .unknown("no advisory store")
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .deny)
        c.reexposure = .known([ReexposedFinding(id: "CVE-2024-1", severity: .medium)])
        #expect(PolicyEngine.decide(set, .rollback, vm: plain, context: c).effect == .allow)
        c.reexposure = .known([ReexposedFinding(id: "CVE-2024-1", severity: .medium), ReexposedFinding(id: "CVE-2024-2", severity: .critical)])
        let re = PolicyEngine.decide(set, .rollback, vm: plain, context: c)
        #expect(re.effect == .deny && re.reasons == ["rule no-reexposure: re-opens 1 finding at or above high (CVE-2024-2)"])
        c.reexposure = .unknown("not computed")
        #expect(PolicyEngine.decide(set, .rollback, vm: plain, context: c).effect == .deny)
    }

    @Test func ownerPresent() throws {
        let set = try policy("""
          - name: owned
            on: [start]
            require: { ownerPresent: true }
        """)
        var c = ctx()
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .allow)
        c.ownerPresent = .known(false)
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).reasons == ["rule owned: owner 'bob' is not present"])
    }

    @Test func attestedHosts() throws {
        let set = try policy("""
          - name: attested
            on: [start, unlock]
            require: { attested: { maxAge: 1h } }
          - name: not-on-attested
            on: [stop]
            deny: { attested: true }
        """)
        let now = t("2026-01-05T12:00:00Z")
        func fact(ago: TimeInterval, trusted: Bool = true, validFor: Int64 = 8 * 3600) -> HostAttestationFact {
            HostAttestationFact(host: "h1", time: now.addingTimeInterval(-ago), trusted: trusted,
                                reasons: trusted ? [] : ["PCR 7 (sha256) is 00…, baseline lab expects 11…"], baseline: trusted ? "lab" : nil,
                                validFor: PolicyDuration(seconds: validFor))
        }
        var c = ctx(at: now)
        c.attestation = .known(fact(ago: 1800))
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .allow)
        #expect(PolicyEngine.decide(set, .stop, vm: plain, context: c).effect == .deny)   // attested: true holds
        c.attestation = .known(fact(ago: 7200))
        #expect(PolicyEngine.decide(set, .unlock, vm: plain, context: c).reasons == ["rule attested: host h1 was attested 2h ago, at most 1h allowed"])
        c.attestation = .known(fact(ago: 600, validFor: 300))   // the trust policy's own maxAge is shorter
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .deny)
        c.attestation = .known(fact(ago: 60, trusted: false))
        let d = PolicyEngine.decide(set, .start, vm: plain, context: c)
        #expect(d.effect == .deny && d.reasons.first?.contains("failed: PCR 7 (sha256)") == true)
        c.attestation = .known(nil)
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).reasons == ["rule attested: host h1 has never been attested"])
        #expect(PolicyEngine.decide(set, .stop, vm: plain, context: c).effect == .allow)   // attested: true does not hold
        c.attestation = .unknown("ledger unreachable")
        #expect(PolicyEngine.decide(set, .start, vm: plain, context: c).effect == .deny)
        #expect(PolicyEngine.decide(set, .stop, vm: plain, context: c).effect == .deny)
        // The condition's forms.
        #expect(throws: (any Error).self) { try policy("  - name: x\n    on: [start]\n    require: { attested: { maxAge: soon } }\n") }
        #expect(throws: (any Error).self) { try policy("  - name: x\n    on: [start]\n    require: { attested: { since: 1h } }\n") }
        #expect(throws: (any Error).self) { try policy("  - name: x\n    on: [start]\n    require: { attested: yes please }\n") }
    }

    @Test func failClosed() throws {
        let d = PolicyEngine.failClosed(.start, vm: plain, reason: "policy unavailable: p.yaml: line 3: bad", context: ctx())
        #expect(d.effect == .deny && d.failedClosed && d.revision == "unavailable")
        #expect(d.ledgerPayload["failed_closed"] == .bool(true))
        let viaGate = PolicyGate.decide(PolicyRequest(operation: .start, host: HostName("h1")!), vm: plain,
                                        policy: .failure(WardenError(.invalidArgument, "line 3: bad", file: "p.yaml")),
                                        facts: LedgerPolicyFacts(store: UnreachableStore()))
        #expect(viaGate.effect == .deny)
        #expect(viaGate.reasons == ["failing closed: policy unavailable: p.yaml: line 3: bad"])
        // A store that cannot answer makes the needed facts unknown, so rules needing them deny.
        let set = try PolicySet.parse(issueExample)
        let gathered = PolicyGate.decide(PolicyRequest(operation: .start, host: HostName("h1")!, time: t("2026-01-05T12:00:00Z")),
                                         vm: sensitive, policy: .success(set), facts: LedgerPolicyFacts(store: UnreachableStore()))
        #expect(gathered.effect == .deny)
        #expect(gathered.reasons.contains { $0.contains("unknown: host: host labels unavailable: database is locked") })
    }

    @Test func ledgerPayload() throws {
        let set = try PolicySet.parse(issueExample)
        let d = PolicyEngine.decide(set, .start, vm: sensitive, context: ctx(labels: [:]))
        let p = d.ledgerPayload
        #expect(p["op"] == .string("start"))
        #expect(p["effect"] == .string("deny"))
        #expect(p["decision"] == .string("00000000-0000-4000-8000-0000000000aa"))
        #expect(p["revision"] == .string(set.revision))
        #expect(p["rules"] == .array([.string("sensitive-only-in-secure-zone")]))
        #expect(p["reasons"] == .array(d.reasons.map { .string($0) }))
    }
}

/// A ledger whose every call fails the way an unreachable database does.
struct UnreachableStore: LedgerStore {
    func fail() -> WardenError { WardenError(.unavailable, "database is locked") }
    func createVM(_ vm: VMRecord, disks: [DiskRecord], event: NewEvent) throws -> (VMRecord, EventRecord) { throw fail() }
    func vm(_ id: VMID) throws -> VMRecord? { throw fail() }
    func resolveVM(_ reference: String) throws -> VMRecord { throw fail() }
    func listVMs() throws -> [VMRecord] { throw fail() }
    func disks(of vm: VMID) throws -> [DiskRecord] { throw fail() }
    func updateVM(_ id: VMID, event: NewEvent, _ change: (inout VMRecord) throws -> Void) throws -> (VMRecord, EventRecord) { throw fail() }
    func replaceDisks(of vm: VMID, with disks: [DiskRecord]) throws { throw fail() }
    func vms(withDisk path: String, file: DiskRecord.FileID?) throws -> [VMRecord] { throw fail() }
    func atomically<T>(family: VMID?, _ body: () throws -> T) throws -> T { throw fail() }
    var advisoryFacts: (any AdvisoryFacts)? { nil }
    func addHost(_ host: HostRecord) throws { throw fail() }
    func host(_ name: HostName) throws -> HostRecord? { throw fail() }
    func listHosts() throws -> [HostRecord] { throw fail() }
    func openResidency(vm: VMID, host: HostName, kind: ResidencyRecord.Kind, at: Date) throws { throw fail() }
    func closeResidency(vm: VMID, host: HostName, kind: ResidencyRecord.Kind, at: Date) throws { throw fail() }
    func residency(of vm: VMID) throws -> [ResidencyRecord] { throw fail() }
    func addSnapshot(_ snapshot: SnapshotRecord) throws { throw fail() }
    func snapshots(of vm: VMID) throws -> [SnapshotRecord] { throw fail() }
    func append(_ event: NewEvent) throws -> EventRecord { throw fail() }
    func ingest(_ events: [IngestedEvent], from host: HostName) throws -> [IngestOutcome] { throw fail() }
    func events(after seq: Int64, limit: Int) throws -> [EventRecord] { throw fail() }
    func upsertVM(_ vm: VMRecord) throws { throw fail() }
    func fleetFreshness() throws -> FleetFreshness? { throw fail() }
    func replaceResidency(vm: VMID, host: HostName, with intervals: [ResidencyRecord]) throws { throw fail() }
    func events(of vm: VMID) throws -> [EventRecord] { throw fail() }
    func latestEvents(kind: EventKind, mentioning: String?) throws -> [EventRecord] { throw fail() }
    func event(seq: Int64) throws -> EventRecord? { throw fail() }
    func latestHostEvent(kind: EventKind, host: HostName) throws -> EventRecord? { throw fail() }
    func eventCount() throws -> Int64 { throw fail() }
    func descendants(of vm: VMID) throws -> [VMRecord] { throw fail() }
    func liveReplicas(of vm: VMID) throws -> [VMRecord] { throw fail() }
    func lastScan(of vm: VMID) throws -> Date? { throw fail() }
}
