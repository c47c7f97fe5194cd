import WardenCore
import DiskImage

// btrfs, read-only, from the on-disk format as the kernel's btrfs_tree.h and the btrfs
// documentation describe it. Everything is little-endian.
//
//   superblock (4 KiB) at 64 KiB, mirrored at 64 MiB and 256 GiB: checksum, fsid, the
//     logical addresses of the root tree and the chunk tree, node and sector sizes, and
//     the "system chunk array": the chunks that hold the chunk tree itself.
//   chunks map logical addresses to (device, physical offset) stripes. Profiles read here:
//     single, DUP and RAID1/RAID1C3/RAID1C4 (any copy on this device); striped profiles
//     (RAID0/10/5/6) are refused.
//   trees are B-trees of nodes (nodesize bytes): a 101-byte header (checksum, fsid, bytenr,
//     owner, item count, level) then, in a leaf, 25-byte items (key, data offset, data size)
//     whose data grows from the end; in an internal node, 33-byte key pointers.
//   keys are (objectid, type, offset), ordered in that order.
//   the root tree holds a ROOT_ITEM for every tree: the top-level filesystem tree (5) and
//     each subvolume or snapshot (256…), ROOT_BACKREFs naming where each subvolume lives,
//     and, in directory 6, the entry "default" naming the default subvolume.
//   a filesystem tree holds, per inode: INODE_ITEM, INODE_REF (name in the parent),
//     DIR_INDEX entries of directories (in creation order), and EXTENT_DATA items: inline
//     data, or a reference into a (possibly zlib/LZO/zstd-compressed) extent on disk.
//     A directory entry whose location is a ROOT_ITEM enters another subvolume.

/// btrfs: constants, limits and the structures shared by ``BtrfsVolume``.
public enum Btrfs {
    public enum Limits {
        static let maxWarnings = 64
        /// Deepest tree level accepted (BTRFS_MAX_LEVEL is 8: levels 0…7).
        static let maxLevel: UInt8 = 7
        static let maxNodeSize = 65_536
        /// Stripes per chunk (RAID1C4 has 4; DUP 2).
        static let maxStripes = 16
        static let maxChunks = 1 << 20
        /// Nodes one tree walk may visit (a hostile tree may share children between parents).
        static let maxNodesPerWalk = 1 << 20
        /// Largest single read of file data.
        static let maxReadBytes = 64 << 20
        /// A compressed extent never holds more than 128 KiB of data (BTRFS_MAX_UNCOMPRESSED).
        static let maxUncompressed = 128 * 1024
        /// File extents kept in memory for one file.
        static let maxExtentsPerFile = 1 << 21
        static let maxDirectoryEntries = 2_000_000
        static let maxSymlinkBytes = 4095
        static let maxSubvolumes = 65_535
        /// Directory levels followed when naming where a subvolume lives.
        static let maxPathDepth = 512
    }

    /// Byte offsets of the superblock and its mirrors.
    static let superblockOffsets: [UInt64] = [0x1_0000, 0x400_0000, 0x40_0000_0000]
    static let superblockSize = 4096
    static let magic = Array("_BHRfS_M".utf8)
    static let nodeHeaderSize = 101
    static let leafItemSize = 25
    static let keyPointerSize = 33

    /// A tree key.
    struct Key: Comparable, Hashable, Sendable, CustomStringConvertible {
        var objectid: UInt64
        var type: UInt8
        var offset: UInt64

        static func < (a: Key, b: Key) -> Bool {
            if a.objectid != b.objectid { return a.objectid < b.objectid }
            if a.type != b.type { return a.type < b.type }
            return a.offset < b.offset
        }

        /// Reads a 17-byte disk key at `at` of `bytes`.
        init(_ bytes: [UInt8], at: Int) throws {
            offset = try bytes.le(at + 9)   // checks the whole 17 bytes first
            objectid = try bytes.le(at)
            type = bytes[at + 8]
        }

        init(_ objectid: UInt64, _ type: UInt8, _ offset: UInt64) {
            self.objectid = objectid
            self.type = type
            self.offset = offset
        }

        var description: String { "(\(objectid) \(type) \(offset))" }
    }

    enum ItemType {
        static let inodeItem: UInt8 = 1
        static let inodeRef: UInt8 = 12
        static let dirItem: UInt8 = 84
        static let dirIndex: UInt8 = 96
        static let extentData: UInt8 = 108
        static let rootItem: UInt8 = 132
        static let rootBackref: UInt8 = 144
        static let rootRef: UInt8 = 156
        static let chunkItem: UInt8 = 228
    }

    enum ObjectID {
        static let rootTree: UInt64 = 1
        static let chunkTree: UInt64 = 3
        static let fsTree: UInt64 = 5
        static let rootTreeDir: UInt64 = 6
        static let firstFree: UInt64 = 256
        static let lastFree: UInt64 = UInt64.max - 255
        static let firstChunkTree: UInt64 = 256
        /// The inode the kernel shows for a subvolume entry whose subvolume is gone.
        static let emptySubvolumeDir: UInt64 = 2
    }

    enum BlockGroup {
        static let raid0: UInt64 = 1 << 3
        static let raid1: UInt64 = 1 << 4
        static let dup: UInt64 = 1 << 5
        static let raid10: UInt64 = 1 << 6
        static let raid5: UInt64 = 1 << 7
        static let raid6: UInt64 = 1 << 8
        static let raid1c3: UInt64 = 1 << 9
        static let raid1c4: UInt64 = 1 << 10
        static let striped = raid0 | raid10 | raid5 | raid6
    }

    public enum Incompat {
        static let mixedBackref: UInt64 = 1 << 0
        static let defaultSubvol: UInt64 = 1 << 1
        static let mixedGroups: UInt64 = 1 << 2
        static let compressLZO: UInt64 = 1 << 3
        static let compressZstd: UInt64 = 1 << 4
        static let bigMetadata: UInt64 = 1 << 5
        static let extendedIref: UInt64 = 1 << 6
        static let raid56: UInt64 = 1 << 7
        static let skinnyMetadata: UInt64 = 1 << 8
        static let noHoles: UInt64 = 1 << 9
        static let metadataUUID: UInt64 = 1 << 10
        static let raid1c34: UInt64 = 1 << 11
        static let zoned: UInt64 = 1 << 12
        static let extentTreeV2: UInt64 = 1 << 13
        static let raidStripeTree: UInt64 = 1 << 14
        static let simpleQuota: UInt64 = 1 << 16
        /// Features that change nothing this reader reads.
        static let understood: UInt64 = mixedBackref | defaultSubvol | mixedGroups | compressLZO | compressZstd
            | bigMetadata | extendedIref | raid56 | skinnyMetadata | noHoles | metadataUUID | raid1c34 | zoned
            | simpleQuota
        static let names: [(UInt64, String)] = [
            (mixedBackref, "mixed_backref"), (defaultSubvol, "default_subvol"), (mixedGroups, "mixed_groups"),
            (compressLZO, "compress_lzo"), (compressZstd, "compress_zstd"), (bigMetadata, "big_metadata"),
            (extendedIref, "extended_iref"), (raid56, "raid56"), (skinnyMetadata, "skinny_metadata"),
            (noHoles, "no_holes"), (metadataUUID, "metadata_uuid"), (raid1c34, "raid1c34"), (zoned, "zoned"),
            (extentTreeV2, "extent_tree_v2"), (raidStripeTree, "raid_stripe_tree"), (simpleQuota, "simple_quota"),
        ]
    }

    /// Checksum algorithms of metadata blocks (superblock `csum_type`).
    enum ChecksumType: UInt16 {
        case crc32c = 0, xxhash64 = 1, sha256 = 2, blake2b = 3
    }

    // MARK: Superblock

    struct SuperBlock: Sendable {
        var fsid: [UInt8]
        /// The fsid stamped into every tree node (differs from `fsid` with metadata_uuid).
        var metadataFSID: [UInt8]
        var bytenr: UInt64
        var generation: UInt64
        var root: UInt64
        var chunkRoot: UInt64
        var logRoot: UInt64
        var totalBytes: UInt64
        var numDevices: UInt64
        var sectorSize: Int
        var nodeSize: Int
        var sysChunkArray: [UInt8]
        var incompat: UInt64
        var checksumType: UInt16
        var rootLevel: UInt8
        var chunkRootLevel: UInt8
        var devid: UInt64
        var label: String?

        init(_ raw: [UInt8], at offset: UInt64) throws {
            guard raw.count >= Btrfs.superblockSize else { throw Btrfs.corrupt("superblock at \(offset) is truncated") }
            guard Array(raw[0x40..<0x48]) == Btrfs.magic else {
                throw Btrfs.corrupt("no superblock magic at byte \(offset)")
            }
            fsid = Array(raw[0x20..<0x30])
            bytenr = try raw.le(0x30)
            generation = try raw.le(0x48)
            root = try raw.le(0x50)
            chunkRoot = try raw.le(0x58)
            logRoot = try raw.le(0x60)
            totalBytes = try raw.le(0x70)
            numDevices = try raw.le(0x88)
            let ss: UInt32 = try raw.le(0x90)
            let ns: UInt32 = try raw.le(0x94)
            let arraySize: UInt32 = try raw.le(0xa0)
            incompat = try raw.le(0xbc)
            checksumType = try raw.le(0xc4)
            rootLevel = raw[0xc6]
            chunkRootLevel = raw[0xc7]
            devid = try raw.le(0xc9)
            guard bytenr == offset else {
                throw Btrfs.corrupt("superblock at byte \(offset) says it belongs at \(bytenr)")
            }
            guard ss >= 4096, ss <= 65_536, ss & (ss - 1) == 0 else {
                throw Btrfs.corrupt("sector size \(ss) is not a power of two from 4096 to 65536")
            }
            guard ns >= ss, ns <= UInt32(Btrfs.Limits.maxNodeSize), ns & (ns - 1) == 0 else {
                throw Btrfs.corrupt("node size \(ns) is not a power of two from the sector size (\(ss)) to 65536")
            }
            guard arraySize <= 2048 else { throw Btrfs.corrupt("system chunk array of \(arraySize) bytes exceeds 2048") }
            guard rootLevel <= Btrfs.Limits.maxLevel, chunkRootLevel <= Btrfs.Limits.maxLevel else {
                throw Btrfs.corrupt("tree level \(max(rootLevel, chunkRootLevel)) exceeds \(Btrfs.Limits.maxLevel)")
            }
            guard ChecksumType(rawValue: checksumType) != nil else {
                throw Btrfs.unsupported("checksum type \(checksumType) is unknown")
            }
            sectorSize = Int(ss)
            nodeSize = Int(ns)
            sysChunkArray = Array(raw[0x32b..<(0x32b + Int(arraySize))])
            metadataFSID = incompat & Incompat.metadataUUID != 0 ? Array(raw[0x23b..<0x24b]) : fsid
            var l = Array(raw[0x12b..<0x22b])
            if let nul = l.firstIndex(of: 0) { l.removeSubrange(nul...) }
            label = l.isEmpty ? nil : ManifestEscaping.escape(l)
        }
    }

    /// The crc32c of a metadata block (`bytes[32...]`) as stored in its first 4 bytes.
    static func crc32c(_ bytes: [UInt8]) -> (stored: UInt32, computed: UInt32) {
        let stored = bytes.peekLE(0, as: UInt32.self) ?? 0
        let computed = bytes.withUnsafeBytes { CRC32.castagnoli.update(0xFFFF_FFFF, UnsafeRawBufferPointer(rebasing: $0[32...])) } ^ 0xFFFF_FFFF
        return (stored, computed)
    }

    // MARK: Chunks

    struct Stripe: Sendable {
        var devid: UInt64
        var offset: UInt64
    }

    /// One chunk: `length` bytes of logical address space from `logical`.
    struct Chunk: Sendable {
        var logical: UInt64
        var length: UInt64
        var type: UInt64
        var stripes: [Stripe]
        var end: UInt64 { logical &+ length }
    }

    /// Parses the chunk item at `at` in `bytes` (for logical address `logical`);
    /// returns it and its size in bytes.
    static func parseChunk(_ bytes: [UInt8], at: Int, logical: UInt64) throws -> (Chunk, Int) {
        guard at >= 0, at + 48 <= bytes.count else { throw corrupt("chunk item at \(logical) is truncated") }
        let length: UInt64 = try bytes.le(at)
        let type: UInt64 = try bytes.le(at + 24)
        let num: UInt16 = try bytes.le(at + 44)
        guard num >= 1, Int(num) <= Limits.maxStripes else {
            throw corrupt("chunk at \(logical) has \(num) stripes")
        }
        let size = 48 + Int(num) * 32
        guard at + size <= bytes.count else { throw corrupt("chunk at \(logical) with \(num) stripes is truncated") }
        guard length > 0, logical.addingReportingOverflow(length).overflow == false else {
            throw corrupt("chunk at \(logical) has length \(length)")
        }
        var stripes: [Stripe] = []
        for i in 0..<Int(num) {
            stripes.append(Stripe(devid: try bytes.le(at + 48 + i * 32), offset: try bytes.le(at + 56 + i * 32)))
        }
        return (Chunk(logical: logical, length: length, type: type, stripes: stripes), size)
    }

    // MARK: Nodes

    /// One parsed tree node. Leaves carry items with their data ranges in `raw`;
    /// internal nodes carry key pointers.
    final class Node: Sendable {
        let bytenr: UInt64
        let level: UInt8
        let owner: UInt64
        let raw: [UInt8]
        let keys: [Key]
        /// Leaves: (offset, size) of each item's data in `raw`. Internal nodes: empty.
        let data: [(Int, Int)]
        /// Internal nodes: the child block of each key.
        let children: [UInt64]

        init(bytenr: UInt64, raw: [UInt8]) throws {
            self.bytenr = bytenr
            self.raw = raw
            let nritems: UInt32 = try raw.le(0x60)
            level = raw[0x64]
            owner = try raw.le(0x58)
            var keys: [Key] = []
            var data: [(Int, Int)] = []
            var children: [UInt64] = []
            let h = Btrfs.nodeHeaderSize
            if level == 0 {
                guard Int(nritems) <= (raw.count - h) / Btrfs.leafItemSize else {
                    throw Btrfs.corrupt("leaf \(bytenr) claims \(nritems) items")
                }
                let itemsEnd = h + Int(nritems) * Btrfs.leafItemSize
                keys.reserveCapacity(Int(nritems))
                data.reserveCapacity(Int(nritems))
                for i in 0..<Int(nritems) {
                    let at = h + i * Btrfs.leafItemSize
                    let key = try Key(raw, at: at)
                    let off: UInt32 = try raw.le(at + 17)
                    let size: UInt32 = try raw.le(at + 21)
                    let start = h + Int(off)
                    guard start >= itemsEnd, Int(size) <= raw.count - start else {
                        throw Btrfs.corrupt("item \(i) of leaf \(bytenr) has data at \(off)+\(size), outside the leaf")
                    }
                    if let last = keys.last, !(last < key) {
                        throw Btrfs.corrupt("leaf \(bytenr) keys are out of order at item \(i) (\(last) then \(key))")
                    }
                    keys.append(key)
                    data.append((start, Int(size)))
                }
            } else {
                guard Int(nritems) <= (raw.count - h) / Btrfs.keyPointerSize, nritems > 0 else {
                    throw Btrfs.corrupt("node \(bytenr) claims \(nritems) key pointers")
                }
                keys.reserveCapacity(Int(nritems))
                children.reserveCapacity(Int(nritems))
                for i in 0..<Int(nritems) {
                    let at = h + i * Btrfs.keyPointerSize
                    let key = try Key(raw, at: at)
                    if let last = keys.last, !(last < key) {
                        throw Btrfs.corrupt("node \(bytenr) keys are out of order at pointer \(i) (\(last) then \(key))")
                    }
                    keys.append(key)
                    children.append(try raw.le(at + 17))
                }
            }
            self.keys = keys
            self.data = data
            self.children = children
        }

        /// Index of the first key ≥ `key` (keys.count if none).
        func lowerBound(_ key: Key) -> Int {
            var lo = 0, hi = keys.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if keys[mid] < key { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }

        func itemData(_ i: Int) -> ArraySlice<UInt8> {
            let (start, size) = data[i]
            return raw[start..<(start + size)]
        }
    }

    // MARK: Items

    /// The fields of an INODE_ITEM this reader uses.
    struct Inode: Sendable {
        var size: UInt64
        var nlink: UInt32
        var uid: UInt32
        var gid: UInt32
        var mode: UInt32
        var flags: UInt64
        var mtime: Int64

        init(size: UInt64, nlink: UInt32, uid: UInt32, gid: UInt32, mode: UInt32, flags: UInt64, mtime: Int64) {
            self.size = size
            self.nlink = nlink
            self.uid = uid
            self.gid = gid
            self.mode = mode
            self.flags = flags
            self.mtime = mtime
        }

        init(_ d: ArraySlice<UInt8>) throws {
            guard d.count >= 160 else { throw Btrfs.corrupt("inode item of \(d.count) bytes is shorter than 160") }
            size = try d.le(16)
            nlink = try d.le(40)
            uid = try d.le(44)
            gid = try d.le(48)
            mode = try d.le(52)
            flags = try d.le(64)
            mtime = Int64(bitPattern: try d.le(136) as UInt64)
        }
    }

    /// One directory entry as stored (DIR_ITEM / DIR_INDEX data).
    struct DirEntry {
        var location: Key
        var type: UInt8
        var name: [UInt8]

        /// Parses every entry packed in a DIR_ITEM (DIR_INDEX holds exactly one).
        static func parse(_ d: ArraySlice<UInt8>) throws -> [DirEntry] {
            var out: [DirEntry] = []
            let bytes = Array(d)
            var at = 0
            while at < bytes.count {
                guard bytes.count - at >= 30 else { throw Btrfs.corrupt("directory item is truncated") }
                let location = try Key(bytes, at: at)
                let dataLen: UInt16 = try bytes.le(at + 25)
                let nameLen: UInt16 = try bytes.le(at + 27)
                let type = bytes[at + 29]
                guard nameLen >= 1, nameLen <= 255 else { throw Btrfs.corrupt("directory entry name of \(nameLen) bytes") }
                let end = at + 30 + Int(nameLen) + Int(dataLen)
                guard end <= bytes.count else { throw Btrfs.corrupt("directory entry runs past its item") }
                out.append(DirEntry(location: location, type: type, name: Array(bytes[(at + 30)..<(at + 30 + Int(nameLen))])))
                at = end
            }
            return out
        }
    }

    /// One EXTENT_DATA item of a file.
    struct FileExtent: Sendable {
        enum Kind: Sendable {
            /// Data stored in the item (possibly compressed).
            case inline([UInt8])
            /// `diskBytenr` 0 is a hole; `offset` is where the file's part starts in the
            /// (decompressed) extent.
            case regular(diskBytenr: UInt64, diskNumBytes: UInt64, offset: UInt64)
            /// Allocated, never written: reads as zeros.
            case prealloc
        }
        var fileOffset: UInt64
        /// Bytes of the file this extent covers.
        var length: UInt64
        var ramBytes: UInt64
        var compression: UInt8
        var kind: Kind

        init(fileOffset: UInt64, _ d: ArraySlice<UInt8>, inode: String) throws {
            guard d.count >= 21 else { throw Btrfs.corrupt("extent item of \(inode) is truncated") }
            self.fileOffset = fileOffset
            ramBytes = try d.le(8)
            compression = d[d.startIndex + 16]
            let encryption = d[d.startIndex + 17]
            let otherEncoding: UInt16 = try d.le(18)
            let type = d[d.startIndex + 20]
            guard encryption == 0, otherEncoding == 0 else {
                throw Btrfs.unsupported("\(inode) has an encrypted or encoded extent")
            }
            guard compression <= 3 else { throw Btrfs.unsupported("\(inode) uses compression type \(compression)") }
            switch type {
            case 0:
                let payload = Array(d.dropFirst(21))
                kind = .inline(payload)
                length = compression == 0 ? UInt64(payload.count) : ramBytes
                guard compression == 0 || ramBytes <= UInt64(Btrfs.Limits.maxUncompressed) else {
                    throw Btrfs.corrupt("\(inode) has an inline extent of \(ramBytes) bytes")
                }
            case 1, 2:
                guard d.count >= 53 else { throw Btrfs.corrupt("extent item of \(inode) is truncated") }
                let bytenr: UInt64 = try d.le(21)
                let diskNum: UInt64 = try d.le(29)
                let offset: UInt64 = try d.le(37)
                length = try d.le(45)
                if type == 2 {
                    kind = .prealloc
                } else {
                    kind = .regular(diskBytenr: bytenr, diskNumBytes: diskNum, offset: offset)
                    if compression != 0 && bytenr != 0 {
                        guard ramBytes <= UInt64(Btrfs.Limits.maxUncompressed), diskNum <= UInt64(Btrfs.Limits.maxUncompressed),
                              offset <= ramBytes, length <= ramBytes - offset else {
                            throw Btrfs.corrupt("\(inode) has a compressed extent of \(diskNum) bytes for \(ramBytes) (part \(offset)+\(length))")
                        }
                    }
                }
            default:
                throw Btrfs.corrupt("\(inode) has extent type \(type)")
            }
            guard fileOffset.addingReportingOverflow(length).overflow == false else {
                throw Btrfs.corrupt("\(inode) has an extent past the largest file offset")
            }
        }
    }

    // MARK: Errors

    static func corrupt(_ message: String) -> WardenError { WardenError.corrupt("btrfs: " + message) }
    static func unsupported(_ message: String) -> WardenError { WardenError.unsupported("btrfs: " + message) }
    static func limit(_ message: String) -> WardenError { WardenError.limit("btrfs: " + message) }

    /// Opens the btrfs filesystem on `device`, viewing its default subvolume.
    public static func open(_ device: any BlockDevice) throws -> BtrfsVolume {
        try BtrfsVolume(core: BtrfsCore(device: device))
    }
}
