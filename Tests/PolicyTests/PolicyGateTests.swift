import Foundation
import Ledger
import Testing
import WardenCore
import WardenTestSupport
@testable import Policy
import Storage
import StoreTestSupport
import Advisories
import AdvisoryStorage

/// PolicyGate on the real ledgers (SQLite, and PostgreSQL where the test takes a backend):
/// facts from lineage and findings, decisions recorded, fail closed.
@Suite struct PolicyGateTests {
    /// A store of `backend` and a folder for policy files.
    func withStore<T>(_ backend: StoreBackend, _ body: (any LedgerQueries, String) throws -> T) throws -> T {
        try Fixtures.withTemporaryDirectory { dir in try backend.with { try body($0, dir) } }
    }

    func withLedger<T>(_ body: (SQLiteLedger, String) throws -> T) throws -> T {
        try Fixtures.withTemporaryDirectory { dir in
            let ledger = SQLiteLedger(database: try WardenDatabase(path: dir + "/warden.db"), host: HostName("h1")!)
            return try body(ledger, dir)
        }
    }

    func child(of parent: VMRecord, _ name: String, kind: EventKind = .copied, in l: any LedgerStore) throws -> VMRecord {
        let vm = VMRecord(name: name, owner: "alice", labels: parent.labels, state: .stopped, parent: parent.id,
                          parentGeneration: parent.generation)
        return try l.createVM(vm, disks: [], event: NewEvent(kind: kind, vm: vm.id, host: HostName("h1")!)).0
    }

    static let twoCopies = """
    apiVersion: warden/v1
    kind: Policy
    rules:
      - name: at-most-two-live-copies
        match: { labels: { sensitivity: high } }
        on: [copy, clone]
        require: { maxReplicas: 2 }
    """

    /// On a host enrolled in a fleet, the replica count includes the VMs the agent pulled; when
    /// that copy is older than its bound (or was never pulled), maxReplicas fails closed and
    /// says why. A lone host (no agent) decides from its own ledger as before.
    @Test func staleFleetFactsFailMaxReplicasClosed() throws {
        try withLedger { l, dir in
            let set = try PolicySet.parse(Self.twoCopies)
            let root = try l.createVM(VMRecord(name: "db", owner: "alice", labels: ["sensitivity": "high"], state: .stopped),
                                      disks: [], event: NewEvent(kind: .registered, vm: nil, host: HostName("h1")!)).0
            func decide() -> Decision {
                PolicyGate.decide(PolicyRequest(operation: .copy, host: HostName("h1")!), vm: root, policy: .success(set),
                                  facts: LedgerPolicyFacts(store: l))
            }
            #expect(decide().effect == .allow)
            let agent = dir + "/agent"
            try FileManager.default.createDirectory(atPath: agent, withIntermediateDirectories: true)
            try Data("{}".utf8).write(to: URL(fileURLWithPath: agent + "/agent.json"))
            // Enrolled, never pulled.
            #expect(decide().effect == .deny)
            #expect(decide().reasons.joined().contains("never pulled"), "\(decide().reasons)")
            func pulled(_ ago: TimeInterval, bound: Double?) throws {
                let s = FleetSyncState(ackedSeq: 0, lastPullUs: LedgerTime.micros(Date().addingTimeInterval(-ago)), maxStalenessSeconds: bound)
                try JSONEncoder().encode(s).write(to: URL(fileURLWithPath: agent + "/state.json"))
            }
            try pulled(10, bound: nil)
            #expect(decide().effect == .allow)
            try pulled(400, bound: nil)        // the default bound is 300 s
            #expect(decide().effect == .deny)
            #expect(decide().reasons.joined().contains("400 s old"), "\(decide().reasons)")
            try pulled(400, bound: 600)
            #expect(decide().effect == .allow)
        }
    }

    /// Replicas are the live members of the whole family: from any member, retired ones excluded.
    @Test(arguments: StoreBackend.all) func replicasAreCountedAcrossLineage(_ backend: StoreBackend) throws {
        try withStore(backend) { l, _ in
            let set = try PolicySet.parse(Self.twoCopies)
            let root = try l.createVM(VMRecord(name: "db", owner: "alice", labels: ["sensitivity": "high"], state: .stopped),
                                      disks: [], event: NewEvent(kind: .registered, vm: nil, host: HostName("h1")!)).0
            func decide(_ vm: VMRecord) -> Effect {
                PolicyGate.decide(PolicyRequest(operation: .copy, host: HostName("h1")!), vm: vm, policy: .success(set),
                                  facts: LedgerPolicyFacts(store: l)).effect
            }
            #expect(decide(root) == .allow)                    // 1 live, 2 after the copy
            let a = try child(of: root, "db-a", in: l)
            #expect(decide(root) == .deny)                     // 2 live, 3 after
            #expect(decide(a) == .deny)                        // counted from the child too
            let grandchild = try child(of: a, "db-a-1", kind: .cloned, in: l)
            #expect(decide(grandchild) == .deny)
            // Retire two: one live member left.
            for vm in [a, grandchild] {
                _ = try l.updateVM(vm.id, event: NewEvent(kind: .retired, vm: vm.id, host: HostName("h1")!)) { $0.state = .retired }
            }
            #expect(decide(root) == .allow)
            // An unrelated VM does not count.
            _ = try l.createVM(VMRecord(name: "other", owner: "bob", labels: ["sensitivity": "high"], state: .stopped),
                               disks: [], event: NewEvent(kind: .registered, vm: nil, host: HostName("h1")!))
            #expect(decide(root) == .allow)
            let d = PolicyGate.decide(PolicyRequest(operation: .copy, host: HostName("h1")!), vm: grandchild, policy: .success(set),
                                      facts: LedgerPolicyFacts(store: l))
            #expect(d.reasons == ["rule at-most-two-live-copies: 2 live copies in the lineage after this copy, at most 2 allowed"])
        }
    }

    @Test(arguments: StoreBackend.all) func decisionsAreRecorded(_ backend: StoreBackend) throws {
        try withStore(backend) { l, dir in
            let policyDir = dir + "/policy"
            try FileManager.default.createDirectory(atPath: policyDir, withIntermediateDirectories: true)
            try Self.twoCopies.write(toFile: policyDir + "/p.yaml", atomically: true, encoding: .utf8)
            let root = try l.createVM(VMRecord(name: "db", owner: "alice", labels: ["sensitivity": "high"], state: .stopped),
                                      disks: [], event: NewEvent(kind: .registered, vm: nil, host: HostName("h1")!)).0
            let ok = try PolicyGate.check(PolicyRequest(operation: .copy, host: HostName("h1")!), vm: root, store: l, source: .explicit(policyDir))
            #expect(ok.effect == .allow)
            _ = try child(of: root, "db-a", in: l)
            #expect(throws: WardenError(.denied, "denied copy of db by Warden policy: rule at-most-two-live-copies: 3 live copies in the lineage after this copy, at most 2 allowed")) {
                try PolicyGate.check(PolicyRequest(operation: .copy, host: HostName("h1")!), vm: root, store: l, source: .explicit(policyDir))
            }
            let events = try l.events(of: root.id).filter { $0.kind == .policyDecision }
            #expect(events.map { $0.payload["effect"] } == [.string("allow"), .string("deny")])
            let revision = try PolicySet.load(directory: policyDir).revision
            #expect(events.allSatisfy { $0.payload["revision"] == .string(revision) && $0.payload["op"] == .string("copy") })
            #expect(events.last?.payload["rules"] == .array([.string("at-most-two-live-copies")]))
            #expect(events.first?.payload["decision"] == .string(ok.id.uuidString.lowercased()))
            // An invalid policy denies, and the denial is recorded with the reason.
            try "apiVersion: warden/v1\nkind: Policy\nrules:\n  - name: x\n    on: [copy]\n    require: { scanAge: soon }\n"
                .write(toFile: policyDir + "/p.yaml", atomically: true, encoding: .utf8)
            #expect(throws: WardenError.self) {
                try PolicyGate.check(PolicyRequest(operation: .transfer, host: HostName("h1")!), vm: root, store: l, source: .explicit(policyDir))
            }
            let last = try #require(try l.events(of: root.id).last)
            #expect(last.kind == .policyDecision && last.payload["effect"] == .string("deny") && last.payload["failed_closed"] == .bool(true))
            #expect(last.payload["reasons"] == .array([.string("failing closed: policy unavailable: \(policyDir)/p.yaml: line 6: rule 'x': require.scanAge: 'soon' is not a duration like 7d, 12h, 1d12h, 90m")]))
            // No default directory: no policy, allowed, still recorded.
            let none = try PolicyGate.load(.defaultDirectory, environment: ["WARDEN_HOME": dir + "/nowhere"])
            #expect(none.rules.isEmpty)
        }
    }

    /// `findings` rules decide from the advisory store in the ledger's own database, on every
    /// backend: unknown (never scanned) fails closed; a critical finding denies; fixed, allowed.
    @Test(arguments: StoreBackend.all) func findingsComeFromTheAdvisoryStoreBesideTheLedger(_ backend: StoreBackend) throws {
        try withStore(backend) { l, dir in
            try PolicyFiles.write(PolicyFiles.noCriticalsOnline, in: dir)
            let vm = try l.createVM(VMRecord(name: "db1", owner: "alice", state: .stopped),
                                    disks: [DiskRecord(vm: VMID(), index: 0, path: dir + "/db1.qcow2", format: "qcow2")],
                                    event: NewEvent(kind: .registered, vm: nil, host: HostName("h1")!)).0
            func decide() -> Decision {
                PolicyGate.decide(PolicyRequest(operation: .start, host: HostName("h1")!), vm: vm,
                                  policy: .success(try! PolicySet.load(directory: dir + "/policy")), facts: LedgerPolicyFacts.wired(l))
            }
            var d = decide()
            #expect(d.effect == .deny && d.reasons.joined().contains("never scanned"), "\(d.reasons)")
            let advisory = AdvisoryRecord(id: "DSA-77-1", source: "osv", aliases: ["CVE-2026-77"], severity: .critical,
                                          affected: [AffectedPackage(ecosystem: "Debian:12", package: "openssl",
                                                                     ranges: [[.introduced("0"), .fixed("3.0.13-1")]])])
            _ = try l.advisories.importRecords([advisory], file: "t")
            let key = WardenCore.Digest(hex: String(repeating: "ab", count: 32))
            try l.advisories.storeInventory(key: key, image: dir + "/db1.qcow2", osID: "debian", versionID: "12",
                                            packages: [MatchPackage(name: "libssl3", version: "3.0.11-1", sourceName: "openssl", sourceVersion: "3.0.11-1")])
            d = decide()
            #expect(d.effect == .deny && d.reasons.joined().contains("DSA-77-1 (CVE-2026-77) in libssl3 3.0.11-1"), "\(d.reasons)")
            try l.advisories.storeInventory(key: WardenCore.Digest(hex: String(repeating: "cd", count: 32)), image: dir + "/db1.qcow2",
                                            osID: "debian", versionID: "12",
                                            packages: [MatchPackage(name: "libssl3", version: "3.0.13-1", sourceName: "openssl", sourceVersion: "3.0.13-1")])
            d = decide()
            #expect(d.effect == .allow, "\(d.reasons)")
        }
    }

    /// A database that breaks under the gate: facts the rules need are unknown and the decision
    /// cannot be recorded, so the operation is denied with a reason.
    @Test func unreachableDatabaseDenies() throws {
        try withLedger { l, dir in
            let set = try PolicySet.parse(Self.twoCopies)
            let root = try l.createVM(VMRecord(name: "db", owner: "alice", labels: ["sensitivity": "high"], state: .stopped),
                                      disks: [], event: NewEvent(kind: .registered, vm: nil, host: HostName("h1")!)).0
            // A ledger that can be read but not written (read-only): the decision cannot be recorded.
            let readOnly = SQLiteLedger(database: try WardenDatabase(path: dir + "/warden.db", readOnly: true), host: HostName("h1")!)
            // And a ledger that does not know the VM: the replica count is unknown, so it denies.
            let d = PolicyGate.decide(PolicyRequest(operation: .copy, host: HostName("h1")!), vm: root, policy: .success(set),
                                      facts: LedgerPolicyFacts(store: SQLiteLedger(database: try WardenDatabase(path: dir + "/other.db"), host: HostName("h1")!)))
            #expect(d.effect == .deny && d.reasons.first?.contains("unknown: replica count") == true)
            var thrown: WardenError?
            do {
                try PolicyGate.check(PolicyRequest(operation: .copy, host: HostName("h1")!), vm: root, store: readOnly, source: .loaded(set))
            } catch let e as WardenError { thrown = e }
            #expect(thrown?.code == .denied)
            #expect(thrown?.message.contains("failing closed: cannot record the decision in the ledger") == true, "\(String(describing: thrown))")
        }
        // A database that cannot be opened at all (the hook and `policy check` open it with create: false).
        #expect(throws: WardenError.self) { try WardenDatabase(path: "/nonexistent/warden.db", create: false) }
    }
}
