import Foundation
import GRDB
import Testing
import WardenTestSupport
@testable import Ledger
import WardenCore

@Suite struct LedgerLogUnitTests {
    @Test func rfc3339MatchesTheSystemCalendar() {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
        var rng = SeededRandom(seed: 3)
        var samples: [Int64] = [0, 951_782_400_000_000, 4_107_542_399_999_999, -1, -86_400_000_001]
        for _ in 0..<2000 { samples.append(Int64(rng.next() % 4_000_000_000_000_000)) }
        for us in samples {
            let secs = us >= 0 ? us / 1_000_000 : (us - 999_999) / 1_000_000
            let frac = us - secs * 1_000_000
            let expected = f.string(from: Date(timeIntervalSince1970: Double(secs))) + "." + String(format: "%06lld", frac) + "Z"
            #expect(LedgerTime.rfc3339(us) == expected, "\(us)")
        }
    }

    /// Proofs read from the store (stored subtrees plus recomputed small ones) equal the
    /// reference for trees that are not checkpoint sizes, across stored-subtree boundaries.
    @Test func storedProofsMatchReference() throws {
        try withLedger { ledger, _ in
            var leaves: [Data] = []
            for chunk in [300, 250, 230] {
                leaves += try ledger.append((0..<chunk).map { NewEvent(kind: .scanned, vm: nil, payload: ["n": .number(Double($0))]) }).map(\.leafHash)
            }
            for size in [1, 2, 255, 256, 257, 511, 512, 513, 700, 780] {
                let ref = Array(leaves[..<size])
                for seq in Set([1, size / 2 + 1, size, max(1, size - 1), min(size, 257)]) {
                    let p = try ledger.inclusionProof(seq: Int64(seq), treeSize: Int64(size))
                    #expect(p.path == RefMerkle.path(seq - 1, ref), "seq \(seq) size \(size)")
                    #expect(p.root == RefMerkle.mth(ref))
                    #expect(LedgerEntry.leafHash(p.entry) == leaves[seq - 1])
                }
                for m in Set([1, size / 3 + 1, size]) {
                    let c = try ledger.consistencyProof(from: Int64(m), to: Int64(size))
                    #expect(c.proof == RefMerkle.proof(m, ref))
                    #expect(Merkle.verifyConsistency(from: Int64(m), to: Int64(size), oldRoot: c.oldRoot, newRoot: c.newRoot, proof: c.proof))
                }
            }
            #expect(throws: WardenError.self) { try ledger.inclusionProof(seq: 781, treeSize: 780) }
            #expect(throws: WardenError.self) { try ledger.inclusionProof(seq: 1, treeSize: 781) }
            #expect(try ledger.latestCheckpoint()?.treeSize == 780)
            #expect(try ledger.checkpoint(treeSize: 550)?.root == RefMerkle.mth(Array(leaves[..<550])))
            #expect(try ledger.checkpoint(treeSize: 551) == nil)
        }
    }

    @Test func verifierAcceptsAnIntactLogAndNamesAnEdit() throws {
        try withLedger { ledger, _ in
            for _ in 0..<3 {
                _ = try ledger.append((0..<200).map { NewEvent(kind: .started, vm: VMID(), payload: ["i": .number(Double($0))]) })
            }
            var v = LedgerVerifier(database: ledger.database, keysDirectory: ledger.keysDirectory)
            v.chunk = 77   // several read transactions
            let ok = try v.verify()
            #expect(ok.ok, "\(ok.problems)")
            #expect(ok.treeSize == 600 && ok.checkpointsChecked == 3 && ok.subtreesChecked == 3 && ok.witnessTreeSize == 600)
            try ledger.database.write { try $0.execute(sql: "UPDATE events SET host = 'elsewhere' WHERE seq = 444") }
            let bad = try v.verify()
            #expect(!bad.ok)
            #expect(bad.firstBad?.seq == 444 && bad.firstBad?.kind == "edited")
        }
    }

    @Test func initSignsTheEmptyLog() throws {
        try withLedger { ledger, _ in
            let cp = try ledger.initialize()
            #expect(cp.treeSize == 0 && cp.root == Merkle.emptyRoot)
            #expect(cp.isValid(publicKey: try ledger.signingKey().publicKey))
            let report = try LedgerVerifier(database: ledger.database, keysDirectory: ledger.keysDirectory).verify()
            #expect(report.ok, "\(report.problems)")
        }
    }
}
