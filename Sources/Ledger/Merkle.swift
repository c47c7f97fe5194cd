import Crypto
import Foundation
import WardenCore

/// RFC 9162 Merkle tree hashing and proofs.
///
/// ```
///            MTH(D[0:7])                         leaf  = SHA-256(0x00 ‖ entry)
///           /           \                        node  = SHA-256(0x01 ‖ left ‖ right)
///     [0:4]               [4:7]                  empty = SHA-256("")
///    /     \             /     \
///  [0:2]   [2:4]      [4:6]    [6]               MTH(D[0:n]) splits at k, the largest
///  /  \    /  \       /  \                       power of two below n.
/// d0  d1  d2  d3     d4  d5
/// ```
///
/// A *complete subtree* is addressed by (level, index): it holds the 2^level leaves
/// `[index·2^level, (index+1)·2^level)`. Every range the RFC's recursion visits is a
/// left-aligned run of complete subtrees, which is what ``rangeHash`` relies on.
public enum Merkle {
    public static let emptyRoot = Data(SHA256.hash(data: Data()))

    @inline(__always)
    public static func nodeHash(_ left: Data, _ right: Data) -> Data {
        var h = SHA256()
        h.update(data: [0x01])
        h.update(data: left)
        h.update(data: right)
        return Data(h.finalize())
    }

    /// The largest power of two strictly less than `n` (n ≥ 2).
    @inline(__always)
    static func split(_ n: Int64) -> Int64 {
        var k: Int64 = 1
        while k << 1 < n { k <<= 1 }
        return k
    }

    /// The right edge of a tree: hashes of the complete subtrees that make up `[0, size)`,
    /// largest first. Appending a leaf is O(log n) amortized; the root is the right fold.
    public struct Frontier: Sendable, Equatable {
        public private(set) var size: Int64
        /// (level, hash), levels strictly decreasing.
        public private(set) var nodes: [(level: Int, hash: Data)]

        public init() { size = 0; nodes = [] }

        public init(size: Int64, nodes: [(level: Int, hash: Data)]) {
            self.size = size; self.nodes = nodes
        }

        /// Appends a leaf hash; calls `completed(level, index, hash)` for every complete
        /// subtree of level ≥ 1 that the append finishes.
        public mutating func append(leaf: Data) {
            append(leaf: leaf) { _, _, _ in }
        }

        public mutating func append(leaf: Data, completed: (Int, Int64, Data) throws -> Void) rethrows {
            size += 1
            var level = 0
            var hash = leaf
            while let last = nodes.last, last.level == level {
                nodes.removeLast()
                hash = Merkle.nodeHash(last.hash, hash)
                level += 1
                try completed(level, (size >> Int64(level)) - 1, hash)
            }
            nodes.append((level, hash))
        }

        /// MTH of the leaves so far.
        public var root: Data {
            guard var acc = nodes.last?.hash else { return Merkle.emptyRoot }
            for n in nodes.dropLast().reversed() { acc = Merkle.nodeHash(n.hash, acc) }
            return acc
        }

        /// The (level, index) of each subtree in the compact range of `[0, size)`, largest first.
        public static func layout(size: Int64) -> [(level: Int, index: Int64)] {
            var out: [(Int, Int64)] = []
            var start: Int64 = 0
            for level in stride(from: 62, through: 0, by: -1) where size & (Int64(1) << Int64(level)) != 0 {
                out.append((level, start >> Int64(level)))
                start += Int64(1) << Int64(level)
            }
            return out
        }

        public static func == (a: Frontier, b: Frontier) -> Bool {
            a.size == b.size && a.nodes.count == b.nodes.count
                && zip(a.nodes, b.nodes).allSatisfy { $0.level == $1.level && $0.hash == $1.hash }
        }
    }

    /// MTH of `[start, end)` where `start` is aligned to the largest power of two below
    /// `end - start` (as in every range RFC 9162's recursion visits), from complete subtrees.
    public static func rangeHash(_ start: Int64, _ end: Int64,
                                 subtree: (Int, Int64) throws -> Data) rethrows -> Data {
        let n = end - start
        precondition(n >= 1)
        if n & (n - 1) == 0 {
            let level = n.trailingZeroBitCount
            return try subtree(level, start >> Int64(level))
        }
        let k = split(n)
        return nodeHash(try rangeHash(start, start + k, subtree: subtree),
                        try rangeHash(start + k, end, subtree: subtree))
    }

    /// RFC 9162 §2.1.3.1 PATH(m, D[0:n]): the inclusion proof of leaf `index` in a tree of `size`.
    public static func inclusionProof(index: Int64, size: Int64,
                                      subtree: (Int, Int64) throws -> Data) throws -> [Data] {
        guard size >= 1, index >= 0, index < size else {
            throw WardenError(.invalidArgument, "leaf \(index) is not in a tree of size \(size)")
        }
        var path: [Data] = []
        func rec(_ m: Int64, _ start: Int64, _ end: Int64) throws {
            let n = end - start
            if n == 1 { return }
            let k = split(n)
            if m < k {
                try rec(m, start, start + k)
                path.append(try rangeHash(start + k, end, subtree: subtree))
            } else {
                try rec(m - k, start + k, end)
                path.append(try rangeHash(start, start + k, subtree: subtree))
            }
        }
        try rec(index, 0, size)
        return path
    }

    /// RFC 9162 §2.1.4.1 PROOF(m, D[0:n]): the consistency proof between sizes `from` and `to`.
    public static func consistencyProof(from m: Int64, to n: Int64,
                                        subtree: (Int, Int64) throws -> Data) throws -> [Data] {
        guard m >= 1, m <= n else {
            throw WardenError(.invalidArgument, "a consistency proof needs 1 ≤ from ≤ to (got \(m) and \(n))")
        }
        if m == n { return [] }
        var proof: [Data] = []
        func sub(_ m: Int64, _ start: Int64, _ end: Int64, _ b: Bool) throws {
            let n = end - start
            if m == n {
                if !b { proof.append(try rangeHash(start, end, subtree: subtree)) }
                return
            }
            let k = split(n)
            if m <= k {
                try sub(m, start, start + k, b)
                proof.append(try rangeHash(start + k, end, subtree: subtree))
            } else {
                try sub(m - k, start + k, end, false)
                proof.append(try rangeHash(start, start + k, subtree: subtree))
            }
        }
        try sub(m, 0, n, true)
        return proof
    }

    /// RFC 9162 §2.1.3.2: the root implied by an inclusion proof.
    public static func rootFromInclusion(index: Int64, size: Int64, leaf: Data, path: [Data]) -> Data? {
        guard index >= 0, index < size else { return nil }
        var fn = index, sn = size - 1
        var r = leaf
        for p in path {
            if sn == 0 { return nil }
            if fn & 1 == 1 || fn == sn {
                r = nodeHash(p, r)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 { fn >>= 1; sn >>= 1 }
                }
            } else {
                r = nodeHash(r, p)
            }
            fn >>= 1; sn >>= 1
        }
        return sn == 0 ? r : nil
    }

    /// RFC 9162 §2.1.4.2: checks a consistency proof between two roots.
    public static func verifyConsistency(from m: Int64, to n: Int64, oldRoot: Data, newRoot: Data, proof: [Data]) -> Bool {
        guard m >= 1, m <= n else { return false }
        if m == n { return proof.isEmpty && oldRoot == newRoot }
        var path = proof
        if m & (m - 1) == 0 { path.insert(oldRoot, at: 0) }
        guard !path.isEmpty else { return false }
        var fn = m - 1, sn = n - 1
        while fn & 1 == 1 { fn >>= 1; sn >>= 1 }
        var fr = path[0], sr = path[0]
        for c in path.dropFirst() {
            if sn == 0 { return false }
            if fn & 1 == 1 || fn == sn {
                fr = nodeHash(c, fr); sr = nodeHash(c, sr)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 { fn >>= 1; sn >>= 1 }
                }
            } else {
                sr = nodeHash(sr, c)
            }
            fn >>= 1; sn >>= 1
        }
        return sn == 0 && fr == oldRoot && sr == newRoot
    }
}
