import Foundation
import WardenCore
import Advisories

/// A VM's open findings as the policy engine sees them: its stored inventory (from the last
/// `warden scan` of one of its disks) matched against the advisories stored now.
public struct VMFindings: Sendable {
    /// The inventories used (one per disk that was scanned), by content key.
    public var inventories: [String]
    /// Vulnerable findings, in ``Finding/displayOrder``, de-duplicated across disks.
    public var findings: [Finding]
}

/// A VM disk as the advisory store looks it up: its place among the VM's disks, its path
/// (the key of the last scan of that path) and its recorded content fingerprint. The ledger's
/// disk record conforms; the advisory store needs nothing else of the ledger.
public protocol AdvisoryDisk {
    var index: Int { get }
    var path: String { get }
    var fingerprint: WardenCore.Digest? { get }
}

/// What policy asks of the advisory store: the open findings of a VM's disks (their stored
/// inventories matched against the advisories stored now) and how many advisories were
/// imported after a time.
public protocol AdvisoryFacts: Sendable {
    func openFindings(disks: [any AdvisoryDisk]) throws -> VMFindings
    func advisoryCountImported(after time: Date) throws -> Int
}

extension AdvisoryStore {
    /// Vulnerable findings of `packages` of a guest in `ecosystem`, against the advisories stored
    /// now (only the rows for these package names are read).
    public func match(packages: [MatchPackage], ecosystem: GuestEcosystem) throws -> [Finding] {
        var names = Set<String>()
        for p in packages {
            if ecosystem.bySourceOnly { names.insert(p.sourceName) } else { names.insert(p.name); if !p.sourceName.isEmpty { names.insert(p.sourceName) } }
        }
        let index = try loadIndex(ecosystems: Set(ecosystem.names), packages: names)
        return Matcher(index: index).findings(packages: packages, ecosystem: ecosystem).filter { $0.status == .vulnerable }
    }

    /// The stored inventory for a VM disk: the last scan of the disk's path, else the inventory
    /// whose content key is the disk's recorded fingerprint; nil when neither was ever scanned.
    public func inventory(forDisk disk: any AdvisoryDisk) throws -> StoredInventory? {
        guard let key = try inventoryKey(path: disk.path, fingerprint: disk.fingerprint), let digest = WardenCore.Digest(key) else { return nil }
        return try inventory(digest)
    }

    /// The VM's open findings: each scanned disk's stored inventory matched against the
    /// advisories now in the store (its stored assessment when that is newer than the last
    /// import, which gives the same findings without matching). Throws `.unavailable` (so policy fails closed) when no disk
    /// of the VM was ever scanned, when its OS has no advisory ecosystem, or when no advisory
    /// for that ecosystem was imported (no data is not "no findings").
    public func openFindings(disks: [any AdvisoryDisk]) throws -> VMFindings {
        var used: [String] = []
        var all: [Finding] = []
        var seen = Set<String>()
        var problems: [String] = []
        let lastImport = try lastAdvisoryImport()
        for disk in disks.sorted(by: { $0.index < $1.index }) {
            guard let inv = try inventory(forDisk: disk) else { continue }
            // A data disk (no OS, no packages) has nothing to match.
            if inv.osID == nil && inv.packages.isEmpty { continue }
            guard let eco = inv.ecosystem else {
                problems.append("disk \(disk.index) (\(inv.osID ?? "unknown OS") \(inv.versionID ?? "")): no advisory feed covers its OS")
                continue
            }
            guard try hasAdvisories(ecosystems: eco.names) else {
                problems.append("no advisories imported for \(eco.names.joined(separator: " or "))")
                continue
            }
            used.append(inv.key.description)
            // A stored assessment made after the last advisory import is exactly what matching
            // now would give (scan and fleet rescan store them): read it instead of matching.
            let found: [Finding]
            if let a = try assessment(of: inv.key), let last = lastImport, a.assessedAt >= last {
                found = a.findings.filter { $0.status == .vulnerable }
            } else {
                found = try match(packages: inv.packages, ecosystem: eco)
            }
            for f in found where seen.insert(f.key).inserted { all.append(f) }
        }
        if used.isEmpty {
            if let p = problems.first { throw WardenError(.unavailable, p) }
            throw WardenError(.unavailable, "never scanned: no stored inventory for any of its disks (run warden scan)")
        }
        if !problems.isEmpty { throw WardenError(.unavailable, problems.joined(separator: "; ")) }
        all.sort(by: Finding.displayOrder)
        return VMFindings(inventories: used, findings: Matcher.deduplicated(all))
    }
}

