import Foundation
import GRDB
import Ledger
import NIOCore
import NIOFoundationCompat
import PostgresNIO
import Storage
import WardenCore

/// Copies a SQLite ledger, as it is, into an empty PostgreSQL ledger: every table row for row,
/// the events with their sequence numbers and leaf hashes, the stored subtrees and the signed
/// checkpoints, so `ledger verify --database` checks the same log. What a one-machine
/// `warden serve` on SQLite needs to move to PostgreSQL (`warden ledger copy`).
public enum PostgresImport {
    public struct Counts: Codable, Sendable { public var vms = 0, labels = 0, disks = 0, hosts = 0, residency = 0, snapshots = 0, events = 0, nodes = 0, checkpoints = 0 }

    static let batch = 5000

    public static func copy(from source: WardenDatabase, to ledger: PostgresLedger, progress: ((String, Int) -> Void)? = nil) throws -> Counts {
        let pg = ledger.store
        guard try ledger.eventCount() == 0, try ledger.listVMs().isEmpty else {
            throw WardenError(.conflict, "the PostgreSQL ledger is not empty; copy into a new database", file: pg.location)
        }
        var counts = Counts()
        func pages(_ sql: String, _ each: ([Row]) throws -> Void) throws -> Int {
            var offset = 0
            while true {
                let rows = try source.read { db in try Row.fetchAll(db, sql: sql + " LIMIT \(batch) OFFSET \(offset)") }
                if rows.isEmpty { return offset }
                try each(rows)
                offset += rows.count
                progress?(sql, offset)
            }
        }
        /// Keyset pages for tables with an integer key (`k` in the SELECT): no OFFSET scans.
        func keyed(_ select: String, from table: String, key: String, _ each: ([Row]) throws -> Void) throws -> Int {
            var last = Int64.min, total = 0
            while true {
                let rows = try source.read { db in
                    try Row.fetchAll(db, sql: "SELECT \(key) AS k, \(select) FROM \(table) WHERE \(key) > ? ORDER BY \(key) LIMIT \(batch)", arguments: [last])
                }
                guard let end = rows.last else { return total }
                try each(rows)
                last = end["k"]
                total += rows.count
                progress?(table, total)
            }
        }
        func opt(_ r: Row, _ c: String) -> String { (r[c] as String?) ?? "" }
        try pg.transaction {
            // Parents first: a VM row is inserted after its parent's, so rowid order has them first.
            counts.vms = try keyed("*", from: "vms", key: "rowid") { rows in
                try pg.query("""
                    INSERT INTO vms (id, name, owner, state, generation, parent, parent_generation, created_us, updated_us, mac, family)
                    SELECT i, n, o, s, g, NULLIF(p, ''), NULLIF(pg, ''), c, u, NULLIF(m, ''), coalesce(NULLIF(f, ''), i)
                    FROM unnest(\(rows.map { $0["id"] as String })::text[], \(rows.map { $0["name"] as String })::text[],
                                \(rows.map { $0["owner"] as String })::text[], \(rows.map { $0["state"] as String })::text[],
                                \(rows.map { $0["generation"] as String })::text[], \(rows.map { opt($0, "parent") })::text[],
                                \(rows.map { opt($0, "parent_generation") })::text[], \(rows.map { $0["created_us"] as Int64 })::bigint[],
                                \(rows.map { $0["updated_us"] as Int64 })::bigint[], \(rows.map { opt($0, "mac") })::text[],
                                \(rows.map { opt($0, "family") })::text[])
                         AS t(i, n, o, s, g, p, pg, c, u, m, f)
                    """)
            }
            counts.labels = try pages("SELECT vm, key, value FROM vm_labels ORDER BY vm, key") { rows in
                try pg.query("""
                    INSERT INTO vm_labels (vm, key, value) SELECT * FROM unnest(\(rows.map { $0[0] as String })::text[],
                        \(rows.map { $0[1] as String })::text[], \(rows.map { $0[2] as String })::text[])
                    """)
            }
            // The one-live-VM-per-disk trigger checks new registrations; a copy keeps what was.
            try pg.query("ALTER TABLE disks DISABLE TRIGGER disks_one_live_vm")
            counts.disks = try pages("SELECT * FROM disks ORDER BY vm, idx") { rows in
                try pg.query("""
                    INSERT INTO disks (vm, idx, path, format, backing_chain, fingerprint, device, inode)
                    SELECT v, i, p, f, b, NULLIF(fp, ''), NULLIF(d, -1), NULLIF(n, -1)
                    FROM unnest(\(rows.map { $0["vm"] as String })::text[], \(rows.map { Int64($0["idx"] as Int) })::bigint[],
                                \(rows.map { $0["path"] as String })::text[], \(rows.map { $0["format"] as String })::text[],
                                \(rows.map { $0["backing_chain"] as String })::text[], \(rows.map { opt($0, "fingerprint") })::text[],
                                \(rows.map { ($0["device"] as Int64?) ?? -1 })::bigint[], \(rows.map { ($0["inode"] as Int64?) ?? -1 })::bigint[])
                         AS t(v, i, p, f, b, fp, d, n)
                    """)
            }
            try pg.query("ALTER TABLE disks ENABLE TRIGGER disks_one_live_vm")
            counts.hosts = try pages("SELECT name, labels, public_key, added_us FROM hosts ORDER BY name") { rows in
                for r in rows {
                    try pg.query("""
                        INSERT INTO hosts (name, labels, public_key, added_us)
                        VALUES (\(r[0] as String), \(r[1] as String), \(r[2] as Data?), \(r[3] as Int64))
                        """)
                }
            }
            counts.residency = try keyed("vm, host, kind, from_us, to_us", from: "residency", key: "id") { rows in
                try pg.query("""
                    INSERT INTO residency (vm, host, kind, from_us, to_us)
                    SELECT v, h, k, f, NULLIF(t, -1) FROM unnest(\(rows.map { $0[1] as String })::text[], \(rows.map { $0[2] as String })::text[],
                        \(rows.map { $0[3] as String })::text[], \(rows.map { $0[4] as Int64 })::bigint[], \(rows.map { ($0[5] as Int64?) ?? -1 })::bigint[])
                        AS x(v, h, k, f, t)
                    """)
            }
            counts.snapshots = try keyed("vm, name, generation, created_us, inventory_key", from: "snapshots", key: "id") { rows in
                try pg.query("""
                    INSERT INTO snapshots (vm, name, generation, created_us, inventory_key)
                    SELECT v, n, g, c, NULLIF(k, '') FROM unnest(\(rows.map { $0[1] as String })::text[], \(rows.map { $0[2] as String })::text[],
                        \(rows.map { $0[3] as String })::text[], \(rows.map { $0[4] as Int64 })::bigint[], \(rows.map { ($0[5] as String?) ?? "" })::text[])
                        AS x(v, n, g, c, k)
                    """)
            }
            counts.events = try keyed("seq, kind, vm, actor, host, time_us, generation_before, generation_after, payload, reported, leaf_hash", from: "events", key: "seq") { rows in
                try pg.query("""
                    INSERT INTO events (seq, kind, vm, actor, host, time_us, generation_before, generation_after, payload, reported, leaf_hash)
                    SELECT s, k, NULLIF(v, ''), a, h, t, NULLIF(gb, ''), NULLIF(ga, ''), p, r, l
                    FROM unnest(\(rows.map { $0[1] as Int64 })::bigint[], \(rows.map { $0[2] as String })::text[], \(rows.map { ($0[3] as String?) ?? "" })::text[],
                                \(rows.map { $0[4] as String })::text[], \(rows.map { $0[5] as String })::text[], \(rows.map { $0[6] as Int64 })::bigint[],
                                \(rows.map { ($0[7] as String?) ?? "" })::text[], \(rows.map { ($0[8] as String?) ?? "" })::text[],
                                \(rows.map { $0[9] as String })::text[], \(rows.map { ($0[10] as Int64) != 0 })::boolean[],
                                \(rows.map { ByteBuffer(data: $0[11] as Data) })::bytea[]) AS x(s, k, v, a, h, t, gb, ga, p, r, l)
                    """)
            }
            counts.nodes = try pages("SELECT level, idx, hash FROM merkle_nodes ORDER BY level, idx") { rows in
                try pg.query("""
                    INSERT INTO merkle_nodes (level, idx, hash) SELECT * FROM unnest(\(rows.map { Int64($0[0] as Int) })::bigint[],
                        \(rows.map { $0[1] as Int64 })::bigint[], \(rows.map { ByteBuffer(data: $0[2] as Data) })::bytea[])
                    """)
            }
            counts.checkpoints = try keyed("tree_size, root, time_us, host, signature", from: "checkpoints", key: "id") { rows in
                for r in rows {
                    try pg.query("""
                        INSERT INTO checkpoints (tree_size, root, time_us, host, signature)
                        VALUES (\(r[1] as Int64), \(r[2] as Data), \(r[3] as Int64), \(r[4] as String), \(r[5] as Data))
                        """)
                }
            }
        }
        // Statistics for the planner, and the visibility map, so that index-only scans (the
        // family index exposure and lineage read) do not fetch every row from the heap.
        try pg.query("VACUUM (ANALYZE)")
        return counts
    }
}
