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

extension SQLiteLedger: LedgerLog {
    public func latestCheckpoint() throws -> SignedCheckpoint? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM checkpoints ORDER BY tree_size DESC, id DESC LIMIT 1").map(Self.checkpoint)
        }
    }

    public func checkpoint(treeSize: Int64) throws -> SignedCheckpoint? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM checkpoints WHERE tree_size = ? ORDER BY id DESC LIMIT 1",
                             arguments: [treeSize]).map(Self.checkpoint)
        }
    }

    public func publicKey(of host: HostName) throws -> Data? {
        try database.read { db in
            try Data.fetchOne(db, sql: "SELECT public_key FROM hosts WHERE name = ?", arguments: [host.value])
        }
    }

    static func checkpoint(_ r: Row) throws -> SignedCheckpoint {
        guard let host = HostName(r["host"] as String) else { throw WardenError(.corrupt, "a checkpoint names a malformed host") }
        return SignedCheckpoint(treeSize: r["tree_size"], root: r["root"], timeMicros: r["time_us"], host: host, signature: r["signature"])
    }

    public func inclusionProof(seq: Int64, treeSize: Int64) throws -> InclusionProof {
        try database.read { db in
            let size = try Rows.treeSize(db)
            guard treeSize >= 1, treeSize <= size else {
                throw WardenError(.invalidArgument, "the log has \(size) entries; there is no tree of \(treeSize)")
            }
            guard seq >= 1, seq <= treeSize else {
                throw WardenError(.notFound, "there is no event \(seq) in the tree of \(treeSize) entries")
            }
            guard let row = try Row.fetchOne(db, sql: """
                SELECT seq, kind, vm, actor, host, time_us, generation_before, generation_after, payload, reported, leaf_hash
                FROM events WHERE seq = ?
                """, arguments: [seq]) else {
                throw WardenError(.corrupt, "event \(seq) is missing from the log; run warden ledger verify", file: database.path)
            }
            var entry: [UInt8] = []
            LedgerVerifier.encodeRow(row, seq: seq, into: &entry)
            let leaf = LedgerEntry.leafHash(entry)
            guard leaf == row.dataNoCopy(atIndex: 10) else {
                throw WardenError(.corrupt, "event \(seq) does not match its leaf hash; run warden ledger verify", file: database.path)
            }
            var tree = SubtreeReader(db: db, file: database.path)
            let path = try Merkle.inclusionProof(index: seq - 1, size: treeSize) { try tree.hash($0, $1) }
            let root = try Merkle.rangeHash(0, treeSize) { try tree.hash($0, $1) }
            return InclusionProof(seq: seq, treeSize: treeSize, entry: entry, leafHash: leaf, path: path, root: root)
        }
    }

    public func consistencyProof(from m: Int64, to n: Int64) throws -> ConsistencyProof {
        try database.read { db in
            let size = try Rows.treeSize(db)
            guard m >= 1, m <= n, n <= size else {
                throw WardenError(.invalidArgument, "a consistency proof needs 1 ≤ from ≤ to ≤ \(size) (the log's size); got \(m) and \(n)")
            }
            var tree = SubtreeReader(db: db, file: database.path)
            let proof = try Merkle.consistencyProof(from: m, to: n) { try tree.hash($0, $1) }
            return ConsistencyProof(from: m, to: n, oldRoot: try Merkle.rangeHash(0, m) { try tree.hash($0, $1) },
                                    newRoot: try Merkle.rangeHash(0, n) { try tree.hash($0, $1) }, proof: proof)
        }
    }
}

/// Complete-subtree hashes: stored ones from `merkle_nodes`, smaller ones from the leaves of
/// one 256-leaf block (cached per block).
struct SubtreeReader {
    let db: Database
    let file: String
    var blocks: [Int64: [Data]] = [:]

    init(db: Database, file: String) { self.db = db; self.file = file }

    mutating func hash(_ level: Int, _ index: Int64) throws -> Data {
        let stored = LogAppender.storedLevel
        if level >= stored {
            guard let h = try Data.fetchOne(db.cachedStatement(sql: "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?"),
                                            arguments: [level, index]) else {
                throw WardenError(.corrupt, "the Merkle log lacks the node at level \(level) index \(index); run warden ledger verify", file: file)
            }
            return h
        }
        let first = index << Int64(level)
        let block = first >> Int64(stored)
        if blocks[block] == nil {
            let lo = block << Int64(stored)
            let rows = try Row.fetchAll(db.cachedStatement(sql: "SELECT seq, leaf_hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq"),
                                        arguments: [lo, lo + (1 << Int64(stored))])
            var leaves: [Data] = []
            for (i, r) in rows.enumerated() {
                guard (r[0] as Int64) == lo + Int64(i) + 1 else {
                    throw WardenError(.corrupt, "the event log is not contiguous at seq \(lo + Int64(i) + 1); run warden ledger verify", file: file)
                }
                leaves.append(r[1])
            }
            blocks[block] = leaves
        }
        let leaves = blocks[block]!
        let off = Int(first - (block << Int64(stored)))
        let width = 1 << level
        guard off + width <= leaves.count else {
            throw WardenError(.corrupt, "the event log ends inside a subtree it should hold; run warden ledger verify", file: file)
        }
        var level0 = Array(leaves[off ..< off + width])
        while level0.count > 1 {
            level0 = stride(from: 0, to: level0.count, by: 2).map { Merkle.nodeHash(level0[$0], level0[$0 + 1]) }
        }
        return level0[0]
    }
}
