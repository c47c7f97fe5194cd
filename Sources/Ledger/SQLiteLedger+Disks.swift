import GRDB
import WardenCore

extension SQLiteLedger {
    /// The VMs with a disk whose top image is at `path` (the libvirt hook maps domains by disk path).
    public func vms(withDiskPath path: String) throws -> [VMRecord] {
        try database.read { db in
            try Rows.fetchVMs(db, sql: """
                SELECT vms.* FROM vms WHERE id IN (SELECT vm FROM disks WHERE path = ?) ORDER BY created_us, id
                """, [path])
        }
    }
}
