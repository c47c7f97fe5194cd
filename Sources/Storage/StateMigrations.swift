import GRDB

/// State a rollback cannot rewind: monotonic counters served to guests.
enum StateMigrations {
    static let all: [WardenSchema.Migration] = [
        .init("state-v1-counters") { db in
            // One row per (VM, counter name). `value` only ever grows (CHECK and the
            // single UPDATE in CounterStore.next); nothing restores it on rollback.
            try db.execute(sql: """
                CREATE TABLE counters (
                    vm TEXT NOT NULL,
                    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
                    value INTEGER NOT NULL CHECK (value >= 1),
                    updated_us INTEGER NOT NULL,
                    PRIMARY KEY (vm, name)
                ) WITHOUT ROWID
                """)
        },
    ]
}
