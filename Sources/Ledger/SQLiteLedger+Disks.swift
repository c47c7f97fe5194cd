import GRDB
import WardenCore

extension SQLiteLedger {
    /// The VMs with a disk whose top image is at `path` (the libvirt hook maps domains by disk path).
    public func vms(withDiskPath path: String) throws -> [VMRecord] {
        try vms(withDisk: path, file: nil)
    }

    /// The VMs with a disk at `path`, or at the same file (`file`: device and inode).
    public func vms(withDisk path: String, file: DiskRecord.FileID?) throws -> [VMRecord] {
        try database.read { db in
            if let file {
                return try Rows.fetchVMs(db, sql: """
                    SELECT vms.* FROM vms WHERE id IN (SELECT vm FROM disks WHERE path = ?
                        UNION SELECT vm FROM disks WHERE device = ? AND inode = ?) ORDER BY created_us, id
                    """, [path, Int64(bitPattern: file.device), Int64(bitPattern: file.inode)])
            }
            return try Rows.fetchVMs(db, sql: """
                SELECT vms.* FROM vms WHERE id IN (SELECT vm FROM disks WHERE path = ?) ORDER BY created_us, id
                """, [path])
        }
    }
}
