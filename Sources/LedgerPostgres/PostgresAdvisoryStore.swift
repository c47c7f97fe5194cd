import Advisories
import AdvisoryStorage
import Foundation
import NIOCore
import NIOFoundationCompat
import PostgresNIO
import WardenCore

/// The advisory store on PostgreSQL: the fleet's advisories, inventories and assessments, in
/// the same database as its ledger. The same protocol and test suite as the SQLite store; the
/// values stored (content hashes, package lists, finding sets) are the same bytes
/// (``AdvisoryCoding``). Batches are written with `unnest` over arrays, one statement per table.
public struct PostgresAdvisoryStore: AdvisoryStore {
    public let store: PostgresStore
    public init(store: PostgresStore) { self.store = store }

    var location: String { store.location }
    static func seconds(_ d: Date) -> Double { d.timeIntervalSince1970 }
    static func date(_ s: Double) -> Date { Date(timeIntervalSince1970: s) }

    // MARK: Import

    public func importRecords(_ records: [AdvisoryRecord], at now: Date, file: String) throws -> ImportCounts {
        var counts = ImportCounts()
        let prepared = try records.map { r -> (AdvisoryRecord, String) in
            try AdvisoryCoding.validate(r, file: file)
            return (r, AdvisoryCoding.contentHash(r))
        }
        guard !prepared.isEmpty else { return counts }
        try store.transaction {
            // Imports of one source serialise (two updaters of one feed must not both insert).
            try store.query("SELECT pg_advisory_xact_lock(hashtextextended('warden-advisory-import', 0))")
            // What is stored now for these (source, id) pairs, in one query.
            var existing: [String: (pk: Int64, modified: Double?, hash: String)] = [:]
            let sources = prepared.map { $0.0.source }, ids = prepared.map { $0.0.id }
            for row in try store.query("""
                SELECT a.pk, a.source, a.id, a.modified, a.content_hash FROM advisory a
                JOIN unnest(\(sources)::text[], \(ids)::text[]) AS x(s, i) ON a.source = x.s AND a.id = x.i
                """) {
                let c = Cells(row, "advisory", location)
                existing[try c.get("source", String.self) + "\u{1F}" + c.get("id", String.self)] =
                    (try c.get("pk"), try c.optional("modified"), try c.get("content_hash"))
            }
            var replacedPKs: [Int64] = []
            var rows: [(AdvisoryRecord, String, Int64?)] = []
            var seenInBatch: [String: Int] = [:]
            for (r, hash) in prepared {
                counts.seen += 1
                let k = r.source + "\u{1F}" + r.id
                // A record repeated within one batch: the later one is judged against the earlier.
                if let i = seenInBatch[k] {
                    let (prev, prevHash, pk) = rows[i]
                    if prevHash == hash { counts.unchanged += 1; continue }
                    if let new = r.modified, let old = prev.modified, new < old { counts.older += 1; continue }
                    rows[i] = (r, hash, pk)
                    counts.replaced += 1
                    continue
                }
                if let e = existing[k] {
                    if e.hash == hash { counts.unchanged += 1; continue }
                    if let new = r.modified, let old = e.modified, new.timeIntervalSince1970 < old { counts.older += 1; continue }
                    replacedPKs.append(e.pk)
                    seenInBatch[k] = rows.count
                    rows.append((r, hash, e.pk))
                    counts.replaced += 1
                } else {
                    seenInBatch[k] = rows.count
                    rows.append((r, hash, nil))
                    counts.added += 1
                }
            }
            if rows.isEmpty { return }
            if !replacedPKs.isEmpty {
                // What the old records named changes too (a replacement may drop a package).
                try store.query("""
                    INSERT INTO advisory_change (ecosystem, package, at)
                    SELECT DISTINCT ecosystem, package, \(Self.seconds(now))::double precision FROM advisory_affected
                    WHERE advisory = ANY(\(replacedPKs)::bigint[])
                    """)
                try store.query("DELETE FROM advisory_affected WHERE advisory = ANY(\(replacedPKs)::bigint[])")
                try store.query("DELETE FROM advisory WHERE pk = ANY(\(replacedPKs)::bigint[])")
            }
            let t = Self.seconds(now)
            // Arrays cannot hold NULL through the encoder: NaN stands for a missing time or
            // score, and a mask for a missing text.
            let nan = Double.nan
            let inserted = try store.query("""
                INSERT INTO advisory (source, id, modified, published, withdrawn, aliases, summary, severity, cvss_score,
                                      cvss_vector, content_hash, imported_at)
                SELECT s, i, NULLIF(m, 'NaN'::float8), NULLIF(p, 'NaN'::float8), NULLIF(w, 'NaN'::float8), a,
                       CASE WHEN sun THEN NULL ELSE su END, sv, NULLIF(cs, 'NaN'::float8), CASE WHEN cvn THEN NULL ELSE cv END,
                       h, \(t)::double precision
                FROM unnest(\(rows.map { $0.0.source })::text[], \(rows.map { $0.0.id })::text[],
                            \(rows.map { $0.0.modified.map(Self.seconds) ?? nan })::float8[],
                            \(rows.map { $0.0.published.map(Self.seconds) ?? nan })::float8[],
                            \(rows.map { $0.0.withdrawn.map(Self.seconds) ?? nan })::float8[],
                            \(rows.map { $0.0.aliases.joined(separator: "\u{1F}") })::text[],
                            \(rows.map { $0.0.summary ?? "" })::text[], \(rows.map { $0.0.summary == nil })::boolean[],
                            \(rows.map { $0.0.severity.rawValue })::integer[], \(rows.map { $0.0.cvssScore ?? nan })::float8[],
                            \(rows.map { $0.0.cvssVector ?? "" })::text[], \(rows.map { $0.0.cvssVector == nil })::boolean[],
                            \(rows.map { $0.1 })::text[])
                     WITH ORDINALITY AS x(s, i, m, p, w, a, su, sun, sv, cs, cv, cvn, h, n)
                ORDER BY n
                RETURNING pk, source, id
                """)
            var pkOf: [String: Int64] = [:]
            for row in inserted {
                let c = Cells(row, "advisory", location)
                pkOf[try c.get("source", String.self) + "\u{1F}" + c.get("id", String.self)] = try c.get("pk")
            }
            var adv: [Int64] = [], eco: [String] = [], pkg: [String] = [], status: [String] = [], sev: [Int] = []
            var ranges: [String] = [], versions: [String] = [], ord: [Int32] = []
            for (r, _, _) in rows {
                guard let pk = pkOf[r.source + "\u{1F}" + r.id] else { throw WardenError(.internal, "advisory row has no key after insert") }
                for (i, a) in r.affected.enumerated() {
                    ord.append(Int32(clamping: i)); adv.append(pk); eco.append(a.ecosystem); pkg.append(a.package); status.append(a.status.rawValue)
                    sev.append(a.severity?.rawValue ?? -1); ranges.append(RangeCoding.encode(a.ranges)); versions.append(RangeCoding.encodeVersions(a.versions))
                }
            }
            if !adv.isEmpty {
                try store.query("""
                    INSERT INTO advisory_affected (advisory, ecosystem, package, status, severity, ranges, versions, ord)
                    SELECT a, e, p, st, NULLIF(sv, -1), r, v, o
                    FROM unnest(\(adv)::bigint[], \(eco)::text[], \(pkg)::text[], \(status)::text[], \(sev)::integer[],
                                \(ranges)::text[], \(versions)::text[], \(ord)::integer[]) AS x(a, e, p, st, sv, r, v, o)
                    """)
                try store.query("""
                    INSERT INTO advisory_change (ecosystem, package, at)
                    SELECT DISTINCT e, p, \(t)::double precision FROM unnest(\(eco)::text[], \(pkg)::text[]) AS x(e, p)
                    """)
            }
        }
        return counts
    }

    public func recordSource(name: String, format: AdvisoryFormat, location: String, counts: ImportCounts, at now: Date) throws {
        try store.query("""
            INSERT INTO advisory_source (name, format, location, imported_at, last_seen, last_added, last_replaced, last_unchanged, last_older)
            VALUES (\(name), \(format.rawValue), \(location), \(Self.seconds(now)), \(counts.seen), \(counts.added), \(counts.replaced),
                    \(counts.unchanged), \(counts.older))
            ON CONFLICT (name) DO UPDATE SET format = EXCLUDED.format, location = EXCLUDED.location, imported_at = EXCLUDED.imported_at,
                last_seen = EXCLUDED.last_seen, last_added = EXCLUDED.last_added, last_replaced = EXCLUDED.last_replaced,
                last_unchanged = EXCLUDED.last_unchanged, last_older = EXCLUDED.last_older
            """)
    }

    // MARK: Status

    public func sources() throws -> [AdvisorySourceStatus] {
        var counts: [String: (Int, Int)] = [:]
        for row in try store.query("SELECT source, count(*) AS n, count(withdrawn) AS w FROM advisory GROUP BY source") {
            let c = Cells(row, "advisory", location)
            counts[try c.get("source")] = (Int(try c.get("n", Int64.self)), Int(try c.get("w", Int64.self)))
        }
        return try store.query("SELECT * FROM advisory_source ORDER BY name COLLATE \"C\"").map { row in
            let c = Cells(row, "advisory_source", location)
            let name: String = try c.get("name")
            var last = ImportCounts()
            last.seen = Int(try c.get("last_seen", Int64.self)); last.added = Int(try c.get("last_added", Int64.self))
            last.replaced = Int(try c.get("last_replaced", Int64.self)); last.unchanged = Int(try c.get("last_unchanged", Int64.self))
            last.older = Int(try c.get("last_older", Int64.self))
            let n = counts[name] ?? (0, 0)
            return AdvisorySourceStatus(name: name, format: try c.get("format"), location: try c.get("location"),
                                        importedAt: Self.date(try c.get("imported_at")), records: n.0, withdrawn: n.1, lastImport: last)
        }
    }

    public func ecosystemCounts() throws -> [(ecosystem: String, advisories: Int)] {
        try store.query("""
            SELECT ecosystem, count(DISTINCT advisory) AS n FROM advisory_affected GROUP BY ecosystem ORDER BY ecosystem COLLATE "C"
            """).map { row in
            let c = Cells(row, "advisory_affected", location)
            return (try c.get("ecosystem"), Int(try c.get("n", Int64.self)))
        }
    }

    public func advisoryCount() throws -> Int {
        try count("SELECT count(*) FROM advisory")
    }

    func count(_ q: PostgresQuery) throws -> Int {
        guard let row = try store.query(q).first else { return 0 }
        return Int(try row.decode(Int64.self))
    }

    public func advisoriesImported(after time: Date) throws -> [ImportedAdvisory] {
        try store.query("""
            SELECT source, id, severity, imported_at FROM advisory WHERE imported_at > \(Self.seconds(time))
            ORDER BY imported_at, source COLLATE "C", id COLLATE "C"
            """).map { row in
            let c = Cells(row, "advisory", location)
            return ImportedAdvisory(source: try c.get("source"), id: try c.get("id"),
                                    severity: Severity(rawValue: Int(try c.get("severity", Int32.self))) ?? .unknown,
                                    importedAt: Self.date(try c.get("imported_at")))
        }
    }

    public func advisoryCountImported(after time: Date) throws -> Int {
        try count("SELECT count(*) FROM advisory WHERE imported_at > \(Self.seconds(time))")
    }

    public func lastAdvisoryImport() throws -> Date? {
        guard let row = try store.query("SELECT max(imported_at) FROM advisory").first else { return nil }
        return try row.decode(Double?.self).map(Self.date)
    }

    public func hasAdvisories(ecosystems: [String]) throws -> Bool {
        guard !ecosystems.isEmpty else { return false }
        let redHat = ecosystems.contains { $0.hasPrefix("Red Hat") }
        return !(try store.query("""
            SELECT 1 FROM advisory_affected WHERE ecosystem = ANY(\(ecosystems)::text[]) OR (\(redHat) AND ecosystem LIKE 'Red Hat:%') LIMIT 1
            """)).isEmpty
    }

    // MARK: The matching index

    public func loadIndex(ecosystems: Set<String>?) throws -> AdvisoryIndex {
        let list = ecosystems.map { Array($0).sorted() }
        if list?.isEmpty == true { return AdvisoryIndex() }
        let redHat = list?.contains { $0.hasPrefix("Red Hat") } ?? false
        return try index(rows: try store.query("""
            SELECT f.advisory, f.ecosystem, f.package, f.status, f.severity, f.ranges, f.versions
            FROM advisory_affected f JOIN advisory a ON a.pk = f.advisory
            WHERE a.withdrawn IS NULL AND (\(list == nil) OR f.ecosystem = ANY(\(list ?? [])::text[]) OR (\(redHat) AND f.ecosystem LIKE 'Red Hat:%'))
            ORDER BY f.advisory
            """))
    }

    public func loadIndex(ecosystems: Set<String>, packages: Set<String>) throws -> AdvisoryIndex {
        if ecosystems.isEmpty || packages.isEmpty { return AdvisoryIndex() }
        let eco = Array(ecosystems).sorted(), names = Array(packages).sorted()
        let redHat = eco.contains { $0.hasPrefix("Red Hat") }
        return try index(rows: try store.query("""
            SELECT f.advisory, f.ecosystem, f.package, f.status, f.severity, f.ranges, f.versions
            FROM advisory_affected f JOIN advisory a ON a.pk = f.advisory
            WHERE a.withdrawn IS NULL AND (f.ecosystem = ANY(\(eco)::text[]) OR (\(redHat) AND f.ecosystem LIKE 'Red Hat:%'))
              AND f.package = ANY(\(names)::text[])
            ORDER BY f.advisory
            """))
    }

    /// Builds the index from entry rows: the metadata of their advisories in pk order (as the
    /// SQLite store adds them), then the entries.
    func index(rows: [PostgresRow]) throws -> AdvisoryIndex {
        let index = AdvisoryIndex()
        var pending: [AdvisoryCoding.PendingEntry] = []
        var needed = Set<Int64>()
        pending.reserveCapacity(rows.count)
        for row in rows {
            let (adv, eco, pkg, status, sev, ranges, versions) = try row.decode((Int64, String, String, String, Int32?, String, String).self)
            needed.insert(adv)
            pending.append((adv, eco, pkg, status, sev.map(Int.init), ranges, versions))
        }
        var metaOf: [Int64: Int] = [:]
        if !needed.isEmpty {
            for row in try store.query("""
                SELECT pk, source, id, aliases, severity, cvss_score, summary FROM advisory WHERE pk = ANY(\(needed.sorted())::bigint[]) ORDER BY pk
                """) {
                let (pk, source, id, aliases, sev, cvss, summary) = try row.decode((Int64, String, String, String, Int32, Double?, String?).self)
                metaOf[pk] = AdvisoryCoding.addMeta(source: source, id: id, aliases: aliases, severity: Int(sev), cvssScore: cvss,
                                                    summary: summary, to: index)
            }
        }
        AdvisoryCoding.addEntries(pending, metaOf: metaOf, to: index)
        return index
    }

    // MARK: Inventories

    public func storeInventories(_ items: [NewInventory], at now: Date) throws {
        guard !items.isEmpty else { return }
        // The last item for a key (or an image) wins, as one save after another would.
        var byKey: [String: Int] = [:], byImage: [String: Int] = [:]
        for (i, item) in items.enumerated() { byKey[item.key.description] = i; byImage[item.image] = i }
        let inv = byKey.values.sorted().map { items[$0] }
        let img = byImage.values.sorted().map { items[$0] }
        let t = Self.seconds(now)
        try store.transaction {
            try store.query("""
                INSERT INTO inventory (key, os_id, version_id, package_count, packages, inspected_at)
                SELECT k, CASE WHEN onull THEN NULL ELSE o END, CASE WHEN vnull THEN NULL ELSE v END, n, p, \(t)::double precision
                FROM unnest(\(inv.map { $0.key.description })::text[], \(inv.map { $0.osID ?? "" })::text[], \(inv.map { $0.osID == nil })::boolean[],
                            \(inv.map { $0.versionID ?? "" })::text[], \(inv.map { $0.versionID == nil })::boolean[],
                            \(inv.map { $0.packages.count })::integer[],
                            \(inv.map { ByteBuffer(data: AdvisoryCoding.encodePackages($0.packages)) })::bytea[]) AS x(k, o, onull, v, vnull, n, p)
                ON CONFLICT (key) DO UPDATE SET os_id = EXCLUDED.os_id, version_id = EXCLUDED.version_id,
                    package_count = EXCLUDED.package_count, packages = EXCLUDED.packages, inspected_at = EXCLUDED.inspected_at
                """)
            try store.query("""
                INSERT INTO inventory_image (path, inventory, scanned_at)
                SELECT p, k, \(t)::double precision FROM unnest(\(img.map(\.image))::text[], \(img.map { $0.key.description })::text[]) AS x(p, k)
                ON CONFLICT (path) DO UPDATE SET inventory = EXCLUDED.inventory, scanned_at = EXCLUDED.scanned_at
                """)
            try storePackageSets(inv.map { ($0.key.description, PackageVersion.release(osID: $0.osID, versionID: $0.versionID), $0.packages) })
        }
    }

    func inventory(_ row: PostgresRow) throws -> StoredInventory? {
        let c = Cells(row, "inventory", location)
        guard let key = WardenCore.Digest(try c.get("key", String.self)) else { return nil }
        let packages: ByteBuffer = try c.get("packages")
        return StoredInventory(key: key, osID: try c.optional("os_id"), versionID: try c.optional("version_id"),
                               packages: AdvisoryCoding.decodePackages(Data(buffer: packages)), inspectedAt: Self.date(try c.get("inspected_at")))
    }

    public func inventory(_ key: WardenCore.Digest) throws -> StoredInventory? {
        try store.query("SELECT * FROM inventory WHERE key = \(key.description)").first.flatMap { try inventory($0) }
    }

    public func inventories() throws -> [StoredInventory] {
        try store.query("SELECT * FROM inventory ORDER BY key COLLATE \"C\"").compactMap { try inventory($0) }
    }

    public func inventoryCount() throws -> Int { try count("SELECT count(*) FROM inventory") }

    public func imagesByInventory() throws -> [String: [String]] {
        var out: [String: [String]] = [:]
        for row in try store.query("SELECT path, inventory FROM inventory_image ORDER BY path COLLATE \"C\"") {
            let (path, inv) = try row.decode((String, String).self)
            out[inv, default: []].append(path)
        }
        return out
    }

    public func inventoryKey(path: String, fingerprint: WardenCore.Digest?) throws -> String? {
        if let row = try store.query("SELECT inventory FROM inventory_image WHERE path = \(path)").first { return try row.decode(String.self) }
        if let fp = fingerprint?.description, !(try store.query("SELECT 1 FROM inventory WHERE key = \(fp)")).isEmpty { return fp }
        return nil
    }

    // MARK: Assessments

    public func lastAssessmentTime(of key: WardenCore.Digest) throws -> Date? {
        try store.query("SELECT assessed_at FROM assessment WHERE inventory = \(key.description)").first.map { Self.date(try $0.decode(Double.self)) }
    }

    public func withDetails(_ findings: [Finding]) throws -> [Finding] {
        guard !findings.isEmpty else { return findings }
        var details: [String: (String, String?)] = [:]
        for row in try store.query("""
            SELECT a.source, a.id, a.aliases, a.summary FROM advisory a
            JOIN unnest(\(findings.map(\.source))::text[], \(findings.map(\.advisory))::text[]) AS x(s, i) ON a.source = x.s AND a.id = x.i
            """) {
            let (source, id, aliases, summary) = try row.decode((String, String, String, String?).self)
            details[source + "\u{1F}" + id] = (aliases, summary)
        }
        var out = findings
        for i in out.indices {
            if let (aliases, summary) = details[out[i].source + "\u{1F}" + out[i].advisory] {
                out[i].aliases = aliases.isEmpty ? [] : aliases.split(separator: "\u{1F}").map(String.init)
                out[i].summary = summary
            }
        }
        return out
    }

    // MARK: Export

    public func advisoryRecords(after cursor: AdvisoryCursor?, limit: Int) throws -> (records: [AdvisoryRecord], next: AdvisoryCursor?) {
        let n = max(1, min(limit, 5000))
        let rows = try store.query("""
            SELECT pk, source, id, modified, published, withdrawn, aliases, summary, severity, cvss_score, cvss_vector, imported_at
            FROM advisory WHERE (imported_at, pk) > (\(cursor?.importedAt ?? -Double.greatestFiniteMagnitude), \(cursor?.pk ?? -1))
            ORDER BY imported_at, pk LIMIT \(n)
            """)
        guard let last = rows.last else { return ([], nil) }
        var pks: [Int64] = []
        for r in rows { pks.append(try Cells(r, "advisory", location).get("pk")) }
        var affected: [Int64: [(ecosystem: String, package: String, status: String, severity: Int?, ranges: String, versions: String)]] = [:]
        // `ord` is each entry's place in its record, so the record is rebuilt in its order.
        for r in try store.query("""
            SELECT advisory, ecosystem, package, status, severity, ranges, versions FROM advisory_affected
            WHERE advisory = ANY(\(pks)::bigint[]) ORDER BY advisory, ord
            """) {
            let (adv, eco, pkg, status, sev, ranges, versions) = try r.decode((Int64, String, String, String, Int32?, String, String).self)
            affected[adv, default: []].append((eco, pkg, status, sev.map(Int.init), ranges, versions))
        }
        let records = try rows.map { r in
            let c = Cells(r, "advisory", location)
            return AdvisoryCoding.record(source: try c.get("source"), id: try c.get("id"), modified: try c.optional("modified"),
                                         published: try c.optional("published"), withdrawn: try c.optional("withdrawn"),
                                         aliases: try c.get("aliases"), summary: try c.optional("summary"),
                                         severity: Int(try c.get("severity", Int32.self)), cvssScore: try c.optional("cvss_score"),
                                         cvssVector: try c.optional("cvss_vector"), affected: affected[try c.get("pk")] ?? [])
        }
        let lc = Cells(last, "advisory", location)
        return (records, AdvisoryCursor(importedAt: try lc.get("imported_at"), pk: try lc.get("pk")))
    }

    // MARK: The ledger beside it

    public func vms(withContents contents: [String: [String]]) throws -> [String: [AffectedVM]] {
        guard !contents.isEmpty else { return [:] }
        let rows = try store.query("""
            SELECT d.vm, v.name, d.path, d.idx, d.fingerprint FROM disks d JOIN vms v ON v.id = d.vm
            WHERE d.fingerprint = ANY(\(Array(contents.keys))::text[]) OR d.path = ANY(\(Array(Set(contents.values.joined())))::text[])
            """).map { row in
            let (vm, name, path, idx, fp) = try row.decode((String, String, String, Int32, String?).self)
            return AffectedVM.DiskRow(vm: vm, name: name, path: path, index: Int(idx), fingerprint: fp)
        }
        return AffectedVM.pick(rows, for: contents)
    }
}
