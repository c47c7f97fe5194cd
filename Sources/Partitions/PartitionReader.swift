import WardenCore
import DiskImage

/// Reads MBR and GPT partition tables. Placeholder until the parsers land.
public enum PartitionReader {
    /// Reads the partition table of `disk`. A disk with no table gives scheme `.none`.
    public static func read(_ disk: any BlockDevice) throws -> PartitionTable {
        PartitionTable(scheme: .none, partitions: [])
    }
}
