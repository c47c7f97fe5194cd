import WardenCore
import DiskImage

/// Reads MBR and GPT partition tables.
///
/// Everything read from the disk is treated as hostile: offsets are
/// bounds-checked against the disk size, EBR chains are capped and
/// loop-checked, GPT entry arrays are capped, and problems become
/// ``WardenError``s or entries in ``PartitionTable/warnings``.
public enum PartitionReader {
    /// Reads the partition table of `disk`. A disk with no table gives scheme `.none`.
    public static func read(_ disk: any BlockDevice) throws -> PartitionTable {
        guard disk.size >= 512 else { return PartitionTable(scheme: .none, partitions: []) }
        let sector0 = try disk.read(at: 0, count: 512)
        guard let mbr = MBR.Sector(sector0) else {
            // No MBR signature: a GPT disk without a protective MBR is still worth reading.
            if let gpt = try? GPT.read(disk), !gpt.partitions.isEmpty {
                var t = gpt
                t.warnings.insert("disk has a GPT but no protective MBR", at: 0)
                return t
            }
            return PartitionTable(scheme: .none, partitions: [])
        }
        if mbr.entries.contains(where: { $0.type == 0xEE }) {
            return try GPT.read(disk)
        }
        return try MBR.read(disk, sector0: mbr)
    }
}

/// The 512-byte sector size used for MBR addressing.
let mbrSectorSize: UInt64 = 512
