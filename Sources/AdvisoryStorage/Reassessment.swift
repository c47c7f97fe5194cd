import Foundation
import GRDB
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
    public func rescan(at now: Date = Date(), phase: ((String) -> Void)? = nil) throws -> RescanReport {
        let start = Date()
        let invs = try inventories()
        phase?("read inventories")
        var ecosystems = Set<String>()
        for i in invs { if let e = i.ecosystem { ecosystems.formUnion(e.names) } }
        let index = try loadIndex(ecosystems: ecosystems)
        let matcher = Matcher(index: index)
        phase?("load advisory index")
        let previous: [String: String] = try database.read { db in
            var out: [String: String] = [:]
            for r in try Row.fetchAll(db, sql: "SELECT inventory, findings_hash FROM assessment") { out[r[0]] = r[1] }
            return out
        }
        let images = try imagesByInventory()
        phase?("read assessments and images")
        var report = RescanReport(assessedAt: now, inventories: invs.count, unassessable: [], advisoryEntries: index.entryCount,
                                  changed: [], newFindings: 0, goneFindings: 0, vulnerable: 0, seconds: 0)
        var writes: [(String, String, Int, Data)] = []
        var hasher = FindingsHasher()
        var changedKeys: [(key: String, paths: [String])] = []
        for inv in invs {
            guard let eco = inv.ecosystem else { report.unassessable.append(inv.key.description); continue }
            // Fast path: compact findings and their hash; `Finding` values only when something changed.
            let compact = matcher.compactFindings(packages: inv.packages, ecosystem: eco)
            // Where two feeds may name the same vulnerability, the plain path (which folds them).
            let plain = matcher.mayDeduplicate(compact) ? matcher.findings(packages: inv.packages, ecosystem: eco) : nil
            report.vulnerable += plain?.count ?? compact.count
            let hash = plain.map { Self.findingsHash($0) } ?? hasher.hash(compact, packages: inv.packages, metas: index.metas)
            let prev = previous[inv.key.description]
            if prev == hash { continue }
            let findings = plain ?? compact.map { matcher.finding($0, packages: inv.packages, ecosystem: eco) }
            let d: (added: [Finding], removed: [Finding])
            if prev == nil {
                d = (findings, [])
            } else {
                let old = try database.read { db in try self.storedFindings(of: inv.key, db: db, details: false) } ?? []
                var diff = Matcher.diff(old: old, new: findings)
                if !diff.removed.isEmpty { diff.removed = try database.read { db in try Self.addDetails(diff.removed, db: db) } }
                d = diff
            }
            writes.append((inv.key.description, hash, findings.count, Self.encodeFindings(findings)))
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
            let vms = try database.read { db in try changedKeys.map { try Self.vms(db, key: $0.key, paths: $0.paths) } }
            for i in report.changed.indices { report.changed[i].vms = vms[i] }
        }
        phase?("match and compare")
        if !writes.isEmpty {
            try database.write { db in
                for w in writes {
                    try AssessmentRow(inventory: w.0, assessedAt: now, findingsHash: w.1, vulnerable: w.2, findings: w.3).save(db)
                }
            }
        }
        // Unchanged assessments are re-dated so "last assessed" means "last checked".
        try database.write { db in
            try db.execute(sql: "UPDATE assessment SET assessed_at = ?", arguments: [now.timeIntervalSince1970])
        }
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
}

extension AdvisoryStore {
    /// Ledger VMs with a disk whose fingerprint is `key` or whose path is one of `paths`.
    public func vms(withContent key: WardenCore.Digest, paths: [String]) throws -> [AffectedVM] {
        try database.read { db in try Self.vms(db, key: key.description, paths: paths) }
    }

    static func vms(_ db: Database, key: String, paths: [String]) throws -> [AffectedVM] {
        var sql = "SELECT d.vm, v.name, d.path FROM disks d JOIN vms v ON v.id = d.vm WHERE d.fingerprint = ?"
        var args: [any DatabaseValueConvertible] = [key]
        if !paths.isEmpty {
            sql += " OR d.path IN (\(paths.map { _ in "?" }.joined(separator: ",")))"
            args += paths.map { $0 as any DatabaseValueConvertible }
        }
        sql += " ORDER BY v.name, d.vm, d.idx"
        var seen = Set<String>()
        return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).compactMap { r in
            let id: String = r[0]
            guard seen.insert(id).inserted else { return nil }
            return AffectedVM(id: id, name: r[1], disk: r[2])
        }
    }
}
