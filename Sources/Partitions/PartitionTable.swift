import WardenCore
import DiskImage

/// The partitioning scheme found on a disk.
public enum PartitionScheme: String, Sendable, Codable {
    case mbr, gpt
    /// No partition table: the whole disk is one volume (e.g. a filesystem at offset 0).
    case none
}

/// One partition, with byte offsets relative to the start of the disk.
public struct Partition: Sendable, Codable, Equatable {
    public enum Kind: String, Sendable, Codable {
        case primary, extended, logical, gpt
    }
    /// 1-based, as Linux numbers them (MBR logicals start at 5).
    public var index: Int
    public var kind: Kind
    public var start: UInt64
    public var size: UInt64
    /// The raw type: "0x83" for MBR, an upper-case GUID for GPT.
    public var typeCode: String
    /// A human name for the type ("Linux filesystem", "EFI System").
    public var typeName: String
    /// GPT partition name, if any.
    public var name: String?
    /// GPT unique partition GUID, or the MBR `SIGNATURE-NN` form (PARTUUID).
    public var uuid: String?
    public var bootable: Bool

    public init(index: Int, kind: Kind, start: UInt64, size: UInt64, typeCode: String, typeName: String,
                name: String? = nil, uuid: String? = nil, bootable: Bool = false) {
        self.index = index
        self.kind = kind
        self.start = start
        self.size = size
        self.typeCode = typeCode
        self.typeName = typeName
        self.name = name
        self.uuid = uuid
        self.bootable = bootable
    }
}

/// A disk's partition table.
public struct PartitionTable: Sendable, Codable {
    public var scheme: PartitionScheme
    public var partitions: [Partition]
    /// Non-fatal findings, e.g. "primary GPT header CRC mismatch; using the backup GPT".
    public var warnings: [String]
    /// GPT disk GUID, or MBR disk signature as 8 hex digits.
    public var diskID: String?

    public init(scheme: PartitionScheme, partitions: [Partition], warnings: [String] = [], diskID: String? = nil) {
        self.scheme = scheme
        self.partitions = partitions
        self.warnings = warnings
        self.diskID = diskID
    }

    /// The partition with Linux index `n`.
    public func partition(_ n: Int) -> Partition? { partitions.first { $0.index == n } }

    /// A block device over partition `p` of `disk`.
    public static func volume(_ p: Partition, of disk: any BlockDevice) throws -> any BlockDevice {
        try SliceDevice(base: disk, start: p.start, size: p.size)
    }
}
