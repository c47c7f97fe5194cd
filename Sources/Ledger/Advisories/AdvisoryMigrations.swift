import GRDB

/// Advisory records, their affected ranges, stored inventories and assessments.
enum AdvisoryMigrations {
    static let all: [WardenSchema.Migration] = []
}
