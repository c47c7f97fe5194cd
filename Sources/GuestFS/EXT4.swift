import WardenCore
import DiskImage

// A read-only reader for ext2, ext3 and ext4.
//
// On-disk layout (block size B = 1024 << s_log_block_size, 1 KiB ... 64 KiB):
//
//   byte 0          1024             2048
//   +---------------+----------------+-------------------------------------------
//   | boot / unused | superblock     | (rest of block 0 when B > 1024)
//   +---------------+----------------+-------------------------------------------
//   |<------------- block 0 (B >= 2048) or blocks 0-1 (B == 1024) ------------->|
//
//   block group 0 (starts at s_first_data_block: 1 when B == 1024, else 0)
//   +------------+-------------------+-----------+--------+--------+-------------+-------------+
//   | superblock | group descriptors | reserved  | block  | inode  | inode table | data blocks |
//   | (+ pad)    | (32 or desc_size  | GDT blocks| bitmap | bitmap | ipg * isize |             |
//   |            |  bytes per group) | (resize)  |        |        | bytes       |             |
//   +------------+-------------------+-----------+--------+--------+-------------+-------------+
//   block group 1 .. N-1: same shape; the superblock + GDT backups appear only in
//   groups 0, 1 and powers of 3, 5, 7 (sparse_super) or in s_backup_bgs (sparse_super2).
//   With flex_bg the bitmaps and inode tables of a flex group are packed together
//   in its first group; with meta_bg each block of descriptors lives in the first
//   group (+1 if it carries a superblock backup) of the meta group it describes.
//
//   inode (s_inode_size bytes, >= 128)
//   +------+-----+------+------+-------+-------------------------------+------+-------+---------------+
//   | mode | uid | size | times| flags | i_block[15] (60 bytes):       | gen  | acl   | extra (isize  |
//   |      |     | lo   |      |       |  - extent tree root, or       |      | size  | > 128): times,|
//   |      |     |      |      |       |  - 12 direct + ind/dind/tind, |      | hi,.. | checksum hi,  |
//   |      |     |      |      |       |  - fast symlink / inline data |      |       | inline xattrs |
//   +------+-----+------+------+-------+-------------------------------+------+-------+---------------+
//
//   extent tree node (root: in i_block; others: one block each)
//   +--------------------------------------+-------------+-------------+-----+----------------------+
//   | header: magic F30A, entries, max,    | entry 0     | entry 1     | ... | tail: crc32c         |
//   |         depth, generation (12 bytes) | (12 bytes)  |             |     | (non-root nodes only)|
//   +--------------------------------------+-------------+-------------+-----+----------------------+
//   depth 0 entries are extents (logical block, length (> 32768: unwritten), physical block);
//   depth > 0 entries are indexes (first logical block, child node block).
//
//   directory block: a chain of entries (inode u32, rec_len u16, name_len u8, file_type u8,
//   name), the last ending exactly at the block end; with metadata_csum a 12-byte fake entry
//   (inode 0, rec_len 12, type 0xDE) carrying the block's crc32c closes each leaf block.
//   htree directories keep the index in fake entries (inode 0 / ".." spanning the block),
//   so reading every block linearly sees only the real entries.

/// Namespace for the ext2/3/4 reader. Start with ``EXT4/open(_:)``.
public enum EXT4 {
    /// `0xEF53` at byte 1024 + 56.
    public static let magic: UInt16 = 0xEF53
    public static let superBlockOffset: UInt64 = 1024
    public static let rootInode: UInt64 = 2

    /// Caps that keep memory and time bounded whatever the image claims.
    public enum Limits {
        /// Largest directory (bytes) that is read.
        public static let maxDirectoryBytes: UInt64 = 64 << 20
        /// Deepest extent tree accepted (the kernel uses 5).
        public static let maxExtentDepth = 5
        /// Most leaf extents collected for one file.
        public static let maxExtents = 4 << 20
        /// Largest single `read` call.
        public static let maxReadBytes = 256 << 20
        /// Longest symlink target.
        public static let maxSymlinkBytes: UInt64 = 65536
        /// Most warnings kept.
        public static let maxWarnings = 1000
    }

    /// True if `device` carries the ext2/3/4 superblock magic.
    public static func probe(_ device: any BlockDevice) -> Bool {
        guard device.size >= superBlockOffset + 1024,
              let m = try? device.read(at: superBlockOffset + 56, count: 2) else { return false }
        return UInt16(m[0]) | UInt16(m[1]) << 8 == magic
    }

    /// Whether opening a filesystem whose journal needs recovery replays the journal in
    /// memory (the default). `--no-replay` turns it off for the process, to see the raw state.
    public static let replayJournal = Locked(true)

    /// Opens the filesystem on `device` (a whole disk or a partition slice). When its journal
    /// needs recovery (a disk copied while the guest ran), the journal is replayed in memory
    /// first, as e2fsck would replay it, unless ``replayJournal`` is off; nothing is written.
    public static func open(_ device: any BlockDevice, replay: Bool? = nil) throws -> EXT4Volume {
        let raw = try EXT4Volume(device: device)
        guard raw.sb.hasIncompat(Incompat.recover), replay ?? replayJournal.withLock({ $0 }) else {
            if raw.sb.hasIncompat(Incompat.recover) { raw.warn("ext4: the journal needs recovery; it was not replayed (--no-replay), so recent changes may be missing") }
            return raw
        }
        do {
            guard let (blocks, summary) = try JBD2.replay(raw) else {
                raw.warn("ext4: the journal is flagged for recovery but holds nothing to replay")
                return raw
            }
            return try EXT4Volume(device: JBD2.ReplayedDevice(base: device, blockSize: raw.sb.blockSize, blocks: blocks), replayed: summary)
        } catch let e as WardenError {
            raw.warn("ext4: the journal needs recovery but could not be replayed (\(e.message)); recent changes may be missing")
            return raw
        }
    }

    // MARK: Feature bits

    public enum Compat {
        public static let hasJournal: UInt32 = 0x4
        public static let extAttr: UInt32 = 0x8
        public static let resizeInode: UInt32 = 0x10
        public static let dirIndex: UInt32 = 0x20
        public static let sparseSuper2: UInt32 = 0x200
    }

    public enum Incompat {
        public static let compression: UInt32 = 0x1
        public static let filetype: UInt32 = 0x2
        public static let recover: UInt32 = 0x4
        public static let journalDev: UInt32 = 0x8
        public static let metaBG: UInt32 = 0x10
        public static let extents: UInt32 = 0x40
        public static let bit64: UInt32 = 0x80
        public static let mmp: UInt32 = 0x100
        public static let flexBG: UInt32 = 0x200
        public static let eaInode: UInt32 = 0x400
        public static let dirData: UInt32 = 0x1000
        public static let csumSeed: UInt32 = 0x2000
        public static let largeDir: UInt32 = 0x4000
        public static let inlineData: UInt32 = 0x8000
        public static let encrypt: UInt32 = 0x10000
        public static let casefold: UInt32 = 0x20000

        /// Bits this reader understands.
        public static let supported: UInt32 = filetype | recover | metaBG | extents | bit64 | mmp | flexBG
            | eaInode | dirData | csumSeed | largeDir | inlineData | encrypt | casefold

        static let names: [(UInt32, String)] = [
            (compression, "compression"), (filetype, "filetype"), (recover, "needs_recovery"),
            (journalDev, "journal_dev"), (metaBG, "meta_bg"), (extents, "extent"), (bit64, "64bit"),
            (mmp, "mmp"), (flexBG, "flex_bg"), (eaInode, "ea_inode"), (dirData, "dirdata"),
            (csumSeed, "metadata_csum_seed"), (largeDir, "large_dir"), (inlineData, "inline_data"),
            (encrypt, "encrypt"), (casefold, "casefold"),
        ]
    }

    public enum ROCompat {
        public static let sparseSuper: UInt32 = 0x1
        public static let largeFile: UInt32 = 0x2
        public static let btreeDir: UInt32 = 0x4
        public static let hugeFile: UInt32 = 0x8
        public static let gdtCsum: UInt32 = 0x10
        public static let bigalloc: UInt32 = 0x200
        public static let metadataCsum: UInt32 = 0x400
    }

    /// Names the bits of an incompat mask, "unknown 0x…" for unknown ones.
    static func incompatNames(_ mask: UInt32) -> String {
        describeFeatureBits(mask, names: Incompat.names)
    }

    // MARK: Inode flags

    public enum InodeFlags {
        public static let indexDir: UInt32 = 0x1000
        public static let encrypt: UInt32 = 0x800
        public static let hugeFile: UInt32 = 0x40000
        public static let extents: UInt32 = 0x80000
        public static let eaInode: UInt32 = 0x200000
        public static let inlineData: UInt32 = 0x1000_0000
    }

    static func corrupt(_ message: String) -> WardenError {
        WardenError.corrupt("ext4: " + message)
    }
    static func unsupported(_ message: String) -> WardenError {
        WardenError.unsupported("ext4: " + message)
    }
    static func limit(_ message: String) -> WardenError {
        WardenError.limit("ext4: " + message)
    }
}

/// CRC-16 (reflected 0xA001, the "ANSI" variant) used by the old gdt_csum group descriptor checksum.
enum EXT4CRC16 {
    static let table: [UInt16] = (0..<256).map { i -> UInt16 in
        var c = UInt16(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0xA001 : c >> 1 }
        return c
    }
    static func update<C: Collection>(_ crc: UInt16, _ bytes: C) -> UInt16 where C.Element == UInt8 {
        var c = crc
        for b in bytes { c = (c >> 8) ^ table[Int((c ^ UInt16(b)) & 0xff)] }
        return c
    }
}
