import Foundation
import Policy
import WardenCore
import Yams

/// What the vault does when policy denies a release, or the key provider is gone
/// (docs/vault.md): `vault/vault.yaml` in the policy directory, parsed strictly (unknown keys
/// and malformed values are errors, naming the line). Without the file: no break-glass
/// approvals needed beyond an admin (root), and no grace.
///
/// ```yaml
/// apiVersion: warden/v1
/// kind: Vault
/// breakGlass:
///   admins: [root, alice]      # who may break glass (local user names; default root)
///   approvals: 1               # other admins who must approve first (default 0)
///   approvalWindow: 4h         # how recent an approval must be (default 1h)
/// grace:
///   duration: 24h              # a released key stays usable on this host this long if the provider vanishes
/// ```
public struct VaultConfig: Sendable, Equatable {
    public var admins: [String] = ["root"]
    public var approvals: Int = 0
    public var approvalWindow: PolicyDuration = PolicyDuration(seconds: 3600)
    /// Nil: no grace; a VM whose key provider is unreachable is locked.
    public var grace: PolicyDuration?

    public init() {}

    public static func path(policyDirectory: String) -> String { policyDirectory + "/vault/vault.yaml" }

    /// The configuration in `policyDirectory`; the defaults when the file does not exist.
    public static func load(policyDirectory: String?) throws -> VaultConfig {
        guard let policyDirectory else { return VaultConfig() }
        let path = Self.path(policyDirectory: policyDirectory)
        guard FileManager.default.fileExists(atPath: path) else { return VaultConfig() }
        guard let data = FileManager.default.contents(atPath: path), data.count <= 1 << 20,
              let text = String(data: data, encoding: .utf8) else {
            throw WardenError(.invalidArgument, "cannot read the vault configuration (or it is over 1 MiB)", file: path)
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws -> VaultConfig {
        func bad(_ message: String, _ node: Node? = nil) -> WardenError {
            WardenError(.invalidArgument, (node?.mark.map { "line \($0.line): " } ?? "") + message, file: file)
        }
        let root: Node?
        root = try YAMLNesting.compose(text, file: file)
        guard let root, case .mapping(let top) = root else { throw bad("the vault configuration is a mapping (apiVersion, kind, breakGlass, grace)") }
        var c = VaultConfig()
        func duration(_ v: Node, _ what: String) throws -> PolicyDuration {
            guard let s = v.string, let d = PolicyDuration(s), d.seconds > 0 else { throw bad("\(what) is a duration such as 30m, 4h or 7d", v) }
            return d
        }
        for (k, v) in top {
            switch k.string ?? "" {
            case "apiVersion": guard v.string == "warden/v1" else { throw bad("apiVersion must be warden/v1", v) }
            case "kind": guard v.string == "Vault" else { throw bad("kind must be Vault", v) }
            case "breakGlass":
                guard case .mapping(let m) = v else { throw bad("breakGlass is a mapping (admins, approvals, approvalWindow)", v) }
                for (bk, bv) in m {
                    switch bk.string ?? "" {
                    case "admins":
                        guard case .sequence(let seq) = bv, !seq.isEmpty, seq.count <= 256 else { throw bad("admins is a list of user names", bv) }
                        c.admins = try seq.map {
                            guard let n = $0.string, (1...64).contains(n.utf8.count),
                                  n.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }) else {
                                throw bad("an admin is a user name", $0)
                            }
                            return n
                        }
                    case "approvals":
                        guard let n = bv.int, (0...5).contains(n) else { throw bad("approvals is a number from 0 to 5", bv) }
                        c.approvals = n
                    case "approvalWindow": c.approvalWindow = try duration(bv, "approvalWindow")
                    default: throw bad("unknown key \(bk.string ?? "?") in breakGlass (admins, approvals, approvalWindow)", bk)
                    }
                }
            case "grace":
                guard case .mapping(let m) = v else { throw bad("grace is a mapping (duration)", v) }
                for (gk, gv) in m {
                    guard gk.string == "duration" else { throw bad("unknown key \(gk.string ?? "?") in grace (duration)", gk) }
                    let d = try duration(gv, "grace duration")
                    guard d.seconds <= 30 * 86_400 else { throw bad("grace duration is at most 30d", gv) }
                    c.grace = d
                }
            default: throw bad("unknown key \(k.string ?? "?") (apiVersion, kind, breakGlass, grace)", k)
            }
        }
        return c
    }
}
