import Foundation
import Crypto
import DiskImage
import GuestFS
import Inspection
import WardenCore
import Advisories
import Ledger
import AdvisoryStorage

/// What a rollback to an internal snapshot would bring back, found offline: the VM's boot disk
/// is inspected as of the snapshot (`OpenOptions(snapshot:)`) and as it is now, and compared.
///
/// Shown by `warden vm rollback --dry-run` and before every rollback; the policy engine's
/// `reexposes` condition reads ``reexposedVulnerabilities``. Password hashes are compared by
/// digest inside Warden and never printed.
public struct RollbackImpact: Codable, Sendable, Equatable {
    public var schema = "warden.rollback-impact/v1"
    public var disk: String
    public var snapshot: String
    /// Vulnerabilities present in the snapshot that are fixed (or absent) now.
    public var reexposedVulnerabilities: [Vulnerability]
    /// Packages whose snapshot version is older than the installed one (or that come back).
    public var downgradedPackages: [PackageChange]
    public var accounts: [AccountChange]
    /// SSH host keys in the snapshot that the current disk no longer has.
    public var sshHostKeys: [KeyComesBack]
    /// authorized_keys entries in the snapshot that the current disk no longer has.
    public var authorizedKeys: [KeyComesBack]
    /// sshd settings that are weaker in the snapshot than now.
    public var sshdWeaker: [SettingChange]
    /// What could not be compared, and why (fail-closed readers use this).
    public var unknowns: [String]
    /// Whether vulnerability data was available for the comparison.
    public var advisoriesChecked: Bool

    public struct Vulnerability: Codable, Sendable, Equatable, Hashable {
        /// The advisory id (`DSA-5678-1`, `CVE-2024-1234`).
        public var id: String
        /// Other ids of the same vulnerability (CVE ids of a DSA; ids of folded duplicates).
        public var aliases: [String]
        public var severity: Severity
        public var package: String
        /// The installed version in the snapshot.
        public var versionThen: String?
        /// The installed version now (nil: the package is not installed now).
        public var versionNow: String?
        public init(id: String, severity: Severity, package: String, aliases: [String] = [], versionThen: String? = nil, versionNow: String? = nil) {
            self.id = id; self.aliases = aliases; self.severity = severity; self.package = package
            self.versionThen = versionThen; self.versionNow = versionNow
        }
    }
    public struct PackageChange: Codable, Sendable, Equatable {
        public var name: String; public var now: String?; public var then: String
        public init(name: String, now: String?, then: String) { self.name = name; self.now = now; self.then = then }
    }
    public struct AccountChange: Codable, Sendable, Equatable {
        public var name: String
        /// `comes-back`, `re-enabled`, `password-changes-back`, `regains-admin`.
        public var change: String
        public var now: String
        public var then: String
        public init(name: String, change: String, now: String, then: String) { self.name = name; self.change = change; self.now = now; self.then = then }
    }
    public struct KeyComesBack: Codable, Sendable, Equatable {
        public var path: String; public var user: String?; public var fingerprint: String
        public init(path: String, user: String?, fingerprint: String) { self.path = path; self.user = user; self.fingerprint = fingerprint }
    }
    public struct SettingChange: Codable, Sendable, Equatable {
        public var setting: String; public var now: String; public var then: String
        public init(setting: String, now: String, then: String) { self.setting = setting; self.now = now; self.then = then }
    }

    /// True when nothing would come back.
    public var isEmpty: Bool {
        reexposedVulnerabilities.isEmpty && downgradedPackages.isEmpty && accounts.isEmpty && sshHostKeys.isEmpty
            && authorizedKeys.isEmpty && sshdWeaker.isEmpty
    }

    /// Vulnerability lookup for one inventory: (advisory id, severity, package). nil = no advisory data.
    public typealias VulnerabilityLookup = (Inventory) throws -> [Vulnerability]?

    /// One side of the comparison: an inventory and the shadow hashes' digests by user.
    struct Side {
        var inventory: Inventory
        var shadowDigests: [String: String]
    }

    static func side(disk: String, format: ImageFormat?, snapshot: String?) throws -> Side {
        do {
            let guest = try OpenedGuest.open(disk, format: format, snapshot: snapshot)
            let view = guest.view
            let inv = guest.inventory()
            var digests: [String: String] = [:]
            if let shadow = try? GuestFiles(view: view).text("/etc/shadow") {
                for line in shadow.split(separator: "\n") {
                    let f = line.split(separator: ":", omittingEmptySubsequences: false)
                    guard f.count >= 2 else { continue }
                    digests[String(f[0])] = SHA256.hash(data: Array(f[1].utf8)).hexString
                }
            }
            return Side(inventory: inv, shadowDigests: digests)
        } catch let e as WardenError {
            throw e.file == nil ? WardenError(e.code, (snapshot.map { "as of snapshot \($0): " } ?? "") + e.message, file: disk) : e
        }
    }

    /// Compares the disk now with the disk as of `snapshot`.
    public static func compute(disk: String, format: ImageFormat? = nil, snapshot: String,
                               vulnerabilities: VulnerabilityLookup? = nil) throws -> RollbackImpact {
        let now = try side(disk: disk, format: format, snapshot: nil)
        let then = try side(disk: disk, format: format, snapshot: snapshot)
        return try compare(now: now, then: then, disk: disk, snapshot: snapshot, vulnerabilities: vulnerabilities)
    }

    static func compare(now: Side, then: Side, disk: String, snapshot: String, vulnerabilities: VulnerabilityLookup?) throws -> RollbackImpact {
        var r = RollbackImpact(disk: disk, snapshot: snapshot, reexposedVulnerabilities: [], downgradedPackages: [], accounts: [],
                               sshHostKeys: [], authorizedKeys: [], sshdWeaker: [], unknowns: [], advisoriesChecked: false)
        // Packages.
        func versions(_ inv: Inventory, _ side: String) -> [String: InstalledPackage] {
            guard let dbs = inv.packages.value else {
                r.unknowns.append("packages \(side): \(inv.packages.unknownReason ?? "unknown")"); return [:]
            }
            var m: [String: InstalledPackage] = [:]
            for db in dbs { for p in db.packages { m[p.name] = p } }
            return m
        }
        let pNow = versions(now.inventory, "now"), pThen = versions(then.inventory, "in the snapshot")
        for (name, old) in pThen.sorted(by: { $0.key < $1.key }) {
            if let cur = pNow[name] {
                let scheme: VersionScheme = old.manager == .dpkg ? .deb : (old.manager == .rpm ? .rpm : .apk)
                if old.version != cur.version, (try? scheme.compare(old.version, cur.version)) == .less {
                    r.downgradedPackages.append(PackageChange(name: name, now: cur.version, then: old.version))
                }
            } else if !pNow.isEmpty {
                r.downgradedPackages.append(PackageChange(name: name, now: nil, then: old.version))
            }
        }
        // Vulnerabilities: in the snapshot, not now.
        if let vulnerabilities, let vThen = try vulnerabilities(then.inventory), let vNow = try vulnerabilities(now.inventory) {
            r.advisoriesChecked = true
            let present = Set(vNow.map { "\($0.id)\u{0}\($0.package)" })
            var seen = Set<String>()
            for v in vThen where !present.contains("\(v.id)\u{0}\(v.package)") && seen.insert("\(v.id)\u{0}\(v.package)").inserted {
                var v = v
                v.versionThen = pThen[v.package]?.version
                v.versionNow = pNow[v.package]?.version
                r.reexposedVulnerabilities.append(v)
            }
            r.reexposedVulnerabilities.sort { $0.severity != $1.severity ? $0.severity > $1.severity : ($0.id, $0.package) < ($1.id, $1.package) }
        }
        // Accounts.
        if let aThen = then.inventory.accounts.accounts.value, let aNow = now.inventory.accounts.accounts.value {
            let nowByName = Dictionary(aNow.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            for a in aThen {
                guard let c = nowByName[a.name] else {
                    r.accounts.append(AccountChange(name: a.name, change: "comes-back", now: "absent", then: a.canLogIn ? "can log in" : "cannot log in"))
                    continue
                }
                if a.canLogIn && !c.canLogIn {
                    r.accounts.append(AccountChange(name: a.name, change: "re-enabled", now: c.passwordState + (c.canLogIn ? "" : ", cannot log in"),
                                                    then: a.passwordState + ", can log in"))
                } else if a.passwordState.hasPrefix("hash:"), c.passwordState.hasPrefix("hash:"),
                          let h1 = then.shadowDigests[a.name], let h2 = now.shadowDigests[a.name], h1 != h2 {
                    r.accounts.append(AccountChange(name: a.name, change: "password-changes-back", now: c.passwordState, then: a.passwordState))
                }
                if a.isAdmin && !c.isAdmin {
                    r.accounts.append(AccountChange(name: a.name, change: "regains-admin", now: "not admin", then: a.adminVia.joined(separator: ", ")))
                }
            }
        } else {
            r.unknowns.append("accounts: " + (then.inventory.accounts.accounts.unknownReason ?? now.inventory.accounts.accounts.unknownReason ?? "unknown"))
        }
        // SSH keys.
        let hostNow = Set(now.inventory.ssh.hostKeys.compactMap { $0.publicKey.value?.fingerprint })
        for k in then.inventory.ssh.hostKeys {
            if let fp = k.publicKey.value?.fingerprint, !hostNow.contains(fp) {
                r.sshHostKeys.append(KeyComesBack(path: k.path, user: nil, fingerprint: fp))
            }
        }
        let authNow = Set(now.inventory.ssh.authorizedKeys.flatMap { f in f.keys.map { "\(f.user)\u{0}\($0.key.fingerprint)" } })
        for f in then.inventory.ssh.authorizedKeys {
            for k in f.keys where !authNow.contains("\(f.user)\u{0}\(k.key.fingerprint)") {
                r.authorizedKeys.append(KeyComesBack(path: f.path, user: f.user, fingerprint: k.key.fingerprint))
            }
        }
        // sshd settings.
        let sNow = now.inventory.ssh.sshd, sThen = then.inventory.ssh.sshd
        for (name, a, b) in [("PermitRootLogin", sNow.permitRootLogin, sThen.permitRootLogin),
                             ("PasswordAuthentication", sNow.passwordAuthentication, sThen.passwordAuthentication),
                             ("PermitEmptyPasswords", sNow.permitEmptyPasswords, sThen.permitEmptyPasswords)] {
            guard let n = a.value?.value.lowercased(), let t = b.value?.value.lowercased() else { continue }
            if weakness(name, t) > weakness(name, n) { r.sshdWeaker.append(SettingChange(setting: name, now: n, then: t)) }
        }
        return r
    }

    /// How permissive an sshd value is (higher = weaker).
    static func weakness(_ setting: String, _ value: String) -> Int {
        switch (setting, value) {
        case ("PermitRootLogin", "no"): return 0
        case ("PermitRootLogin", "forced-commands-only"): return 1
        case ("PermitRootLogin", "prohibit-password"), ("PermitRootLogin", "without-password"): return 2
        case ("PermitRootLogin", _): return value == "yes" ? 3 : 0
        case (_, "yes"): return 1
        default: return 0
        }
    }

    /// Human-readable lines.
    public var lines: [String] {
        var out = ["rollback of \(disk) to snapshot \(snapshot) would bring back:"]
        if isEmpty { out.append("  nothing that Warden checks (vulnerabilities\(advisoriesChecked ? "" : " not checked: no advisory data"), accounts, SSH keys, sshd settings)") }
        for v in reexposedVulnerabilities {
            let aka = v.aliases.isEmpty ? "" : " [\(v.aliases.prefix(4).joined(separator: ", "))\(v.aliases.count > 4 ? ", …" : "")]"
            out.append("  vulnerability \(v.id)\(aka) (\(v.severity)) in \(v.package) \(v.versionThen ?? "?") (now \(v.versionNow ?? "removed"))")
        }
        for p in downgradedPackages { out.append("  package \(p.name) \(p.then) (now \(p.now ?? "not installed"))") }
        for a in accounts { out.append("  account \(a.name): \(a.change) (now \(a.now); then \(a.then))") }
        for k in sshHostKeys { out.append("  SSH host key \(k.fingerprint) (\(k.path))") }
        for k in authorizedKeys { out.append("  authorized key \(k.fingerprint) for \(k.user ?? "?") (\(k.path))") }
        for s in sshdWeaker { out.append("  sshd \(s.setting) \(s.then) (now \(s.now))") }
        if !advisoriesChecked && !isEmpty { out.append("  (vulnerabilities not checked: no advisory data)") }
        for u in unknowns { out.append("  unknown: \(u)") }
        return out
    }
}

extension RollbackImpact {
    /// Advisory matches for an inventory read from a disk image, against `advisories` (the
    /// same matcher as `warden scan`, findings folded by alias). The lookup answers nil (the
    /// report says "not checked") when the guest's OS has no advisory feed or no advisory for
    /// its ecosystem was imported.
    public static func advisoryLookup(_ advisories: AdvisoryStore) -> VulnerabilityLookup {
        { inventory in
            guard let eco = Matcher.ecosystem(of: inventory), try advisories.hasAdvisories(ecosystems: eco.names) else { return nil }
            let findings = try advisories.match(packages: Matcher.packages(of: inventory), ecosystem: eco)
            return Matcher.deduplicated(findings).map {
                Vulnerability(id: $0.advisory, severity: $0.severity, package: $0.package, aliases: $0.aliases)
            }
        }
    }
}
