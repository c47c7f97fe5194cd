import Crypto
import Foundation
import GRDB
import Testing
import WardenTestSupport
@testable import Ledger
import WardenCore
import StoreTestSupport
@testable import Storage

/// A ledger on a fresh database in a temporary folder (keys beside it).
func withLedger<T>(signs: Bool = true, _ body: (SQLiteLedger, String) throws -> T) throws -> T {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("warden-ledger-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ledger = SQLiteLedger(database: try WardenDatabase(path: dir + "/warden.db"), signs: signs, host: HostName("test-host")!)
    return try body(ledger, dir)
}

@Suite struct SQLiteLedgerTests {
    let t0 = Date(timeIntervalSince1970: 1_780_000_000.123456)

    @Test(arguments: StoreBackend.all) func createReadAndResolveVMs(_ b: StoreBackend) throws {
        try b.with { ledger in
            let vm = VMRecord(name: "web-1", owner: "alice", labels: ["sensitivity": "high", "team": "a"], createdAt: t0, updatedAt: t0)
            let disk = DiskRecord(vm: vm.id, index: 0, path: "/images/web.qcow2", format: "qcow2",
                                  backingChain: ["/images/base.qcow2"], fingerprint: Digest(algorithm: "sha256", hex: String(repeating: "ab", count: 32)))
            let (stored, ev) = try ledger.createVM(vm, disks: [disk], event: NewEvent(kind: .registered, vm: nil, actor: "alice@h", time: t0, payload: ["image": .string("/images/web.qcow2")]))
            #expect(ev.seq == 1)
            #expect(ev.vm == vm.id)
            #expect(ev.generationAfter == vm.generation)
            #expect(try ledger.vm(vm.id) == stored)
            #expect(try ledger.disks(of: vm.id) == [disk])
            #expect(try ledger.resolveVM("web-1").id == vm.id)
            #expect(try ledger.resolveVM(vm.id.description.uppercased()).id == vm.id)
            #expect(try ledger.resolveVM(String(vm.id.description.prefix(8))).id == vm.id)
            #expect(throws: WardenError.self) { try ledger.resolveVM("nope") }
            #expect(try ledger.listVMs() == [stored])
            #expect(try ledger.events(of: vm.id) == [ev])
            #expect(try ledger.event(seq: 1) == ev)
            #expect(try ledger.eventCount() == 1)
        }
    }

    @Test(arguments: StoreBackend.all) func ambiguousNamePrefersLiveVM(_ b: StoreBackend) throws {
        try b.with { ledger in
            let a = try ledger.createVM(VMRecord(name: "db", owner: "o"), disks: [], event: NewEvent(kind: .registered, vm: nil)).0
            let b = try ledger.createVM(VMRecord(name: "db", owner: "o"), disks: [], event: NewEvent(kind: .registered, vm: nil)).0
            #expect(throws: WardenError.self) { try ledger.resolveVM("db") }
            _ = try ledger.updateVM(a.id, event: NewEvent(kind: .retired, vm: nil)) { $0.state = .retired }
            #expect(try ledger.resolveVM("db").id == b.id)
        }
    }

    @Test(arguments: StoreBackend.all) func updateRecordsGenerationsAndLabels(_ b: StoreBackend) throws {
        try b.with { ledger in
            let vm = try ledger.createVM(VMRecord(name: "x", owner: "bob", labels: ["a": "1"]), disks: [], event: NewEvent(kind: .registered, vm: nil)).0
            let newGen = UUID()
            let (after, ev) = try ledger.updateVM(vm.id, event: NewEvent(kind: .rolledBack, vm: nil, payload: ["snapshot": .string("s1")])) {
                $0.generation = newGen
                $0.labels = ["b": "2"]
                $0.owner = "carol"
            }
            #expect(ev.generationBefore == vm.generation)
            #expect(ev.generationAfter == newGen)
            #expect(ev.seq == 2)
            let reread = try #require(try ledger.vm(vm.id))
            #expect(reread == after)
            #expect(reread.labels == ["b": "2"])
            #expect(reread.owner == "carol")
            #expect(throws: WardenError.self) {
                _ = try ledger.updateVM(VMID(), event: NewEvent(kind: .started, vm: nil)) { _ in }
            }
            // A failing change leaves no event behind.
            #expect(throws: WardenError.self) {
                _ = try ledger.updateVM(vm.id, event: NewEvent(kind: .started, vm: nil)) { _ in throw WardenError(.denied, "no") }
            }
            #expect(try ledger.eventCount() == 2)
        }
    }

    @Test(arguments: StoreBackend.all) func lineageQueries(_ b: StoreBackend) throws {
        try b.with { ledger in
            let root = try ledger.createVM(VMRecord(name: "root", owner: "o"), disks: [], event: NewEvent(kind: .registered, vm: nil)).0
            var chain = [root]
            for i in 1...5 {
                let p = chain.last!
                chain.append(try ledger.createVM(VMRecord(name: "c\(i)", owner: "o", parent: p.id, parentGeneration: p.generation),
                                                 disks: [], event: NewEvent(kind: .cloned, vm: nil)).0)
            }
            let side = try ledger.createVM(VMRecord(name: "side", owner: "o", parent: chain[2].id), disks: [], event: NewEvent(kind: .copied, vm: nil)).0
            #expect(Set(try ledger.descendants(of: chain[2].id).map(\.id)) == Set(chain[3...].map(\.id) + [side.id]))
            #expect(try ledger.descendants(of: chain[5].id).isEmpty)
            _ = try ledger.updateVM(chain[4].id, event: NewEvent(kind: .retired, vm: nil)) { $0.state = .retired }
            let replicas = Set(try ledger.liveReplicas(of: side.id).map(\.id))
            #expect(replicas == Set((chain.map(\.id) + [side.id]).filter { $0 != chain[4].id }))
            #expect(throws: WardenError.self) {
                _ = try ledger.createVM(VMRecord(name: "orphan", owner: "o", parent: VMID()), disks: [], event: NewEvent(kind: .cloned, vm: nil))
            }
        }
    }

    @Test(arguments: StoreBackend.all) func hostsResidencySnapshotsAndScans(_ b: StoreBackend) throws {
        try b.with { ledger in
            let vm = try ledger.createVM(VMRecord(name: "v", owner: "o"), disks: [], event: NewEvent(kind: .registered, vm: nil)).0
            let h1 = HostName("h1")!
            try ledger.addHost(HostRecord(name: h1, labels: ["zone": "a"], addedAt: t0))
            #expect(throws: WardenError.self) { try ledger.addHost(HostRecord(name: h1)) }
            #expect(try ledger.host(h1)?.labels == ["zone": "a"])
            // The signing host was added by the first checkpoint, with its key.
            let me = try #require(try ledger.host(HostName("test-host")!))
            #expect(me.publicKey?.count == 32)
            try ledger.openResidency(vm: vm.id, host: h1, kind: .ran, at: t0)
            try ledger.openResidency(vm: vm.id, host: h1, kind: .ran, at: t0.addingTimeInterval(5))
            try ledger.closeResidency(vm: vm.id, host: h1, kind: .ran, at: t0.addingTimeInterval(60))
            try ledger.openResidency(vm: vm.id, host: h1, kind: .stored, at: t0)
            let res = try ledger.residency(of: vm.id)
            #expect(res.count == 2)
            #expect(res.contains(ResidencyRecord(vm: vm.id, host: h1, kind: .ran, from: LedgerTime.date(LedgerTime.micros(t0)), to: LedgerTime.date(LedgerTime.micros(t0.addingTimeInterval(60))))))
            let snap = SnapshotRecord(vm: vm.id, name: "before-upgrade", generation: vm.generation, createdAt: LedgerTime.date(LedgerTime.micros(t0)))
            try ledger.addSnapshot(snap)
            #expect(try ledger.snapshots(of: vm.id) == [snap])
            #expect(try ledger.lastScan(of: vm.id) == nil)
            _ = try ledger.append(NewEvent(kind: .scanned, vm: vm.id, time: t0))
            _ = try ledger.append(NewEvent(kind: .scanned, vm: vm.id, time: t0.addingTimeInterval(100)))
            #expect(try ledger.lastScan(of: vm.id) == LedgerTime.date(LedgerTime.micros(t0.addingTimeInterval(100))))
        }
    }

    @Test(arguments: StoreBackend.all) func canonicalEntryAndLeafHash(_ b: StoreBackend) throws {
        try b.with { ledger in
            let vm = VMID(UUID(uuidString: "0A6F1C3E-0000-4000-8000-000000000001")!)
            let ev = try ledger.append(NewEvent(kind: .policyDecision, vm: vm, actor: "a\"b@h", host: HostName("h1")!,
                                                time: Date(timeIntervalSince1970: 1_780_000_000.5),
                                                payload: ["z": .number(1), "a": .array([.number(0.25), .null, .bool(true)]), "t": .string("x\ny")],
                                                reportedByCaller: true))
            let entry = String(decoding: LedgerEntry.encode(ev), as: UTF8.self)
            #expect(entry == #"{"actor":"a\"b@h","generation_after":null,"generation_before":null,"host":"h1","kind":"policy-decision","payload":{"a":[0.25,null,true],"t":"x\ny","z":1},"reported_by_caller":true,"seq":1,"time":"2026-05-28T20:26:40.500000Z","v":1,"vm":"0a6f1c3e-0000-4000-8000-000000000001"}"#)
            var h = SHA256(); h.update(data: [0]); h.update(data: Data(entry.utf8))
            #expect(ev.leafHash == Data(h.finalize()))
            // The entry is valid JSON that decodes to the same fields.
            let obj = try #require(try JSONSerialization.jsonObject(with: Data(entry.utf8)) as? [String: Any])
            #expect(obj["seq"] as? Int == 1)
        }
    }

    @Test func merkleNodesAndCheckpointsMatchAnIndependentTree() throws {
        try withLedger { ledger, dir in
            var leaves: [Data] = []
            // 700 events in a few transactions of different sizes, crossing 256-leaf subtrees.
            var rng = SeededRandom(seed: 7)
            while leaves.count < 700 {
                let n = Int(rng.next() % 90) + 1
                let evs = try ledger.append((0..<n).map { i in NewEvent(kind: .started, vm: VMID(), payload: ["i": .number(Double(i))]) })
                leaves += evs.map(\.leafHash)
            }
            let size = Int64(leaves.count)
            try ledger.database.read { db in
                // Every stored node equals the reference subtree hash.
                let rows = try Row.fetchAll(db, sql: "SELECT level, idx, hash FROM merkle_nodes")
                #expect(rows.count == leaves.count / 256 + leaves.count / 512)
                for r in rows {
                    let level: Int = r[0], idx: Int64 = r[1], hash: Data = r[2]
                    let w = 1 << level
                    #expect(hash == RefMerkle.mth(Array(leaves[Int(idx) * w ..< Int(idx + 1) * w])))
                }
                // The latest checkpoint covers the whole log, with the reference root and a valid signature.
                let cp = try #require(try Row.fetchOne(db, sql: "SELECT * FROM checkpoints ORDER BY id DESC LIMIT 1"))
                #expect((cp["tree_size"] as Int64) == size)
                #expect((cp["root"] as Data) == RefMerkle.mth(leaves))
            }
            let key = try ledger.signingKey()
            let w = try #require(try ledger.witness.read())
            #expect(w.treeSize == size)
            #expect(w.root == RefMerkle.mth(leaves))
            #expect(w.isValid(publicKey: key.publicKey))
            #expect(!w.isValid(publicKey: Curve25519.Signing.PrivateKey().publicKey.rawRepresentation))
            // Key file: private, base64, in keys/ beside the database.
            let keyFile = dir + "/keys/test-host.ed25519"
            let attrs = try FileManager.default.attributesOfItem(atPath: keyFile)
            #expect((attrs[.posixPermissions] as? Int) == 0o600)
            #expect(w.host == HostName("test-host")!)
        }
    }

    @Test func keyFileReadableByOthersIsRefused() throws {
        try withLedger { ledger, dir in
            _ = try ledger.append(NewEvent(kind: .started, vm: nil))
            chmod(dir + "/keys/test-host.ed25519", 0o644)
            let again = SQLiteLedger(database: ledger.database, host: HostName("test-host")!)
            #expect(throws: WardenError.self) { _ = try again.append(NewEvent(kind: .started, vm: nil)) }
        }
    }

    @Test func aForeignKeyForThisHostIsRefused() throws {
        try withLedger { ledger, dir in
            _ = try ledger.append(NewEvent(kind: .started, vm: nil))
            let other = SQLiteLedger(database: ledger.database, keysDirectory: dir + "/other-keys", host: HostName("test-host")!)
            #expect(throws: WardenError.self) { _ = try other.append(NewEvent(kind: .started, vm: nil)) }
            #expect(try ledger.eventCount() == 1)
        }
    }
}

/// A straightforward RFC 9162 implementation for the tests (recursive, from leaf hashes).
enum RefMerkle {
    static func sha(_ parts: [Data]) -> Data {
        var h = SHA256()
        for p in parts { h.update(data: p) }
        return Data(h.finalize())
    }
    static func k(_ n: Int) -> Int { var k = 1; while k * 2 < n { k *= 2 }; return k }
    static func mth(_ d: [Data]) -> Data {
        if d.isEmpty { return sha([]) }
        if d.count == 1 { return d[0] }
        let k = k(d.count)
        return sha([Data([1]), mth(Array(d[..<k])), mth(Array(d[k...]))])
    }
    static func path(_ m: Int, _ d: [Data]) -> [Data] {
        if d.count <= 1 { return [] }
        let k = k(d.count)
        if m < k { return path(m, Array(d[..<k])) + [mth(Array(d[k...]))] }
        return path(m - k, Array(d[k...])) + [mth(Array(d[..<k]))]
    }
    static func proof(_ m: Int, _ d: [Data]) -> [Data] { subproof(m, d, true) }
    static func subproof(_ m: Int, _ d: [Data], _ b: Bool) -> [Data] {
        let n = d.count
        if m == n { return b ? [] : [mth(d)] }
        let k = k(n)
        if m <= k { return subproof(m, Array(d[..<k]), b) + [mth(Array(d[k...]))] }
        return subproof(m - k, Array(d[k...]), false) + [mth(Array(d[..<k]))]
    }
}

/// The migration that gives every VM its lineage family, on a ledger written before it.
@Suite struct FamilyMigrationTests {
    @Test func existingLineagesGetTheirRootsAsFamilies() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("warden-family-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/warden.db"
        let ids = (0..<6).map { _ in VMID() }
        let (root, child, grand, lone, x, y) = (ids[0], ids[1], ids[2], ids[3], ids[4], ids[5])
        do {
            let q = try DatabaseQueue(path: path)
            try WardenSchema.migrator.migrate(q, upTo: "ledger-10-events-by-kind")
            try q.write { db in
                #expect(try !db.columns(in: "vms").contains { $0.name == "family" })
                func insert(_ id: VMID, _ parent: VMID?, _ t: Int64) throws {
                    try db.execute(sql: """
                        INSERT INTO vms (id, name, owner, state, generation, parent, parent_generation, created_us, updated_us)
                        VALUES (?, ?, 'alice', 'registered', ?, ?, NULL, ?, ?)
                        """, arguments: [id.description, "vm-\(t)", UUID().uuidString.lowercased(), parent?.description, t, t])
                }
                try insert(root, nil, 1); try insert(child, root, 2); try insert(grand, child, 3); try insert(lone, nil, 4)
                // A damaged ledger: two VMs each other's parent.
                try insert(x, nil, 5); try insert(y, x, 6)
                try db.execute(sql: "UPDATE vms SET parent = ? WHERE id = ?", arguments: [y.description, x.description])
                try db.execute(sql: "INSERT INTO residency (vm, host, kind, from_us, to_us) VALUES (?, 'h1', 'ran', 1, 2)", arguments: [grand.description])
            }
        }
        let ledger = try SQLiteLedger(path: path)
        // Intervals written before the migration name their VM's family too.
        #expect(try ledger.database.read { try String.fetchAll($0, sql: "SELECT family FROM residency") } == [root.description])
        try ledger.openResidency(vm: lone, host: HostName("h1")!, kind: .stored, at: Date(timeIntervalSince1970: 5))
        #expect(try ledger.database.read { try String.fetchOne($0, sql: "SELECT family FROM residency WHERE vm = ?", arguments: [lone.description]) } == lone.description)
        for v in [root, child, grand] {
            #expect(try ledger.family(of: v, limit: 10)?.map(\.id).sorted { $0.description < $1.description }
                    == [root, child, grand].sorted { $0.description < $1.description })
        }
        #expect(try ledger.family(of: lone, limit: 10)?.map(\.id) == [lone])
        #expect(try ledger.family(of: x, limit: 10)?.map(\.id) == [x])
        #expect(try ledger.lineage(of: grand).nodes.map(\.id) == [root, child, grand])
        // The cycle is reported as damage, not walked.
        #expect(throws: WardenError.self) { _ = try ledger.lineage(of: x) }
        // A VM recorded after the migration joins its parent's family.
        let t = Date(timeIntervalSince1970: 10)
        let clone = VMRecord(name: "clone", owner: "alice", parent: grand, createdAt: t, updatedAt: t)
        _ = try ledger.createVM(clone, disks: [], event: NewEvent(kind: .cloned, vm: clone.id, time: t))
        #expect(try ledger.family(of: clone.id, limit: 10)?.count == 4)
    }
}
