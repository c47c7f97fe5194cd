import CSQLite
import Foundation
import GRDB
import WardenCore

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
