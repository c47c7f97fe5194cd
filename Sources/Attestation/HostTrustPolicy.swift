import Foundation
import Policy
import WardenCore
import Yams

/// The known-good measurements of hosts: `hosts/trust.yaml` in the policy directory
/// (docs/attestation.md). Parsed strictly: unknown keys, malformed digests and duplicate
/// names are errors naming the line. Without the file no host can be attested (fail closed).
///
/// ```yaml
/// apiVersion: warden/v1
/// kind: HostTrust
/// maxAge: 8h                 # how long an attestation counts (default 8h; a rule may ask less)
/// baselines:
///   - name: rack-a-uefi
///     bank: sha256           # sha1, sha256, sha384 or sha512 (default sha256)
///     pcrs:
///       0: 3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969
///       7: 65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068
/// ```
///
/// A host is trusted when its quote matches every PCR of at least one baseline.
public struct HostTrustPolicy: Sendable, Equatable {
    public struct Baseline: Sendable, Equatable {
        public var name: String
        public var bank: UInt16
        public var pcrs: [Int: [UInt8]]
        public init(name: String, bank: UInt16 = TPMAlg.sha256, pcrs: [Int: [UInt8]]) {
            self.name = name; self.bank = bank; self.pcrs = pcrs
        }
    }

    public var maxAge: PolicyDuration
    public var baselines: [Baseline]

    public static let defaultMaxAge = PolicyDuration(seconds: 8 * 3600)

    public init(maxAge: PolicyDuration = HostTrustPolicy.defaultMaxAge, baselines: [Baseline]) {
        self.maxAge = maxAge; self.baselines = baselines
    }

    /// Every PCR some baseline names, per bank: what a quote must cover.
    public var selection: [PCRSelection] {
        var byBank: [UInt16: Set<Int>] = [:]
        for b in baselines { byBank[b.bank, default: []].formUnion(b.pcrs.keys) }
        return byBank.keys.sorted().map { PCRSelection(hash: $0, pcrs: Array(byBank[$0]!)) }
    }

    public static func path(policyDirectory: String) -> String { policyDirectory + "/hosts/trust.yaml" }

    /// The policy in `policyDirectory`; nil when there is no file (no host can be attested).
    public static func load(policyDirectory: String?) throws -> HostTrustPolicy? {
        guard let policyDirectory else { return nil }
        let path = Self.path(policyDirectory: policyDirectory)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try parse(try PolicySet.readText(path), file: path)
    }

    public static func parse(_ text: String, file: String) throws -> HostTrustPolicy {
        func bad(_ message: String, _ node: Node? = nil) -> WardenError {
            WardenError(.invalidArgument, (node?.mark.map { "line \($0.line): " } ?? "") + message, file: file)
        }
        let root: Node?
        root = try YAMLNesting.compose(text, file: file)
        guard let root, case .mapping(let top) = root else { throw bad("the host trust policy is a mapping (apiVersion, kind, maxAge, baselines)") }
        var maxAge = defaultMaxAge
        var baselines: [Baseline] = []
        var sawKind = false
        for (k, v) in top {
            switch k.string ?? "" {
            case "apiVersion": guard v.string == "warden/v1" else { throw bad("apiVersion must be warden/v1", v) }
            case "kind": guard v.string == "HostTrust" else { throw bad("kind must be HostTrust", v) }; sawKind = true
            case "maxAge":
                guard let s = v.string, let d = PolicyDuration(s), d.seconds <= 30 * 86_400 else {
                    throw bad("maxAge is a duration such as 8h, at most 30d", v)
                }
                maxAge = d
            case "baselines":
                guard case .sequence(let seq) = v, !seq.isEmpty, seq.count <= 256 else { throw bad("baselines is a list of 1 to 256 baselines", v) }
                for item in seq {
                    guard case .mapping(let m) = item else { throw bad("a baseline is a mapping (name, bank, pcrs)", item) }
                    var name: String?, bank = TPMAlg.sha256, pcrs: [Int: [UInt8]] = [:]
                    var pcrNode: Node?
                    for (bk, bv) in m {
                        switch bk.string ?? "" {
                        case "name":
                            guard let n = bv.string, (1...64).contains(n.utf8.count),
                                  n.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }) else {
                                throw bad("a baseline name is 1-64 letters, digits, '.', '-' or '_'", bv)
                            }
                            name = n
                        case "bank":
                            guard let s = bv.string, let h = TPMAlg.hash(named: s) else { throw bad("bank is sha1, sha256, sha384 or sha512", bv) }
                            bank = h
                        case "pcrs":
                            pcrNode = bv
                        default: throw bad("unknown key \(bk.string ?? "?") in a baseline (name, bank, pcrs)", bk)
                        }
                    }
                    guard let name else { throw bad("a baseline needs a name", item) }
                    guard !baselines.contains(where: { $0.name == name }) else { throw bad("two baselines are named \(name)", item) }
                    guard let pcrNode, case .mapping(let pm) = pcrNode, !pm.isEmpty else {
                        throw bad("baseline \(name): pcrs is a mapping of PCR numbers (0-23) to hex digests", pcrNode ?? item)
                    }
                    let size = TPMAlg.digestSize(bank)!
                    for (pk, pv) in pm {
                        guard let s = pk.string, let i = Int(s), (0...23).contains(i) else { throw bad("baseline \(name): \(pk.string ?? "?") is not a PCR number 0-23", pk) }
                        guard pcrs[i] == nil else { throw bad("baseline \(name): PCR \(i) is listed twice", pk) }
                        guard let hex = pv.string, let d = Data(hexEncoded: hex), d.count == size else {
                            throw bad("baseline \(name): PCR \(i) is not a \(size)-byte \(TPMAlg.hashName(bank)) digest in hex", pv)
                        }
                        pcrs[i] = Array(d)
                    }
                    baselines.append(Baseline(name: name, bank: bank, pcrs: pcrs))
                }
            default: throw bad("unknown key \(k.string ?? "?") (apiVersion, kind, maxAge, baselines)", k)
            }
        }
        guard sawKind else { throw bad("kind: HostTrust is missing") }
        guard !baselines.isEmpty else { throw bad("no baselines: list at least one known-good set of PCR values") }
        return HostTrustPolicy(maxAge: maxAge, baselines: baselines)
    }

    /// The YAML of one baseline from measured values (`warden host baseline`).
    public static func yaml(name: String, bank: UInt16, values: [Int: [UInt8]]) -> String {
        var out = "apiVersion: warden/v1\nkind: HostTrust\nmaxAge: \(defaultMaxAge)\nbaselines:\n"
        out += "  - name: \(name)\n    bank: \(TPMAlg.hashName(bank))\n    pcrs:\n"
        for (i, v) in values.sorted(by: { $0.key < $1.key }) { out += "      \(i): \(v.hexEncoded)\n" }
        return out
    }
}
