import Foundation
import GRDB
import WardenCore

/// The tamper-evident log's read side: checkpoints and RFC 9162 proofs. Separate from
/// ``LedgerStore`` so query code does not depend on it; ``SQLiteLedger`` implements both.
public protocol LedgerLog: Sendable {
    /// The most recent signed checkpoint (largest tree), if any.
    func latestCheckpoint() throws -> SignedCheckpoint?
    /// The signed checkpoint of exactly `treeSize` entries, if one was made.
    func checkpoint(treeSize: Int64) throws -> SignedCheckpoint?
    /// The public key the ledger holds for `host`.
    func publicKey(of host: HostName) throws -> Data?
    /// An inclusion proof of event `seq` in the tree of `treeSize` entries.
    func inclusionProof(seq: Int64, treeSize: Int64) throws -> InclusionProof
    /// A consistency proof between the trees of `from` and `to` entries.
    func consistencyProof(from: Int64, to: Int64) throws -> ConsistencyProof
}

/// RFC 9162 inclusion proof of one event.
public struct InclusionProof: Sendable, Equatable {
    public var seq: Int64
    public var treeSize: Int64
    /// The event's canonical entry bytes (the leaf is `SHA-256(0x00 ‖ entry)`).
    public var entry: [UInt8]
    public var leafHash: Data
    public var path: [Data]
    public var root: Data
}

/// RFC 9162 consistency proof between two tree sizes.
public struct ConsistencyProof: Sendable, Equatable {
    public var from: Int64
    public var to: Int64
    public var oldRoot: Data
    public var newRoot: Data
    public var proof: [Data]
}

/// Every log storage answers checkpoints and proofs (LogStorage.swift).
extension SQLiteLedger: LedgerLog {}

extension SQLiteLedger: LogStorage {
    public var logLocation: String { database.path }

    public func logTreeSize() throws -> Int64 { try database.read { db in try Rows.treeSize(db) } }

    public func logCheckpoints() throws -> (checkpoints: [(id: Int64, checkpoint: SignedCheckpoint)], malformed: [Int64]) {
        try database.read { db in
            var out: [(id: Int64, checkpoint: SignedCheckpoint)] = []
            var malformed: [Int64] = []
            for r in try Row.fetchAll(db, sql: "SELECT * FROM checkpoints ORDER BY tree_size, id") {
                guard let host = HostName(r["host"] as String) else { malformed.append(r["id"]); continue }
                out.append((r["id"], SignedCheckpoint(treeSize: r["tree_size"], root: r["root"], timeMicros: r["time_us"],
                                                      host: host, signature: r["signature"])))
            }
            return (out, malformed)
        }
    }

    public func logHostKeys() throws -> [String: Data] {
        try database.read { db in
            var keys: [String: Data] = [:]
            for r in try Row.fetchAll(db, sql: "SELECT name, public_key FROM hosts WHERE public_key IS NOT NULL") { keys[r[0]] = r[1] }
            return keys
        }
    }

    public func logLeaves(from: Int64, to: Int64) throws -> LeafBatch {
        try database.read { db in try LedgerVerifier.leaves(db, from: from, to: to) }
    }

    public func logNode(level: Int, index: Int64) throws -> Data? {
        try database.read { db in
            try Data.fetchOne(db.cachedStatement(sql: "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?"), arguments: [level, index])
        }
    }

    public func logStoredLeaves(from: Int64, to: Int64) throws -> [(seq: Int64, hash: Data)] {
        try database.read { db in
            try Row.fetchAll(db.cachedStatement(sql: "SELECT seq, leaf_hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq"),
                             arguments: [from, to]).map { (seq: $0[0], hash: $0[1]) }
        }
    }

    public func logEntry(seq: Int64) throws -> StoredEntry? {
        try database.read { db in
            try Row.fetchOne(db, sql: """
                SELECT kind, vm, actor, host, time_us, generation_before, generation_after, payload, reported, leaf_hash
                FROM events WHERE seq = ?
                """, arguments: [seq]).map { r in
                // Text columns as stored bytes (a BLOB where text belongs still re-encodes).
                func text(_ i: Int) -> String? { r.dataNoCopy(atIndex: i).map { String(decoding: $0, as: UTF8.self) } }
                return StoredEntry(kind: text(0) ?? "", vm: text(1), actor: text(2) ?? "", host: text(3) ?? "", timeMicros: r[4],
                                   generationBefore: text(5), generationAfter: text(6), payloadText: text(7) ?? "",
                                   reported: (r[8] as Int64) != 0, leafHash: r.dataNoCopy(atIndex: 9) ?? Data())
            }
        }
    }

    public func logEntriesNotByHook(after seq: Int64) throws -> Int64 {
        let prefix = NewEvent.hookActorPrefix
        return try database.read { db in
            try Int64.fetchOne(db, sql: "SELECT count(*) FROM events WHERE seq > ? AND substr(actor, 1, ?) <> ?",
                               arguments: [seq, prefix.utf8.count, prefix]) ?? 0
        }
    }
}
