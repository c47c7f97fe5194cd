import Foundation
import GRDB
import Crypto

import WardenCore
import Advisories
import Storage

/// Counts of one import.
public struct ImportCounts: Codable, Sendable, Equatable {
    public var seen = 0
    public var added = 0
    /// Replaced by a different record (newer `modified`, or changed content without `modified`).
    public var replaced = 0
    /// Identical to the stored record (re-import).
    public var unchanged = 0
    /// Older than the stored record (`modified` earlier): kept the stored one.
    public var older = 0
    public init() {}
    public static func + (a: ImportCounts, b: ImportCounts) -> ImportCounts {
        var c = a
        c.seen += b.seen; c.added += b.added; c.replaced += b.replaced; c.unchanged += b.unchanged; c.older += b.older
        return c
    }
}

/// One advisory source as `warden advisories status` shows it.
public struct AdvisorySourceStatus: Codable, Sendable {
    public var name: String
    public var format: String
    public var location: String
    public var importedAt: Date
    public var records: Int
    public var withdrawn: Int
    public var lastImport: ImportCounts
}

/// A stored inventory: what the matcher needs of a guest, keyed by image content identity.
public struct StoredInventory: Sendable {
    public var key: WardenCore.Digest
    public var osID: String?
    public var versionID: String?
    public var packages: [MatchPackage]
    public var inspectedAt: Date
    public var ecosystem: GuestEcosystem? {
        osID.flatMap { GuestEcosystem.from(osID: $0, versionID: versionID) }
    }
}

/// The last assessment of an inventory.
public struct Assessment: Sendable {
    public var inventory: WardenCore.Digest
    public var assessedAt: Date
    /// Vulnerable findings only.
    public var findings: [Finding]
}

/// An advisory stored after a given time (for the policy engine's "new advisories since").
public struct ImportedAdvisory: Codable, Sendable, Equatable {
    public var source: String
    public var id: String
    public var severity: Severity
    public var importedAt: Date
}

/// Advisories, inventories and assessments in Warden's database.
///
/// Import is idempotent: a record identical to the stored one (same source, id and content)
/// changes nothing; a record with a newer `modified` replaces the older one; an older one is
/// ignored. Every write is one transaction per batch; SQL uses bound parameters only.
public struct AdvisoryStore: Sendable {
    public let database: WardenDatabase
    public init(_ database: WardenDatabase) { self.database = database }

    // MARK: Import

    /// Stores a batch of records in one transaction and returns what happened to them.
    public func importRecords(_ records: [AdvisoryRecord], at now: Date = Date(), file: String) throws -> ImportCounts {
        var counts = ImportCounts()
        let prepared = try records.map { r -> (AdvisoryRecord, String) in
            try Self.validate(r, file: file)
            return (r, Self.contentHash(r))
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
                    try db.execute(sql: "DELETE FROM advisory_affected WHERE advisory = ?", arguments: [pk])
                    counts.replaced += 1
                } else {
                    try row.insert(db)
                    row.pk = db.lastInsertedRowID
                    counts.added += 1
                }
                guard let pk = row.pk else { throw WardenError(.internal, "advisory row has no key after insert") }
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

    static func validate(_ r: AdvisoryRecord, file: String) throws {
        func check(_ s: String, _ what: String) throws {
            guard RangeCoding.isClean(s) else {
                throw WardenError(.corrupt, "advisory \(r.id.filter { !$0.isNewline }.prefix(80)): \(what) contains control characters", file: file)
            }
        }
        try check(r.id, "the id")
        for a in r.aliases { try check(a, "an alias") }
        for a in r.affected {
            try check(a.ecosystem, "an ecosystem"); try check(a.package, "a package name")
            for v in a.versions { try check(v, "a version") }
            for rg in a.ranges { for e in rg { try check(e.version, "a range version") } }
        }
    }

    /// SHA-256 of the record's canonical JSON (sorted keys): equal content, equal hash.
    static func contentHash(_ r: AdvisoryRecord) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        enc.dateEncodingStrategy = .secondsSince1970
        let data = (try? enc.encode(r)) ?? Data()
        return SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
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
            var pending: [PendingEntry] = []
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
            Self.addEntries(pending, metaOf: metaOf, to: index)
            return index
        }
    }

    /// One `advisory_affected` row, as the index loaders read it:
    /// (advisory pk, ecosystem, package, status, severity, ranges, versions).
    typealias PendingEntry = (Int64, String, String, String, Int?, String, String)

    /// Adds the advisory row `m` (pk, source, id, aliases, severity, cvss_score, summary) to
    /// `index`; returns its meta index.
    static func addMeta(_ m: Row, to index: AdvisoryIndex) -> Int {
        let aliases: String = m[3]
        return index.addMeta(AdvisoryIndex.Meta(
            id: m[2], source: m[1], aliases: aliases.isEmpty ? [] : aliases.split(separator: "\u{1F}").map(String.init),
            severity: Severity(rawValue: m[4]) ?? .unknown, cvssScore: m[5], summary: m[6]))
    }

    /// Adds the entries whose advisory was loaded (`metaOf`) to `index`.
    static func addEntries(_ pending: [PendingEntry], metaOf: [Int64: Int], to index: AdvisoryIndex) {
        for p in pending {
            guard let meta = metaOf[p.0] else { continue }
            index.addEntry(meta: meta, ecosystem: p.1, package: p.2, status: AffectedStatus(rawValue: p.3) ?? .affected,
                           severity: p.4.flatMap { Severity(rawValue: $0) }, rangesText: p.5, versionsText: p.6)
        }
    }

    // MARK: Inventories

    /// Stores (or replaces) the inventory `key` and records that `image` had this content.
    public func storeInventory(key: WardenCore.Digest, image: String, osID: String?, versionID: String?,
                               packages: [MatchPackage], at now: Date = Date()) throws {
        let blob = Self.encodePackages(packages)
        try database.write { db in
            try InventoryRow(key: key.description, osId: osID, versionId: versionID, packageCount: packages.count,
                             packages: blob, inspectedAt: now).save(db)
            try InventoryImageRow(path: image, inventory: key.description, scannedAt: now).save(db)
        }
    }

    /// One inventory to store with ``storeInventories(_:at:)``.
    public struct NewInventory: Sendable {
        public var key: WardenCore.Digest
        public var image: String
        public var osID: String?
        public var versionID: String?
        public var packages: [MatchPackage]
        public init(key: WardenCore.Digest, image: String, osID: String?, versionID: String?, packages: [MatchPackage]) {
            self.key = key; self.image = image; self.osID = osID; self.versionID = versionID; self.packages = packages
        }
    }

    /// Stores many inventories in one transaction.
    public func storeInventories(_ items: [NewInventory], at now: Date = Date()) throws {
        let blobs = items.map { Self.encodePackages($0.packages) }
        try database.write { db in
            for (i, blob) in zip(items, blobs) {
                try InventoryRow(key: i.key.description, osId: i.osID, versionId: i.versionID, packageCount: i.packages.count,
                                 packages: blob, inspectedAt: now).save(db)
                try InventoryImageRow(path: i.image, inventory: i.key.description, scannedAt: now).save(db)
            }
        }
    }

    static func encodePackages(_ packages: [MatchPackage]) -> Data {
        CompactLines.encode(packages.map { p in
            [p.name, p.version, p.sourceName == p.name ? "" : p.sourceName, p.sourceVersion == p.version ? "" : p.sourceVersion]
        })
    }

    static func decodePackages(_ data: Data) -> [MatchPackage] {
        var out: [MatchPackage] = []
        CompactLines.decode(data) { f in
            guard f.count == 4 else { return }
            out.append(MatchPackage(name: f[0], version: f[1], sourceName: f[2].isEmpty ? f[0] : f[2],
                                    sourceVersion: f[3].isEmpty ? f[1] : f[3]))
        }
        return out
    }

    static func inventory(_ r: InventoryRow) -> StoredInventory? {
        guard let key = WardenCore.Digest(r.key) else { return nil }
        return StoredInventory(key: key, osID: r.osId, versionID: r.versionId, packages: decodePackages(r.packages), inspectedAt: r.inspectedAt)
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

    /// The last assessment of inventory `key`, if any.
    public func assessment(of key: WardenCore.Digest) throws -> Assessment? {
        try database.read { db in
            guard let row = try AssessmentRow.fetchOne(db, key: key.description) else { return nil }
            return Assessment(inventory: key, assessedAt: row.assessedAt, findings: try Self.decodeFindings(row.findings, db: db))
        }
    }

    /// The latest vulnerable findings for inventory `key` (empty when never assessed).
    public func latestFindings(for key: WardenCore.Digest) throws -> [Finding] {
        try assessment(of: key)?.findings ?? []
    }

    /// When inventory `key` was last assessed.
    public func lastAssessmentTime(of key: WardenCore.Digest) throws -> Date? {
        try database.read { db in
            try Date.fetchOne(db, sql: "SELECT assessed_at FROM assessment WHERE inventory = ?", arguments: [key.description])
        }
    }

    /// Stores `findings` (vulnerable ones) as inventory `key`'s assessment.
    public func saveAssessment(_ key: WardenCore.Digest, findings: [Finding], at now: Date = Date()) throws {
        let vuln = findings.filter { $0.status == .vulnerable }
        try database.write { db in
            try AssessmentRow(inventory: key.description, assessedAt: now, findingsHash: Self.findingsHash(vuln),
                              vulnerable: vuln.count, findings: Self.encodeFindings(vuln)).save(db)
        }
    }

    /// Lower-case hex of `bytes`.
    static func hex<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0x0F)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// A digest of a finding set in the matcher's (deterministic) order: equal sets, equal hashes.
    static func findingsHash(_ findings: [Finding]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(findings.count * 64)
        for f in findings {
            bytes += f.package.utf8; bytes.append(0x1F)
            bytes += f.installedVersion.utf8; bytes.append(0x1F)
            bytes += f.source.utf8; bytes.append(0x1F)
            bytes += f.advisory.utf8; bytes.append(0x1F)
            bytes.append(UInt8(f.severity.rawValue)); bytes.append(0x1F)
            bytes += (f.fixedVersion ?? "").utf8; bytes.append(0x1E)
        }
        return SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    /// The stored form of a finding set: ``CompactLines``, one line of 11 fields per finding.
    static func encodeFindings(_ findings: [Finding]) -> Data {
        var out: [UInt8] = []
        out.reserveCapacity(findings.count * 112)
        let severities = (0...5).map { Array(String($0).utf8) }
        var cvssText: [Double: [UInt8]] = [:]
        for f in findings {
            CompactLines.escape(f.package, into: &out); out.append(0x09)
            CompactLines.escape(f.installedVersion, into: &out); out.append(0x09)
            CompactLines.escape(f.sourcePackage, into: &out); out.append(0x09)
            CompactLines.escape(f.matchedName, into: &out); out.append(0x09)
            CompactLines.escape(f.ecosystem, into: &out); out.append(0x09)
            CompactLines.escape(f.source, into: &out); out.append(0x09)
            CompactLines.escape(f.advisory, into: &out); out.append(0x09)
            let sev = f.severity.rawValue
            if sev >= 0 && sev < severities.count { out += severities[sev] } else { out += String(sev).utf8 }
            out.append(0x09)
            if let c = f.cvssScore {
                if let t = cvssText[c] { out += t } else { let t = Array(String(c).utf8); cvssText[c] = t; out += t }
            }
            out.append(0x09)
            if let v = f.fixedVersion { CompactLines.escape(v, into: &out) }
            out.append(0x09)
            CompactLines.escape(f.status.rawValue, into: &out)
            out.append(0x0A)
        }
        return Data(out)
    }

    /// ``encodeFindings(_:)`` as first written, through rows of strings: the reference the tests compare with.
    static func encodeFindingsPlain(_ findings: [Finding]) -> Data {
        CompactLines.encode(findings.map { f in
            [f.package, f.installedVersion, f.sourcePackage, f.matchedName, f.ecosystem, f.source, f.advisory,
             String(f.severity.rawValue), f.cvssScore.map { String($0) } ?? "", f.fixedVersion ?? "", f.status.rawValue]
        })
    }

    /// Inventory `key`'s stored findings, or nil when it was never assessed. Aliases and summaries
    /// are joined from the advisory table only when `details` is set.
    func storedFindings(of key: WardenCore.Digest, db: Database, details: Bool) throws -> [Finding]? {
        guard let data = try Data.fetchOne(db, sql: "SELECT findings FROM assessment WHERE inventory = ?",
                                           arguments: [key.description]) else { return nil }
        let found = Self.decodeFindingsWithoutDetails(data)
        return details ? try Self.addDetails(found, db: db) : found
    }

    /// Decodes stored findings, joining aliases and summaries from the advisory table.
    static func decodeFindings(_ data: Data, db: Database) throws -> [Finding] {
        try addDetails(decodeFindingsWithoutDetails(data), db: db)
    }

    /// Decodes stored findings; aliases stay empty and summaries nil.
    static func decodeFindingsWithoutDetails(_ data: Data) -> [Finding] {
        var out: [Finding] = []
        CompactLines.decode(data) { f in
            guard f.count == 11 else { return }
            out.append(Finding(package: f[0], installedVersion: f[1], sourcePackage: f[2], matchedName: f[3], ecosystem: f[4],
                               advisory: f[6], source: f[5], aliases: [], severity: Severity(rawValue: Int(f[7]) ?? 0) ?? .unknown,
                               cvssScore: Double(f[8]), fixedVersion: f[9].isEmpty ? nil : f[9],
                               status: FindingStatus(rawValue: f[10]) ?? .vulnerable, summary: nil))
        }
        return out
    }

    /// `findings` with the aliases and summaries of their advisories, from the advisory table.
    static func addDetails(_ findings: [Finding], db: Database) throws -> [Finding] {
        var out = findings
        let stmt = try db.cachedStatement(sql: "SELECT aliases, summary FROM advisory WHERE source = ? AND id = ?")
        for i in out.indices {
            if let row = try Row.fetchOne(stmt, arguments: [out[i].source, out[i].advisory]) {
                let a: String = row["aliases"]
                out[i].aliases = a.isEmpty ? [] : a.split(separator: "\u{1F}").map(String.init)
                out[i].summary = row["summary"]
            }
        }
        return out
    }
}

/// ``AdvisoryStore/findingsHash(_:)`` of compact findings, without building ``Finding`` values:
/// the same bytes are hashed. Keeps its buffer between inventories.
struct FindingsHasher {
    private var bytes: [UInt8] = []

    mutating func hash(_ compact: [Matcher.CompactFinding], packages: [MatchPackage], metas: [AdvisoryIndex.Meta]) -> String {
        bytes.removeAll(keepingCapacity: true)
        metas.withUnsafeBufferPointer { metas in
            packages.withUnsafeBufferPointer { packages in
                for c in compact {
                    bytes += packages[c.package].name.utf8; bytes.append(0x1F)
                    bytes += packages[c.package].version.utf8; bytes.append(0x1F)
                    bytes += metas[c.advisory].source.utf8; bytes.append(0x1F)
                    bytes += metas[c.advisory].id.utf8; bytes.append(0x1F)
                    bytes.append(UInt8(truncatingIfNeeded: c.severity.rawValue)); bytes.append(0x1F)
                    if let f = c.fixedVersion { bytes += f.utf8 }
                    bytes.append(0x1E)
                }
            }
        }
        return AdvisoryStore.hex(SHA256.hash(data: bytes))
    }
}
