import WardenCore
import DiskImage
import Partitions

/// One place on a disk that may hold a filesystem: a partition, an LVM logical
/// volume, or the whole disk.
public struct GuestVolume: Sendable, Codable {
    /// Partition index (Linux numbering), or nil for the whole disk or a logical volume.
    public var partitionIndex: Int?
    /// `/dev/mapper/VG-LV` for an LVM logical volume.
    public var logicalVolume: String?
    /// Byte offset on the disk (0 for a logical volume, which maps onto its PVs).
    public var start: UInt64
    public var size: UInt64
    public var filesystem: FilesystemSignature?

    public init(partitionIndex: Int? = nil, logicalVolume: String? = nil, start: UInt64, size: UInt64,
                filesystem: FilesystemSignature?) {
        self.partitionIndex = partitionIndex
        self.logicalVolume = logicalVolume
        self.start = start
        self.size = size
        self.filesystem = filesystem
    }

    /// "partition 2", "logical volume /dev/mapper/vg-root", "encrypted volume
    /// /dev/mapper/luks-UUID" or "whole disk", for messages.
    public var displayName: String {
        if let lv = logicalVolume { return (lv.hasPrefix(GuestDisk.luksMapperPrefix) ? "encrypted volume " : "logical volume ") + lv }
        return partitionIndex.map { "partition \($0)" } ?? "whole disk"
    }
}

/// A disk's partitions, LVM logical volumes, and the filesystems found on them.
public struct GuestDiskLayout: Sendable, Encodable {
    public var table: PartitionTable
    public var volumes: [GuestVolume]
    /// Non-fatal findings while assembling volumes (e.g. an LVM VG with a missing PV).
    public var warnings: [String]
    /// Block devices of logical volumes and opened LUKS volumes, by mapper path (not encoded).
    var lvDevices: [String: any BlockDevice]

    enum CodingKeys: String, CodingKey { case table, volumes, warnings }
}

/// Finds volumes and opens filesystems on a guest disk.
public enum GuestDisk {
    /// Reads the partition table, probes each partition (or the whole disk) for a
    /// filesystem, opens LUKS volumes with `passphrase` (as `/dev/mapper/luks-UUID`, the name
    /// systemd gives them), and maps the logical volumes of any LVM volume groups found, on
    /// partitions or inside LUKS volumes. A LUKS volume without a passphrase, or one the
    /// passphrase does not open, is a warning.
    public static func layout(of disk: any BlockDevice, passphrase: SecretBytes? = nil) throws -> GuestDiskLayout {
        let table = try PartitionReader.read(disk)
        var volumes: [GuestVolume] = []
        var pvDevices: [any BlockDevice] = []
        var warnings: [String] = []
        var lvDevices: [String: any BlockDevice] = [:]
        var opened: [(volume: LUKSVolume, at: String)] = []
        func consider(_ dev: any BlockDevice, _ sig: FilesystemSignature?, _ volume: GuestVolume) {
            if sig?.type == "LVM2_member" { pvDevices.append(dev) }
            guard sig?.type == "crypto_LUKS" else { return }
            guard let passphrase else {
                warnings.append("\(volume.displayName) is LUKS-encrypted: give its passphrase with --key-from to read it")
                return
            }
            do {
                opened.append((try LUKSVolume.open(dev, passphrase: passphrase, name: volume.displayName), volume.displayName))
            } catch let e as WardenError {
                warnings.append("\(volume.displayName) is LUKS-encrypted and cannot be opened: \(e.message)")
            } catch {
                warnings.append("\(volume.displayName) is LUKS-encrypted and cannot be opened: \(error)")
            }
        }
        if table.scheme == .none {
            let sig = try FilesystemProbe.probe(disk)
            let v = GuestVolume(start: 0, size: disk.size, filesystem: sig)
            volumes.append(v)
            consider(disk, sig, v)
        } else {
            for p in table.partitions where p.kind != .extended {
                let dev = try PartitionTable.volume(p, of: disk)
                let sig = try FilesystemProbe.probe(dev)
                let v = GuestVolume(partitionIndex: p.index, start: p.start, size: p.size, filesystem: sig)
                volumes.append(v)
                consider(dev, sig, v)
            }
        }
        for (luks, _) in opened {
            let mapper = luksMapperPrefix + luks.uuid
            guard lvDevices[mapper] == nil else { continue }
            let sig: FilesystemSignature?
            do { sig = try FilesystemProbe.probe(luks) } catch let e as WardenError {
                warnings.append("\(mapper): \(e.message)")
                continue
            }
            volumes.append(GuestVolume(logicalVolume: mapper, start: 0, size: luks.size, filesystem: sig))
            lvDevices[mapper] = luks
            if sig?.type == "LVM2_member" { pvDevices.append(luks) }
        }
        if !pvDevices.isEmpty {
            let (lvs, w) = logicalVolumes(on: pvDevices)
            warnings += w
            for lv in lvs {
                let sig: FilesystemSignature?
                do { sig = try FilesystemProbe.probe(lv.device) } catch let e as WardenError {
                    warnings.append("\(lv.mapperPath): \(e.message)")
                    continue
                }
                volumes.append(GuestVolume(logicalVolume: lv.mapperPath, start: 0, size: lv.size, filesystem: sig))
                lvDevices[lv.mapperPath] = lv.device
            }
        }
        return GuestDiskLayout(table: table, volumes: volumes, warnings: warnings, lvDevices: lvDevices)
    }

    /// Where opened LUKS volumes appear: `/dev/mapper/luks-UUID`.
    public static let luksMapperPrefix = "/dev/mapper/luks-"

    /// Reads every PV, groups them by volume group, and maps each visible LV.
    /// Problems (unreadable PVs, missing PVs, unsupported segment types) become warnings.
    static func logicalVolumes(on pvDevices: [any BlockDevice]) -> ([LVM2.LogicalVolume], [String]) {
        var warnings: [String] = []
        var groups: [String: (vg: LVM2.VolumeGroup, pvs: [String: any BlockDevice])] = [:]
        for dev in pvDevices {
            do {
                let pv = try LVM2.readPhysicalVolume(dev)
                warnings += pv.warnings
                let vg = try pv.volumeGroup()
                var entry = groups[vg.uuid] ?? (vg, [:])
                if vg.seqno > entry.vg.seqno { entry.vg = vg }
                entry.pvs[pv.uuid] = dev
                groups[vg.uuid] = entry
            } catch let e as WardenError {
                warnings.append(e.message)
            } catch {
                warnings.append("lvm2: \(error)")
            }
        }
        var out: [LVM2.LogicalVolume] = []
        for key in groups.keys.sorted() {
            guard let (vg, pvs) = groups[key] else { continue }
            for lv in vg.logicalVolumes where lv.isGuestVolume {
                do { out.append(try LVM2.logicalVolume(lv, in: vg, pvs: pvs)) } catch let e as WardenError {
                    warnings.append(e.message)
                } catch {
                    warnings.append("lvm2: \(error)")
                }
            }
        }
        return (out, warnings)
    }

    /// Picks the volume named by `partition` or `logicalVolume`, or else the largest Linux filesystem.
    ///
    /// A logical volume may be named `/dev/mapper/VG-LV`, `VG-LV` (mapper form) or `VG/LV`.
    public static func select(_ layout: GuestDiskLayout, partition: Int?, logicalVolume: String? = nil) throws -> GuestVolume {
        if let name = logicalVolume {
            let wanted = normalizedLV(name)
            guard let v = layout.volumes.first(where: { $0.logicalVolume.map(normalizedLV) == wanted }) else {
                let known = layout.volumes.compactMap(\.logicalVolume).joined(separator: ", ")
                throw WardenError.notFound("no logical volume \(name) on this disk (logical volumes: \(known.isEmpty ? "none" : known))")
            }
            return v
        }
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
            if let other = layout.volumes.first(where: { $0.filesystem?.isReadable == true }) { return other }
            if let other = layout.volumes.first(where: { $0.filesystem != nil }), let fs = other.filesystem {
                throw WardenError.unsupported("no readable filesystem found (found \(fs.type) on \(other.displayName)); Warden reads ext2/3/4, XFS, btrfs and FAT")
            }
            throw WardenError.notFound("no filesystem found on this disk")
        }
        return best
    }

    /// `VG/LV`, `VG-LV` and `/dev/mapper/VG-LV` all name the same LV.
    static func normalizedLV(_ s: String) -> String {
        var n = s
        if n.hasPrefix("/dev/mapper/") { return String(n.dropFirst("/dev/mapper/".count)) }
        if n.hasPrefix("/dev/") { n = String(n.dropFirst(5)) }
        if let slash = n.firstIndex(of: "/") {
            let vg = n[..<slash], lv = n[n.index(after: slash)...]
            return String(LVM2.mapperPath(vg: String(vg), lv: String(lv)).dropFirst("/dev/mapper/".count))
        }
        return n
    }

    /// The block device for `volume` on `disk`.
    public static func device(for volume: GuestVolume, in layout: GuestDiskLayout, on disk: any BlockDevice) throws -> any BlockDevice {
        if let lv = volume.logicalVolume {
            guard let dev = layout.lvDevices[lv] else { throw WardenError.notFound("logical volume \(lv) is not mapped") }
            return dev
        }
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
        case "xfs":
            return try XFS.open(device)
        case "vfat":
            return try FAT.open(device)
        case "btrfs":
            return try Btrfs.open(device)
        case "ntfs":
            return try NTFS.open(device)
        case "BitLocker":
            throw WardenError.unsupported("the volume is BitLocker-encrypted; Warden does not decrypt BitLocker")
        default:
            throw WardenError.unsupported("\(sig.type) filesystems cannot be read yet; Warden reads ext2/3/4, XFS, btrfs, FAT and NTFS")
        }
    }
}
