import Foundation
import Ledger
import NIOCore
import PostgresNIO
import WardenCore

/// Extends the global Merkle log inside one PostgreSQL transaction. Creating it takes the
/// log's transaction-level advisory lock, so appends from every connection and every server
/// replica are serialised, and the lock is released only when the transaction ends: the
/// events, the subtree hashes they complete and the checkpoint commit together.
struct PGLogAppender {
    /// Complete subtrees at this level and above are stored (the SQLite ledger's layout, so
    /// proofs and verification read both the same way).
    static let storedLevel = 8

    let ledger: PostgresLedger
    var frontier: Merkle.Frontier
    var appended = 0
    var pendingNodes: [(level: Int, index: Int64, hash: Data)] = []
    /// Event rows not yet inserted: written in one multi-row statement per ``eventBatch`` and
    /// before the transaction commits (a round trip per event costs more than the event).
    var pending = PendingEvents()
    static let eventBatch = 2000

    struct PendingEvents {
        var seq: [Int64] = [], kind: [String] = [], vm: [String] = [], actor: [String] = [], host: [String] = []
        var time: [Int64] = [], gb: [String] = [], ga: [String] = [], payload: [String] = [], reported: [Bool] = []
        var leaf: [ByteBuffer] = []
        var isEmpty: Bool { seq.isEmpty }
    }

    init(_ ledger: PostgresLedger, cached: Merkle.Frontier?) throws {
        self.ledger = ledger
        let store = ledger.store
        try store.query("SELECT pg_advisory_xact_lock(\(PostgresMigrations.LockKey.log))")
        let size = try Self.treeSize(store)
        if let cached, cached.size == size {
            frontier = cached
        } else {
            frontier = try Self.loadFrontier(store, size: size)
        }
    }

    static func treeSize(_ store: PostgresStore) throws -> Int64 {
        try store.query("SELECT coalesce(max(seq), 0)::bigint FROM events").first.map { try $0.decode(Int64.self) } ?? 0
    }

    /// Rebuilds the right edge of the tree of `size` leaves from stored nodes and the tail's leaves.
    static func loadFrontier(_ store: PostgresStore, size: Int64) throws -> Merkle.Frontier {
        var nodes: [(level: Int, hash: Data)] = []
        for (level, index) in Merkle.Frontier.layout(size: size) where level >= storedLevel {
            guard let h = try store.query("SELECT hash FROM merkle_nodes WHERE level = \(level) AND idx = \(index)")
                .first.map({ try $0.decode(Data.self) }), h.count == 32 else {
                throw WardenError(.corrupt, "the Merkle log lacks the node at level \(level) index \(index); run warden ledger verify",
                                  file: store.location)
            }
            nodes.append((level, h))
        }
        let tailStart = size - size % (Int64(1) << Int64(storedLevel))
        var tail = Merkle.Frontier()
        var expected = tailStart + 1
        for r in try store.query("SELECT seq, leaf_hash FROM events WHERE seq > \(tailStart) AND seq <= \(size) ORDER BY seq") {
            let (seq, h) = try r.decode((Int64, Data).self)
            guard seq == expected, h.count == 32 else {
                throw WardenError(.corrupt, "the event log is not contiguous at seq \(expected); run warden ledger verify", file: store.location)
            }
            tail.append(leaf: h)
            expected += 1
        }
        guard expected == size + 1 else {
            throw WardenError(.corrupt, "the event log is not contiguous at seq \(expected); run warden ledger verify", file: store.location)
        }
        nodes.append(contentsOf: tail.nodes)
        return Merkle.Frontier(size: size, nodes: nodes)
    }

    /// Appends one event: assigns its seq, stores its row, and keeps completed subtree hashes.
    mutating func append(_ e: NewEvent) throws -> EventRecord {
        let seq = frontier.size + 1
        let time = LedgerTime.micros(e.time)
        let payload = LedgerEntry.payloadText(e.payload)
        let vm = e.vm?.description
        let gb = e.generationBefore.map(PGRows.text)
        let ga = e.generationAfter.map(PGRows.text)
        let entry = LedgerEntry.encode(seq: seq, kind: e.kind.rawValue, vm: vm, actor: e.actor, host: e.host.value,
                                       timeMicros: time, generationBefore: gb, generationAfter: ga,
                                       payloadText: payload, reported: e.reportedByCaller)
        let leaf = LedgerEntry.leafHash(entry)
        pending.seq.append(seq); pending.kind.append(e.kind.rawValue); pending.vm.append(vm ?? "")
        pending.actor.append(e.actor); pending.host.append(e.host.value); pending.time.append(time)
        pending.gb.append(gb ?? ""); pending.ga.append(ga ?? ""); pending.payload.append(payload)
        pending.reported.append(e.reportedByCaller); pending.leaf.append(ByteBuffer(bytes: leaf))
        if pending.seq.count >= Self.eventBatch { try flushEvents() }
        var completed: [(level: Int, index: Int64, hash: Data)] = []
        frontier.append(leaf: leaf) { level, index, hash in
            if level >= Self.storedLevel { completed.append((level, index, hash)) }
        }
        pendingNodes += completed
        appended += 1
        return EventRecord(seq: seq, kind: e.kind, vm: e.vm, actor: e.actor, host: e.host, time: LedgerTime.date(time),
                           generationBefore: e.generationBefore, generationAfter: e.generationAfter,
                           payload: e.payload, reportedByCaller: e.reportedByCaller, leafHash: leaf)
    }

    /// Inserts the buffered events in one statement (ids and generations are never empty
    /// strings, so '' stands for NULL in the arrays).
    mutating func flushEvents() throws {
        guard !pending.isEmpty else { return }
        let p = pending
        try ledger.store.query("""
            INSERT INTO events (seq, kind, vm, actor, host, time_us, generation_before, generation_after, payload, reported, leaf_hash)
            SELECT s, k, NULLIF(v, ''), a, h, t, NULLIF(gb, ''), NULLIF(ga, ''), p, r, l
            FROM unnest(\(p.seq)::bigint[], \(p.kind)::text[], \(p.vm)::text[], \(p.actor)::text[], \(p.host)::text[],
                        \(p.time)::bigint[], \(p.gb)::text[], \(p.ga)::text[], \(p.payload)::text[], \(p.reported)::boolean[],
                        \(p.leaf)::bytea[]) AS x(s, k, v, a, h, t, gb, ga, p, r, l)
            """)
        pending = PendingEvents()
    }

    /// Writes the buffered events and the completed subtree hashes (one per 256 events at most).
    mutating func flushNodes() throws {
        try flushEvents()
        guard !pendingNodes.isEmpty else { return }
        for n in pendingNodes {
            try ledger.store.query("INSERT INTO merkle_nodes (level, idx, hash) VALUES (\(n.level), \(n.index), \(n.hash))")
        }
        pendingNodes.removeAll(keepingCapacity: true)
    }

    /// Signs and stores a checkpoint of the tree as it is now, recording the signer's key in
    /// the hosts table (a different key for the same host name is refused).
    func checkpoint(key: HostKey) throws {
        let store = ledger.store
        try store.query("""
            INSERT INTO hosts (name, labels, public_key, added_us) VALUES (\(key.host.value), '{}', \(key.publicKey), \(LedgerTime.micros(Date())))
            ON CONFLICT (name) DO UPDATE SET public_key = EXCLUDED.public_key WHERE hosts.public_key IS NULL
            """)
        let stored = try store.query("SELECT public_key FROM hosts WHERE name = \(key.host.value)").first.flatMap { try $0.decode(Data?.self) }
        guard stored == key.publicKey else {
            throw WardenError(.conflict, "the ledger holds a different signing key for host \(key.host) than this server's key", file: store.location)
        }
        let cp = try SignedCheckpoint.sign(treeSize: frontier.size, root: frontier.root, timeMicros: LedgerTime.micros(Date()), key: key)
        try store.query("""
            INSERT INTO checkpoints (tree_size, root, time_us, host, signature)
            VALUES (\(cp.treeSize), \(cp.root), \(cp.timeMicros), \(cp.host.value), \(cp.signature))
            """)
    }
}
