import Crypto
import Foundation
import Testing
@testable import Ledger

@Suite struct MerkleTests {
    static let leaves: [Data] = (0..<300).map { LedgerEntry.leafHash(Array("entry \($0)".utf8)) }

    /// Complete-subtree hashes computed from the leaves (what the store keeps or recomputes).
    static func subtree(_ level: Int, _ index: Int64) -> Data {
        let w = 1 << level
        return RefMerkle.mth(Array(leaves[Int(index) * w ..< Int(index + 1) * w]))
    }

    @Test func knownVectors() {
        #expect(Merkle.emptyRoot.hexEncoded == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        // RFC 9162 leaf of the empty entry: SHA-256(0x00).
        #expect(LedgerEntry.leafHash([]).hexEncoded == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
        var f = Merkle.Frontier()
        f.append(leaf: LedgerEntry.leafHash([]))
        #expect(f.root == LedgerEntry.leafHash([]))
    }

    @Test func frontierRootMatchesReferenceForEverySize() {
        var f = Merkle.Frontier()
        var completed: [(Int, Int64, Data)] = []
        for n in 1...Self.leaves.count {
            f.append(leaf: Self.leaves[n - 1]) { completed.append(($0, $1, $2)) }
            #expect(f.root == RefMerkle.mth(Array(Self.leaves[..<n])), "size \(n)")
            #expect(f.nodes.map(\.level) == Merkle.Frontier.layout(size: Int64(n)).map(\.level))
        }
        for (level, index, hash) in completed {
            #expect(hash == Self.subtree(level, index))
        }
    }

    @Test func inclusionProofsForAllPairs() throws {
        for n in 1...64 {
            let root = RefMerkle.mth(Array(Self.leaves[..<n]))
            for m in 0..<n {
                let p = try Merkle.inclusionProof(index: Int64(m), size: Int64(n), subtree: Self.subtree)
                #expect(p == RefMerkle.path(m, Array(Self.leaves[..<n])), "leaf \(m) size \(n)")
                #expect(Merkle.rootFromInclusion(index: Int64(m), size: Int64(n), leaf: Self.leaves[m], path: p) == root)
                // A wrong leaf or a wrong index does not verify.
                #expect(Merkle.rootFromInclusion(index: Int64(m), size: Int64(n), leaf: Self.leaves[(m + 1) % 300], path: p) != root)
                if n > 1 {
                    #expect(Merkle.rootFromInclusion(index: Int64((m + 1) % n), size: Int64(n), leaf: Self.leaves[m], path: p) != root)
                }
            }
        }
        // Sampled pairs up to 300.
        for n in stride(from: 65, through: 300, by: 13) {
            for m in stride(from: 0, to: n, by: 5) {
                let p = try Merkle.inclusionProof(index: Int64(m), size: Int64(n), subtree: Self.subtree)
                #expect(p == RefMerkle.path(m, Array(Self.leaves[..<n])))
            }
        }
    }

    @Test func consistencyProofsForAllPairs() throws {
        for n in 1...48 {
            let newRoot = RefMerkle.mth(Array(Self.leaves[..<n]))
            for m in 1...n {
                let oldRoot = RefMerkle.mth(Array(Self.leaves[..<m]))
                let p = try Merkle.consistencyProof(from: Int64(m), to: Int64(n), subtree: Self.subtree)
                #expect(p == RefMerkle.proof(m, Array(Self.leaves[..<n])), "\(m) → \(n)")
                #expect(Merkle.verifyConsistency(from: Int64(m), to: Int64(n), oldRoot: oldRoot, newRoot: newRoot, proof: p))
                if m < n {
                    #expect(!Merkle.verifyConsistency(from: Int64(m), to: Int64(n), oldRoot: Self.leaves[0], newRoot: newRoot, proof: p) || m == 1)
                    #expect(!Merkle.verifyConsistency(from: Int64(m), to: Int64(n), oldRoot: oldRoot, newRoot: oldRoot, proof: p))
                }
            }
        }
        for n in stride(from: 49, through: 300, by: 17) {
            for m in stride(from: 1, through: n, by: 9) {
                let p = try Merkle.consistencyProof(from: Int64(m), to: Int64(n), subtree: Self.subtree)
                #expect(p == RefMerkle.proof(m, Array(Self.leaves[..<n])))
            }
        }
    }

    @Test func badArgumentsThrow() {
        #expect(throws: (any Error).self) { try Merkle.inclusionProof(index: 5, size: 5, subtree: Self.subtree) }
        #expect(throws: (any Error).self) { try Merkle.consistencyProof(from: 0, to: 5, subtree: Self.subtree) }
        #expect(throws: (any Error).self) { try Merkle.consistencyProof(from: 6, to: 5, subtree: Self.subtree) }
    }
}
