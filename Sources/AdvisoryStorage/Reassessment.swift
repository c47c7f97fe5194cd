import Foundation
import WardenCore
import Advisories

/// What changed for one inventory in a fleet rescan.
public struct InventoryChange: Codable, Sendable {
    public var inventory: String
    /// Image paths last scanned with this content.
    public var images: [String]
    /// Ledger VMs with a disk of this content (by fingerprint) or at one of ``images``.
    public var vms: [AffectedVM]
    public var ecosystem: String?
    /// True when the inventory had never been assessed (every finding is new).
    public var firstAssessment: Bool
    public var vulnerable: Int
    public var newFindings: [Finding]
    public var goneFindings: [Finding]
}

/// The result of re-matching every stored inventory against the current advisories.
public struct RescanReport: Codable, Sendable {
    public var schema = "warden.rescan/v1"
    public var assessedAt: Date
    public var inventories: Int
    /// Inventories whose OS no advisory feed covers.
    public var unassessable: [String]
    public var advisoryEntries: Int
    public var changed: [InventoryChange]
    public var newFindings: Int
    public var goneFindings: Int
    public var vulnerable: Int
    public var seconds: Double
}

extension AdvisoryStore {
    /// Re-matches every stored inventory against the advisories now in the database, stores
    /// the new assessments, and reports the differences from the previous ones. No image is read.
    ///
    /// The index holds only the ecosystems of stored inventories; each (ecosystem, package,
    /// version) is matched once for the whole fleet; an assessment is rewritten only when its
    /// finding set changed (compared by hash).
    ///
    /// `phase` (when given) is called after each step with its name, for `--timing`.
    public func rescan(at now: Date = Date(), only keys: Set<String>? = nil, phase: ((String) -> Void)? = nil) throws -> RescanReport {
        let start = Date()
        var invs = try inventories()
        if let keys { invs = invs.filter { keys.contains($0.key.description) } }
        phase?("read inventories")
        var ecosystems = Set<String>()
        for i in invs { if let e = i.ecosystem { ecosystems.formUnion(e.names) } }
        let index = try loadIndex(ecosystems: ecosystems)
        let matcher = Matcher(index: index)
        phase?("load advisory index")
        let previous = try assessmentHashes()
        let images = try imagesByInventory()
        phase?("read assessments and images")
        var report = RescanReport(assessedAt: now, inventories: invs.count, unassessable: [], advisoryEntries: index.entryCount,
                                  changed: [], newFindings: 0, goneFindings: 0, vulnerable: 0, seconds: 0)
        var writes: [AssessmentWrite] = []
        var hasher = FindingsHasher()
        var changedKeys: [(key: String, paths: [String])] = []
        for inv in invs {
            guard let eco = inv.ecosystem else { report.unassessable.append(inv.key.description); continue }
            // Fast path: compact findings and their hash; `Finding` values only when something changed.
            let compact = matcher.compactFindings(packages: inv.packages, ecosystem: eco)
            // Where two feeds may name the same vulnerability, the plain path (which folds them).
            let plain = matcher.mayDeduplicate(compact) ? matcher.findings(packages: inv.packages, ecosystem: eco) : nil
            report.vulnerable += plain?.count ?? compact.count
            let hash = plain.map { AdvisoryCoding.findingsHash($0) } ?? hasher.hash(compact, packages: inv.packages, metas: index.metas, ecosystem: eco)
            let prev = previous[inv.key.description]
            if prev == hash { continue }
            let findings = plain ?? compact.map { matcher.finding($0, packages: inv.packages, ecosystem: eco) }
            let d: (added: [Finding], removed: [Finding])
            if prev == nil {
                d = (findings, [])
            } else {
                let old = try storedFindings(of: inv.key) ?? []
                var diff = Matcher.diff(old: old, new: findings)
                if !diff.removed.isEmpty { diff.removed = try withDetails(diff.removed) }
                d = diff
            }
            writes.append(AssessmentWrite(inventory: inv.key.description, findingsHash: hash, vulnerable: findings.count,
                                          findings: AdvisoryCoding.encodeFindings(findings)))
            if d.added.isEmpty && d.removed.isEmpty { continue } // same findings (or none yet), new details
            report.newFindings += d.added.count
            report.goneFindings += d.removed.count
            let paths = images[inv.key.description] ?? []
            changedKeys.append((inv.key.description, paths))
            report.changed.append(InventoryChange(inventory: inv.key.description, images: paths, vms: [],
                                                  ecosystem: eco.names.first, firstAssessment: prev == nil,
                                                  vulnerable: findings.count, newFindings: d.added, goneFindings: d.removed))
        }
        if !changedKeys.isEmpty {
            let vms = try changedKeys.map { try self.vms(withContent: $0.key, paths: $0.paths) }
            for i in report.changed.indices { report.changed[i].vms = vms[i] }
        }
        phase?("match and compare")
        // Unchanged assessments are re-dated so "last assessed" means "last checked" (a rescan
        // of some inventories re-dates only those it wrote).
        try saveAssessments(writes, at: now, redateAll: keys == nil)
        phase?("write assessments")
        report.seconds = Date().timeIntervalSince(start)
        return report
    }
}

/// A ledger VM one of whose disks carries an inventory's content.
public struct AffectedVM: Codable, Sendable, Hashable {
    public var id: String
    public var name: String
    public var disk: String
    public init(id: String, name: String, disk: String) { self.id = id; self.name = name; self.disk = disk }
}

extension AdvisoryStore {
    /// The inventories an advisory import touched: those whose OS ecosystem is one the
    /// records name and that hold one of the packages they name (by binary or source name).
    /// Only these need a rescan after the import; the others' findings cannot have changed.
    public func inventoriesTouched(by records: [AdvisoryRecord]) throws -> [String] {
        var names: [String: Set<String>] = [:]
        for r in records { for a in r.affected { names[a.ecosystem, default: []].insert(a.package) } }
        if names.isEmpty { return [] }
        let redHat = names.keys.filter { $0.hasPrefix("Red Hat:") }
        var out: [String] = []
        for inv in try inventories() {
            guard let eco = inv.ecosystem else { continue }
            var wanted = Set<String>()
            for e in eco.names { wanted.formUnion(names[e] ?? []) }
            if eco.names.contains(where: { $0.hasPrefix("Red Hat") }) { for e in redHat { wanted.formUnion(names[e] ?? []) } }
            if wanted.isEmpty { continue }
            if inv.packages.contains(where: { wanted.contains($0.name) || wanted.contains($0.sourceName) }) {
                out.append(inv.key.description)
            }
        }
        return out
    }
}
