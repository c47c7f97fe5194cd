import Foundation
import WardenCore
import Advisories

/// An inventory's assessment, composed from the findings of its package versions: what the
/// store holds is one finding set per distinct (release, package, version), shared by every
/// inventory that has it, so a rescan's cost follows what changed, not the fleet's size.
extension AdvisoryStore {
    /// Inventory `key`'s stored findings without aliases and summaries, in the matcher's order
    /// (``Finding/displayOrder``); nil when it was never assessed.
    public func storedFindings(of key: WardenCore.Digest) throws -> [Finding]? {
        guard try lastAssessmentTime(of: key) != nil, let ids = try packageVersionIDs(of: key.description) else { return nil }
        let blobs = try packageVersionFindings(ids)
        var out: [Finding] = []
        // A finding is one per (package, installed version, advisory) in an inventory, as the matcher makes them.
        var seen = Set<String>()
        for id in ids {
            guard let stored = blobs[id] else { continue }
            for f in AdvisoryCoding.decodeFindingsWithoutDetails(stored.findings)
            where seen.insert("\(f.package)\u{1F}\(f.installedVersion)\u{1F}\(f.source)\u{1F}\(f.advisory)").inserted {
                out.append(f)
            }
        }
        out.sort(by: Finding.displayOrder)
        return out
    }

    /// The last assessment of inventory `key`, with aliases and summaries.
    public func assessment(of key: WardenCore.Digest) throws -> Assessment? {
        guard let at = try lastAssessmentTime(of: key), let found = try storedFindings(of: key) else { return nil }
        return Assessment(inventory: key, assessedAt: at, findings: try withDetails(found))
    }

    /// The latest vulnerable findings for inventory `key` (empty when never assessed).
    public func latestFindings(for key: WardenCore.Digest) throws -> [Finding] {
        try assessment(of: key)?.findings ?? []
    }

    /// Records a scan's findings (vulnerable ones) for inventory `key`, stored just before.
    ///
    /// Package versions no rescan has assessed take their findings from the scan. Ones already
    /// assessed keep theirs: changing them here would hide the change from the next rescan's
    /// report for every other inventory that has them. So when an import not yet rescanned
    /// touches one of them, the assessment is dated just before that import (policy then
    /// matches live, and the next rescan brings it up to date).
    ///
    /// The total counts the stored findings of versions assessed before; if a rescan or another
    /// scan stores any of them meanwhile, it is counted again from what they stored.
    public func saveAssessment(_ key: WardenCore.Digest, findings: [Finding], at now: Date = Date()) throws {
        try PackageVersionBasis.retrying { try saveAssessmentOnce(key, findings: findings, at: now) }
    }

    private func saveAssessmentOnce(_ key: WardenCore.Digest, findings: [Finding], at now: Date) throws {
        let vuln = findings.filter { $0.status == .vulnerable }
        guard let ids = try packageVersionIDs(of: key.description) else { return }
        let versions = try packageVersions(ids: ids)
        var groups: [String: [Finding]] = [:]
        for f in vuln { groups["\(f.package)\u{1F}\(f.installedVersion)\u{1F}\(f.sourcePackage)", default: []].append(f) }
        let pending = try pendingAdvisoryChanges()
        var writes: [PackageVersionWrite] = []
        var stale = false
        // The count is that of the findings stored for it (a later rescan adds its changes to it).
        var vulnerable = 0
        for v in versions {
            let group = groups["\(v.package.name)\u{1F}\(v.package.version)\u{1F}\(v.package.sourceName)"] ?? []
            vulnerable += v.findingsHash == nil ? group.count : v.vulnerable
            if v.findingsHash == nil {
                writes.append(PackageVersionWrite(id: v.id, findingsHash: AdvisoryCoding.findingsHash(group), vulnerable: group.count,
                                                  findings: AdvisoryCoding.encodeFindings(group)))
            } else if !pending.isEmpty && !stale, let eco = PackageVersion.ecosystem(ofRelease: v.release) {
                let names = pending.names(for: eco)
                stale = names.contains(v.package.name) || names.contains(v.package.sourceName)
            }
        }
        let at = stale ? (pending.since ?? now).addingTimeInterval(-0.001) : now
        try saveRescan(packageVersions: writes, inventories: [InventoryAssessmentWrite(inventory: key.description, vulnerable: vulnerable, assessedAt: at)],
                       through: nil, redateAll: false, basis: versions.map { PackageVersionBasis(id: $0.id, findingsHash: $0.findingsHash) }, at: now)
    }
}

extension PendingAdvisoryChanges {
    /// The package names changed in the advisory ecosystems a guest ecosystem reads (a Red Hat
    /// guest reads every `Red Hat:` product stream too, as the index loaders do).
    public func names(for eco: GuestEcosystem) -> Set<String> {
        var out = Set<String>()
        for e in eco.names { out.formUnion(keys[e] ?? []) }
        if eco.names.contains(where: { $0.hasPrefix("Red Hat") }) {
            for (e, names) in keys where e.hasPrefix("Red Hat:") { out.formUnion(names) }
        }
        return out
    }
}
