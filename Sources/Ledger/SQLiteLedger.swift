import CSQLite
import Foundation
import GRDB
import WardenCore

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

    /// The advisory store in the same database.
    public var advisoryFacts: (any AdvisoryFacts)? { AdvisoryStore(database) }

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
            var e = event
            e.vm = id
            if e.generationBefore == nil { e.generationBefore = old.generation }
            if e.generationAfter == nil { e.generationAfter = new.generation }
            let rec = try log.append(db, e)
            new.updatedAt = rec.time
            new.createdAt = LedgerTime.date(LedgerTime.micros(new.createdAt))
            if let p = new.parent, p != old.parent, try !Rows.vmExists(db, p) {
                throw WardenError(.notFound, "parent VM \(p) is not in the ledger")
            }
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
            try db.execute(sql: "INSERT INTO residency (vm, host, kind, from_us, to_us) VALUES (?, ?, ?, ?, NULL)",
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

    public func events(of vm: VMID) throws -> [EventRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM events WHERE vm = ? ORDER BY seq", arguments: [vm.description])
                .map { try Rows.event($0, file: database.path) }
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
            // The root ancestor (bounded walk: a parent cycle cannot loop forever).
            var root = vm.description
            var seen: Set<String> = [root]
            while let p = try String.fetchOne(db, sql: "SELECT parent FROM vms WHERE id = ?", arguments: [root]), !seen.contains(p) {
                seen.insert(p); root = p
            }
            return try Rows.fetchVMs(db, sql: """
                WITH RECURSIVE d(id) AS (
                    SELECT ?
                    UNION SELECT v.id FROM vms v JOIN d ON v.parent = d.id
                )
                SELECT vms.* FROM vms JOIN d ON vms.id = d.id WHERE vms.state != 'retired' ORDER BY vms.created_us, vms.id
                """, [root])
        }
    }

    public func lastScan(of vm: VMID) throws -> Date? {
        try database.read { db in
            try Int64.fetchOne(db, sql: "SELECT max(time_us) FROM events WHERE vm = ? AND kind = 'scanned'",
                               arguments: [vm.description]).map(LedgerTime.date)
        }
    }
}

/// Extends the Merkle log inside one write transaction.
struct LogAppender {
    /// Complete subtrees at this level and above are stored in `merkle_nodes`; lower ones are
    /// recomputed from at most 2^storedLevel leaf hashes.
    static let storedLevel = 8

    var frontier: Merkle.Frontier
    var appended = 0
    let file: String
    /// The event insert, prepared once per transaction and bound through SQLite directly
    /// (GRDB's argument arrays cost an allocation per column).
    let insertEvent: Statement
    /// Completed subtrees not yet written; written in one multi-row INSERT per ``nodeBatch``
    /// and before the transaction commits (``flushNodes(_:)``).
    var pendingNodes: [(level: Int, index: Int64, hash: Data)] = []
    static let nodeBatch = 64

    init(db: Database, file: String) throws {
        self.file = file
        frontier = try Self.loadFrontier(db, size: Rows.treeSize(db), file: file)
        insertEvent = try db.cachedStatement(sql: """
            INSERT INTO events (seq, kind, vm, actor, host, time_us, generation_before, generation_after, payload, reported, leaf_hash)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
    }

    /// Writes the completed subtree hashes gathered so far (the caller's transaction commits them
    /// together with the events).
    mutating func flushNodes(_ db: Database) throws {
        guard !pendingNodes.isEmpty else { return }
        let sql = "INSERT INTO merkle_nodes (level, idx, hash) VALUES "
            + Array(repeating: "(?, ?, ?)", count: pendingNodes.count).joined(separator: ", ")
        var args: [DatabaseValueConvertible?] = []
        args.reserveCapacity(pendingNodes.count * 3)
        for n in pendingNodes { args.append(n.level); args.append(n.index); args.append(n.hash) }
        let s = pendingNodes.count == Self.nodeBatch ? try db.cachedStatement(sql: sql) : try db.makeStatement(sql: sql)
        try s.execute(arguments: StatementArguments(args))
        pendingNodes.removeAll(keepingCapacity: true)
    }

    /// Rebuilds the right edge of the tree of `size` leaves from stored nodes and the tail's leaves.
    static func loadFrontier(_ db: Database, size: Int64, file: String) throws -> Merkle.Frontier {
        var nodes: [(level: Int, hash: Data)] = []
        for (level, index) in Merkle.Frontier.layout(size: size) where level >= storedLevel {
            guard let h = try Data.fetchOne(db, sql: "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?",
                                            arguments: [level, index]), h.count == 32 else {
                throw WardenError(.corrupt, "the Merkle log lacks the node at level \(level) index \(index); run warden ledger verify", file: file)
            }
            nodes.append((level, h))
        }
        let tailStart = size - size % (Int64(1) << Int64(storedLevel))
        var tail = Merkle.Frontier()
        let rows = try Row.fetchCursor(db, sql: "SELECT seq, leaf_hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
                                       arguments: [tailStart, size])
        var expected = tailStart + 1
        while let r = try rows.next() {
            let seq: Int64 = r[0]
            let h: Data = r[1]
            guard seq == expected, h.count == 32 else {
                throw WardenError(.corrupt, "the event log is not contiguous at seq \(expected); run warden ledger verify", file: file)
            }
            tail.append(leaf: h)
            expected += 1
        }
        guard expected == size + 1 else {
            throw WardenError(.corrupt, "the event log is not contiguous at seq \(expected); run warden ledger verify", file: file)
        }
        nodes.append(contentsOf: tail.nodes)
        return Merkle.Frontier(size: size, nodes: nodes)
    }

    /// Appends one event: assigns its seq, stores its row and any completed subtree hashes.
    mutating func append(_ db: Database, _ e: NewEvent) throws -> EventRecord {
        let seq = frontier.size + 1
        let time = LedgerTime.micros(e.time)
        let payload = LedgerEntry.payloadText(e.payload)
        let vm = e.vm.map { FastUUID.text($0.uuid) }
        let gb = e.generationBefore.map { FastUUID.text($0) }
        let ga = e.generationAfter.map { FastUUID.text($0) }
        let entry = LedgerEntry.encode(seq: seq, kind: e.kind.rawValue, vm: vm, actor: e.actor, host: e.host.value,
                                       timeMicros: time, generationBefore: gb, generationAfter: ga,
                                       payloadText: payload, reported: e.reportedByCaller)
        let leaf = LedgerEntry.leafHash(entry)
        try insert(db, seq: seq, kind: e.kind.rawValue, vm: vm, actor: e.actor, host: e.host.value, time: time,
                   gb: gb, ga: ga, payload: payload, reported: e.reportedByCaller, leaf: leaf)
        var completed: [(level: Int, index: Int64, hash: Data)] = []   // allocates only when a stored subtree completes
        frontier.append(leaf: leaf) { level, index, hash in
            if level >= Self.storedLevel { completed.append((level, index, hash)) }
        }
        if !completed.isEmpty {
            pendingNodes += completed
            if pendingNodes.count >= Self.nodeBatch { try flushNodes(db) }
        }
        appended += 1
        return EventRecord(seq: seq, kind: e.kind, vm: e.vm, actor: e.actor, host: e.host, time: LedgerTime.date(time),
                           generationBefore: e.generationBefore, generationAfter: e.generationAfter,
                           payload: e.payload, reportedByCaller: e.reportedByCaller, leafHash: leaf)
    }

    /// Binds and steps the prepared event insert through the SQLite C API.
    private func insert(_ db: Database, seq: Int64, kind: String, vm: String?, actor: String, host: String, time: Int64,
                        gb: String?, ga: String?, payload: String, reported: Bool, leaf: Data) throws {
        let h = insertEvent.sqliteStatement
        sqlite3_reset(h)
        // SQLITE_TRANSIENT: SQLite copies the bytes before the bind call returns.
        let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
        func text(_ i: Int32, _ s: String?) -> Int32 {
            guard var s else { return sqlite3_bind_null(h, i) }
            return s.withUTF8 { b in
                guard let base = b.baseAddress, b.count > 0 else { return sqlite3_bind_text(h, i, "", 0, transient) }
                return base.withMemoryRebound(to: CChar.self, capacity: b.count) { sqlite3_bind_text(h, i, $0, Int32(b.count), transient) }
            }
        }
        var rc = sqlite3_bind_int64(h, 1, seq)
        if rc == SQLITE_OK { rc = text(2, kind) }
        if rc == SQLITE_OK { rc = text(3, vm) }
        if rc == SQLITE_OK { rc = text(4, actor) }
        if rc == SQLITE_OK { rc = text(5, host) }
        if rc == SQLITE_OK { rc = sqlite3_bind_int64(h, 6, time) }
        if rc == SQLITE_OK { rc = text(7, gb) }
        if rc == SQLITE_OK { rc = text(8, ga) }
        if rc == SQLITE_OK { rc = text(9, payload) }
        if rc == SQLITE_OK { rc = sqlite3_bind_int64(h, 10, reported ? 1 : 0) }
        if rc == SQLITE_OK { rc = leaf.withUnsafeBytes { sqlite3_bind_blob(h, 11, $0.baseAddress, Int32($0.count), transient) } }
        if rc == SQLITE_OK { rc = sqlite3_step(h) }
        defer { sqlite3_reset(h) }
        guard rc == SQLITE_DONE else {
            let message = String(cString: sqlite3_errmsg(db.sqliteConnection))
            throw DatabaseError(resultCode: ResultCode(rawValue: rc), message: message)
        }
    }

    /// Signs and stores a checkpoint of the tree as it is now.
    func checkpoint(_ db: Database, key: HostKey) throws -> SignedCheckpoint {
        try Rows.ensureHostKey(db, key: key, file: file)
        let cp = try SignedCheckpoint.sign(treeSize: frontier.size, root: frontier.root,
                                           timeMicros: LedgerTime.micros(Date()), key: key)
        try db.execute(sql: "INSERT INTO checkpoints (tree_size, root, time_us, host, signature) VALUES (?, ?, ?, ?, ?)",
                       arguments: [cp.treeSize, cp.root, cp.timeMicros, cp.host.value, cp.signature])
        return cp
    }
}

/// Row mapping for the ledger tables.
enum Rows {
    static func json(_ labels: [String: String]) -> String {
        LedgerEntry.payloadText(labels.mapValues { JSONValue.string($0) })
    }

    static func labels(_ text: String) throws -> [String: String] {
        guard let d = try? JSONDecoder().decode([String: String].self, from: Data(text.utf8)) else {
            throw WardenError(.corrupt, "a label map in the database is not a JSON object of strings")
        }
        return d
    }

    static func uuid(_ s: String?, _ what: String) throws -> UUID? {
        guard let s else { return nil }
        guard let u = UUID(uuidString: s) else { throw WardenError(.corrupt, "\(what) in the database is not a UUID") }
        return u
    }

    static func treeSize(_ db: Database) throws -> Int64 {
        try Int64.fetchOne(db, sql: "SELECT coalesce(max(seq), 0) FROM events") ?? 0
    }

    static func vmExists(_ db: Database, _ id: VMID) throws -> Bool {
        try Row.fetchOne(db, sql: "SELECT 1 FROM vms WHERE id = ?", arguments: [id.description]) != nil
    }

    static func insertVM(_ db: Database, _ v: VMRecord) throws {
        let s = try db.cachedStatement(sql: """
            INSERT INTO vms (id, name, owner, state, generation, parent, parent_generation, created_us, updated_us, mac)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        try s.execute(arguments: [FastUUID.text(v.id.uuid), v.name, v.owner, v.state.rawValue, LedgerEntry.uuidText(v.generation),
                                  v.parent.map { FastUUID.text($0.uuid) }, v.parentGeneration.map(LedgerEntry.uuidText),
                                  LedgerTime.micros(v.createdAt), LedgerTime.micros(v.updatedAt), v.mac])
        try insertLabels(db, v)
    }

    static func insertLabels(_ db: Database, _ v: VMRecord) throws {
        let s = try db.cachedStatement(sql: "INSERT INTO vm_labels (vm, key, value) VALUES (?, ?, ?)")
        guard !v.labels.isEmpty else { return }
        let id = FastUUID.text(v.id.uuid)
        for (k, val) in v.labels { try s.execute(arguments: [id, k, val]) }
    }

    static func updateVM(_ db: Database, _ v: VMRecord, labelsChanged: Bool) throws {
        try db.execute(sql: """
            UPDATE vms SET name = ?, owner = ?, state = ?, generation = ?, parent = ?, parent_generation = ?,
                           created_us = ?, updated_us = ?, mac = ? WHERE id = ?
            """, arguments: [v.name, v.owner, v.state.rawValue, LedgerEntry.uuidText(v.generation), v.parent?.description,
                             v.parentGeneration.map(LedgerEntry.uuidText), LedgerTime.micros(v.createdAt),
                             LedgerTime.micros(v.updatedAt), v.mac, v.id.description])
        if labelsChanged {
            try db.execute(sql: "DELETE FROM vm_labels WHERE vm = ?", arguments: [v.id.description])
            try insertLabels(db, v)
        }
    }

    static func insertDisk(_ db: Database, _ d: DiskRecord) throws {
        let s = try db.cachedStatement(sql: "INSERT INTO disks (vm, idx, path, format, backing_chain, fingerprint, device, inode) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        try s.execute(arguments: [FastUUID.text(d.vm.uuid), d.index, d.path, d.format,
                                  LedgerEntry.jsonText(.array(d.backingChain.map { .string($0) })),
                                  d.fingerprint?.description,
                                  d.file.map { Int64(bitPattern: $0.device) }, d.file.map { Int64(bitPattern: $0.inode) }])
    }

    static func vm(_ r: Row, file: String) throws -> VMRecord {
        guard let id = VMID(r["id"] as String), let state = VMState(rawValue: r["state"]),
              let gen = try uuid(r["generation"], "a generation") else {
            throw WardenError(.corrupt, "a VM row is malformed", file: file)
        }
        let parent: String? = r["parent"]
        return VMRecord(id: id, name: r["name"], owner: r["owner"], labels: [:], state: state, generation: gen,
                        parent: try parent.map { guard let p = VMID($0) else { throw WardenError(.corrupt, "a parent id is not a UUID", file: file) }; return p },
                        parentGeneration: try uuid(r["parent_generation"], "a parent generation"),
                        createdAt: LedgerTime.date(r["created_us"]), updatedAt: LedgerTime.date(r["updated_us"]), mac: r["mac"])
    }

    static func fetchVM(_ db: Database, _ id: VMID) throws -> VMRecord? {
        try fetchVMs(db, sql: "SELECT * FROM vms WHERE id = ?", [id.description]).first
    }

    static func fetchVMs(_ db: Database, sql: String, _ args: StatementArguments) throws -> [VMRecord] {
        var out = try Row.fetchAll(db, sql: sql, arguments: args).map { try vm($0, file: "") }
        let ls = try db.cachedStatement(sql: "SELECT key, value FROM vm_labels WHERE vm = ?")
        for i in out.indices {
            for r in try Row.fetchAll(ls, arguments: [out[i].id.description]) {
                out[i].labels[r[0] as String] = r[1] as String
            }
        }
        return out
    }

    static func fetchDisks(_ db: Database, _ vm: VMID) throws -> [DiskRecord] {
        try Row.fetchAll(db, sql: "SELECT * FROM disks WHERE vm = ? ORDER BY idx", arguments: [vm.description]).map { r in
            guard let chain = try? JSONDecoder().decode([String].self, from: Data((r["backing_chain"] as String).utf8)) else {
                throw WardenError(.corrupt, "a disk's backing chain is not a JSON list")
            }
            let fp: String? = r["fingerprint"]
            let dev: Int64? = r["device"], ino: Int64? = r["inode"]
            var file: DiskRecord.FileID?
            if let dev, let ino { file = DiskRecord.FileID(device: UInt64(bitPattern: dev), inode: UInt64(bitPattern: ino)) }
            return DiskRecord(vm: vm, index: r["idx"], path: r["path"], format: r["format"], backingChain: chain,
                              fingerprint: fp.flatMap(Digest.init), file: file)
        }
    }

    static func host(_ r: Row) throws -> HostRecord {
        guard let name = HostName(r["name"] as String) else { throw WardenError(.corrupt, "a host name in the database is malformed") }
        return HostRecord(name: name, labels: try labels(r["labels"]), publicKey: r["public_key"],
                          addedAt: LedgerTime.date(r["added_us"]))
    }

    static func residency(_ r: Row) throws -> ResidencyRecord {
        guard let vm = VMID(r["vm"] as String), let host = HostName(r["host"] as String),
              let kind = ResidencyRecord.Kind(rawValue: r["kind"]) else {
            throw WardenError(.corrupt, "a residency row is malformed")
        }
        let to: Int64? = r["to_us"]
        return ResidencyRecord(vm: vm, host: host, kind: kind, from: LedgerTime.date(r["from_us"]), to: to.map(LedgerTime.date))
    }

    static func snapshot(_ r: Row) throws -> SnapshotRecord {
        guard let vm = VMID(r["vm"] as String), let gen = try uuid(r["generation"], "a snapshot generation") else {
            throw WardenError(.corrupt, "a snapshot row is malformed")
        }
        let key: String? = r["inventory_key"]
        return SnapshotRecord(vm: vm, name: r["name"], generation: gen, createdAt: LedgerTime.date(r["created_us"]),
                              inventoryKey: key.flatMap(Digest.init))
    }

    static func event(_ r: Row, file: String) throws -> EventRecord {
        let seq: Int64 = r["seq"]
        func bad(_ what: String) -> WardenError { WardenError(.corrupt, "event \(seq): \(what)", file: file) }
        guard let kind = EventKind(rawValue: r["kind"]) else { throw bad("unknown kind") }
        guard let host = HostName(r["host"] as String) else { throw bad("malformed host") }
        let vmText: String? = r["vm"]
        var vm: VMID?
        if let vmText { guard let v = VMID(vmText) else { throw bad("vm is not a UUID") }; vm = v }
        let payloadText: String = r["payload"]
        guard let payload = try? JSONDecoder().decode([String: JSONValue].self, from: Data(payloadText.utf8)) else {
            throw bad("payload is not a JSON object")
        }
        return EventRecord(seq: seq, kind: kind, vm: vm, actor: r["actor"], host: host, time: LedgerTime.date(r["time_us"]),
                           generationBefore: try uuid(r["generation_before"], "a generation"),
                           generationAfter: try uuid(r["generation_after"], "a generation"),
                           payload: payload, reportedByCaller: (r["reported"] as Int64) != 0, leafHash: r["leaf_hash"])
    }

    /// Makes sure the hosts table holds this host with this public key (adding or filling it in);
    /// a different key there is refused.
    static func ensureHostKey(_ db: Database, key: HostKey, file: String) throws {
        try db.execute(sql: """
            INSERT INTO hosts (name, labels, public_key, added_us) VALUES (?, '{}', ?, ?)
            ON CONFLICT(name) DO UPDATE SET public_key = excluded.public_key WHERE hosts.public_key IS NULL
            """, arguments: [key.host.value, key.publicKey, LedgerTime.micros(Date())])
        let stored = try Data.fetchOne(db, sql: "SELECT public_key FROM hosts WHERE name = ?", arguments: [key.host.value])
        guard stored == key.publicKey else {
            throw WardenError(.conflict, "the ledger holds a different signing key for host \(key.host) than \(key.host).ed25519 in the keys folder", file: file)
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
