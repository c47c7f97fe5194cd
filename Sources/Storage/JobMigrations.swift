import GRDB

/// The fleet's job queue (``JobQueue``): scan and rescan work with leases.
enum JobMigrations {
    static let all: [WardenSchema.Migration] = [
        .init("jobs-v1") { db in
            try db.execute(sql: """
                CREATE TABLE jobs (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    kind TEXT NOT NULL CHECK (kind IN ('scan', 'rescan')),
                    host TEXT,
                    target TEXT NOT NULL CHECK (length(target) BETWEEN 1 AND 4096),
                    state TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'failed')),
                    attempts INTEGER NOT NULL CHECK (attempts >= 0),
                    lease_owner TEXT,
                    lease_until_us INTEGER,
                    created_us INTEGER NOT NULL,
                    finished_us INTEGER,
                    result TEXT
                ) STRICT;
                CREATE INDEX jobs_open ON jobs(host, state, id) WHERE state IN ('queued', 'leased');
                CREATE UNIQUE INDEX jobs_one_open ON jobs(kind, coalesce(host, ''), target) WHERE state IN ('queued', 'leased');
                """)
        },
    ]
}
