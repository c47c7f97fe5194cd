import GRDB

/// The ledger's own tables: VMs, disks, hosts, residency, snapshots, events, the Merkle log.
enum LedgerMigrations {
    static let all: [WardenSchema.Migration] = []
}
