import GRDB

/// The ledger's own tables: VMs, disks, hosts, residency, snapshots, events, the Merkle log.
///
/// Conventions (documented in docs/ledger.md):
/// - ids are lower-case UUID text; host names are text;
/// - times are INTEGER microseconds since the Unix epoch, UTC (`*_us` columns);
/// - label maps and backing chains are sorted-key JSON text;
/// - `events.seq` is dense and 1-based: the Merkle leaf index is `seq - 1`.
///
/// Migrations are append-only: never edit one that has been merged; add a new one.
enum LedgerMigrations {
    static let all: [WardenSchema.Migration] = [
        .init("ledger-1-vms") { db in
            try db.execute(sql: """
                CREATE TABLE vms (
                    id TEXT PRIMARY KEY NOT NULL,
                    name TEXT NOT NULL,
                    owner TEXT NOT NULL,
                    state TEXT NOT NULL CHECK (state IN ('registered','discovered','stopped','running','retired')),
                    generation TEXT NOT NULL,
                    parent TEXT REFERENCES vms(id),
                    parent_generation TEXT,
                    created_us INTEGER NOT NULL,
                    updated_us INTEGER NOT NULL,
                    mac TEXT
                );
                CREATE INDEX vms_by_name ON vms(name);
                CREATE INDEX vms_by_parent ON vms(parent);
                CREATE INDEX vms_by_owner ON vms(owner);
                CREATE TABLE vm_labels (
                    vm TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
                    key TEXT NOT NULL,
                    value TEXT NOT NULL,
                    PRIMARY KEY (vm, key)
                ) WITHOUT ROWID;
                CREATE INDEX vm_labels_by_key ON vm_labels(key, value);
                """)
        },
        .init("ledger-2-disks") { db in
            try db.execute(sql: """
                CREATE TABLE disks (
                    vm TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
                    idx INTEGER NOT NULL CHECK (idx >= 0),
                    path TEXT NOT NULL,
                    format TEXT NOT NULL,
                    backing_chain TEXT NOT NULL DEFAULT '[]',
                    fingerprint TEXT,
                    PRIMARY KEY (vm, idx)
                ) WITHOUT ROWID;
                CREATE INDEX disks_by_fingerprint ON disks(fingerprint);
                CREATE INDEX disks_by_path ON disks(path);
                """)
        },
        .init("ledger-3-hosts-residency") { db in
            try db.execute(sql: """
                CREATE TABLE hosts (
                    name TEXT PRIMARY KEY NOT NULL,
                    labels TEXT NOT NULL DEFAULT '{}',
                    public_key BLOB CHECK (public_key IS NULL OR length(public_key) = 32),
                    added_us INTEGER NOT NULL
                );
                CREATE TABLE residency (
                    id INTEGER PRIMARY KEY,
                    vm TEXT NOT NULL REFERENCES vms(id),
                    host TEXT NOT NULL,
                    kind TEXT NOT NULL CHECK (kind IN ('ran','stored')),
                    from_us INTEGER NOT NULL,
                    to_us INTEGER CHECK (to_us IS NULL OR to_us >= from_us)
                );
                CREATE INDEX residency_by_host ON residency(host, from_us, to_us);
                CREATE INDEX residency_by_vm ON residency(vm, kind, host);
                """)
        },
        .init("ledger-4-snapshots") { db in
            try db.execute(sql: """
                CREATE TABLE snapshots (
                    id INTEGER PRIMARY KEY,
                    vm TEXT NOT NULL REFERENCES vms(id),
                    name TEXT NOT NULL,
                    generation TEXT NOT NULL,
                    created_us INTEGER NOT NULL,
                    inventory_key TEXT
                );
                CREATE INDEX snapshots_by_vm ON snapshots(vm, created_us);
                """)
        },
        .init("ledger-5-events") { db in
            // No foreign key on vm: the log is append-only evidence and must keep an event
            // even if a VM row were ever removed; leaf_hash = SHA-256(0x00 ‖ entry).
            try db.execute(sql: """
                CREATE TABLE events (
                    seq INTEGER PRIMARY KEY CHECK (seq >= 1),
                    kind TEXT NOT NULL,
                    vm TEXT,
                    actor TEXT NOT NULL,
                    host TEXT NOT NULL,
                    time_us INTEGER NOT NULL,
                    generation_before TEXT,
                    generation_after TEXT,
                    payload TEXT NOT NULL DEFAULT '{}',
                    reported INTEGER NOT NULL DEFAULT 0 CHECK (reported IN (0,1)),
                    leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32)
                );
                CREATE INDEX events_by_vm ON events(vm, seq);
                """)
        },
        .init("ledger-6-merkle") { db in
            // Hashes of complete subtrees at level >= MerkleLog.storedLevel (2^level leaves,
            // covering leaves [idx·2^level, (idx+1)·2^level)). Lower levels are recomputed
            // from events.leaf_hash (at most 2^storedLevel leaves per lookup).
            // Checkpoints: signed (tree_size, root, time, host) after every committing call.
            try db.execute(sql: """
                CREATE TABLE merkle_nodes (
                    level INTEGER NOT NULL,
                    idx INTEGER NOT NULL,
                    hash BLOB NOT NULL CHECK (length(hash) = 32),
                    PRIMARY KEY (level, idx)
                ) WITHOUT ROWID;
                CREATE TABLE checkpoints (
                    id INTEGER PRIMARY KEY,
                    tree_size INTEGER NOT NULL CHECK (tree_size >= 0),
                    root BLOB NOT NULL CHECK (length(root) = 32),
                    time_us INTEGER NOT NULL,
                    host TEXT NOT NULL,
                    signature BLOB NOT NULL CHECK (length(signature) = 64)
                );
                CREATE INDEX checkpoints_by_size ON checkpoints(tree_size);
                """)
        },
        .init("ledger-7-covering-indexes") { db in
            // Exposure reads (vm, kind) of every interval on a host in a window, and walks
            // vms(parent) reading created_us and id: covering indexes answer both from the index
            // alone (no random row lookups). They replace the narrower indexes with the same
            // prefix, so appends maintain no more indexes than before.
            try db.execute(sql: """
                CREATE INDEX residency_by_host_cover ON residency(host, from_us, to_us, vm, kind);
                DROP INDEX residency_by_host;
                CREATE INDEX vms_by_parent_cover ON vms(parent, created_us, id);
                DROP INDEX vms_by_parent;
                """)
        },
        .init("ledger-8-one-live-vm-per-disk") { db in
            // One live (not retired) VM per disk file, by path and by device and inode (a
            // hard link or a second spelling of the same file is the same disk). Enforced by
            // the database, so no interleaving of concurrent registrations can record a disk
            // twice; the services check first to give a clear message (docs/decisions.md).
            // Existing duplicates are left as they are (the hook reports them).
            try db.execute(sql: """
                ALTER TABLE disks ADD COLUMN device INTEGER;
                ALTER TABLE disks ADD COLUMN inode INTEGER;
                CREATE INDEX disks_by_file ON disks(device, inode) WHERE device IS NOT NULL;
                CREATE TRIGGER disks_one_live_vm BEFORE INSERT ON disks
                WHEN EXISTS (
                    SELECT 1 FROM disks d JOIN vms v ON v.id = d.vm
                    WHERE v.state != 'retired' AND d.vm != NEW.vm
                      AND (d.path = NEW.path
                           OR (NEW.device IS NOT NULL AND d.device = NEW.device AND d.inode = NEW.inode))
                )
                BEGIN
                    SELECT RAISE(ABORT, 'disk already belongs to a live VM');
                END;
                """)
        },
        .init("ledger-9-ingested") { db in
            // The ids hosts gave the events they reported (at-least-once delivery from an
            // agent's outbox): a second report of the same (host, id) is answered from here.
            try db.execute(sql: """
                CREATE TABLE ingested (
                    host TEXT NOT NULL,
                    id TEXT NOT NULL,
                    seq INTEGER NOT NULL,
                    PRIMARY KEY (host, id)
                ) WITHOUT ROWID
                """)
        },
        .init("ledger-10-events-by-kind") { db in
            // Each VM's latest event of one kind (its network state) without scanning the log.
            try db.execute(sql: "CREATE INDEX events_by_kind ON events(kind, vm, seq)")
        },
        .init("ledger-11-families") { db in
            // Each VM's lineage family: the id of its root ancestor, set when the VM is inserted
            // (its parent's family, or its own id) and never changed (a parent never changes).
            // One index keeps each family's members together with what exposure and lineage
            // read of them, so both read a family in one range instead of walking `parent`
            // level by level. Existing rows: by one walk down from the roots; a VM on a parent
            // cycle (a damaged ledger) is a family of its own.
            try db.execute(sql: """
                ALTER TABLE vms ADD COLUMN family TEXT;
                UPDATE vms SET family = r.family FROM (
                    WITH RECURSIVE r(id, family) AS (
                        SELECT id, id FROM vms WHERE parent IS NULL
                        UNION ALL SELECT v.id, r.family FROM vms v JOIN r ON v.parent = r.id)
                    SELECT id, family FROM r) AS r
                WHERE r.id = vms.id;
                UPDATE vms SET family = id WHERE family IS NULL;
                CREATE INDEX vms_by_family ON vms(family, created_us, id, parent, name, owner, state, generation, parent_generation);
                """)
            // Residency intervals carry their VM's family: exposure takes the families a window
            // touches from the host's intervals alone, with no lookup per VM.
            try db.execute(sql: """
                ALTER TABLE residency ADD COLUMN family TEXT;
                UPDATE residency SET family = (SELECT family FROM vms WHERE vms.id = residency.vm);
                DROP INDEX residency_by_host_cover;
                CREATE INDEX residency_by_host_cover ON residency(host, from_us, to_us, vm, kind, family);
                """)
            // The generation steps lineage shows, kept apart from the other 90 % of events: a
            // partial index holding just what a step needs, read per VM without touching rows.
            try db.execute(sql: """
                CREATE INDEX events_generation_steps ON events(vm, seq, kind, time_us, generation_before, generation_after)
                WHERE generation_after IS NOT NULL AND generation_after IS NOT generation_before
                """)
        },
    ]
}
