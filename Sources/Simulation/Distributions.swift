import Foundation
import WardenCore

/// The draws the simulation needs, all from one seeded stream so a run reproduces from its seed.
struct Draws {
    var rng: SeededRandom
    private var spareNormal: Double?

    init(seed: UInt64) { rng = SeededRandom(seed: seed) }

    /// Uniform in the open interval (0, 1): never 0, so its logarithm is finite.
    mutating func unit() -> Double { (Double(rng.next() >> 11) + 0.5) * 0x1p-53 }

    mutating func below(_ n: Int) -> Int { rng.below(n) }

    mutating func exponential(mean: Double) -> Double { -mean * log(unit()) }

    /// Standard normal, by the Box–Muller transform (the second value is kept for the next call).
    mutating func normal() -> Double {
        if let z = spareNormal { spareNormal = nil; return z }
        let r = (-2 * log(unit())).squareRoot(), a = 2 * Double.pi * unit()
        spareNormal = r * sin(a)
        return r * cos(a)
    }

    mutating func logNormal(median: Double, sigma: Double) -> Double { median * exp(sigma * normal()) }

    /// Poisson: Knuth's product of uniforms below a mean of 30, the normal approximation above.
    mutating func poisson(mean: Double) -> Int {
        guard mean > 0 else { return 0 }
        if mean < 30 {
            let limit = exp(-mean)
            var k = 0, prod = unit()
            while prod > limit { k += 1; prod *= unit() }
            return k
        }
        return max(0, Int((mean + mean.squareRoot() * normal()).rounded()))
    }

    /// Binomial(n, p). Small expected counts are drawn exactly by geometric skips between
    /// successes; from an expected 25 on (either side, by symmetry) the normal approximation
    /// with continuity rounding is used, whose error is far below the run's own noise.
    mutating func binomial(_ n: Int, _ p: Double) -> Int {
        guard n > 0, p > 0 else { return 0 }
        if p >= 1 { return n }
        if p > 0.5 { return n - binomial(n, 1 - p) }
        let mean = Double(n) * p
        if mean < 25 {
            let logQ = log1p(-p)
            var k = 0, position = 0.0
            while true {
                position += (log(unit()) / logQ).rounded(.down) + 1
                if position > Double(n) { return k }
                k += 1
            }
        }
        let sd = (mean * (1 - p)).squareRoot()
        return min(n, max(0, Int((mean + sd * normal()).rounded())))
    }
}

/// A set of VM numbers with O(1) insert, remove and uniform pick (a list plus each member's position).
struct IndexSet32 {
    private(set) var members: [Int32] = []
    private var position: [Int32] = []

    init(capacity: Int) {
        members.reserveCapacity(capacity)
        position = Array(repeating: -1, count: capacity)
    }

    var count: Int { members.count }

    mutating func grow(to n: Int) {
        if position.count < n { position.append(contentsOf: repeatElement(-1, count: n - position.count)) }
    }

    func contains(_ v: Int) -> Bool { position[v] >= 0 }

    mutating func insert(_ v: Int) {
        guard position[v] < 0 else { return }
        position[v] = Int32(members.count)
        members.append(Int32(v))
    }

    mutating func remove(_ v: Int) {
        let at = Int(position[v])
        guard at >= 0 else { return }
        let last = members.removeLast()
        if Int(last) != v {
            members[at] = last
            position[Int(last)] = Int32(at)
        }
        position[v] = -1
    }
}
