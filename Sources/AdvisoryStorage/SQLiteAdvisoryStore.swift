import Foundation
import GRDB
import Crypto

import WardenCore
import Advisories
import Storage

/// The advisory store in Warden's SQLite database (GRDB).
///
/// Import is idempotent: a record identical to the stored one (same source, id and content)
/// changes nothing; a record with a newer `modified` replaces the older one; an older one is
/// ignored. Every write is one transaction per batch; SQL uses bound parameters only.
public struct SQLiteAdvisoryStore: AdvisoryStore {
    public let database: WardenDatabase
    public init(_ database: WardenDatabase) { self.database = database }

    // MARK: Import

    /// Stores a batch of records in one transaction and returns what happened to them.
    public func importRecords(_ records: [AdvisoryRecord], at now: Date = Date(), file: String) throws -> ImportCounts {
        var counts = ImportCounts()
        let prepared = try records.map { r -> (AdvisoryRecord, String) in
            try AdvisoryCoding.validate(r, file: file)
            return (r, AdvisoryCoding.contentHash(r))
        }
        try database.write { db in
            for (r, hash) in prepared {
                counts.seen += 1
                let existing = try Row.fetchOne(db, sql: "SELECT pk, modified, content_hash FROM advisory WHERE source = ? AND id = ?",
                                                arguments: [r.source, r.id])
                var row = AdvisoryRow(pk: nil, source: r.source, id: r.id, modified: r.modified, published: r.published,
                                      withdrawn: r.withdrawn, aliases: r.aliases.joined(separator: "\u{1F}"), summary: r.summary,
                                      severity: r.severity.rawValue, cvssScore: r.cvssScore, cvssVector: r.cvssVector,
                                      contentHash: hash, importedAt: now)
                if let existing {
                    let pk: Int64 = existing["pk"]
                    if (existing["content_hash"] as String) == hash { counts.unchanged += 1; continue }
                    if let new = r.modified, let oldSecs = existing["modified"] as Double?,
                       new.timeIntervalSince1970 < oldSecs {
                        counts.older += 1; continue
                    }
                    row.pk = pk
                    try row.update(db)
                    // What the old record named changes too (a replacement may drop a package).
                    try db.execute(sql: """
                        INSERT INTO advisory_change (ecosystem, package, at)
                        SELECT DISTINCT ecosystem, package, ? FROM advisory_affected WHERE advisory = ?
                        """, arguments: [now.timeIntervalSince1970, pk])
                    try db.execute(sql: "DELETE FROM advisory_affected WHERE advisory = ?", arguments: [pk])
                    counts.replaced += 1
                } else {
                    try row.insert(db)
                    row.pk = db.lastInsertedRowID
                    counts.added += 1
                }
                guard let pk = row.pk else { throw WardenError(.internal, "advisory row has no key after insert") }
                let logChange = try db.cachedStatement(sql: "INSERT INTO advisory_change (ecosystem, package, at) VALUES (?, ?, ?)")
                var logged = Set<String>()
                for a in r.affected where logged.insert(a.ecosystem + "\u{1F}" + a.package).inserted {
                    try logChange.execute(arguments: [a.ecosystem, a.package, now.timeIntervalSince1970])
                }
                for a in r.affected {
                    try AffectedRow(advisory: pk, ecosystem: a.ecosystem, package: a.package, status: a.status.rawValue,
                                    severity: a.severity?.rawValue, ranges: RangeCoding.encode(a.ranges),
                                    versions: RangeCoding.encodeVersions(a.versions)).insert(db)
                }
            }
        }
        return counts
    }

    /// Records (or updates) a source's import time and counts.
    public func recordSource(name: String, format: AdvisoryFormat, location: String, counts: ImportCounts, at now: Date = Date()) throws {
        try database.write { db in
            try AdvisorySourceRow(name: name, format: format.rawValue, location: location, importedAt: now,
                                  lastSeen: counts.seen, lastAdded: counts.added, lastReplaced: counts.replaced,
                                  lastUnchanged: counts.unchanged, lastOlder: counts.older).save(db)
        }
    }

    // MARK: Status

    public func sources() throws -> [AdvisorySourceStatus] {
        try database.read { db in
            var counts: [String: (Int, Int)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT source, count(*) AS n, count(withdrawn) AS w FROM advisory GROUP BY source") {
                counts[row["source"]] = (row["n"], row["w"])
            }
            return try AdvisorySourceRow.order(Column("name")).fetchAll(db).map { s in
                var c = ImportCounts()
                c.seen = s.lastSeen; c.added = s.lastAdded; c.replaced = s.lastReplaced; c.unchanged = s.lastUnchanged; c.older = s.lastOlder
                let n = counts[s.name] ?? (0, 0)
                return AdvisorySourceStatus(name: s.name, format: s.format, location: s.location, importedAt: s.importedAt,
                                            records: n.0, withdrawn: n.1, lastImport: c)
            }
        }
    }

    /// Distinct advisories per ecosystem.
    public func ecosystemCounts() throws -> [(ecosystem: String, advisories: Int)] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT ecosystem, count(DISTINCT advisory) AS n FROM advisory_affected GROUP BY ecosystem ORDER BY ecosystem")
                .map { ($0["ecosystem"], $0["n"]) }
        }
    }

    public func advisoryCount() throws -> Int {
        try database.read { db in try AdvisoryRow.fetchCount(db) }
    }

    /// Advisories stored (added or replaced) after `time`, oldest first.
    public func advisoriesImported(after time: Date) throws -> [ImportedAdvisory] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT source, id, severity, imported_at FROM advisory WHERE imported_at > ? ORDER BY imported_at, source, id",
                             arguments: [time.timeIntervalSince1970]).map {
                ImportedAdvisory(source: $0["source"], id: $0["id"], severity: Severity(rawValue: $0["severity"]) ?? .unknown,
                                 importedAt: Date(timeIntervalSince1970: $0["imported_at"]))
            }
        }
    }

    // MARK: Matching index

    /// The in-memory index of every non-withdrawn advisory's entries in `ecosystems`
    /// (all ecosystems when nil). Red Hat product ecosystems are loaded when `Red Hat:N` is asked.
    public func loadIndex(ecosystems: Set<String>? = nil) throws -> AdvisoryIndex {
        try database.read { db in
            let index = AdvisoryIndex()
            var metaOf: [Int64: Int] = [:]
            var wanted: String? = nil
            var args: StatementArguments = []
            if let ecosystems {
                let list = Array(ecosystems)
                if list.isEmpty { return index }
                wanted = list.map { _ in "?" }.joined(separator: ",")
                args = StatementArguments(list)
            }
            // Entries first (through the (ecosystem, package) index, no join), then the metadata
            // of the non-withdrawn advisories they belong to.
            var sql = "SELECT advisory, ecosystem, package, status, severity, ranges, versions FROM advisory_affected"
            if let wanted {
                sql += " WHERE (ecosystem IN (\(wanted))"
                if ecosystems!.contains(where: { $0.hasPrefix("Red Hat") }) { sql += " OR ecosystem LIKE 'Red Hat:%'" }
                sql += ")"
            }
            var pending: [AdvisoryCoding.PendingEntry] = []
            let rows = try Row.fetchCursor(db, sql: sql, arguments: args)
            var needed = Set<Int64>()
            while let r = try rows.next() {
                let adv: Int64 = r[0]
                needed.insert(adv)
                pending.append((adv, r[1], r[2], r[3], r[4], r[5], r[6]))
            }
            let metas = try Row.fetchCursor(db, sql: "SELECT pk, source, id, aliases, severity, cvss_score, summary FROM advisory WHERE withdrawn IS NULL")
            while let m = try metas.next() {
                let pk: Int64 = m[0]
                guard needed.contains(pk) else { continue }
                metaOf[pk] = Self.addMeta(m, to: index)
            }
            AdvisoryCoding.addEntries(pending, metaOf: metaOf, to: index)
            return index
        }
    }

    // MARK: Inventories

    public func storeInventories(_ items: [NewInventory], at now: Date) throws {
        let blobs = items.map { AdvisoryCoding.encodePackages($0.packages) }
        try database.write { db in
            var ids = PackageVersionIDs()
            for (i, blob) in zip(items, blobs) {
                try InventoryRow(key: i.key.description, osId: i.osID, versionId: i.versionID, packageCount: i.packages.count,
                                 packages: blob, inspectedAt: now).save(db)
                try InventoryImageRow(path: i.image, inventory: i.key.description, scannedAt: now).save(db)
                try Self.storePackageSet(db, inventory: i.key.description, release: PackageVersion.release(osID: i.osID, versionID: i.versionID),
                                         packages: i.packages, ids: &ids)
            }
        }
    }

    /// Package-version ids already looked up in one write.
    struct PackageVersionIDs { var byKey: [MatchPackage: Int64] = [:]; var release = "" }

    /// Records `inventory`'s package versions (creating the new ones) and the index from each
    /// version to the inventories holding it. A changed set drops the inventory's assessment.
    static func storePackageSet(_ db: Database, inventory: String, release: String, packages: [MatchPackage], ids: inout PackageVersionIDs) throws {
        if ids.release != release { ids = PackageVersionIDs(byKey: [:], release: release) }
        let find = try db.cachedStatement(sql: """
            SELECT id FROM package_version WHERE release = ? AND name = ? AND version = ? AND source_name = ? AND source_version = ?
            """)
        let add = try db.cachedStatement(sql: """
            INSERT INTO package_version (release, name, version, source_name, source_version) VALUES (?, ?, ?, ?, ?)
            """)
        var list: [Int64] = []
        var seen = Set<Int64>()
        for p in packages {
            var id = ids.byKey[p]
            if id == nil {
                let args: StatementArguments = [release, p.name, p.version, p.sourceName, p.sourceVersion]
                id = try Int64.fetchOne(find, arguments: args)
                if id == nil { try add.execute(arguments: args); id = db.lastInsertedRowID }
                ids.byKey[p] = id
            }
            if seen.insert(id!).inserted { list.append(id!) }
        }
        let blob = PackageVersionCoding.encode(list)
        let link = try db.cachedStatement(sql: "INSERT OR IGNORE INTO package_inventory (package_version, package_set) VALUES (?, ?)")
        if let old = try Row.fetchOne(db, sql: "SELECT id, release, package_versions FROM inventory_package_set WHERE inventory = ?", arguments: [inventory]) {
            let setID: Int64 = old[0]
            let oldBlob: Data = old[2]
            if oldBlob == blob && (old[1] as String) == release { return }
            let unlink = try db.cachedStatement(sql: "DELETE FROM package_inventory WHERE package_version = ? AND package_set = ?")
            for v in PackageVersionCoding.decode(oldBlob) { try unlink.execute(arguments: [v, setID]) }
            try db.execute(sql: "UPDATE inventory_package_set SET release = ?, package_versions = ? WHERE id = ?", arguments: [release, blob, setID])
            try db.execute(sql: "DELETE FROM assessment WHERE inventory = ?", arguments: [inventory])
            for v in list { try link.execute(arguments: [v, setID]) }
        } else {
            try db.execute(sql: "INSERT INTO inventory_package_set (inventory, release, package_versions) VALUES (?, ?, ?)",
                           arguments: [inventory, release, blob])
            let setID = db.lastInsertedRowID
            for v in list { try link.execute(arguments: [v, setID]) }
        }
    }

    static func inventory(_ r: InventoryRow) -> StoredInventory? {
        guard let key = WardenCore.Digest(r.key) else { return nil }
        return StoredInventory(key: key, osID: r.osId, versionID: r.versionId, packages: AdvisoryCoding.decodePackages(r.packages), inspectedAt: r.inspectedAt)
    }

    public func inventory(_ key: WardenCore.Digest) throws -> StoredInventory? {
        try database.read { db in try InventoryRow.fetchOne(db, key: key.description).flatMap(Self.inventory) }
    }

    public func inventories() throws -> [StoredInventory] {
        try database.read { db in try InventoryRow.order(Column("key")).fetchAll(db).compactMap(Self.inventory) }
    }

    public func inventoryCount() throws -> Int {
        try database.read { db in try InventoryRow.fetchCount(db) }
    }

    /// Image paths last seen with each inventory, by inventory key.
    public func imagesByInventory() throws -> [String: [String]] {
        try database.read { db in
            var out: [String: [String]] = [:]
            for r in try InventoryImageRow.order(Column("path")).fetchAll(db) { out[r.inventory, default: []].append(r.path) }
            return out
        }
    }

    // MARK: Assessments

    /// When inventory `key` was last assessed.
    public func lastAssessmentTime(of key: WardenCore.Digest) throws -> Date? {
        try database.read { db in
            try Date.fetchOne(db, sql: "SELECT assessed_at FROM assessment WHERE inventory = ?", arguments: [key.description])
        }
    }

    /// `findings` with the aliases and summaries of their advisories, from the advisory table.
    static func addDetails(_ findings: [Finding], db: Database) throws -> [Finding] {
        var out = findings
        let stmt = try db.cachedStatement(sql: "SELECT aliases, summary FROM advisory WHERE source = ? AND id = ?")
        // Many findings share an advisory: each is read once.
        var known: [String: (aliases: [String], summary: String?)?] = [:]
        for i in out.indices {
            let k = out[i].source + "\u{1F}" + out[i].advisory
            if known[k] == nil {
                known[k] = .some(try Row.fetchOne(stmt, arguments: [out[i].source, out[i].advisory]).map { row in
                    let a: String = row["aliases"]
                    return (a.isEmpty ? [] : a.split(separator: "\u{1F}").map(String.init), row["summary"])
                })
            }
            if let d = known[k] ?? nil { out[i].aliases = d.aliases; out[i].summary = d.summary }
        }
        return out
    }
}


extension SQLiteAdvisoryStore {
    /// Adds the advisory row `m` (pk, source, id, aliases, severity, cvss_score, summary).
    static func addMeta(_ m: Row, to index: AdvisoryIndex) -> Int {
        AdvisoryCoding.addMeta(source: m[1], id: m[2], aliases: m[3], severity: m[4], cvssScore: m[5], summary: m[6], to: index)
    }
}

extension SQLiteAdvisoryStore {
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
            var pending: [AdvisoryCoding.PendingEntry] = []
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
            AdvisoryCoding.addEntries(pending, metaOf: metaOf, to: index)
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

    public func inventoryKey(path: String, fingerprint: WardenCore.Digest?) throws -> String? {
        try database.read { db in
            if let k = try String.fetchOne(db, sql: "SELECT inventory FROM inventory_image WHERE path = ?", arguments: [path]) { return k }
            if let fp = fingerprint?.description,
               try Bool.fetchOne(db, sql: "SELECT 1 FROM inventory WHERE key = ?", arguments: [fp]) == true { return fp }
            return nil
        }
    }

    public func withDetails(_ findings: [Finding]) throws -> [Finding] {
        try database.read { db in try Self.addDetails(findings, db: db) }
    }

    public func vms(withContents contents: [String: [String]]) throws -> [String: [AffectedVM]] {
        guard !contents.isEmpty else { return [:] }
        return try database.read { db in
            var rows: [AffectedVM.DiskRow] = []
            var seen = Set<String>()
            let select = "SELECT d.vm, v.name, d.path, d.idx, d.fingerprint FROM disks d JOIN vms v ON v.id = d.vm WHERE "
            for (column, values) in [("d.fingerprint", Array(contents.keys)), ("d.path", Array(Set(contents.values.joined())))] {
                try Self.chunked(values.sorted()) { chunk in
                    for r in try Row.fetchAll(db, sql: select + "\(column) IN (\(Self.marks(chunk.count)))", arguments: StatementArguments(chunk))
                    where seen.insert("\(r[0] as String)\u{1F}\(r[3] as Int)").inserted {
                        rows.append(AffectedVM.DiskRow(vm: r[0], name: r[1], path: r[2], index: r[3], fingerprint: r[4]))
                    }
                }
            }
            return AffectedVM.pick(rows, for: contents)
        }
    }
}

extension SQLiteAdvisoryStore {
    public func advisoryRecords(after cursor: AdvisoryCursor?, limit: Int) throws -> (records: [AdvisoryRecord], next: AdvisoryCursor?) {
        let n = max(1, min(limit, 5000))
        return try database.read { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT pk, source, id, modified, published, withdrawn, aliases, summary, severity, cvss_score, cvss_vector, imported_at
                FROM advisory WHERE (imported_at, pk) > (?, ?) ORDER BY imported_at, pk LIMIT ?
                """, arguments: [cursor?.importedAt ?? -Double.greatestFiniteMagnitude, cursor?.pk ?? -1, n])
            guard let last = rows.last else { return ([], nil) }
            var affected: [Int64: [(ecosystem: String, package: String, status: String, severity: Int?, ranges: String, versions: String)]] = [:]
            let pks: [Int64] = rows.map { $0["pk"] }
            for r in try Row.fetchAll(db, sql: """
                SELECT advisory, ecosystem, package, status, severity, ranges, versions FROM advisory_affected
                WHERE advisory IN (\(pks.map { _ in "?" }.joined(separator: ","))) ORDER BY rowid
                """, arguments: StatementArguments(pks)) {
                affected[r["advisory"], default: []].append((r["ecosystem"], r["package"], r["status"], r["severity"], r["ranges"], r["versions"]))
            }
            let records = rows.map { r in
                AdvisoryCoding.record(source: r["source"], id: r["id"], modified: r["modified"], published: r["published"], withdrawn: r["withdrawn"],
                                      aliases: r["aliases"], summary: r["summary"], severity: r["severity"], cvssScore: r["cvss_score"],
                                      cvssVector: r["cvss_vector"], affected: affected[r["pk"]] ?? [])
            }
            return (records, AdvisoryCursor(importedAt: last["imported_at"], pk: last["pk"]))
        }
    }
}
