import CSQLite
import Crypto
import Foundation
import GRDB
import WardenCore
import Storage

/// What `warden ledger verify` found.
public struct VerifyReport: Codable, Sendable {
    /// One thing that is wrong.
    public struct Problem: Codable, Sendable, Equatable {
        /// `edited`, `reordered`, `missing`, `inserted`, `unsigned`, `subtree`, `checkpoint`,
        /// `signature`, `key`, `witness`, `damaged`.
        public var kind: String
        /// The first entry (seq) concerned, when one can be named.
        public var seq: Int64?
        /// The last entry concerned, when only a range can be named.
        public var lastSeq: Int64?
        public var message: String

        public init(kind: String, seq: Int64?, lastSeq: Int64?, message: String) {
            self.kind = kind; self.seq = seq; self.lastSeq = lastSeq; self.message = message
        }
    }

    public var ok: Bool { problems.isEmpty }
    /// Entries in the log (the largest seq read).
    public var treeSize: Int64 = 0
    /// The root recomputed from every entry.
    public var rootHex: String = Merkle.emptyRoot.hexEncoded
    public var entriesChecked: Int64 = 0
    public var checkpointsChecked = 0
    public var subtreesChecked = 0
    public var witnessTreeSize: Int64?
    /// Entries after the last signed checkpoint that the libvirt hook recorded (actor
    /// `libvirt-hook@…`): not yet signed, which is expected, not a problem. The next `warden`
    /// write or `warden ledger checkpoint` signs them.
    public var pendingEntries: Int64 = 0
    /// The first bad entry, when one can be named.
    public var firstBad: Problem?
    public var problems: [Problem] = []

    public static let schema = "warden.ledger.verify/v1"

    enum CodingKeys: String, CodingKey {
        case schema, ok, treeSize, rootHex, entriesChecked, checkpointsChecked, subtreesChecked, witnessTreeSize, pendingEntries, firstBad, problems
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(Self.schema, forKey: .schema)
        try c.encode(ok, forKey: .ok)
        try c.encode(treeSize, forKey: .treeSize)
        try c.encode(rootHex, forKey: .rootHex)
        try c.encode(entriesChecked, forKey: .entriesChecked)
        try c.encode(checkpointsChecked, forKey: .checkpointsChecked)
        try c.encode(subtreesChecked, forKey: .subtreesChecked)
        try c.encode(witnessTreeSize, forKey: .witnessTreeSize)
        try c.encode(pendingEntries, forKey: .pendingEntries)
        try c.encode(firstBad, forKey: .firstBad)
        try c.encode(problems, forKey: .problems)
    }
    public init() {}
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        treeSize = try c.decode(Int64.self, forKey: .treeSize)
        rootHex = try c.decode(String.self, forKey: .rootHex)
        entriesChecked = try c.decode(Int64.self, forKey: .entriesChecked)
        checkpointsChecked = try c.decode(Int.self, forKey: .checkpointsChecked)
        subtreesChecked = try c.decode(Int.self, forKey: .subtreesChecked)
        witnessTreeSize = try c.decodeIfPresent(Int64.self, forKey: .witnessTreeSize)
        pendingEntries = try c.decodeIfPresent(Int64.self, forKey: .pendingEntries) ?? 0
        firstBad = try c.decodeIfPresent(Problem.self, forKey: .firstBad)
        problems = try c.decode([Problem].self, forKey: .problems)
    }

    mutating func add(_ kind: String, seq: Int64? = nil, lastSeq: Int64? = nil, _ message: String) {
        let p = Problem(kind: kind, seq: seq, lastSeq: lastSeq, message: message)
        if problems.count < 100 { problems.append(p) }
        if let s = seq, s < (firstBad?.seq ?? .max) { firstBad = p }
    }
}

/// Recomputes the whole log: every leaf from its entry, every stored subtree, the root at
/// every checkpoint, every checkpoint signature, and the witness outside the database.
///
/// The first problem in the entries stops the entry walk (every later position is moot);
/// checkpoints and the witness are still checked, so deletions at the end are found too.
public struct LedgerVerifier {
    public let storage: any LogStorage
    public let keysDirectory: String
    /// The witness file outside the database, when there is one (a host's SQLite ledger);
    /// a server's log has its checkpoints only.
    public let witness: Witness?
    /// Entries read per read transaction.
    var chunk: Int64 = 1 << 16
    /// Read transactions hashing leaves at the same time.
    var workers = max(1, min(4, ProcessInfo.processInfo.activeProcessorCount))

    public init(database: WardenDatabase, keysDirectory: String? = nil) {
        let keys = keysDirectory ?? HostKey.directory(databasePath: database.path)
        self.init(storage: SQLiteLedger(database: database, keysDirectory: keys), keysDirectory: keys,
                  witness: Witness(keysDirectory: keys, databasePath: database.path))
    }

    public init(storage: any LogStorage, keysDirectory: String, witness: Witness?) {
        self.storage = storage
        self.keysDirectory = keysDirectory
        self.witness = witness
    }

    struct CheckpointRow { var id: Int64; var cp: SignedCheckpoint }

    public func verify(progress: ((Int64, Int64) -> Void)? = nil) throws -> VerifyReport {
        var report = VerifyReport()
        // Everything the entries are checked against, read first.
        let stored = try storage.logCheckpoints()
        for id in stored.malformed { report.add("checkpoint", "checkpoint #\(id) names a malformed host") }
        let checkpoints = stored.checkpoints.map { CheckpointRow(id: $0.id, cp: $0.checkpoint) }
        let hostKeys = try storage.logHostKeys()
        let maxSeq = try storage.logTreeSize()
        var witnessCP: SignedCheckpoint?
        if let witness {
            do { witnessCP = try witness.read() } catch let e as WardenError {
                report.add("witness", e.message + " (" + witness.path + ")"); witnessCP = nil
            }
        }
        report.witnessTreeSize = witnessCP?.treeSize

        // Signatures: by the host's key in the hosts table, and that key must be the one in the
        // key file for hosts whose key file is here.
        var localKeys: [String: Data] = [:]
        for host in Set(checkpoints.map(\.cp.host.value) + (witnessCP.map { [$0.host.value] } ?? [])) {
            guard let h = HostName(host) else { continue }
            if let k = try? HostKey.load(directory: keysDirectory, host: h) { localKeys[host] = k.publicKey }
        }
        for (host, pk) in localKeys where hostKeys[host] != nil && hostKeys[host] != pk {
            report.add("key", "the hosts table holds a different public key for \(host) than its key file")
        }
        func keyFor(_ host: HostName) -> Data? { localKeys[host.value] ?? hostKeys[host.value] }
        for c in checkpoints {
            report.checkpointsChecked += 1
            guard let pk = keyFor(c.cp.host) else {
                report.add("signature", seq: nil, "checkpoint #\(c.id) (size \(c.cp.treeSize)) is signed by \(c.cp.host), whose key is unknown")
                continue
            }
            if !c.cp.isValid(publicKey: pk) {
                report.add("signature", "checkpoint #\(c.id) (size \(c.cp.treeSize)) has an invalid signature: it was forged or edited")
            }
        }
        if let w = witnessCP {
            if let pk = keyFor(w.host) {
                if !w.isValid(publicKey: pk) { report.add("witness", "the witness checkpoint has an invalid signature") }
            } else {
                report.add("witness", "the witness is signed by \(w.host), whose key is unknown")
            }
        } else if let witness, maxSeq > 0, report.problems.allSatisfy({ $0.kind != "witness" }) {
            report.add("witness", "there is no witness file (\(witness.path)) although the log has \(maxSeq) entries")
        }

        // The walk over the entries.
        var cpIndex = 0
        while cpIndex < checkpoints.count, checkpoints[cpIndex].cp.treeSize == 0 {
            if checkpoints[cpIndex].cp.root != Merkle.emptyRoot {
                report.add("checkpoint", "checkpoint #\(checkpoints[cpIndex].id) of the empty log has a wrong root")
            }
            cpIndex += 1
        }
        var frontier = Merkle.Frontier()
        var lastGoodCheckpoint: Int64 = 0
        var stopped = false
        var rootAtWitness: Data? = witnessCP?.treeSize == 0 ? Merkle.emptyRoot : nil
        var start: Int64 = 0
        let storage = self.storage
        let nodeLookup = { (level: Int, index: Int64) throws -> Data? in try storage.logNode(level: level, index: index) }
        walk: while start < maxSeq {
            // Leaf hashes of the next chunks, computed in parallel (one read transaction each);
            // then folded into the tree in order here.
            var ranges: [(Int64, Int64)] = []
            var s0 = start
            for _ in 0..<workers where s0 < maxSeq {
                ranges.append((s0, min(s0 + chunk, maxSeq))); s0 = min(s0 + chunk, maxSeq)
            }
            let batches = LeafBatches(count: ranges.count)
            let work = ranges
            DispatchQueue.concurrentPerform(iterations: work.count) { i in
                batches.set(i, Result { try storage.logLeaves(from: work[i].0, to: work[i].1) })
            }
            for i in ranges.indices {
                let batch: LeafBatch
                do { batch = try batches.get(i) } catch let e as WardenError where e.code == .corrupt {
                    report.add("damaged", seq: frontier.size + 1,
                               "entries from \(frontier.size + 1) on cannot be read: the database file is damaged or truncated (\(e.message))")
                    stopped = true; break walk
                }
                var nodeProblem: VerifyReport.Problem?
                var checkpointProblem = false
                batch.leaves.withUnsafeBytes { all in
                    for k in 0..<batch.count {
                        let leaf = Data(all[k * 32 ..< k * 32 + 32])
                        let seq = frontier.size + 1
                        frontier.append(leaf: leaf) { level, index, hash in
                            guard level >= LogAppender.storedLevel, nodeProblem == nil else { return }
                            report.subtreesChecked += 1
                            let h: Data?
                            do { h = try nodeLookup(level, index) } catch { h = nil }
                            if h != hash {
                                // Entries up to the last verified checkpoint are known good.
                                let first = max(index << Int64(level) + 1, lastGoodCheckpoint + 1), last = (index + 1) << Int64(level)
                                nodeProblem = .init(kind: "subtree", seq: first, lastSeq: last,
                                                    message: h == nil ? "the stored hash of entries \(first)…\(last) is missing"
                                                        : "entries \(first)…\(last) do not match their stored subtree hash: one of them was changed together with its leaf hash")
                            }
                        }
                        report.entriesChecked += 1
                        if nodeProblem != nil { return }
                        if seq == witnessCP?.treeSize { rootAtWitness = frontier.root }
                        if cpIndex < checkpoints.count, checkpoints[cpIndex].cp.treeSize == seq {
                            let root = frontier.root
                            while cpIndex < checkpoints.count, checkpoints[cpIndex].cp.treeSize == seq {
                                let c = checkpoints[cpIndex]
                                if c.cp.root != root {
                                    report.add("checkpoint", seq: lastGoodCheckpoint + 1, lastSeq: seq,
                                               "the tree of entries 1…\(seq) does not match signed checkpoint #\(c.id): an entry in \(lastGoodCheckpoint + 1)…\(seq) was changed together with its leaf hash")
                                    checkpointProblem = true
                                    return
                                }
                                cpIndex += 1
                            }
                            lastGoodCheckpoint = seq
                        }
                    }
                }
                if let p = nodeProblem { report.add(p); stopped = true; break walk }
                if checkpointProblem { stopped = true; break walk }
                if let bad = batch.badSeq {
                    if bad.missing {
                        let expected = bad.seq
                        report.add("missing", seq: expected, lastSeq: bad.nextPresent - 1,
                                   expected == bad.nextPresent - 1 ? "entry \(expected) is missing (deleted)"
                                                                   : "entries \(expected)…\(bad.nextPresent - 1) are missing (deleted)")
                    } else {
                        let problem: VerifyReport.Problem
                        if let row = try storage.logEntry(seq: bad.seq) {
                            problem = Self.explainMismatch(row, seq: bad.seq)
                        } else {
                            problem = .init(kind: "missing", seq: bad.seq, lastSeq: nil, message: "entry \(bad.seq) is missing (deleted)")
                        }
                        report.add(problem)
                    }
                    stopped = true; break walk
                }
                if batch.count < Int(ranges[i].1 - ranges[i].0) {
                    // Rows missing at the end of the chunk.
                    let expected = frontier.size + 1
                    report.add("missing", seq: expected, lastSeq: ranges[i].1,
                               "entries \(expected)…\(ranges[i].1) are missing (deleted)")
                    stopped = true; break walk
                }
            }
            start = ranges.last!.1
            progress?(frontier.size, maxSeq)
        }
        report.treeSize = stopped ? maxSeq : frontier.size
        if !stopped { report.rootHex = frontier.root.hexEncoded }

        // Entries beyond what was signed, and checkpoints beyond the end of the log.
        if !stopped {
            let size = frontier.size
            let signed = checkpoints.last?.cp.treeSize ?? 0
            if size > signed {
                // The libvirt hook records without signing (docs/ledger-log.md): a tail made only
                // of its entries is pending, anything else unsigned was added outside warden.
                let others = try storage.logEntriesNotByHook(after: signed)
                if others == 0 {
                    report.pendingEntries = size - signed
                } else {
                    report.add("unsigned", seq: signed + 1, lastSeq: size,
                               "entries \(signed + 1)…\(size) are not covered by any signed checkpoint (added outside warden)")
                }
            }
            if let c = checkpoints.last, c.cp.treeSize > size {
                report.add("missing", seq: size + 1, lastSeq: c.cp.treeSize,
                           "the log ends at entry \(size) but signed checkpoint #\(c.id) covers \(c.cp.treeSize): entries \(size + 1)…\(c.cp.treeSize) were deleted (truncated)")
            }
            if let w = witnessCP {
                if w.treeSize > size {
                    report.add("missing", seq: size + 1, lastSeq: w.treeSize,
                               "the log ends at entry \(size) but the witness checkpoint covers \(w.treeSize): entries \(size + 1)…\(w.treeSize) were deleted (truncated)")
                } else if let r = rootAtWitness, r != w.root {
                    report.add("witness", seq: 1, lastSeq: w.treeSize,
                               "the tree of entries 1…\(w.treeSize) does not match the witness checkpoint: the log was rewritten")
                }
            }
        }
        return report
    }

    /// Says why a row's entry does not match its leaf hash: moved from another position, or edited.
    static func explainMismatch(_ r: StoredEntry, seq: Int64) -> VerifyReport.Problem {
        if r.leafHash.count == 32 {
            for delta in 1...64 {
                for other in [seq - Int64(delta), seq + Int64(delta)] where other >= 1 {
                    if LedgerEntry.leafHash(r.entry(seq: other)) == r.leafHash {
                        return .init(kind: "reordered", seq: seq, lastSeq: nil,
                                     message: "entry \(seq) holds the event that was recorded as entry \(other): the log was reordered")
                    }
                }
            }
        }
        return .init(kind: "edited", seq: seq, lastSeq: nil,
                     message: "entry \(seq) does not match its leaf hash: it was edited")
    }
}

extension VerifyReport {
    mutating func add(_ p: Problem) { add(p.kind, seq: p.seq, lastSeq: p.lastSeq, p.message) }
}

/// Results of parallel leaf hashing, by chunk.
final class LeafBatches: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [Result<LeafBatch, Error>?]
    init(count: Int) { results = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ r: Result<LeafBatch, Error>) { lock.withLock { results[i] = r } }
    func get(_ i: Int) throws -> LeafBatch { try lock.withLock { results[i]! }.get() }
}

extension LedgerVerifier {
    /// Recomputes the leaf hashes of entries (from, to] straight from SQLite's column bytes (no
    /// copies), stopping at the first gap or the first row whose entry does not match its leaf hash.
    static func leaves(_ db: Database, from: Int64, to: Int64) throws -> LeafBatch {
        let stmt = try db.makeStatement(sql: """
            SELECT seq, kind, vm, actor, host, time_us, generation_before, generation_after, payload, reported, leaf_hash
            FROM events WHERE seq > ? AND seq <= ? ORDER BY seq
            """)
        try stmt.setArguments([from, to])
        let h = stmt.sqliteStatement
        var batch = LeafBatch()
        batch.leaves.reserveCapacity(Int(to - from) * 32)
        var entry: [UInt8] = []
        entry.reserveCapacity(1024)
        var expected = from + 1
        func col(_ i: Int32) -> UnsafeRawBufferPointer? {
            if sqlite3_column_type(h, i) == SQLITE_NULL { return nil }
            let p = sqlite3_column_blob(h, i)
            let n = Int(sqlite3_column_bytes(h, i))
            return UnsafeRawBufferPointer(start: n == 0 ? UnsafeRawPointer(bitPattern: 1) : p, count: n)
        }
        let empty = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: 1), count: 0)
        defer { sqlite3_reset(h) }
        while true {
            let rc = sqlite3_step(h)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else {
                throw DatabaseError(resultCode: ResultCode(rawValue: rc), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
            }
            let seq = sqlite3_column_int64(h, 0)
            if seq != expected {
                batch.badSeq = .init(seq: expected, missing: true, nextPresent: seq)
                break
            }
            entry.removeAll(keepingCapacity: true)
            LedgerEntry.encode(into: &entry, seq: seq, kind: col(1) ?? empty, vm: col(2), actor: col(3) ?? empty,
                               host: col(4) ?? empty, timeMicros: sqlite3_column_int64(h, 5),
                               generationBefore: col(6), generationAfter: col(7), payloadText: col(8) ?? empty,
                               reported: sqlite3_column_int64(h, 9) != 0)
            var hasher = SHA256()
            hasher.update(data: [0x00] as [UInt8])
            entry.withUnsafeBytes { hasher.update(bufferPointer: $0) }
            let digest = hasher.finalize()
            let stored = col(10)
            let matches = digest.withUnsafeBytes { d in stored.map { $0.count == 32 && memcmp(d.baseAddress!, $0.baseAddress!, 32) == 0 } ?? false }
            if !matches {
                batch.badSeq = .init(seq: seq, missing: false, nextPresent: seq)
                break
            }
            digest.withUnsafeBytes { batch.leaves.append(contentsOf: $0) }
            batch.count += 1
            expected += 1
        }
        return batch
    }
}
