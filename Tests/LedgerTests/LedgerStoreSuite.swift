import Foundation
import PostgresNIO
import Testing
import WardenTestSupport
import Ledger
import WardenCore
import Storage
import LedgerPostgres
import StoreTestSupport

struct StoreTestError: Error {}

/// The one suite every ``LedgerStore`` backend passes: the guarantees the services and the
/// policy gate build on.
@Suite struct LedgerStoreSuite {
    func vm(_ name: String, parent: VMID? = nil) -> VMRecord { VMRecord(name: name, owner: "o", state: .stopped, parent: parent) }
    func register(_ s: any LedgerStore, _ v: VMRecord, disk: String? = nil, file: DiskRecord.FileID? = nil) throws -> VMRecord {
        let disks = disk.map { [DiskRecord(vm: v.id, index: 0, path: $0, format: "qcow2", file: file)] } ?? []
        return try s.createVM(v, disks: disks, event: NewEvent(kind: .registered, vm: v.id)).0
    }

    @Test(arguments: StoreBackend.all) func atomicallyCommitsEverythingOrNothing(_ b: StoreBackend) throws {
        try b.with { s in
            let a = try register(s, vm("a"))
            #expect(throws: StoreTestError.self) {
                try s.atomically(family: a.id) {
                    _ = try register(s, vm("b", parent: a.id))
                    _ = try s.append(NewEvent(kind: .policyDecision, vm: a.id))
                    throw StoreTestError()
                }
            }
            #expect(try s.listVMs().map(\.name) == ["a"])
            #expect(try s.eventCount() == 1)
            let n = try s.atomically(family: a.id) { () -> Int in
                _ = try register(s, vm("b", parent: a.id))
                // Reads inside see the transaction's own writes.
                return try s.liveReplicas(of: a.id).count
            }
            #expect(n == 2)
            #expect(try s.eventCount() == 2)
            // Nested calls join the outer transaction.
            try s.atomically(family: nil) { try s.atomically(family: nil) { _ = try register(s, vm("c")) } }
            #expect(try s.listVMs().count == 3)
        }
    }

    /// Each VM's latest event of a kind, and only VMs that have one.
    @Test(arguments: StoreBackend.all) func latestEventOfAKindPerVM(_ b: StoreBackend) throws {
        try b.with { s in
            let a = try s.createVM(VMRecord(name: "a", owner: "o"), disks: [], event: NewEvent(kind: .registered, vm: nil)).0
            let c = try s.createVM(VMRecord(name: "c", owner: "o"), disks: [], event: NewEvent(kind: .registered, vm: nil)).0
            _ = try s.createVM(VMRecord(name: "d", owner: "o"), disks: [], event: NewEvent(kind: .registered, vm: nil))
            for (vm, n) in [(a, 1), (c, 2), (a, 3), (c, 4), (a, 5)] {
                _ = try s.append(NewEvent(kind: .networkState, vm: vm.id, payload: ["n": .number(Double(n))]))
                _ = try s.append(NewEvent(kind: .started, vm: vm.id))
            }
            let latest = try s.latestEvents(kind: .networkState)
            #expect(Dictionary(uniqueKeysWithValues: latest.map { ($0.vm!, $0.payload["n"]) }) == [a.id: .number(5), c.id: .number(4)])
            #expect(try s.latestEvents(kind: .retired).isEmpty)
            // Filtered by payload text: only a VM whose *latest* event mentions it.
            _ = try s.append(NewEvent(kind: .networkState, vm: c.id, payload: ["interfaces": .array([.string("vnet7")])]))
            #expect(try s.latestEvents(kind: .networkState, mentioning: "\"vnet7\"").map(\.vm) == [c.id])
            _ = try s.append(NewEvent(kind: .networkState, vm: c.id, payload: ["interfaces": .array([.string("vnet8")])]))
            #expect(try s.latestEvents(kind: .networkState, mentioning: "\"vnet7\"").isEmpty)
        }
    }

    /// A host's latest VM-less event of a kind (enrolments, attestations); VM events and other hosts do not count.
    @Test(arguments: StoreBackend.all) func latestHostEventOfAKind(_ b: StoreBackend) throws {
        try b.with { s in
            let h1 = HostName("h1")!, h2 = HostName("h2")!
            #expect(try s.latestHostEvent(kind: .hostAttested, host: h1) == nil)
            let a = try register(s, vm("a"))
            _ = try s.append(NewEvent(kind: .hostAttested, vm: nil, host: h1, payload: ["trusted": .bool(false)]))
            let second = try s.append(NewEvent(kind: .hostAttested, vm: nil, host: h1, payload: ["trusted": .bool(true)]))
            _ = try s.append(NewEvent(kind: .hostAttested, vm: a.id, host: h1, payload: ["trusted": .bool(false)]))
            _ = try s.append(NewEvent(kind: .hostAttested, vm: nil, host: h2, payload: ["trusted": .bool(false)]))
            _ = try s.append(NewEvent(kind: .hostEnrolled, vm: nil, host: h1))
            let got = try s.latestHostEvent(kind: .hostAttested, host: h1)
            #expect(got?.seq == second.seq)
            #expect(got?.payload["trusted"] == .bool(true))
            #expect(try s.latestHostEvent(kind: .hostAttested, host: h2)?.host == h2)
            #expect(try s.latestHostEvent(kind: .hostEnrolled, host: h2) == nil)
        }
    }

    @Test(arguments: StoreBackend.all) func oneLiveVMPerDiskFile(_ b: StoreBackend) throws {
        try b.with { s in
            let id = DiskRecord.FileID(device: 7, inode: 42)
            let a = try register(s, vm("a"), disk: "/images/a.qcow2", file: id)
            // Same path, or the same file under another path: refused by the store itself.
            #expect(throws: WardenError.self) { _ = try register(s, vm("b"), disk: "/images/a.qcow2") }
            #expect(throws: WardenError.self) { _ = try register(s, vm("c"), disk: "/images/link.qcow2", file: id) }
            #expect(try s.vms(withDisk: "/images/other-name.qcow2", file: id).map(\.id) == [a.id])
            #expect(try s.vms(withDisk: "/images/a.qcow2", file: nil).map(\.id) == [a.id])
            // Once the owner is retired, the disk may belong to a new VM.
            _ = try s.updateVM(a.id, event: NewEvent(kind: .retired, vm: a.id)) { $0.state = .retired }
            let d = try register(s, vm("d"), disk: "/images/a.qcow2", file: id)
            #expect(try s.vms(withDisk: "/images/a.qcow2", file: id).map(\.id).sorted { $0.description < $1.description }
                    == [a.id, d.id].sorted { $0.description < $1.description })
        }
    }

    @Test(arguments: StoreBackend.all) func liveReplicasCountTheWholeFamily(_ b: StoreBackend) throws {
        try b.with { s in
            let root = try register(s, vm("root"))
            let child = try register(s, vm("child", parent: root.id))
            let grandchild = try register(s, vm("gc", parent: child.id))
            #expect(try s.liveReplicas(of: grandchild.id).count == 3)
            _ = try s.updateVM(child.id, event: NewEvent(kind: .retired, vm: child.id)) { $0.state = .retired }
            #expect(try s.liveReplicas(of: root.id).count == 2)
        }
    }
}

extension LedgerStoreSuite {
    @Test(arguments: StoreBackend.all) func ingestIsIdempotentPerHost(_ b: StoreBackend) throws {
        try b.with { s in
            let v = try register(s, vm("a"))
            let h1 = HostName("h1")!, h2 = HostName("h2")!
            func ev(_ id: String, claimedHost: HostName = HostName("elsewhere")!) -> IngestedEvent {
                IngestedEvent(id: id, event: NewEvent(kind: .started, vm: v.id, host: claimedHost))
            }
            let first = try s.ingest([ev("e1"), ev("e2"), ev("e1")], from: h1)
            #expect(first.map(\.duplicate) == [false, false, true])
            #expect(first[2].seq == first[0].seq)
            // Delivered again (the agent did not see the answer): nothing new is appended.
            let again = try s.ingest([ev("e1"), ev("e2")], from: h1)
            #expect(again == first.prefix(2).map { IngestOutcome(id: $0.id, seq: $0.seq, duplicate: true) })
            // The same id from another host is another event; the claimed host is ignored.
            let other = try s.ingest([ev("e1")], from: h2)
            #expect(other[0].duplicate == false)
            #expect(try s.eventCount() == 4)
            #expect(try s.event(seq: first[0].seq)?.host == h1)
            #expect(try s.event(seq: other[0].seq)?.host == h2)
            // A malformed id is refused before anything is written.
            #expect(throws: WardenError.self) { _ = try s.ingest([ev("e3"), ev("bad id\n")], from: h1) }
            #expect(try s.eventCount() == 4)
        }
    }
}

extension LedgerStoreSuite {
    @Test(arguments: StoreBackend.all) func upsertAndHostResidencyMirrorAnotherLedger(_ b: StoreBackend) throws {
        try b.with { s in
            let t0 = LedgerTime.date(LedgerTime.micros(Date(timeIntervalSince1970: 1_790_000_000)))
            let parent = VMRecord(name: "base", owner: "alice", labels: ["tier": "web"], state: .registered, createdAt: t0, updatedAt: t0)
            var child = VMRecord(name: "child", owner: "alice", state: .stopped, parent: parent.id, parentGeneration: parent.generation,
                                 createdAt: t0, updatedAt: t0)
            // A child before its parent is refused (the agent pushes in creation order).
            #expect(throws: WardenError.self) { try s.upsertVM(child) }
            try s.upsertVM(parent)
            try s.upsertVM(child)
            #expect(try s.vm(child.id) == child)
            #expect(try s.vm(parent.id)?.labels == ["tier": "web"])
            child.state = .running; child.labels = ["moved": "yes"]; child.generation = UUID()
            try s.upsertVM(child)
            #expect(try s.vm(child.id) == child)
            #expect(try s.eventCount() == 0)
            let h1 = HostName("h1")!, h2 = HostName("h2")!
            try s.replaceResidency(vm: child.id, host: h1, with: [
                ResidencyRecord(vm: child.id, host: h1, kind: .ran, from: t0, to: t0.addingTimeInterval(60)),
                // Intervals of another host are not this host's to report.
                ResidencyRecord(vm: child.id, host: h2, kind: .ran, from: t0, to: nil),
            ])
            try s.replaceResidency(vm: child.id, host: h2, with: [ResidencyRecord(vm: child.id, host: h2, kind: .ran, from: t0.addingTimeInterval(60))])
            // Reported again, h1's interval is replaced, not doubled.
            try s.replaceResidency(vm: child.id, host: h1, with: [ResidencyRecord(vm: child.id, host: h1, kind: .ran, from: t0, to: t0.addingTimeInterval(60))])
            let res = try s.residency(of: child.id)
            #expect(res.count == 2)
            #expect(res.contains(ResidencyRecord(vm: child.id, host: h2, kind: .ran, from: t0.addingTimeInterval(60), to: nil)))
            let page = try s.events(after: 0, limit: 10)
            #expect(page.isEmpty)
            _ = try s.append(NewEvent(kind: .started, vm: child.id))
            _ = try s.append(NewEvent(kind: .stopped, vm: child.id))
            #expect(try s.events(after: 1, limit: 10).map(\.seq) == [2])
            #expect(try s.events(after: 0, limit: 1).map(\.seq) == [1])
        }
    }
}

extension LedgerStoreSuite {
    /// `ledger verify` and RFC 9162 proofs over each backend's log.
    @Test(arguments: StoreBackend.all) func verifyAndProofsOverEveryBackend(_ b: StoreBackend) throws {
        try b.with { s in
            let log = try #require(s as? any LogStorage & LedgerLog)
            let v = try register(s, vm("a"))
            // 600 events: more than two stored 256-leaf subtrees, in batches of different sizes.
            for i in 0..<599 { _ = try s.append(NewEvent(kind: i % 2 == 0 ? .started : .stopped, vm: v.id, payload: ["i": .number(Double(i))])) }
            #expect(try s.eventCount() == 600)
            let report = try LedgerVerifier(storage: log, keysDirectory: "/nonexistent", witness: nil).verify()
            #expect(report.problems.isEmpty, "\(report.problems)")
            #expect(report.entriesChecked == 600 && report.subtreesChecked >= 2)
            let cp = try #require(try log.latestCheckpoint())
            #expect(cp.treeSize == 600 && report.rootHex == cp.root.hexEncoded)
            #expect(cp.isValid(publicKey: try #require(try log.publicKey(of: cp.host))))
            for seq: Int64 in [1, 256, 257, 600] {
                let p = try log.inclusionProof(seq: seq, treeSize: 600)
                #expect(Merkle.rootFromInclusion(index: seq - 1, size: 600, leaf: p.leafHash, path: p.path) == cp.root)
            }
            let c = try log.consistencyProof(from: 300, to: 600)
            #expect(Merkle.verifyConsistency(from: 300, to: 600, oldRoot: c.oldRoot, newRoot: c.newRoot, proof: c.proof))
            #expect(c.newRoot == cp.root)
        }
    }
}

/// Tampering with the PostgreSQL log is found, as on SQLite (LedgerLogTests).
@Suite struct PostgresTamperTests {
    @Test func editsAndDeletionsAreFound() throws {
        let server = try PostgresServer.shared()
        let name = try server.createDatabase()
        defer { server.dropDatabase(name) }
        let db = try PostgresStore(url: server.urlWithPassword(name))
        defer { db.close() }
        let keys = FileManager.default.temporaryDirectory.appendingPathComponent("warden-pgkeys-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: keys) }
        let ledger = PostgresLedger(store: db, keysDirectory: keys, host: HostName("srv")!)
        let v = VMRecord(name: "a", owner: "o")
        _ = try ledger.createVM(v, disks: [], event: NewEvent(kind: .registered, vm: v.id))
        _ = try ledger.append((0..<299).map { NewEvent(kind: .started, vm: v.id, payload: ["i": .number(Double($0))]) })
        func verify() throws -> VerifyReport { try LedgerVerifier(storage: ledger, keysDirectory: keys, witness: nil).verify() }
        #expect(try verify().problems.isEmpty)
        try server.psql(#"UPDATE events SET payload = '{"i":9999}' WHERE seq = 10"#, database: name)
        #expect(try verify().firstBad?.kind == "edited")
        #expect(try verify().firstBad?.seq == 10)
        try server.psql(#"UPDATE events SET payload = '{"i":8}' WHERE seq = 10"#, database: name)
        #expect(try verify().problems.isEmpty)
        try server.psql("DELETE FROM events WHERE seq = 300", database: name)
        let cut = try verify()
        #expect(cut.problems.contains { $0.kind == "missing" }, "\(cut.problems)")
    }

    /// The exposure query's planner settings last for its own transaction; inside a caller's
    /// transaction they are put back before it returns.
    @Test func exposureSettingsDoNotLeakIntoACallersTransaction() throws {
        let server = try PostgresServer.shared()
        let name = try server.createDatabase()
        defer { server.dropDatabase(name) }
        let db = try PostgresStore(url: server.urlWithPassword(name))
        defer { db.close() }
        let ledger = PostgresLedger(store: db, keysDirectory: nil, host: HostName("srv")!)
        func setting(_ n: String) throws -> String { try db.query(PostgresQuery(unsafeSQL: "SHOW \(n)")).first!.decode(String.self) }
        let before = try setting("enable_hashjoin")
        try db.transaction {
            _ = try ledger.exposure(host: HostName("h1")!, from: Date(timeIntervalSince1970: 0), to: Date())
            #expect(try setting("enable_hashjoin") == before)
            #expect(try setting("enable_mergejoin") == "on")
        }
        _ = try ledger.exposure(host: HostName("h1")!, from: Date(timeIntervalSince1970: 0), to: Date())
        #expect(try setting("enable_hashjoin") == before)
    }
}
