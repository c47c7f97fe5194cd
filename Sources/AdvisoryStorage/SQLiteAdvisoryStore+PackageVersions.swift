import Foundation
import GRDB
import WardenCore
import Advisories

/// Package versions, their findings and the index to the inventories holding them (SQLite).
extension SQLiteAdvisoryStore {
    static func packageVersion(_ r: Row) -> PackageVersion {
        PackageVersion(id: r[0], release: r[1], package: MatchPackage(name: r[2], version: r[3], sourceName: r[4], sourceVersion: r[5]),
                       findingsHash: r[6], vulnerable: r[7])
    }
    static let packageVersionColumns = "id, release, name, version, source_name, source_version, findings_hash, vulnerable"

    /// Runs `body` over `ids` in chunks small enough for one statement's parameters.
    static func chunked<T>(_ ids: [T], _ body: ([T]) throws -> Void) rethrows {
        var start = 0
        while start < ids.count {
            try body(Array(ids[start..<min(start + packageChunk, ids.count)]))
            start += packageChunk
        }
    }
    static func marks(_ n: Int) -> String { Array(repeating: "?", count: n).joined(separator: ",") }

    public func indexMissingPackageSets() throws -> Int {
        try database.write { db in
            let rows = try InventoryRow.fetchAll(db, sql: """
                SELECT * FROM inventory WHERE NOT EXISTS (SELECT 1 FROM inventory_package_set s WHERE s.inventory = inventory.key)
                ORDER BY key
                """)
            var ids = PackageVersionIDs()
            for r in rows {
                try Self.storePackageSet(db, inventory: r.key, release: PackageVersion.release(osID: r.osId, versionID: r.versionId),
                                         packages: AdvisoryCoding.decodePackages(r.packages), ids: &ids)
            }
            return rows.count
        }
    }

    public func packageVersionReleases() throws -> [String] {
        try database.read { db in try String.fetchAll(db, sql: "SELECT DISTINCT release FROM inventory_package_set ORDER BY release") }
    }

    public func packageVersions(release: String, names: Set<String>) throws -> [PackageVersion] {
        try database.read { db in
            var out: [PackageVersion] = []
            var seen = Set<Int64>()
            try Self.chunked(names.sorted()) { chunk in
                for column in ["name", "source_name"] {
                    let rows = try Row.fetchCursor(db, sql: """
                        SELECT \(Self.packageVersionColumns) FROM package_version WHERE release = ? AND \(column) IN (\(Self.marks(chunk.count)))
                        """, arguments: StatementArguments([release]) + StatementArguments(chunk))
                    while let r = try rows.next() { if seen.insert(r[0]).inserted { out.append(Self.packageVersion(r)) } }
                }
            }
            return out
        }
    }

    public func packageVersions(unassessedOnly: Bool) throws -> [PackageVersion] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT \(Self.packageVersionColumns) FROM package_version"
                             + (unassessedOnly ? " WHERE assessed_at IS NULL" : "") + " ORDER BY id").map(Self.packageVersion)
        }
    }

    public func packageVersions(ids: [Int64]) throws -> [PackageVersion] {
        try database.read { db in
            var out: [PackageVersion] = []
            try Self.chunked(ids) { chunk in
                out += try Row.fetchAll(db, sql: "SELECT \(Self.packageVersionColumns) FROM package_version WHERE id IN (\(Self.marks(chunk.count)))",
                                        arguments: StatementArguments(chunk)).map(Self.packageVersion)
            }
            return out
        }
    }

    public func packageVersionFindings(_ ids: [Int64]) throws -> [Int64: (hash: String, findings: Data)] {
        try database.read { db in
            var out: [Int64: (hash: String, findings: Data)] = [:]
            try Self.chunked(ids) { chunk in
                let rows = try Row.fetchCursor(db, sql: """
                    SELECT id, findings_hash, findings FROM package_version
                    WHERE findings IS NOT NULL AND findings_hash IS NOT NULL AND id IN (\(Self.marks(chunk.count)))
                    """, arguments: StatementArguments(chunk))
                while let r = try rows.next() { out[r[0]] = (r[1], r[2]) }
            }
            return out
        }
    }

    public func inventories(holding ids: [Int64]) throws -> [Int64: [String]] {
        try database.read { db in
            var keyOf: [Int64: String] = [:]
            var out: [Int64: [String]] = [:]
            let sets = try db.cachedStatement(sql: "SELECT package_set FROM package_inventory WHERE package_version = ?")
            let keys = try db.cachedStatement(sql: "SELECT inventory FROM inventory_package_set WHERE id = ?")
            for id in Set(ids).sorted() {
                var list: [String] = []
                for set in try Int64.fetchAll(sets, arguments: [id]) {
                    if keyOf[set] == nil { keyOf[set] = try String.fetchOne(keys, arguments: [set]) ?? "" }
                    if let k = keyOf[set], !k.isEmpty { list.append(k) }
                }
                if !list.isEmpty { out[id] = list }
            }
            return out
        }
    }

    public func packageVersionIDs(of key: String) throws -> [Int64]? {
        try database.read { db in
            try Data.fetchOne(db, sql: "SELECT package_versions FROM inventory_package_set WHERE inventory = ?", arguments: [key])
                .map(PackageVersionCoding.decode)
        }
    }

    public func unassessedInventories() throws -> [(key: String, release: String, packageVersions: [Int64])] {
        try database.read { db in
            try Row.fetchAll(db, sql: """
                SELECT inventory, release, package_versions FROM inventory_package_set s
                WHERE NOT EXISTS (SELECT 1 FROM assessment a WHERE a.inventory = s.inventory) ORDER BY inventory
                """).map { ($0[0], $0[1], PackageVersionCoding.decode($0[2])) }
        }
    }

    public func assessedVulnerable(_ keys: [String]) throws -> [String: Int] {
        try database.read { db in
            var out: [String: Int] = [:]
            try Self.chunked(keys) { chunk in
                for r in try Row.fetchAll(db, sql: "SELECT inventory, vulnerable FROM assessment WHERE inventory IN (\(Self.marks(chunk.count)))",
                                          arguments: StatementArguments(chunk)) { out[r[0]] = r[1] }
            }
            return out
        }
    }

    public func totalVulnerable() throws -> Int {
        try database.read { db in try Int.fetchOne(db, sql: "SELECT coalesce(sum(vulnerable), 0) FROM assessment") ?? 0 }
    }

    public func inventoryKeys(releases: [String]) throws -> [String] {
        guard !releases.isEmpty else { return [] }
        return try database.read { db in
            try String.fetchAll(db, sql: "SELECT inventory FROM inventory_package_set WHERE release IN (\(Self.marks(releases.count))) ORDER BY inventory",
                                arguments: StatementArguments(releases))
        }
    }

    public func pendingAdvisoryChanges() throws -> PendingAdvisoryChanges {
        try database.read { db in
            let done = try Int64.fetchOne(db, sql: "SELECT through FROM rescan_state WHERE id = 1") ?? 0
            var keys: [String: Set<String>] = [:]
            var through = done
            var since: Double?
            let rows = try Row.fetchCursor(db, sql: "SELECT seq, ecosystem, package, at FROM advisory_change WHERE seq > ? ORDER BY seq", arguments: [done])
            while let r = try rows.next() {
                through = r[0]
                keys[r[1], default: []].insert(r[2])
                if since == nil { since = r[3] }
            }
            return PendingAdvisoryChanges(through: through, keys: keys, since: since.map(Date.init(timeIntervalSince1970:)))
        }
    }

    public func saveRescan(packageVersions: [PackageVersionWrite], inventories: [InventoryAssessmentWrite], through: Int64?,
                           redateAll: Bool, basis: [PackageVersionBasis], at now: Date) throws {
        let t = now.timeIntervalSince1970
        try database.write { db in
            // BEGIN IMMEDIATE: no other writer between this check and the writes.
            var stored: [(id: Int64, hash: String?)] = []
            try Self.chunked(Array(Set(basis.map(\.id)))) { chunk in
                let rows = try Row.fetchCursor(db, sql: "SELECT id, findings_hash FROM package_version WHERE id IN (\(Self.marks(chunk.count)))",
                                               arguments: StatementArguments(chunk))
                while let r = try rows.next() { stored.append((r[0], r[1])) }
            }
            try PackageVersionBasis.verify(basis, stored: stored)
            let pv = try db.cachedStatement(sql: "UPDATE package_version SET findings = ?, findings_hash = ?, vulnerable = ?, assessed_at = ? WHERE id = ?")
            for w in packageVersions { try pv.execute(arguments: [w.findings, w.findingsHash, w.vulnerable, t, w.id]) }
            if redateAll { try db.execute(sql: "UPDATE assessment SET assessed_at = ?", arguments: [t]) }
            let set = try db.cachedStatement(sql: """
                INSERT INTO assessment (inventory, assessed_at, vulnerable) VALUES (?, ?, ?)
                ON CONFLICT (inventory) DO UPDATE SET assessed_at = excluded.assessed_at, vulnerable = excluded.vulnerable
                """)
            let add = try db.cachedStatement(sql: "UPDATE assessment SET assessed_at = ?, vulnerable = max(0, vulnerable + ?) WHERE inventory = ?")
            for w in inventories {
                if w.relative { try add.execute(arguments: [w.assessedAt.timeIntervalSince1970, w.vulnerable, w.inventory]) }
                else { try set.execute(arguments: [w.inventory, w.assessedAt.timeIntervalSince1970, w.vulnerable]) }
            }
            if let through {
                try db.execute(sql: """
                    INSERT INTO rescan_state (id, through, at) VALUES (1, ?, ?)
                    ON CONFLICT (id) DO UPDATE SET through = max(through, excluded.through), at = excluded.at
                    """, arguments: [through, t])
                try db.execute(sql: "DELETE FROM advisory_change WHERE seq <= ?", arguments: [through])
            }
        }
    }
}
