import CSQLite
import Foundation
import GRDB
import WardenCore
import Storage
import AdvisoryStorage

/// The SQLite ledger (through GRDB, WAL): every ``LedgerStore`` call is one transaction, and a
/// call that appends events also extends the Merkle log, stores its new subtree hashes and a
/// signed checkpoint in that transaction. After the commit the witness file is advanced.
///
/// Signing keys live in ``HostKey/directory(databasePath:environment:)``; the key is made on
/// the first write that appends an event (read-only use never creates one).
public final class SQLiteLedger: LedgerStore, @unchecked Sendable {
    // @unchecked: the only mutable state is `cachedKey`, guarded by `lock`.
    public let database: WardenDatabase
    public let keysDirectory: String
    public let witness: Witness
    /// When false, no checkpoints are signed and no witness is written (for tests of raw storage).
    public let signs: Bool
    public let localHost: HostName

    private let lock = NSLock()
    private var cachedKey: HostKey?

    public init(database: WardenDatabase, keysDirectory: String? = nil, signs: Bool = true, host: HostName = .current) {
        self.database = database
        self.keysDirectory = keysDirectory ?? HostKey.directory(databasePath: database.path)
        self.witness = Witness(keysDirectory: self.keysDirectory, databasePath: database.path)
        self.signs = signs
        self.localHost = host
    }

    /// Opens (creating if needed) the database at `path` and the ledger on it.
    public convenience init(path: String, create: Bool = true, readOnly: Bool = false) throws {
        self.init(database: try WardenDatabase(path: path, create: create, readOnly: readOnly))
    }

    /// How a command opens the ledger.
    public enum Opening: Sendable {
        /// Create the database if it does not exist (commands that register something).
        case create
        /// The database must exist (commands that read or change existing VMs; fail closed).
        case existing
        /// Read-only: never migrates, never writes.
        case readOnly
        /// The libvirt hook: must exist; no signing key is loaded (its events are signed by
        /// the next writer); the WAL is kept on close (docs/ledger-log.md).
        case hook
    }

    /// The one way to open the ledger at `path`.
    public static func open(_ path: String, _ how: Opening, host: HostName = .current) throws -> SQLiteLedger {
        switch how {
        case .create: return SQLiteLedger(database: try WardenDatabase(path: path, create: true), host: host)
        case .existing: return SQLiteLedger(database: try WardenDatabase(path: path, create: false), host: host)
        case .readOnly: return SQLiteLedger(database: try WardenDatabase(path: path, create: false, readOnly: true), host: host)
        case .hook:
            return SQLiteLedger(database: try WardenDatabase(path: path, create: false, checkpointOnClose: false), signs: false, host: host)
        }
    }

    /// This host's signing key, made on first use.
    public func signingKey() throws -> HostKey {
        lock.lock(); defer { lock.unlock() }
        if let k = cachedKey { return k }
        let k = try HostKey.loadOrCreate(directory: keysDirectory, host: localHost)
        cachedKey = k
        return k
    }

    // MARK: - The write path

    /// Runs `body` in one write transaction with a log appender; if it appended events, a
    /// signed checkpoint is stored in the same transaction and the witness advanced after commit.
    func logWrite<T>(_ body: (Database, inout LogAppender) throws -> T) throws -> T {
        let key = signs ? try signingKey() : nil
        if let key { try ensureWitness(key: key) }
        var checkpoint: SignedCheckpoint?
        let result = try database.write { db -> T in
            var log = try LogAppender(db: db, file: database.path)
            let r = try body(db, &log)
            try log.flushNodes(db)
            if log.appended > 0, let key {
                checkpoint = try log.checkpoint(db, key: key)
            }
            return r
        }
        if let checkpoint, let key {
            // Inside ``atomically(family:_:)`` the commit is still ahead: the witness follows it.
            if let pending = Self.pendingWitness {
                pending.checkpoint = checkpoint
                pending.key = key
                return result
            }
            do { try witness.advance(to: checkpoint, publicKey: key.publicKey) } catch let e as WardenError {
                throw WardenError(e.code, "the event was recorded, but the witness file was not updated: \(e.message)", file: e.file)
            }
        }
        return result
    }

    /// Writes a witness of the log as it is before the first signed write: a crash between a
    /// commit and the witness update then leaves a witness that lags (which verify accepts and
    /// the next write advances), never none at all (which verify must report, as a deleted
    /// witness would hide a rewritten log).
    func ensureWitness(key: HostKey) throws {
        guard !FileManager.default.fileExists(atPath: witness.path) else { return }
        let cp = try database.read { db -> SignedCheckpoint in
            let size = try Rows.treeSize(db)
            let frontier = try LogAppender.loadFrontier(db, size: size, file: database.path)
            return try SignedCheckpoint.sign(treeSize: size, root: frontier.root, timeMicros: LedgerTime.micros(Date()), key: key)
        }
        try witness.advance(to: cp, publicKey: key.publicKey)
    }

    /// The checkpoint to advance the witness to once the transaction commits.
    final class PendingWitness: @unchecked Sendable {
        // @unchecked: used only by the thread that runs the transaction body.
        var checkpoint: SignedCheckpoint?
        var key: HostKey?
    }
    @TaskLocal static var pendingWitness: PendingWitness?

    /// One SQLite write transaction (`BEGIN IMMEDIATE`) around `body`: every store call in it
    /// reads and writes on the transaction's connection, and either all of it commits or none.
    /// SQLite has one write lock per database, so `family` is not needed to serialise here;
    /// a PostgreSQL store takes a lock per lineage family instead.
    public func atomically<T>(family: VMID?, _ body: () throws -> T) throws -> T {
        if database.inTransaction { return try body() }
        let pending = PendingWitness()
        let result = try Self.$pendingWitness.withValue(pending) { try database.transaction(body) }
        if let cp = pending.checkpoint, let key = pending.key {
            do { try witness.advance(to: cp, publicKey: key.publicKey) } catch let e as WardenError {
                throw WardenError(e.code, "the event was recorded, but the witness file was not updated: \(e.message)", file: e.file)
            }
        }
        return result
    }

    /// Enrolled when `agent/agent.json` sits beside the database (only its presence is read:
    /// the file holds the host's token).
    public func fleetFreshness() throws -> FleetFreshness? {
        let dir = FleetSyncState.directory(databasePath: database.path)
        guard FileManager.default.fileExists(atPath: dir + "/agent.json") else { return nil }
        let state = FleetSyncState.read(directory: dir)
        return FleetFreshness(lastPull: state?.lastPullUs.map(LedgerTime.date),
                              bound: state?.maxStalenessSeconds ?? FleetSyncState.defaultMaxStaleness)
    }

    /// The advisory store in the same database.
    public var advisoryFacts: (any AdvisoryFacts)? { SQLiteAdvisoryStore(database) }
    public var jobs: any JobQueue { SQLiteJobQueue(database) }
    public var advisories: any AdvisoryStore { SQLiteAdvisoryStore(database) }

    // MARK: - VMs

    public func createVM(_ vm: VMRecord, disks: [DiskRecord], event: NewEvent) throws -> (VMRecord, EventRecord) {
        var vm = vm
        vm.createdAt = LedgerTime.date(LedgerTime.micros(vm.createdAt))
        vm.updatedAt = LedgerTime.date(LedgerTime.micros(vm.updatedAt))
        let stored = vm
        return try logWrite { db, log in
            if let p = stored.parent, try !Rows.vmExists(db, p) {
                throw WardenError(.notFound, "parent VM \(p) is not in the ledger", file: database.path)
            }
            try Rows.insertVM(db, stored)
            for d in disks {
                var d = d
                d.vm = stored.id
                try Rows.insertDisk(db, d)
            }
            var e = event
            e.vm = stored.id
            if e.generationAfter == nil { e.generationAfter = stored.generation }
            let rec = try log.append(db, e)
            return (stored, rec)
        }
    }

    public func vm(_ id: VMID) throws -> VMRecord? {
        try database.read { db in try Rows.fetchVM(db, id) }
    }

    public func resolveVM(_ reference: String) throws -> VMRecord {
        let ref = reference.trimmingCharacters(in: .whitespaces)
        guard !ref.isEmpty else { throw WardenError(.invalidArgument, "empty VM reference") }
        return try database.read { db in
            if let id = VMID(ref) {
                if let v = try Rows.fetchVM(db, id) { return v }
                throw WardenError(.notFound, "no VM with id \(id)")
            }
            let byName = try Rows.fetchVMs(db, sql: "SELECT * FROM vms WHERE name = ? ORDER BY created_us", [ref])
            if byName.count == 1 { return byName[0] }
            if byName.count > 1 {
                let live = byName.filter { $0.state != .retired }
                if live.count == 1 { return live[0] }
                throw WardenError(.conflict, "the name \(ref) is ambiguous: \(byName.map(\.id.description).joined(separator: ", ")); use an id")
            }
            let lower = ref.lowercased()
            if lower.count >= 4, lower.allSatisfy({ $0.isHexDigit || $0 == "-" }) {
                let hits = try Rows.fetchVMs(db, sql: "SELECT * FROM vms WHERE id >= ? AND id < ? ORDER BY id LIMIT 2",
                                            [lower, lower + "\u{7F}"])
                if hits.count == 1 { return hits[0] }
                if hits.count > 1 { throw WardenError(.conflict, "the id prefix \(ref) is ambiguous; give more digits") }
            }
            throw WardenError(.notFound, "no VM named \(ref) or with an id starting with it")
        }
    }

    public func listVMs() throws -> [VMRecord] {
        try database.read { db in
            var labels: [String: [String: String]] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT vm, key, value FROM vm_labels")
            while let r = try rows.next() {
                labels[r[0] as String, default: [:]][r[1] as String] = r[2] as String
            }
            var out: [VMRecord] = []
            let vms = try Row.fetchCursor(db, sql: "SELECT * FROM vms ORDER BY created_us, id")
            while let r = try vms.next() {
                var v = try Rows.vm(r, file: database.path)
                v.labels = labels[v.id.description] ?? [:]
                out.append(v)
            }
            return out
        }
    }

    public func disks(of vm: VMID) throws -> [DiskRecord] {
        try database.read { db in try Rows.fetchDisks(db, vm) }
    }

    public func updateVM(_ id: VMID, event: NewEvent, _ change: (inout VMRecord) throws -> Void) throws -> (VMRecord, EventRecord) {
        try logWrite { db, log in
            guard let old = try Rows.fetchVM(db, id) else {
                throw WardenError(.notFound, "no VM with id \(id)")
            }
            var new = old
            try change(&new)
            guard new.id == old.id else { throw WardenError(.invalidArgument, "a VM's id cannot change") }
            // Lineage is history (and a family is fixed when the VM is recorded).
            guard new.parent == old.parent else { throw WardenError(.invalidArgument, "a VM's parent cannot change") }
            var e = event
            e.vm = id
            if e.generationBefore == nil { e.generationBefore = old.generation }
            if e.generationAfter == nil { e.generationAfter = new.generation }
            let rec = try log.append(db, e)
            new.updatedAt = rec.time
            new.createdAt = LedgerTime.date(LedgerTime.micros(new.createdAt))
            try Rows.updateVM(db, new, labelsChanged: new.labels != old.labels)
            return (new, rec)
        }
    }

    public func replaceDisks(of vm: VMID, with disks: [DiskRecord]) throws {
        try database.write { db in
            guard try Rows.vmExists(db, vm) else { throw WardenError(.notFound, "no VM with id \(vm)") }
            try db.execute(sql: "DELETE FROM disks WHERE vm = ?", arguments: [vm.description])
            for d in disks {
                var d = d
                d.vm = vm
                try Rows.insertDisk(db, d)
            }
        }
    }

    // MARK: - Hosts and residency

    public func addHost(_ host: HostRecord) throws {
        try database.write { db in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM hosts WHERE name = ?", arguments: [host.name.value]) != nil {
                throw WardenError(.conflict, "host \(host.name) is already in the ledger")
            }
            try db.execute(sql: "INSERT INTO hosts (name, labels, public_key, added_us) VALUES (?, ?, ?, ?)",
                           arguments: [host.name.value, Rows.json(host.labels), host.publicKey,
                                       LedgerTime.micros(host.addedAt)])
        }
    }

    public func host(_ name: HostName) throws -> HostRecord? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM hosts WHERE name = ?", arguments: [name.value]).map { try Rows.host($0) }
        }
    }

    public func listHosts() throws -> [HostRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM hosts ORDER BY name").map { try Rows.host($0) }
        }
    }

    public func openResidency(vm: VMID, host: HostName, kind: ResidencyRecord.Kind, at: Date) throws {
        try database.write { db in
            let open = try Row.fetchOne(db, sql: "SELECT 1 FROM residency WHERE vm = ? AND kind = ? AND host = ? AND to_us IS NULL",
                                        arguments: [vm.description, kind.rawValue, host.value])
            if open != nil { return }
            try db.execute(sql: "INSERT INTO residency (vm, host, kind, from_us, to_us, family) VALUES (?1, ?2, ?3, ?4, NULL, \(Rows.familyOfVM))",
                           arguments: [vm.description, host.value, kind.rawValue, LedgerTime.micros(at)])
        }
    }

    public func closeResidency(vm: VMID, host: HostName, kind: ResidencyRecord.Kind, at: Date) throws {
        try database.write { db in
            try db.execute(sql: "UPDATE residency SET to_us = max(from_us, ?) WHERE vm = ? AND kind = ? AND host = ? AND to_us IS NULL",
                           arguments: [LedgerTime.micros(at), vm.description, kind.rawValue, host.value])
        }
    }

    public func residency(of vm: VMID) throws -> [ResidencyRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM residency WHERE vm = ? ORDER BY from_us, id", arguments: [vm.description])
                .map { try Rows.residency($0) }
        }
    }

    // MARK: - Snapshots

    public func addSnapshot(_ s: SnapshotRecord) throws {
        try database.write { db in
            guard try Rows.vmExists(db, s.vm) else { throw WardenError(.notFound, "no VM with id \(s.vm)") }
            try db.execute(sql: "INSERT INTO snapshots (vm, name, generation, created_us, inventory_key) VALUES (?, ?, ?, ?, ?)",
                           arguments: [s.vm.description, s.name, LedgerEntry.uuidText(s.generation),
                                       LedgerTime.micros(s.createdAt), s.inventoryKey?.description])
        }
    }

    public func snapshots(of vm: VMID) throws -> [SnapshotRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM snapshots WHERE vm = ? ORDER BY created_us, id", arguments: [vm.description])
                .map { try Rows.snapshot($0) }
        }
    }

    // MARK: - Events

    public func append(_ event: NewEvent) throws -> EventRecord {
        try logWrite { db, log in try log.append(db, event) }
    }

    /// Appends several events in one transaction (one checkpoint for all).
    public func append(_ events: [NewEvent]) throws -> [EventRecord] {
        try logWrite { db, log in try events.map { try log.append(db, $0) } }
    }

    public func ingest(_ events: [IngestedEvent], from host: HostName) throws -> [IngestOutcome] {
        try IngestedEvent.requireValidIDs(events)
        return try logWrite { db, log in
            try events.map { item in
                if let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM ingested WHERE host = ? AND id = ?", arguments: [host.value, item.id]) {
                    return IngestOutcome(id: item.id, seq: seq, duplicate: true)
                }
                var e = item.event
                e.host = host
                let rec = try log.append(db, e)
                try db.execute(sql: "INSERT INTO ingested (host, id, seq) VALUES (?, ?, ?)", arguments: [host.value, item.id, rec.seq])
                return IngestOutcome(id: item.id, seq: rec.seq, duplicate: false)
            }
        }
    }

    public func events(after seq: Int64, limit: Int) throws -> [EventRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", arguments: [seq, max(0, limit)])
                .map { try Rows.event($0, file: database.path) }
        }
    }

    public func upsertVM(_ vm: VMRecord) throws {
        try database.write { db in
            if let p = vm.parent, try !Rows.vmExists(db, p) {
                throw WardenError(.conflict, "parent VM \(p) is not in the ledger yet", file: database.path)
            }
            if try Rows.vmExists(db, vm.id) {
                try Rows.updateVM(db, vm, labelsChanged: true)
            } else {
                try Rows.insertVM(db, vm)
            }
        }
    }

    public func replaceResidency(vm: VMID, host: HostName, with intervals: [ResidencyRecord]) throws {
        try database.write { db in
            guard try Rows.vmExists(db, vm) else { throw WardenError(.notFound, "no VM with id \(vm)") }
            try db.execute(sql: "DELETE FROM residency WHERE vm = ? AND host = ?", arguments: [vm.description, host.value])
            for r in intervals.sorted(by: { $0.from < $1.from }) where r.vm == vm && r.host == host {
                try db.execute(sql: "INSERT INTO residency (vm, host, kind, from_us, to_us, family) VALUES (?1, ?2, ?3, ?4, ?5, \(Rows.familyOfVM))",
                               arguments: [vm.description, host.value, r.kind.rawValue, LedgerTime.micros(r.from),
                                           r.to.map { max(LedgerTime.micros($0), LedgerTime.micros(r.from)) }])
            }
        }
    }

    public func events(of vm: VMID) throws -> [EventRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM events WHERE vm = ? ORDER BY seq", arguments: [vm.description])
                .map { try Rows.event($0, file: database.path) }
        }
    }

    public func latestEvents(kind: EventKind, mentioning: String?) throws -> [EventRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: """
                SELECT e.* FROM events e JOIN (SELECT max(seq) AS s FROM events WHERE kind = ? AND vm IS NOT NULL GROUP BY vm) m ON e.seq = m.s
                WHERE ? IS NULL OR instr(e.payload, ?) > 0
                """, arguments: [kind.rawValue, mentioning, mentioning]).map { try Rows.event($0, file: database.path) }
        }
    }

    public func latestHostEvent(kind: EventKind, host: HostName) throws -> EventRecord? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM events WHERE kind = ? AND host = ? AND vm IS NULL ORDER BY seq DESC LIMIT 1",
                             arguments: [kind.rawValue, host.value]).map { try Rows.event($0, file: database.path) }
        }
    }

    public func event(seq: Int64) throws -> EventRecord? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM events WHERE seq = ?", arguments: [seq]).map { try Rows.event($0, file: database.path) }
        }
    }

    public func eventCount() throws -> Int64 {
        try database.read { db in try Rows.treeSize(db) }
    }

    // MARK: - Queries

    public func descendants(of vm: VMID) throws -> [VMRecord] {
        try database.read { db in
            try Rows.fetchVMs(db, sql: """
                WITH RECURSIVE d(id) AS (
                    SELECT id FROM vms WHERE parent = ?
                    UNION SELECT v.id FROM vms v JOIN d ON v.parent = d.id
                )
                SELECT vms.* FROM vms JOIN d ON vms.id = d.id ORDER BY vms.created_us, vms.id
                """, [vm.description])
        }
    }

    public func liveReplicas(of vm: VMID) throws -> [VMRecord] {
        try database.read { db in
            guard try Rows.vmExists(db, vm) else { throw WardenError(.notFound, "no VM with id \(vm)") }
            return try Rows.fetchVMs(db, sql: """
                SELECT * FROM vms WHERE family = (SELECT family FROM vms WHERE id = ?) AND state != 'retired' ORDER BY created_us, id
                """, [vm.description])
        }
    }

    public func lastScan(of vm: VMID) throws -> Date? {
        try database.read { db in
            try Int64.fetchOne(db, sql: "SELECT max(time_us) FROM events WHERE vm = ? AND kind = 'scanned'",
                               arguments: [vm.description]).map(LedgerTime.date)
        }
    }
}

extension SQLiteLedger {
    /// Entries after the latest signed checkpoint: how many, and how many of them were not
    /// recorded by the libvirt hook (which records without signing; docs/ledger-log.md).
    public func unsignedTail() throws -> (entries: Int64, notByHook: Int64) {
        try database.read { db in
            let signed = try Int64.fetchOne(db, sql: "SELECT max(tree_size) FROM checkpoints") ?? 0
            let size = try Rows.treeSize(db)
            guard size > signed else { return (0, 0) }
            let prefix = NewEvent.hookActorPrefix
            let others = try Int64.fetchOne(db, sql: "SELECT count(*) FROM events WHERE seq > ? AND substr(actor, 1, ?) <> ?",
                                            arguments: [signed, prefix.utf8.count, prefix]) ?? 0
            return (size - signed, others)
        }
    }

    /// Makes this host's key (if needed), records it in the hosts table, signs a checkpoint of
    /// the log as it is, and writes the witness: what `warden ledger init` does.
    public func initialize() throws -> SignedCheckpoint {
        let key = try signingKey()
        let cp = try database.write { db in
            try LogAppender(db: db, file: database.path).checkpoint(db, key: key)
        }
        try witness.advance(to: cp, publicKey: key.publicKey)
        return cp
    }
}
