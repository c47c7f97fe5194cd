import GRDB

/// Advisory records, their affected ranges, stored inventories and assessments.
///
/// Versions and ranges are stored in ``RangeCoding`` text (U+001E/U+001F separated), package
/// lists and finding sets in the compact tab-separated forms of ``CompactLines``, so that a
/// fleet rescan reads a few large values instead of millions of rows.
enum AdvisoryMigrations {
    static let all: [WardenSchema.Migration] = [
        WardenSchema.Migration("advisories-v1") { db in
            try db.execute(sql: """
            CREATE TABLE advisory_source (
                name TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
                format TEXT NOT NULL CHECK (format IN ('osv', 'debian-tracker', 'alpine-secdb')),
                location TEXT NOT NULL,
                imported_at REAL NOT NULL,
                last_seen INTEGER NOT NULL DEFAULT 0 CHECK (last_seen >= 0),
                last_added INTEGER NOT NULL DEFAULT 0 CHECK (last_added >= 0),
                last_replaced INTEGER NOT NULL DEFAULT 0 CHECK (last_replaced >= 0),
                last_unchanged INTEGER NOT NULL DEFAULT 0 CHECK (last_unchanged >= 0),
                last_older INTEGER NOT NULL DEFAULT 0 CHECK (last_older >= 0)
            ) STRICT;
            CREATE TABLE advisory (
                pk INTEGER PRIMARY KEY,
                source TEXT NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
                id TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
                modified REAL,
                published REAL,
                withdrawn REAL,
                aliases TEXT NOT NULL DEFAULT '',
                summary TEXT,
                severity INTEGER NOT NULL CHECK (severity BETWEEN 0 AND 5),
                cvss_score REAL CHECK (cvss_score IS NULL OR cvss_score BETWEEN 0 AND 10),
                cvss_vector TEXT,
                content_hash TEXT NOT NULL,
                imported_at REAL NOT NULL,
                UNIQUE (source, id)
            ) STRICT;
            CREATE INDEX advisory_by_import ON advisory(imported_at);
            CREATE TABLE advisory_affected (
                advisory INTEGER NOT NULL REFERENCES advisory(pk) ON DELETE CASCADE,
                ecosystem TEXT NOT NULL CHECK (length(ecosystem) BETWEEN 1 AND 255),
                package TEXT NOT NULL CHECK (length(package) BETWEEN 1 AND 1024),
                status TEXT NOT NULL CHECK (status IN ('affected', 'not-affected')),
                severity INTEGER CHECK (severity IS NULL OR severity BETWEEN 0 AND 5),
                ranges TEXT NOT NULL,
                versions TEXT NOT NULL
            ) STRICT;
            CREATE INDEX advisory_affected_by_package ON advisory_affected(ecosystem, package);
            CREATE INDEX advisory_affected_by_advisory ON advisory_affected(advisory);
            CREATE TABLE inventory (
                key TEXT PRIMARY KEY NOT NULL CHECK (key LIKE '%:%'),
                os_id TEXT,
                version_id TEXT,
                package_count INTEGER NOT NULL CHECK (package_count >= 0),
                packages BLOB NOT NULL,
                inspected_at REAL NOT NULL
            ) STRICT;
            CREATE TABLE inventory_image (
                path TEXT PRIMARY KEY NOT NULL CHECK (length(path) >= 1),
                inventory TEXT NOT NULL REFERENCES inventory(key) ON DELETE CASCADE,
                scanned_at REAL NOT NULL
            ) STRICT;
            CREATE INDEX inventory_image_by_inventory ON inventory_image(inventory);
            CREATE TABLE assessment (
                inventory TEXT PRIMARY KEY NOT NULL REFERENCES inventory(key) ON DELETE CASCADE,
                assessed_at REAL NOT NULL,
                findings_hash TEXT NOT NULL,
                vulnerable INTEGER NOT NULL CHECK (vulnerable >= 0),
                findings BLOB NOT NULL
            ) STRICT;
            """)
        },
        packageVersions,
    ]
}

extension AdvisoryMigrations {
    /// Findings per distinct package version instead of per inventory (issue 17): a rescan
    /// re-matches what an import touched and reaches inventories through `package_inventory`.
    /// Assessments are derived data: they are dropped here and the next rescan rebuilds them
    /// (inventories get their package sets then, `indexMissingPackageSets`).
    static let packageVersions = WardenSchema.Migration("advisories-v2-package-versions") { db in
        try db.execute(sql: """
        CREATE TABLE package_version (
            id INTEGER PRIMARY KEY,
            release TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            source_name TEXT NOT NULL,
            source_version TEXT NOT NULL,
            findings BLOB,
            findings_hash TEXT,
            vulnerable INTEGER NOT NULL DEFAULT 0 CHECK (vulnerable >= 0),
            assessed_at REAL,
            UNIQUE (release, name, version, source_name, source_version)
        ) STRICT;
        CREATE INDEX package_version_by_source ON package_version(release, source_name);
        CREATE INDEX package_version_unassessed ON package_version(id) WHERE assessed_at IS NULL;
        CREATE TABLE inventory_package_set (
            id INTEGER PRIMARY KEY,
            inventory TEXT NOT NULL UNIQUE REFERENCES inventory(key) ON DELETE CASCADE,
            release TEXT NOT NULL,
            package_versions BLOB NOT NULL
        ) STRICT;
        CREATE INDEX inventory_package_set_by_release ON inventory_package_set(release);
        CREATE TABLE package_inventory (
            package_version INTEGER NOT NULL,
            package_set INTEGER NOT NULL,
            PRIMARY KEY (package_version, package_set)
        ) WITHOUT ROWID, STRICT;
        CREATE TABLE advisory_change (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            ecosystem TEXT NOT NULL,
            package TEXT NOT NULL,
            at REAL NOT NULL
        ) STRICT;
        CREATE TABLE rescan_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            through INTEGER NOT NULL,
            at REAL NOT NULL
        ) STRICT;
        DELETE FROM assessment;
        ALTER TABLE assessment DROP COLUMN findings_hash;
        ALTER TABLE assessment DROP COLUMN findings;
        """)
    }
}
