import Foundation
import PostgresNIO
import WardenCore
import Ledger

/// The PostgreSQL schema as named, append-only migrations (the same rule as the SQLite
/// schema in Storage: never edit a merged one; add a new one at the end).
///
/// Column conventions follow the SQLite ledger (docs/ledger.md): ids are lower-case UUID text,
/// times are BIGINT microseconds since the Unix epoch, label maps and payloads are the exact
/// JSON text that was hashed into the Merkle leaf (TEXT, not JSONB: the bytes must survive).
enum PostgresMigrations {
    struct Migration: Sendable {
        let name: String
        let statements: [String]
    }

    /// Advisory-lock keys (one namespace: small constants; per-row keys are hashes).
    enum LockKey {
        static let migrations: Int64 = 0x5741_5244_454E_0001   // "WARDEN" + 1
        static let log: Int64 = 0x5741_5244_454E_0002
        static let writers: Int64 = 0x5741_5244_454E_0003
    }

    static let all: [Migration] = [
        Migration(name: "pg-ledger-1", statements: [
            """
            CREATE TABLE vms (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                owner TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('registered','discovered','stopped','running','retired')),
                generation TEXT NOT NULL,
                parent TEXT REFERENCES vms(id),
                parent_generation TEXT,
                created_us BIGINT NOT NULL,
                updated_us BIGINT NOT NULL,
                mac TEXT,
                seq BIGSERIAL NOT NULL
            )
            """,
            "CREATE INDEX vms_by_name ON vms(name)",
            "CREATE INDEX vms_by_owner ON vms(owner)",
            "CREATE INDEX vms_by_parent_cover ON vms(parent, created_us, id)",
            """
            CREATE TABLE vm_labels (
                vm TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                PRIMARY KEY (vm, key)
            )
            """,
            "CREATE INDEX vm_labels_by_key ON vm_labels(key, value)",
            """
            CREATE TABLE disks (
                vm TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
                idx INTEGER NOT NULL CHECK (idx >= 0),
                path TEXT NOT NULL,
                format TEXT NOT NULL,
                backing_chain TEXT NOT NULL DEFAULT '[]',
                fingerprint TEXT,
                device BIGINT,
                inode BIGINT,
                PRIMARY KEY (vm, idx)
            )
            """,
            "CREATE INDEX disks_by_fingerprint ON disks(fingerprint)",
            "CREATE INDEX disks_by_path ON disks(path)",
            "CREATE INDEX disks_by_file ON disks(device, inode) WHERE device IS NOT NULL",
            // One live VM per disk file, enforced by the database. Concurrent inserts of the
            // same path or file serialise on a transaction-level advisory lock taken before
            // the check, so two transactions cannot both pass it (READ COMMITTED gives each
            // statement in the function a fresh snapshot, taken after the lock).
            """
            CREATE FUNCTION warden_disk_one_live_vm() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_xact_lock(hashtextextended('disk-path:' || NEW.path, 0));
                IF NEW.device IS NOT NULL THEN
                    PERFORM pg_advisory_xact_lock(hashtextextended('disk-file:' || NEW.device || ':' || NEW.inode, 0));
                END IF;
                IF EXISTS (
                    SELECT 1 FROM disks d JOIN vms v ON v.id = d.vm
                    WHERE v.state <> 'retired' AND d.vm <> NEW.vm
                      AND (d.path = NEW.path
                           OR (NEW.device IS NOT NULL AND d.device = NEW.device AND d.inode = NEW.inode))
                ) THEN
                    RAISE EXCEPTION 'disk already belongs to a live VM' USING ERRCODE = 'WDN01';
                END IF;
                RETURN NEW;
            END $$
            """,
            "CREATE TRIGGER disks_one_live_vm BEFORE INSERT ON disks FOR EACH ROW EXECUTE FUNCTION warden_disk_one_live_vm()",
            """
            CREATE TABLE hosts (
                name TEXT PRIMARY KEY,
                labels TEXT NOT NULL DEFAULT '{}',
                public_key BYTEA CHECK (public_key IS NULL OR length(public_key) = 32),
                added_us BIGINT NOT NULL
            )
            """,
            """
            CREATE TABLE residency (
                id BIGSERIAL PRIMARY KEY,
                vm TEXT NOT NULL REFERENCES vms(id),
                host TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('ran','stored')),
                from_us BIGINT NOT NULL,
                to_us BIGINT CHECK (to_us IS NULL OR to_us >= from_us)
            )
            """,
            "CREATE INDEX residency_by_host_cover ON residency(host, from_us, to_us, vm, kind)",
            "CREATE INDEX residency_by_vm ON residency(vm, kind, host)",
            """
            CREATE TABLE snapshots (
                id BIGSERIAL PRIMARY KEY,
                vm TEXT NOT NULL REFERENCES vms(id),
                name TEXT NOT NULL,
                generation TEXT NOT NULL,
                created_us BIGINT NOT NULL,
                inventory_key TEXT
            )
            """,
            "CREATE INDEX snapshots_by_vm ON snapshots(vm, created_us)",
            // No foreign key on vm: the log is append-only evidence (as on SQLite).
            """
            CREATE TABLE events (
                seq BIGINT PRIMARY KEY CHECK (seq >= 1),
                kind TEXT NOT NULL,
                vm TEXT,
                actor TEXT NOT NULL,
                host TEXT NOT NULL,
                time_us BIGINT NOT NULL,
                generation_before TEXT,
                generation_after TEXT,
                payload TEXT NOT NULL DEFAULT '{}',
                reported BOOLEAN NOT NULL DEFAULT false,
                leaf_hash BYTEA NOT NULL CHECK (length(leaf_hash) = 32)
            )
            """,
            "CREATE INDEX events_by_vm ON events(vm, seq)",
            "CREATE INDEX events_by_kind ON events(kind, vm)",
            """
            CREATE TABLE merkle_nodes (
                level INTEGER NOT NULL,
                idx BIGINT NOT NULL,
                hash BYTEA NOT NULL CHECK (length(hash) = 32),
                PRIMARY KEY (level, idx)
            )
            """,
            """
            CREATE TABLE checkpoints (
                id BIGSERIAL PRIMARY KEY,
                tree_size BIGINT NOT NULL CHECK (tree_size >= 0),
                root BYTEA NOT NULL CHECK (length(root) = 32),
                time_us BIGINT NOT NULL,
                host TEXT NOT NULL,
                signature BYTEA NOT NULL CHECK (length(signature) = 64)
            )
            """,
            "CREATE INDEX checkpoints_by_size ON checkpoints(tree_size)",
        ]),
        Migration(name: "pg-ledger-2-ingested", statements: [
            "CREATE TABLE ingested (host TEXT NOT NULL, id TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (host, id))",
        ]),
        // The advisory store (the SQLite one's tables, same checks; times are seconds as
        // DOUBLE PRECISION like SQLite's REAL; package lists and finding sets are the same
        // CompactLines bytes).
        Migration(name: "pg-advisories-1", statements: [
            """
            CREATE TABLE advisory_source (
                name TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
                format TEXT NOT NULL CHECK (format IN ('osv', 'debian-tracker', 'alpine-secdb')),
                location TEXT NOT NULL,
                imported_at DOUBLE PRECISION NOT NULL,
                last_seen BIGINT NOT NULL DEFAULT 0 CHECK (last_seen >= 0),
                last_added BIGINT NOT NULL DEFAULT 0 CHECK (last_added >= 0),
                last_replaced BIGINT NOT NULL DEFAULT 0 CHECK (last_replaced >= 0),
                last_unchanged BIGINT NOT NULL DEFAULT 0 CHECK (last_unchanged >= 0),
                last_older BIGINT NOT NULL DEFAULT 0 CHECK (last_older >= 0)
            )
            """,
            """
            CREATE TABLE advisory (
                pk BIGSERIAL PRIMARY KEY,
                source TEXT NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
                id TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
                modified DOUBLE PRECISION,
                published DOUBLE PRECISION,
                withdrawn DOUBLE PRECISION,
                aliases TEXT NOT NULL DEFAULT '',
                summary TEXT,
                severity INTEGER NOT NULL CHECK (severity BETWEEN 0 AND 5),
                cvss_score DOUBLE PRECISION CHECK (cvss_score IS NULL OR cvss_score BETWEEN 0 AND 10),
                cvss_vector TEXT,
                content_hash TEXT NOT NULL,
                imported_at DOUBLE PRECISION NOT NULL,
                UNIQUE (source, id)
            )
            """,
            "CREATE INDEX advisory_by_import ON advisory(imported_at)",
            """
            CREATE TABLE advisory_affected (
                advisory BIGINT NOT NULL REFERENCES advisory(pk) ON DELETE CASCADE,
                ecosystem TEXT NOT NULL CHECK (length(ecosystem) BETWEEN 1 AND 255),
                package TEXT NOT NULL CHECK (length(package) BETWEEN 1 AND 1024),
                status TEXT NOT NULL CHECK (status IN ('affected', 'not-affected')),
                severity INTEGER CHECK (severity IS NULL OR severity BETWEEN 0 AND 5),
                ranges TEXT NOT NULL,
                versions TEXT NOT NULL,
                ord INTEGER NOT NULL DEFAULT 0
            )
            """,
            "CREATE INDEX advisory_affected_by_package ON advisory_affected(ecosystem, package)",
            "CREATE INDEX advisory_affected_by_advisory ON advisory_affected(advisory)",
            """
            CREATE TABLE inventory (
                key TEXT PRIMARY KEY CHECK (key LIKE '%:%'),
                os_id TEXT,
                version_id TEXT,
                package_count INTEGER NOT NULL CHECK (package_count >= 0),
                packages BYTEA NOT NULL,
                inspected_at DOUBLE PRECISION NOT NULL
            )
            """,
            """
            CREATE TABLE inventory_image (
                path TEXT PRIMARY KEY CHECK (length(path) >= 1),
                inventory TEXT NOT NULL REFERENCES inventory(key) ON DELETE CASCADE,
                scanned_at DOUBLE PRECISION NOT NULL
            )
            """,
            "CREATE INDEX inventory_image_by_inventory ON inventory_image(inventory)",
            """
            CREATE TABLE assessment (
                inventory TEXT PRIMARY KEY REFERENCES inventory(key) ON DELETE CASCADE,
                assessed_at DOUBLE PRECISION NOT NULL,
                findings_hash TEXT NOT NULL,
                vulnerable INTEGER NOT NULL CHECK (vulnerable >= 0),
                findings BYTEA NOT NULL
            )
            """,
        ]),
        // The job queue (JobQueue): claimed with FOR UPDATE SKIP LOCKED, one open job per
        // (kind, host, target).
        Migration(name: "pg-jobs-1", statements: [
            """
            CREATE TABLE jobs (
                id BIGSERIAL PRIMARY KEY,
                kind TEXT NOT NULL CHECK (kind IN ('scan', 'rescan')),
                host TEXT,
                target TEXT NOT NULL CHECK (length(target) BETWEEN 1 AND 4096),
                state TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'failed')),
                attempts INTEGER NOT NULL CHECK (attempts >= 0),
                lease_owner TEXT,
                lease_until_us BIGINT,
                created_us BIGINT NOT NULL,
                finished_us BIGINT,
                result TEXT
            )
            """,
            "CREATE INDEX jobs_open ON jobs(host, state, id) WHERE state IN ('queued', 'leased')",
            "CREATE UNIQUE INDEX jobs_one_open ON jobs(kind, coalesce(host, ''), target) WHERE state IN ('queued', 'leased')",
        ]),
        // Findings per distinct package version (issue 17), as in the SQLite store: assessments
        // are derived data, dropped here and rebuilt by the next rescan.
        Migration(name: "pg-advisories-2-package-versions", statements: [
            """
            CREATE TABLE package_version (
                id BIGSERIAL PRIMARY KEY,
                release TEXT NOT NULL,
                name TEXT NOT NULL,
                version TEXT NOT NULL,
                source_name TEXT NOT NULL,
                source_version TEXT NOT NULL,
                findings BYTEA,
                findings_hash TEXT,
                vulnerable INTEGER NOT NULL DEFAULT 0 CHECK (vulnerable >= 0),
                assessed_at DOUBLE PRECISION,
                UNIQUE (release, name, version, source_name, source_version)
            )
            """,
            "CREATE INDEX package_version_by_source ON package_version(release, source_name)",
            "CREATE INDEX package_version_unassessed ON package_version(id) WHERE assessed_at IS NULL",
            """
            CREATE TABLE inventory_package_set (
                id BIGSERIAL PRIMARY KEY,
                inventory TEXT NOT NULL UNIQUE REFERENCES inventory(key) ON DELETE CASCADE,
                release TEXT NOT NULL,
                package_versions BYTEA NOT NULL
            )
            """,
            "CREATE INDEX inventory_package_set_by_release ON inventory_package_set(release)",
            """
            CREATE TABLE package_inventory (
                package_version BIGINT NOT NULL,
                package_set BIGINT NOT NULL,
                PRIMARY KEY (package_version, package_set)
            )
            """,
            """
            CREATE TABLE advisory_change (
                seq BIGSERIAL PRIMARY KEY,
                ecosystem TEXT NOT NULL,
                package TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL
            )
            """,
            """
            CREATE TABLE rescan_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                through BIGINT NOT NULL,
                at DOUBLE PRECISION NOT NULL
            )
            """,
            "DELETE FROM assessment",
            "ALTER TABLE assessment DROP COLUMN findings_hash",
            "ALTER TABLE assessment DROP COLUMN findings",
        ]),
        // Lineage families and generation steps, as in the SQLite ledger (ledger-11-families).
        Migration(name: "pg-ledger-3-families", statements: [
            "ALTER TABLE vms ADD COLUMN family TEXT",
            """
            WITH RECURSIVE r(id, family) AS (
                SELECT id, id FROM vms WHERE parent IS NULL
                UNION ALL SELECT v.id, r.family FROM vms v JOIN r ON v.parent = r.id)
            UPDATE vms SET family = r.family FROM r WHERE r.id = vms.id
            """,
            "UPDATE vms SET family = id WHERE family IS NULL",
            "ALTER TABLE vms ALTER COLUMN family SET NOT NULL",
            "CREATE INDEX vms_by_family ON vms(family, created_us, id) INCLUDE (parent, name, owner, state, generation, parent_generation)",
            // Residency intervals carry their VM's family (set by the database on insert).
            "ALTER TABLE residency ADD COLUMN family TEXT",
            "UPDATE residency r SET family = v.family FROM vms v WHERE v.id = r.vm",
            """
            CREATE FUNCTION residency_family() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.family IS NULL THEN NEW.family := (SELECT family FROM vms WHERE id = NEW.vm); END IF;
                RETURN NEW;
            END $$
            """,
            "CREATE TRIGGER residency_family BEFORE INSERT ON residency FOR EACH ROW EXECUTE FUNCTION residency_family()",
            "DROP INDEX residency_by_host_cover",
            "CREATE INDEX residency_by_host_cover ON residency(host, from_us, to_us, vm, kind, family)",
            """
            CREATE INDEX events_generation_steps ON events(vm, seq) INCLUDE (kind, time_us, generation_before, generation_after)
            WHERE generation_after IS NOT NULL AND generation_after IS DISTINCT FROM generation_before
            """,
        ]),
    ]

    /// Applies the pending migrations in one transaction, under an advisory lock so that
    /// several servers starting at once apply each exactly once.
    static func apply(_ db: PostgresStore) throws {
        try db.transaction {
            try db.query("SELECT pg_advisory_xact_lock(\(LockKey.migrations))")
            try db.query("CREATE TABLE IF NOT EXISTS warden_migrations (name TEXT PRIMARY KEY, applied_us BIGINT NOT NULL)")
            let done = Set(try db.query("SELECT name FROM warden_migrations").map { try $0.decode(String.self) })
            let known = Set(all.map(\.name))
            if let unknown = done.subtracting(known).sorted().first {
                throw WardenError(.unavailable, "the database has migration \(unknown), which this warden does not know: it is newer than this build", file: db.location)
            }
            for m in all where !done.contains(m.name) {
                for s in m.statements { try db.query(PostgresQuery(unsafeSQL: s)) }
                let now = LedgerTime.micros(Date())
                try db.query("INSERT INTO warden_migrations (name, applied_us) VALUES (\(m.name), \(now))")
            }
        }
    }
}
