import Advisories
import AdvisoryStorage
import Foundation
import NIOCore
import NIOFoundationCompat
import PostgresNIO
import WardenCore

/// Package versions, their findings and the index to the inventories holding them
/// (PostgreSQL): the same rows as the SQLite store, written with `unnest` batches.
extension PostgresAdvisoryStore {
    static let packageVersionColumns = "id, release, name, version, source_name, source_version, findings_hash, vulnerable"

    func packageVersion(_ row: PostgresRow) throws -> PackageVersion {
        let (id, release, name, version, sname, sversion, hash, vulnerable) =
            try row.decode((Int64, String, String, String, String, String, String?, Int32).self)
        return PackageVersion(id: id, release: release, package: MatchPackage(name: name, version: version, sourceName: sname, sourceVersion: sversion),
                              findingsHash: hash, vulnerable: Int(vulnerable))
    }

    /// Records each inventory's package versions (creating new ones) and the index from each
    /// version to the inventories holding it; a changed set drops the inventory's assessment.
    /// Runs inside the caller's transaction.
    func storePackageSets(_ items: [(key: String, release: String, packages: [MatchPackage])]) throws {
        guard !items.isEmpty else { return }
        struct Key: Hashable { var release: String; var package: MatchPackage }
        var distinct: [Key] = []
        var seen = Set<Key>()
        for i in items { for p in i.packages { let k = Key(release: i.release, package: p); if seen.insert(k).inserted { distinct.append(k) } } }
        var idOf: [Key: Int64] = [:]
        if !distinct.isEmpty {
            let r = distinct.map(\.release), n = distinct.map(\.package.name), v = distinct.map(\.package.version)
            let sn = distinct.map(\.package.sourceName), sv = distinct.map(\.package.sourceVersion)
            try store.query("""
                INSERT INTO package_version (release, name, version, source_name, source_version)
                SELECT * FROM unnest(\(r)::text[], \(n)::text[], \(v)::text[], \(sn)::text[], \(sv)::text[])
                ON CONFLICT DO NOTHING
                """)
            for row in try store.query("""
                SELECT p.id, p.release, p.name, p.version, p.source_name, p.source_version FROM package_version p
                JOIN unnest(\(r)::text[], \(n)::text[], \(v)::text[], \(sn)::text[], \(sv)::text[]) AS x(r, n, v, sn, sv)
                  ON p.release = x.r AND p.name = x.n AND p.version = x.v AND p.source_name = x.sn AND p.source_version = x.sv
                """) {
                let (id, release, name, version, sname, sversion) = try row.decode((Int64, String, String, String, String, String).self)
                idOf[Key(release: release, package: MatchPackage(name: name, version: version, sourceName: sname, sourceVersion: sversion))] = id
            }
        }
        var existing: [String: (id: Int64, release: String, blob: Data)] = [:]
        for row in try store.query("""
            SELECT id, inventory, release, package_versions FROM inventory_package_set WHERE inventory = ANY(\(items.map(\.key))::text[])
            """) {
            let (id, key, release, blob) = try row.decode((Int64, String, String, ByteBuffer).self)
            existing[key] = (id, release, Data(buffer: blob))
        }
        var unlinkPV: [Int64] = [], unlinkSet: [Int64] = [], linkPV: [Int64] = [], linkSet: [Int64] = []
        var dropAssessments: [String] = []
        for i in items {
            var list: [Int64] = []
            var inSet = Set<Int64>()
            for p in i.packages {
                guard let id = idOf[Key(release: i.release, package: p)] else { throw WardenError(.internal, "package version has no id after insert") }
                if inSet.insert(id).inserted { list.append(id) }
            }
            let blob = PackageVersionCoding.encode(list)
            let setID: Int64
            if let old = existing[i.key] {
                if old.blob == blob && old.release == i.release { continue }
                for v in PackageVersionCoding.decode(old.blob) { unlinkPV.append(v); unlinkSet.append(old.id) }
                try store.query("UPDATE inventory_package_set SET release = \(i.release), package_versions = \(ByteBuffer(data: blob)) WHERE id = \(old.id)")
                dropAssessments.append(i.key)
                setID = old.id
            } else {
                guard let row = try store.query("""
                    INSERT INTO inventory_package_set (inventory, release, package_versions) VALUES (\(i.key), \(i.release), \(ByteBuffer(data: blob)))
                    RETURNING id
                    """).first else { throw WardenError(.internal, "package set has no id after insert") }
                setID = try row.decode(Int64.self)
            }
            existing[i.key] = (setID, i.release, blob)
            for v in list { linkPV.append(v); linkSet.append(setID) }
        }
        if !unlinkPV.isEmpty {
            try store.query("""
                DELETE FROM package_inventory p USING unnest(\(unlinkPV)::bigint[], \(unlinkSet)::bigint[]) AS x(v, s)
                WHERE p.package_version = x.v AND p.package_set = x.s
                """)
        }
        if !dropAssessments.isEmpty { try store.query("DELETE FROM assessment WHERE inventory = ANY(\(dropAssessments)::text[])") }
        if !linkPV.isEmpty {
            try store.query("""
                INSERT INTO package_inventory (package_version, package_set)
                SELECT * FROM unnest(\(linkPV)::bigint[], \(linkSet)::bigint[]) ON CONFLICT DO NOTHING
                """)
        }
    }

    public func indexMissingPackageSets() throws -> Int {
        try store.transaction {
            let rows = try store.query("""
                SELECT * FROM inventory i WHERE NOT EXISTS (SELECT 1 FROM inventory_package_set s WHERE s.inventory = i.key)
                ORDER BY key COLLATE "C"
                """)
            var items: [(key: String, release: String, packages: [MatchPackage])] = []
            for r in rows {
                let c = Cells(r, "inventory", location)
                let packages: ByteBuffer = try c.get("packages")
                items.append((try c.get("key"), PackageVersion.release(osID: try c.optional("os_id"), versionID: try c.optional("version_id")),
                              AdvisoryCoding.decodePackages(Data(buffer: packages))))
            }
            try storePackageSets(items)
            return items.count
        }
    }

    public func packageVersionReleases() throws -> [String] {
        try store.query("SELECT release FROM inventory_package_set GROUP BY release ORDER BY release COLLATE \"C\"").map { try $0.decode(String.self) }
    }

    public func packageVersions(release: String, names: Set<String>) throws -> [PackageVersion] {
        let list = names.sorted()
        return try store.query("""
            SELECT \(unescaped: Self.packageVersionColumns) FROM package_version
            WHERE release = \(release) AND (name = ANY(\(list)::text[]) OR source_name = ANY(\(list)::text[])) ORDER BY id
            """).map(packageVersion)
    }

    public func packageVersions(unassessedOnly: Bool) throws -> [PackageVersion] {
        try store.query(unassessedOnly
            ? "SELECT \(unescaped: Self.packageVersionColumns) FROM package_version WHERE assessed_at IS NULL ORDER BY id"
            : "SELECT \(unescaped: Self.packageVersionColumns) FROM package_version ORDER BY id").map(packageVersion)
    }

    public func packageVersions(ids: [Int64]) throws -> [PackageVersion] {
        guard !ids.isEmpty else { return [] }
        return try store.query("SELECT \(unescaped: Self.packageVersionColumns) FROM package_version WHERE id = ANY(\(ids)::bigint[]) ORDER BY id")
            .map(packageVersion)
    }

    public func packageVersionFindings(_ ids: [Int64]) throws -> [Int64: (hash: String, findings: Data)] {
        guard !ids.isEmpty else { return [:] }
        var out: [Int64: (hash: String, findings: Data)] = [:]
        for row in try store.query("""
            SELECT id, findings_hash, findings FROM package_version
            WHERE findings IS NOT NULL AND findings_hash IS NOT NULL AND id = ANY(\(ids)::bigint[])
            """) {
            let (id, hash, blob) = try row.decode((Int64, String, ByteBuffer).self)
            out[id] = (hash, Data(buffer: blob))
        }
        return out
    }

    public func inventories(holding ids: [Int64]) throws -> [Int64: [String]] {
        guard !ids.isEmpty else { return [:] }
        var out: [Int64: [String]] = [:]
        for row in try store.query("""
            SELECT p.package_version, s.inventory FROM package_inventory p JOIN inventory_package_set s ON s.id = p.package_set
            WHERE p.package_version = ANY(\(Array(Set(ids)))::bigint[]) ORDER BY p.package_version, s.inventory COLLATE "C"
            """) {
            let (id, key) = try row.decode((Int64, String).self)
            out[id, default: []].append(key)
        }
        return out
    }

    public func packageVersionIDs(of key: String) throws -> [Int64]? {
        try store.query("SELECT package_versions FROM inventory_package_set WHERE inventory = \(key)").first
            .map { PackageVersionCoding.decode(Data(buffer: try $0.decode(ByteBuffer.self))) }
    }

    public func unassessedInventories() throws -> [(key: String, release: String, packageVersions: [Int64])] {
        try store.query("""
            SELECT inventory, release, package_versions FROM inventory_package_set s
            WHERE NOT EXISTS (SELECT 1 FROM assessment a WHERE a.inventory = s.inventory) ORDER BY inventory COLLATE "C"
            """).map { row in
            let (key, release, blob) = try row.decode((String, String, ByteBuffer).self)
            return (key, release, PackageVersionCoding.decode(Data(buffer: blob)))
        }
    }

    public func assessedVulnerable(_ keys: [String]) throws -> [String: Int] {
        guard !keys.isEmpty else { return [:] }
        var out: [String: Int] = [:]
        for row in try store.query("SELECT inventory, vulnerable FROM assessment WHERE inventory = ANY(\(keys)::text[])") {
            let (key, n) = try row.decode((String, Int32).self)
            out[key] = Int(n)
        }
        return out
    }

    public func totalVulnerable() throws -> Int {
        try count("SELECT coalesce(sum(vulnerable), 0)::bigint FROM assessment")
    }

    public func inventoryKeys(releases: [String]) throws -> [String] {
        guard !releases.isEmpty else { return [] }
        return try store.query("""
            SELECT inventory FROM inventory_package_set WHERE release = ANY(\(releases)::text[]) ORDER BY inventory COLLATE "C"
            """).map { try $0.decode(String.self) }
    }

    public func pendingAdvisoryChanges() throws -> PendingAdvisoryChanges {
        let done = try store.query("SELECT through FROM rescan_state WHERE id = 1").first.map { try $0.decode(Int64.self) } ?? 0
        var keys: [String: Set<String>] = [:]
        var through = done
        var since: Double?
        for row in try store.query("SELECT seq, ecosystem, package, at FROM advisory_change WHERE seq > \(done) ORDER BY seq") {
            let (seq, eco, pkg, at) = try row.decode((Int64, String, String, Double).self)
            through = seq
            keys[eco, default: []].insert(pkg)
            if since == nil { since = at }
        }
        return PendingAdvisoryChanges(through: through, keys: keys, since: since.map(Self.date))
    }

    public func saveRescan(packageVersions: [PackageVersionWrite], inventories: [InventoryAssessmentWrite], through: Int64?,
                           redateAll: Bool, basis: [PackageVersionBasis], at now: Date) throws {
        let t = Self.seconds(now)
        try store.transaction {
            // Locked in id order (two savers never wait on each other crosswise) and compared:
            // a saver that waited here sees the hashes the other one committed.
            if !basis.isEmpty {
                let stored = try store.query("""
                    SELECT id, findings_hash FROM package_version WHERE id = ANY(\(Array(Set(basis.map(\.id))))::bigint[]) ORDER BY id FOR UPDATE
                    """).map { row -> (id: Int64, hash: String?) in try row.decode((Int64, String?).self) }
                try PackageVersionBasis.verify(basis, stored: stored)
            }
            if !packageVersions.isEmpty {
                let ws = packageVersions
                try store.query("""
                    UPDATE package_version p SET findings = x.f, findings_hash = x.h, vulnerable = x.v, assessed_at = \(t)::double precision
                    FROM unnest(\(ws.map(\.id))::bigint[], \(ws.map { ByteBuffer(data: $0.findings) })::bytea[], \(ws.map(\.findingsHash))::text[],
                                \(ws.map(\.vulnerable))::integer[]) AS x(i, f, h, v)
                    WHERE p.id = x.i
                    """)
            }
            if redateAll { try store.query("UPDATE assessment SET assessed_at = \(t)") }
            // The last write for an inventory wins.
            var last: [String: Int] = [:]
            for (i, w) in inventories.enumerated() { last[w.inventory] = i }
            let ws = last.values.sorted().map { inventories[$0] }
            let absolute = ws.filter { !$0.relative }, relative = ws.filter(\.relative)
            if !absolute.isEmpty {
                try store.query("""
                    INSERT INTO assessment (inventory, assessed_at, vulnerable)
                    SELECT * FROM unnest(\(absolute.map(\.inventory))::text[], \(absolute.map { Self.seconds($0.assessedAt) })::float8[],
                                         \(absolute.map(\.vulnerable))::integer[])
                    ON CONFLICT (inventory) DO UPDATE SET assessed_at = EXCLUDED.assessed_at, vulnerable = EXCLUDED.vulnerable
                    """)
            }
            if !relative.isEmpty {
                try store.query("""
                    UPDATE assessment a SET assessed_at = x.t, vulnerable = greatest(0, a.vulnerable + x.d)
                    FROM unnest(\(relative.map(\.inventory))::text[], \(relative.map { Self.seconds($0.assessedAt) })::float8[],
                                \(relative.map(\.vulnerable))::integer[]) AS x(i, t, d)
                    WHERE a.inventory = x.i
                    """)
            }
            if let through {
                try store.query("""
                    INSERT INTO rescan_state (id, through, at) VALUES (1, \(through), \(t))
                    ON CONFLICT (id) DO UPDATE SET through = greatest(rescan_state.through, EXCLUDED.through), at = EXCLUDED.at
                    """)
                try store.query("DELETE FROM advisory_change WHERE seq <= \(through)")
            }
        }
    }
}
