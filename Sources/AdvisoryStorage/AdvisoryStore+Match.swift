import Foundation
import GRDB
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
    /// How many package names one `IN (…)` query binds (well under SQLite's variable limit).
    static let packageChunk = 400

    /// The in-memory index of the non-withdrawn advisories' entries for these package names
    /// in these ecosystems only (what matching one guest needs: a few hundred rows instead of
    /// the whole feed). Red Hat product ecosystems are included when `Red Hat:N` is asked.
    public func loadIndex(ecosystems: Set<String>, packages: Set<String>) throws -> AdvisoryIndex {
        let index = AdvisoryIndex()
        if ecosystems.isEmpty || packages.isEmpty { return index }
        let ecoList = Array(ecosystems).sorted()
        let names = Array(packages).sorted()
        return try database.read { db in
            var pending: [PendingEntry] = []
            var needed = Set<Int64>()
            var start = 0
            while start < names.count {
                let chunk = Array(names[start..<min(start + Self.packageChunk, names.count)])
                start += Self.packageChunk
                var sql = """
                    SELECT f.advisory, f.ecosystem, f.package, f.status, f.severity, f.ranges, f.versions
                    FROM advisory_affected f JOIN advisory a ON a.pk = f.advisory
                    WHERE a.withdrawn IS NULL AND (f.ecosystem IN (\(ecoList.map { _ in "?" }.joined(separator: ",")))
                    """
                if ecoList.contains(where: { $0.hasPrefix("Red Hat") }) { sql += " OR f.ecosystem LIKE 'Red Hat:%'" }
                sql += ") AND f.package IN (\(chunk.map { _ in "?" }.joined(separator: ",")))"
                let args = StatementArguments(ecoList) + StatementArguments(chunk)
                let rows = try Row.fetchCursor(db, sql: sql, arguments: args)
                while let r = try rows.next() {
                    let adv: Int64 = r[0]
                    needed.insert(adv)
                    pending.append((adv, r[1], r[2], r[3], r[4], r[5], r[6]))
                }
            }
            var metaOf: [Int64: Int] = [:]
            let pks = needed.sorted()
            start = 0
            while start < pks.count {
                let chunk = Array(pks[start..<min(start + Self.packageChunk, pks.count)])
                start += Self.packageChunk
                let rows = try Row.fetchCursor(db, sql: """
                    SELECT pk, source, id, aliases, severity, cvss_score, summary FROM advisory
                    WHERE pk IN (\(chunk.map { _ in "?" }.joined(separator: ","))) ORDER BY pk
                    """, arguments: StatementArguments(chunk))
                while let m = try rows.next() { metaOf[m[0]] = Self.addMeta(m, to: index) }
            }
            Self.addEntries(pending, metaOf: metaOf, to: index)
            return index
        }
    }

    /// How many advisories were stored (added, or replaced by a changed record) after `time`.
    public func advisoryCountImported(after time: Date) throws -> Int {
        try database.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM advisory WHERE imported_at > ?", arguments: [time.timeIntervalSince1970]) ?? 0
        }
    }

    /// When an advisory was last stored (added or replaced); nil when there are none.
    public func lastAdvisoryImport() throws -> Date? {
        try database.read { db in
            try Double.fetchOne(db, sql: "SELECT max(imported_at) FROM advisory").map { Date(timeIntervalSince1970: $0) }
        }
    }

    /// Whether any advisory entry is stored for one of these ecosystems (without one, "no
    /// findings" would mean "no data", so callers that fail closed ask this first).
    public func hasAdvisories(ecosystems: [String]) throws -> Bool {
        guard !ecosystems.isEmpty else { return false }
        return try database.read { db in
            var sql = "SELECT 1 FROM advisory_affected WHERE ecosystem IN (\(ecosystems.map { _ in "?" }.joined(separator: ",")))"
            if ecosystems.contains(where: { $0.hasPrefix("Red Hat") }) { sql += " OR ecosystem LIKE 'Red Hat:%'" }
            return try Bool.fetchOne(db, sql: sql + " LIMIT 1", arguments: StatementArguments(ecosystems)) ?? false
        }
    }

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
        let key: String? = try database.read { db in
            if let k = try String.fetchOne(db, sql: "SELECT inventory FROM inventory_image WHERE path = ?", arguments: [disk.path]) { return k }
            if let fp = disk.fingerprint?.description,
               try Bool.fetchOne(db, sql: "SELECT 1 FROM inventory WHERE key = ?", arguments: [fp]) == true { return fp }
            return nil
        }
        guard let key, let digest = WardenCore.Digest(key) else { return nil }
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

extension AdvisoryStore: AdvisoryFacts {}
