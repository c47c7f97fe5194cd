import Foundation
import WardenCore

/// What verification and proofs read of the Merkle log, whichever database keeps it. The
/// algorithms (``LedgerVerifier``, inclusion and consistency proofs) are written once over
/// this; SQLite and PostgreSQL provide the reads.
public protocol LogStorage: Sendable {
    /// Where the log is, for messages (a file path or a URL without password).
    var logLocation: String { get }
    /// The number of entries (the largest sequence number).
    func logTreeSize() throws -> Int64
    /// The stored checkpoints in order of size, and the ids of rows too malformed to read.
    func logCheckpoints() throws -> (checkpoints: [(id: Int64, checkpoint: SignedCheckpoint)], malformed: [Int64])
    /// The public keys the hosts table holds, by host name.
    func logHostKeys() throws -> [String: Data]
    /// Leaf hashes recomputed from the entries (from, to], stopping at the first gap or at the
    /// first entry whose recomputed hash differs from the stored one.
    func logLeaves(from: Int64, to: Int64) throws -> LeafBatch
    /// A stored complete-subtree hash.
    func logNode(level: Int, index: Int64) throws -> Data?
    /// The stored leaf hashes of (from, to], in order, with their sequence numbers.
    func logStoredLeaves(from: Int64, to: Int64) throws -> [(seq: Int64, hash: Data)]
    /// One entry's stored fields.
    func logEntry(seq: Int64) throws -> StoredEntry?
    /// How many entries after `seq` were not recorded by the libvirt hook.
    func logEntriesNotByHook(after seq: Int64) throws -> Int64
}

/// An event row as stored: enough to recompute its canonical entry at any position.
public struct StoredEntry: Sendable {
    public var kind: String
    public var vm: String?
    public var actor: String
    public var host: String
    public var timeMicros: Int64
    public var generationBefore: String?
    public var generationAfter: String?
    public var payloadText: String
    public var reported: Bool
    public var leafHash: Data

    public init(kind: String, vm: String?, actor: String, host: String, timeMicros: Int64, generationBefore: String?,
                generationAfter: String?, payloadText: String, reported: Bool, leafHash: Data) {
        self.kind = kind; self.vm = vm; self.actor = actor; self.host = host; self.timeMicros = timeMicros
        self.generationBefore = generationBefore; self.generationAfter = generationAfter
        self.payloadText = payloadText; self.reported = reported; self.leafHash = leafHash
    }

    /// The canonical entry this row would be at position `seq`.
    public func entry(seq: Int64) -> [UInt8] {
        LedgerEntry.encode(seq: seq, kind: kind, vm: vm, actor: actor, host: host, timeMicros: timeMicros,
                           generationBefore: generationBefore, generationAfter: generationAfter,
                           payloadText: payloadText, reported: reported)
    }
}

/// Leaf hashes of a run of entries, and where the run first went wrong.
public struct LeafBatch: Sendable {
    public struct Bad: Sendable {
        public var seq: Int64; public var missing: Bool; public var nextPresent: Int64
        public init(seq: Int64, missing: Bool, nextPresent: Int64) { self.seq = seq; self.missing = missing; self.nextPresent = nextPresent }
    }
    /// 32 bytes per leaf, in seq order.
    public var leaves: [UInt8] = []
    public var count = 0
    public var badSeq: Bad?
    public init() {}

    /// Builds a batch from stored entries in order (the portable path; SQLite has a faster one).
    public static func recompute(from: Int64, rows: [(seq: Int64, entry: StoredEntry)]) -> LeafBatch {
        var batch = LeafBatch()
        batch.leaves.reserveCapacity(rows.count * 32)
        var expected = from + 1
        for (seq, row) in rows {
            if seq != expected { batch.badSeq = .init(seq: expected, missing: true, nextPresent: seq); break }
            let leaf = LedgerEntry.leafHash(row.entry(seq: seq))
            if leaf != row.leafHash { batch.badSeq = .init(seq: seq, missing: false, nextPresent: seq); break }
            batch.leaves.append(contentsOf: leaf)
            batch.count += 1
            expected += 1
        }
        return batch
    }
}

/// Proofs and checkpoints, for every log storage.
extension LogStorage {
    public func latestCheckpoint() throws -> SignedCheckpoint? { try logCheckpoints().checkpoints.last?.checkpoint }

    public func checkpoint(treeSize: Int64) throws -> SignedCheckpoint? {
        try logCheckpoints().checkpoints.last { $0.checkpoint.treeSize == treeSize }?.checkpoint
    }

    public func publicKey(of host: HostName) throws -> Data? { try logHostKeys()[host.value] }

    public func inclusionProof(seq: Int64, treeSize: Int64) throws -> InclusionProof {
        let size = try logTreeSize()
        guard treeSize >= 1, treeSize <= size else {
            throw WardenError(.invalidArgument, "the log has \(size) entries; there is no tree of \(treeSize)")
        }
        guard seq >= 1, seq <= treeSize else {
            throw WardenError(.notFound, "there is no event \(seq) in the tree of \(treeSize) entries")
        }
        guard let row = try logEntry(seq: seq) else {
            throw WardenError(.corrupt, "event \(seq) is missing from the log; run warden ledger verify", file: logLocation)
        }
        let entry = row.entry(seq: seq)
        let leaf = LedgerEntry.leafHash(entry)
        guard leaf == row.leafHash else {
            throw WardenError(.corrupt, "event \(seq) does not match its leaf hash; run warden ledger verify", file: logLocation)
        }
        var tree = SubtreeReader(storage: self)
        let path = try Merkle.inclusionProof(index: seq - 1, size: treeSize) { try tree.hash($0, $1) }
        let root = try Merkle.rangeHash(0, treeSize) { try tree.hash($0, $1) }
        return InclusionProof(seq: seq, treeSize: treeSize, entry: entry, leafHash: leaf, path: path, root: root)
    }

    public func consistencyProof(from m: Int64, to n: Int64) throws -> ConsistencyProof {
        let size = try logTreeSize()
        guard m >= 1, m <= n, n <= size else {
            throw WardenError(.invalidArgument, "a consistency proof needs 1 ≤ from ≤ to ≤ \(size) (the log's size); got \(m) and \(n)")
        }
        var tree = SubtreeReader(storage: self)
        let proof = try Merkle.consistencyProof(from: m, to: n) { try tree.hash($0, $1) }
        return ConsistencyProof(from: m, to: n, oldRoot: try Merkle.rangeHash(0, m) { try tree.hash($0, $1) },
                                newRoot: try Merkle.rangeHash(0, n) { try tree.hash($0, $1) }, proof: proof)
    }
}

/// Complete-subtree hashes: stored ones from the nodes table, smaller ones from the leaves of
/// one 256-leaf block (cached per block).
struct SubtreeReader {
    let storage: any LogStorage
    var blocks: [Int64: [Data]] = [:]

    init(storage: any LogStorage) { self.storage = storage }

    mutating func hash(_ level: Int, _ index: Int64) throws -> Data {
        let stored = LogAppender.storedLevel
        if level >= stored {
            guard let h = try storage.logNode(level: level, index: index) else {
                throw WardenError(.corrupt, "the Merkle log lacks the node at level \(level) index \(index); run warden ledger verify",
                                  file: storage.logLocation)
            }
            return h
        }
        let first = index << Int64(level)
        let block = first >> Int64(stored)
        if blocks[block] == nil {
            let lo = block << Int64(stored)
            var leaves: [Data] = []
            for (i, r) in try storage.logStoredLeaves(from: lo, to: lo + (1 << Int64(stored))).enumerated() {
                guard r.seq == lo + Int64(i) + 1 else {
                    throw WardenError(.corrupt, "the event log is not contiguous at seq \(lo + Int64(i) + 1); run warden ledger verify",
                                      file: storage.logLocation)
                }
                leaves.append(r.hash)
            }
            blocks[block] = leaves
        }
        let leaves = blocks[block]!
        let off = Int(first - (block << Int64(stored)))
        let width = 1 << level
        guard off + width <= leaves.count else {
            throw WardenError(.corrupt, "the event log ends inside a subtree it should hold; run warden ledger verify", file: storage.logLocation)
        }
        var level0 = Array(leaves[off ..< off + width])
        while level0.count > 1 {
            level0 = stride(from: 0, to: level0.count, by: 2).map { Merkle.nodeHash(level0[$0], level0[$0 + 1]) }
        }
        return level0[0]
    }
}
