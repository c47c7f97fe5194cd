import WardenCore
import DiskImage

/// What a volume's first sectors say it holds, without parsing the filesystem.
///
/// This is a cheap signature check (like `blkid -p`) used by `image info` and
/// to choose which volume to open; the filesystem readers do the real
/// validation when a volume is opened.
public struct FilesystemSignature: Sendable, Codable, Equatable {
    /// blkid-style type: ext2, ext3, ext4, xfs, vfat, ntfs, btrfs, swap, LVM2_member, crypto_LUKS,
    /// BitLocker, iso9660.
    public var type: String
    public var label: String?
    public var uuid: String?

    public init(type: String, label: String? = nil, uuid: String? = nil) {
        self.type = type
        self.label = label
        self.uuid = uuid
    }

    /// True for filesystems that hold a Linux root or its mounts.
    public var isLinuxFilesystem: Bool {
        ["ext2", "ext3", "ext4", "xfs", "btrfs"].contains(type)
    }

    /// True for the filesystems Warden can open today.
    public var isReadable: Bool {
        ["ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "ntfs"].contains(type)
    }
}

public enum FilesystemProbe {
    /// Identifies the filesystem (or other signature) on `device`, or nil if none is recognised.
    /// Never throws for unrecognised content; throws only if the device itself cannot be read.
    public static func probe(_ device: any BlockDevice) throws -> FilesystemSignature? {
        let headLen = Int(min(device.size, 72 * 1024))
        guard headLen >= 512 else { return nil }
        let head = try device.read(at: 0, count: headLen)
        func at(_ off: Int, _ magic: [UInt8]) -> Bool {
            off >= 0 && off + magic.count <= head.count && Array(head[off..<off + magic.count]) == magic
        }
        func str(_ off: Int, _ len: Int) -> String? {
            guard off + len <= head.count else { return nil }
            var bytes = Array(head[off..<off + len])
            if let nul = bytes.firstIndex(of: 0) { bytes.removeSubrange(nul...) }
            while let last = bytes.last, last == 0x20 { bytes.removeLast() }
            // Labels are guest-controlled: escape control and invalid bytes so they print on one line.
            let s = ManifestEscaping.escape(bytes)
            return s.isEmpty ? nil : s
        }
        func uuid(_ off: Int) -> String? {
            guard off + 16 <= head.count else { return nil }
            let b = Array(head[off..<off + 16])
            if b.allSatisfy({ $0 == 0 }) { return nil }
            return formatUUID(b)
        }

        // LUKS1 and LUKS2: "LUKS\xba\xbe", the version, and the UUID as text at 168.
        if at(0, [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]), at(6, [0x00]), head[7] == 1 || head[7] == 2 {
            let u = str(168, 40).flatMap { $0.utf8.count == 36 ? $0 : nil }
            return FilesystemSignature(type: "crypto_LUKS", label: head[7] == 2 ? str(24, 48) : nil, uuid: u)
        }
        // ext2/3/4: superblock at 1024, magic 0xEF53 at +56.
        if at(1024 + 56, [0x53, 0xEF]) {
            let compat: UInt32 = head.peekLE(1024 + 92) ?? 0
            let incompat: UInt32 = head.peekLE(1024 + 96) ?? 0
            let roCompat: UInt32 = head.peekLE(1024 + 100) ?? 0
            let hasJournal = compat & 0x4 != 0
            // ext4-only features: extents, 64bit, flex_bg, inline_data, mmp, ea_inode, csum_seed, largedir,
            // and ro_compat huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum, quota, bigalloc.
            let ext4Incompat: UInt32 = 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x8000
            let ext4RO: UInt32 = 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400
            let type: String
            if incompat & ext4Incompat != 0 || roCompat & ext4RO != 0 { type = "ext4" }
            else if hasJournal { type = "ext3" }
            else { type = "ext2" }
            return FilesystemSignature(type: type, label: str(1024 + 120, 16), uuid: uuid(1024 + 104))
        }
        if at(0, Array("XFSB".utf8)) {
            return FilesystemSignature(type: "xfs", label: str(108, 12), uuid: uuid(32))
        }
        if at(0x10040, Array("_BHRfS_M".utf8)) {
            return FilesystemSignature(type: "btrfs", label: str(0x10000 + 0x12B, 256), uuid: uuid(0x10000 + 0x20))
        }
        // BitLocker: the boot sector's OEM field says -FVE-FS- (Windows 7 on); recognised, not decrypted.
        if at(3, Array("-FVE-FS-".utf8)) {
            return FilesystemSignature(type: "BitLocker")
        }
        if at(3, Array("NTFS    ".utf8)) {
            let serial: UInt64 = head.peekLE(0x48) ?? 0
            return FilesystemSignature(type: "ntfs", uuid: serial == 0 ? nil : hexUpper(serial, digits: 16))
        }
        if at(510, [0x55, 0xAA]) && (at(82, Array("FAT32   ".utf8)) || at(54, Array("FAT12   ".utf8)) || at(54, Array("FAT16   ".utf8)) || at(54, Array("FAT     ".utf8))) {
            let is32 = at(82, Array("FAT32   ".utf8))
            let serialOff = is32 ? 67 : 39
            let labelOff = is32 ? 71 : 43
            let serial: UInt32 = head.peekLE(serialOff) ?? 0
            let s = hexUpper(UInt64(serial), digits: 8)
            let label = str(labelOff, 11).flatMap { $0 == "NO NAME" ? nil : $0 }
            return FilesystemSignature(type: "vfat", label: label,
                                       uuid: String(s.prefix(4)) + "-" + String(s.suffix(4)))
        }
        for page in [4096, 8192, 16384, 65536] where at(page - 10, Array("SWAPSPACE2".utf8)) {
            return FilesystemSignature(type: "swap", label: str(1024 + 28, 16), uuid: uuid(1024 + 12))
        }
        for sector in 0..<4 where at(sector * 512, Array("LABELONE".utf8)) && at(sector * 512 + 24, Array("LVM2 001".utf8)) {
            return FilesystemSignature(type: "LVM2_member")
        }
        if at(0x8001, Array("CD001".utf8)) {
            return FilesystemSignature(type: "iso9660", label: str(0x8028, 32))
        }
        return nil
    }

    static func hexUpper(_ v: UInt64, digits: Int) -> String {
        let s = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, digits - s.count)) + s
    }
}
