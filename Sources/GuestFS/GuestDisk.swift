import WardenCore
import DiskImage
import Partitions

/// One place on a disk that may hold a filesystem: a partition, or the whole disk.
public struct GuestVolume: Sendable, Codable {
    /// Partition index (Linux numbering), or nil for the whole disk.
    public var partitionIndex: Int?
    public var start: UInt64
    public var size: UInt64
    public var filesystem: FilesystemSignature?

    /// "partition 2" or "whole disk", for messages.
    public var displayName: String {
        partitionIndex.map { "partition \($0)" } ?? "whole disk"
    }
}

/// A disk's partitions and the filesystems found on them.
public struct GuestDiskLayout: Sendable, Codable {
    public var table: PartitionTable
    public var volumes: [GuestVolume]
}

/// Finds volumes and opens filesystems on a guest disk.
public enum GuestDisk {
    /// Reads the partition table and probes each partition (or the whole disk) for a filesystem.
    public static func layout(of disk: any BlockDevice) throws -> GuestDiskLayout {
        let table = try PartitionReader.read(disk)
        var volumes: [GuestVolume] = []
        if table.scheme == .none {
            volumes.append(GuestVolume(partitionIndex: nil, start: 0, size: disk.size,
                                       filesystem: try FilesystemProbe.probe(disk)))
        } else {
            for p in table.partitions where p.kind != .extended {
                let dev = try PartitionTable.volume(p, of: disk)
                volumes.append(GuestVolume(partitionIndex: p.index, start: p.start, size: p.size,
                                           filesystem: try FilesystemProbe.probe(dev)))
            }
        }
        return GuestDiskLayout(table: table, volumes: volumes)
    }

    /// Picks the volume named by `partition`, or else the largest Linux filesystem.
    public static func select(_ layout: GuestDiskLayout, partition: Int?) throws -> GuestVolume {
        if let partition {
            if partition == 0 && layout.table.scheme == .none, let whole = layout.volumes.first { return whole }
            guard let v = layout.volumes.first(where: { $0.partitionIndex == partition }) else {
                let known = layout.volumes.compactMap { $0.partitionIndex }.map(String.init).joined(separator: ", ")
                throw WardenError.notFound("no partition \(partition) on this disk (partitions: \(known.isEmpty ? "none" : known))")
            }
            return v
        }
        let linux = layout.volumes.filter { $0.filesystem?.isLinuxFilesystem == true }
        guard let best = linux.max(by: { $0.size < $1.size }) else {
            if let other = layout.volumes.first(where: { $0.filesystem != nil }), let fs = other.filesystem {
                throw WardenError.unsupported("no Linux filesystem found (found \(fs.type) on \(other.displayName)); Warden reads ext2/3/4")
            }
            throw WardenError.notFound("no filesystem found on this disk")
        }
        return best
    }

    /// The block device for `volume` on `disk`.
    public static func device(for volume: GuestVolume, on disk: any BlockDevice) throws -> any BlockDevice {
        if volume.partitionIndex == nil && volume.start == 0 && volume.size == disk.size { return disk }
        return try SliceDevice(base: disk, start: volume.start, size: volume.size)
    }

    /// Opens the filesystem on `device`, detected by signature.
    public static func openFileSystem(_ device: any BlockDevice) throws -> any FileSystem {
        guard let sig = try FilesystemProbe.probe(device) else {
            throw WardenError.notFound("no filesystem signature found")
        }
        switch sig.type {
        case "ext2", "ext3", "ext4":
            return try EXT4.open(device)
        default:
            throw WardenError.unsupported("\(sig.type) filesystems cannot be read yet; Warden reads ext2/3/4")
        }
    }
}
