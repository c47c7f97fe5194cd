import GRDB

/// State a rollback cannot rewind: monotonic counters served to guests.
enum StateMigrations {
    static let all: [WardenSchema.Migration] = []
}
