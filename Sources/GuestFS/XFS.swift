import WardenCore
import DiskImage

// A read-only reader for XFS (v4 and v5 superblocks). Every multi-byte field is big-endian,
// except the crc32c checksums of v5 metadata, which are stored little-endian.
//
// The volume is split into allocation groups (AGs) of sb_agblocks blocks each:
//
//   AG 0                                                                   AG 1 ...
//   +--------+--------+--------+--------+----------------------------------+--------+---
//   | sb     | AGF    | AGI    | AGFL   | free-space / inode btrees,       | sb     |
//   | sector | sector | sector | sector | inode chunks (64 inodes each),   | backup | ...
//   |        |        |        |        | file data, directory blocks, ... |        |
//   +--------+--------+--------+--------+----------------------------------+--------+---
//   byte 0: superblock, magic "XFSB" (the AG 0 copy is the primary one; on v5 its crc32c
//   covers sb_sectsize bytes with the crc field at offset 224 counted as zeros)
//
//   Block numbers inside files are "fsblocks": (agno << sb_agblklog) | agbno, so the disk
//   address is (agno * sb_agblocks + agbno) * blocksize. Inode numbers extend that by the
//   inode's slot in its block: (agno << (agblklog + inopblog)) | (agbno << inopblog) | slot.
//
//   inode (sb_inodesize bytes, 256 ... 2048)
//   +---------------------------------------+-------------------------+-------------------+
//   | core: magic "IN", mode, version 1/2/3,| data fork               | attribute fork    |
//   | format, uid, gid, nlink, times, size, | (di_forkoff * 8 bytes,  | (xattrs; ignored) |
//   | nextents, forkoff, flags ... v3 adds  |  or up to the end when  |                   |
//   | crc, flags2, crtime, ino, uuid        |  there is no attr fork) |                   |
//   | (100 bytes for v1/v2, 176 for v3)     |                         |                   |
//   +---------------------------------------+-------------------------+-------------------+
//   data fork formats:
//     local   - the bytes themselves (short directories, short symlink targets)
//     extents - di_nextents packed 128-bit records:
//               [unwritten:1][file offset:54][disk fsblock:52][length:21]
//     btree   - a bmbt root (level, numrecs, keys[], ptrs[]) whose pointers lead to
//               "BMAP"/"BMA3" blocks; level-0 blocks hold extent records
//
//   directories (directory blocks are blocksize << sb_dirblklog bytes)
//     shortform (local): count, i8count, parent, then (namelen, offset, name, [ftype], ino)
//     block/leaf/node/btree: data blocks ("XD2B"/"XD2D", v5 "XDB3"/"XDD3") at file offsets
//       below 32 GiB hold the entries (ino u64, namelen, name, [ftype], pad, tag u16) and
//       free gaps (0xFFFF, length); hash leaves and free indexes live at 32 GiB and up and are
//       not needed to list the directory. A single-block directory ends with a leaf array and
//       a (count, stale) tail inside the data block.
//
//   symlinks: local (target in the fork) or remote (blocks; v5 blocks start with an "XSLM"
//   header carrying offset, byte count and crc32c).

/// Namespace for the XFS reader. Start with ``XFS/open(_:)``.
public enum XFS {
    /// "XFSB" at byte 0.
    public static let magic: UInt32 = 0x5846_5342

    /// Caps that keep memory and time bounded whatever the image claims.
    public enum Limits {
        /// Deepest bmbt accepted (the root in the inode counts as one level).
        public static let maxBmbtDepth = 8
        /// Most extents collected for one file.
        public static let maxExtents = 4 << 20
        /// Most bmbt blocks visited for one file.
        public static let maxBmbtBlocks = 1 << 20
        /// Largest directory data range (bytes below the leaf offset) that is scanned.
        public static let maxDirectoryBytes: UInt64 = 1 << 30
        /// Most entries returned for one directory.
        public static let maxDirectoryEntries = 4 << 20
        /// Largest single `read` call.
        public static let maxReadBytes = 256 << 20
        /// Longest symlink target (XFS itself allows 1024).
        public static let maxSymlinkBytes: UInt64 = 1024
        /// Most warnings kept.
        public static let maxWarnings = 1000
    }

    /// True if `device` starts with the XFS superblock magic.
    public static func probe(_ device: any BlockDevice) -> Bool {
        guard device.size >= 512, let m = try? device.read(at: 0, count: 4) else { return false }
        return m == [0x58, 0x46, 0x53, 0x42]
    }

    /// Opens the filesystem on `device` (a whole disk or a partition slice).
    public static func open(_ device: any BlockDevice) throws -> XFSVolume {
        try XFSVolume(device: device)
    }

    // MARK: Feature bits

    /// Bits of `sb_versionnum` above the version nibble.
    public enum VersionBits {
        public static let attr: UInt16 = 0x10
        public static let nlink: UInt16 = 0x20
        public static let quota: UInt16 = 0x40
        public static let align: UInt16 = 0x80
        public static let dalign: UInt16 = 0x100
        public static let shared: UInt16 = 0x200
        public static let logV2: UInt16 = 0x400
        public static let sector: UInt16 = 0x800
        public static let extFlag: UInt16 = 0x1000
        public static let dirV2: UInt16 = 0x2000
        public static let asciiCI: UInt16 = 0x4000
        public static let moreBits: UInt16 = 0x8000
    }

    /// `sb_features2` bits.
    public enum Features2 {
        public static let lazySBCount: UInt32 = 0x2
        public static let attr2: UInt32 = 0x8
        public static let parent: UInt32 = 0x10
        public static let projid32: UInt32 = 0x80
        public static let crc: UInt32 = 0x100
        public static let ftype: UInt32 = 0x200
    }

    /// `sb_features_incompat` bits (v5 only).
    public enum Incompat {
        public static let ftype: UInt32 = 0x1
        public static let sparseInodes: UInt32 = 0x2
        public static let metaUUID: UInt32 = 0x4
        public static let bigtime: UInt32 = 0x8
        public static let needsRepair: UInt32 = 0x10
        public static let nrext64: UInt32 = 0x20
        public static let exchangeRange: UInt32 = 0x40
        public static let parent: UInt32 = 0x80
        public static let metadir: UInt32 = 0x100

        /// Bits this reader understands.
        public static let supported: UInt32 = ftype | sparseInodes | metaUUID | bigtime | needsRepair
            | nrext64 | exchangeRange | parent

        static let names: [(UInt32, String)] = [
            (ftype, "ftype"), (sparseInodes, "sparse_inodes"), (metaUUID, "meta_uuid"), (bigtime, "bigtime"),
            (needsRepair, "needs_repair"), (nrext64, "nrext64"), (exchangeRange, "exchange_range"),
            (parent, "parent"), (metadir, "metadir"),
        ]
    }

    /// Names the bits of an incompat mask, "unknown 0x…" for unknown ones.
    static func incompatNames(_ mask: UInt32) -> String {
        describeFeatureBits(mask, names: Incompat.names)
    }

    // MARK: Inode flags

    public enum InodeFlags {
        /// `di_flags`: data lives on the realtime device.
        public static let realtime: UInt16 = 0x1
        /// `di_flags2`: timestamps are 64-bit nanosecond counters.
        public static let bigtime: UInt64 = 0x8
        /// `di_flags2`: 64-bit data fork extent counter.
        public static let nrext64: UInt64 = 0x10
    }

    /// `di_format` values.
    public enum ForkFormat: UInt8, Sendable {
        case device = 0
        case local = 1
        case extents = 2
        case btree = 3
        case uuid = 4
        case metaBtree = 5
    }

    /// The file type stored in directory entries when ftype is enabled.
    static func entryType(_ t: UInt8) -> FileType? {
        FileType(direntCode: t)
    }

    /// Standard crc32c of `bytes` with the 4 bytes at `crcOffset` counted as zeros, as XFS
    /// computes it, and the value stored there (little-endian).
    static func crc(_ bytes: ArraySlice<UInt8>, crcOffset: Int) -> (stored: UInt32, computed: UInt32) {
        let s = bytes.startIndex
        guard crcOffset >= 0, crcOffset + 4 <= bytes.count else { return (0, 1) }
        let c = CRC32.castagnoli
        var r = c.update(0xFFFF_FFFF, bytes[s..<(s + crcOffset)])
        r = c.update(r, [0, 0, 0, 0] as [UInt8])
        r = c.update(r, bytes[(s + crcOffset + 4)...])
        let p = s + crcOffset
        let stored = UInt32(bytes[p]) | UInt32(bytes[p + 1]) << 8 | UInt32(bytes[p + 2]) << 16 | UInt32(bytes[p + 3]) << 24
        return (stored, ~r)
    }

    static func corrupt(_ message: String) -> WardenError {
        WardenError.corrupt("xfs: " + message)
    }
    static func unsupported(_ message: String) -> WardenError {
        WardenError.unsupported("xfs: " + message)
    }
    static func limit(_ message: String) -> WardenError {
        WardenError.limit("xfs: " + message)
    }
}

extension ArraySlice where Element == UInt8 {
    /// Big-endian read at `offset` relative to the slice start; throws on short input.
    @inlinable
    func xbe<T: FixedWidthInteger & UnsignedInteger>(_ offset: Int, _: T.Type = T.self) throws -> T {
        try ByteReader.be(self, at: offset)
    }
}
