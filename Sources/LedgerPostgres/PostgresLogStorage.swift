import Foundation
import Ledger
import PostgresNIO
import WardenCore

/// The log's read side on PostgreSQL: `ledger verify`, proofs and checkpoints run unchanged.
extension PostgresLedger: LogStorage, LedgerLog {
    public var logLocation: String { location }

    public func logTreeSize() throws -> Int64 { try PGLogAppender.treeSize(store) }

    public func logCheckpoints() throws -> (checkpoints: [(id: Int64, checkpoint: SignedCheckpoint)], malformed: [Int64]) {
        var out: [(id: Int64, checkpoint: SignedCheckpoint)] = []
        var malformed: [Int64] = []
        for r in try store.query("SELECT id, tree_size, root, time_us, host, signature FROM checkpoints ORDER BY tree_size, id") {
            let (id, size, root, time, hostText, signature) = try r.decode((Int64, Int64, Data, Int64, String, Data).self)
            guard let host = HostName(hostText) else { malformed.append(id); continue }
            out.append((id, SignedCheckpoint(treeSize: size, root: root, timeMicros: time, host: host, signature: signature)))
        }
        return (out, malformed)
    }

    public func logHostKeys() throws -> [String: Data] {
        var keys: [String: Data] = [:]
        for r in try store.query("SELECT name, public_key FROM hosts WHERE public_key IS NOT NULL") {
            let (name, key) = try r.decode((String, Data).self)
            keys[name] = key
        }
        return keys
    }

    func storedEntries(_ q: PostgresQuery) throws -> [(seq: Int64, entry: StoredEntry)] {
        try store.query(q).map { r in
            let c = Cells(r, "events", location)
            return (try c.get("seq", Int64.self),
                    StoredEntry(kind: try c.get("kind"), vm: try c.optional("vm"), actor: try c.get("actor"), host: try c.get("host"),
                                timeMicros: try c.get("time_us"), generationBefore: try c.optional("generation_before"),
                                generationAfter: try c.optional("generation_after"), payloadText: try c.get("payload"),
                                reported: try c.get("reported"), leafHash: try c.get("leaf_hash")))
        }
    }

    public func logLeaves(from: Int64, to: Int64) throws -> LeafBatch {
        LeafBatch.recompute(from: from, rows: try storedEntries("SELECT * FROM events WHERE seq > \(from) AND seq <= \(to) ORDER BY seq"))
    }

    public func logNode(level: Int, index: Int64) throws -> Data? {
        try store.query("SELECT hash FROM merkle_nodes WHERE level = \(level) AND idx = \(index)").first.map { try $0.decode(Data.self) }
    }

    public func logStoredLeaves(from: Int64, to: Int64) throws -> [(seq: Int64, hash: Data)] {
        try store.query("SELECT seq, leaf_hash FROM events WHERE seq > \(from) AND seq <= \(to) ORDER BY seq").map {
            let (seq, hash) = try $0.decode((Int64, Data).self)
            return (seq, hash)
        }
    }

    public func logEntry(seq: Int64) throws -> StoredEntry? {
        try storedEntries("SELECT * FROM events WHERE seq = \(seq)").first?.entry
    }

    public func logEntriesNotByHook(after seq: Int64) throws -> Int64 {
        let prefix = NewEvent.hookActorPrefix
        return try store.query("SELECT count(*)::bigint FROM events WHERE seq > \(seq) AND NOT starts_with(actor, \(prefix))")
            .first.map { try $0.decode(Int64.self) } ?? 0
    }
}
