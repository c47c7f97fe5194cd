import Foundation

/// CVSS v3.x base scores, computed from the vector as the CVSS v3.1 specification defines
/// (section 7.1 equations, Appendix A `Roundup`).
public enum CVSS3 {
    /// The base score (0.0–10.0) of a `CVSS:3.0/…` or `CVSS:3.1/…` vector, or nil when the
    /// vector is not v3 or lacks a base metric or has an unknown value.
    public static func baseScore(_ vector: String) -> Double? {
        let parts = vector.split(separator: "/")
        guard let head = parts.first, head == "CVSS:3.1" || head == "CVSS:3.0", parts.count <= 64 else { return nil }
        var m: [Substring: Substring] = [:]
        for p in parts.dropFirst() {
            let kv = p.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard kv.count == 2 else { return nil }
            if m[kv[0]] != nil { return nil }      // a metric given twice is malformed
            m[kv[0]] = kv[1]
        }
        guard let av = m["AV"], let ac = m["AC"], let pr = m["PR"], let ui = m["UI"], let s = m["S"],
              let c = m["C"], let i = m["I"], let a = m["A"] else { return nil }
        let changed: Bool
        switch s { case "U": changed = false; case "C": changed = true; default: return nil }
        let avw: Double, acw: Double, prw: Double, uiw: Double
        switch av { case "N": avw = 0.85; case "A": avw = 0.62; case "L": avw = 0.55; case "P": avw = 0.2; default: return nil }
        switch ac { case "L": acw = 0.77; case "H": acw = 0.44; default: return nil }
        switch pr {
        case "N": prw = 0.85
        case "L": prw = changed ? 0.68 : 0.62
        case "H": prw = changed ? 0.5 : 0.27
        default: return nil
        }
        switch ui { case "N": uiw = 0.85; case "R": uiw = 0.62; default: return nil }
        func cia(_ v: Substring) -> Double? {
            switch v { case "H": return 0.56; case "L": return 0.22; case "N": return 0; default: return nil }
        }
        guard let cw = cia(c), let iw = cia(i), let aw = cia(a) else { return nil }
        let iss = 1 - (1 - cw) * (1 - iw) * (1 - aw)
        let impact = changed ? 7.52 * (iss - 0.029) - 3.25 * pow(iss - 0.02, 15) : 6.42 * iss
        let exploitability = 8.22 * avw * acw * prw * uiw
        if impact <= 0 { return 0 }
        return changed ? roundUp(min(1.08 * (impact + exploitability), 10)) : roundUp(min(impact + exploitability, 10))
    }

    /// CVSS v3.1 Appendix A: the smallest number with one decimal place ≥ the input,
    /// computed on integers to avoid floating-point surprises.
    static func roundUp(_ x: Double) -> Double {
        let n = Int((x * 100_000).rounded())
        if n % 10_000 == 0 { return Double(n) / 100_000 }
        return Double(n / 10_000 + 1) / 10
    }
}
