import WardenCore
import DiskImage

extension EXT4 {
    /// The fields of the primary superblock that the reader uses, validated.
    public struct SuperBlock: Sendable {
        public var raw: [UInt8]
        public var inodesCount: UInt32
        public var blocksCount: UInt64
        public var firstDataBlock: UInt32
        public var blockSize: Int
        public var blocksPerGroup: UInt32
        /// Blocks per allocation cluster: 1, or 2^(s_log_cluster_size - s_log_block_size) with
        /// bigalloc (allocation, bitmaps and xattr blocks go by clusters; extents still map blocks).
        public var clusterRatio: Int = 1
        public var clusterSize: Int { blockSize * clusterRatio }
        public var inodesPerGroup: UInt32
        public var state: UInt16
        public var revLevel: UInt32
        public var firstInode: UInt32
        public var inodeSize: Int
        public var featureCompat: UInt32
        public var featureIncompat: UInt32
        public var featureROCompat: UInt32
        public var uuid: [UInt8]
        public var volumeName: [UInt8]
        public var descSize: Int
        public var firstMetaBG: UInt32
        public var backupBGs: (UInt32, UInt32)
        public var checksumType: UInt8
        public var checksumSeedField: UInt32
        public var storedChecksum: UInt32
        public var groupCount: UInt64

        public func hasCompat(_ bit: UInt32) -> Bool { featureCompat & bit != 0 }
        public func hasIncompat(_ bit: UInt32) -> Bool { featureIncompat & bit != 0 }
        public func hasROCompat(_ bit: UInt32) -> Bool { featureROCompat & bit != 0 }
        public var hasMetadataCsum: Bool { hasROCompat(ROCompat.metadataCsum) }

        /// Descriptors per block.
        public var descriptorsPerBlock: Int { blockSize / descSize }

        /// The seed for every metadata checksum: `s_checksum_seed` or crc32c(~0, uuid).
        public var checksumSeed: UInt32 {
            hasIncompat(Incompat.csumSeed) ? checksumSeedField : CRC32.castagnoli.update(0xFFFF_FFFF, uuid)
        }

        /// The superblock checksum as computed over bytes 0..<0x3FC.
        public var computedChecksum: UInt32 {
            CRC32.castagnoli.update(0xFFFF_FFFF, raw[0..<0x3FC])
        }

        /// What blkid would call this filesystem.
        public var typeName: String {
            let ext2Incompat = Incompat.filetype | Incompat.metaBG
            let ext3Incompat = ext2Incompat | Incompat.recover
            let oldRO = ROCompat.sparseSuper | ROCompat.largeFile | ROCompat.btreeDir
            if hasCompat(Compat.hasJournal) {
                if featureIncompat & ~ext3Incompat == 0 && featureROCompat & ~oldRO == 0 { return "ext3" }
            } else {
                if featureIncompat & ~ext2Incompat == 0 && featureROCompat & ~oldRO == 0 { return "ext2" }
            }
            return "ext4"
        }

        /// Parses and validates the 1024-byte superblock read from a device of `deviceSize` bytes.
        public init(_ b: [UInt8], deviceSize: UInt64) throws {
            guard b.count == 1024 else { throw EXT4.corrupt("superblock is truncated (\(b.count) of 1024 bytes)") }
            raw = b
            let r = ByteReader(b, context: "ext4 superblock")
            let magic: UInt16 = try r.le(at: 0x38)
            guard magic == EXT4.magic else {
                throw EXT4.corrupt("bad superblock magic \(hex(magic)) (expected 0xef53)")
            }
            inodesCount = try r.le(at: 0x00)
            let blocksLo: UInt32 = try r.le(at: 0x04)
            firstDataBlock = try r.le(at: 0x14)
            let logBlock: UInt32 = try r.le(at: 0x18)
            blocksPerGroup = try r.le(at: 0x20)
            inodesPerGroup = try r.le(at: 0x28)
            state = try r.le(at: 0x3A)
            revLevel = try r.le(at: 0x4C)
            featureCompat = revLevel >= 1 ? try r.le(at: 0x5C) : 0
            featureIncompat = revLevel >= 1 ? try r.le(at: 0x60) : 0
            featureROCompat = revLevel >= 1 ? try r.le(at: 0x64) : 0
            uuid = Array(try r.slice(0x68, 16))
            volumeName = Array(try r.slice(0x78, 16))
            firstMetaBG = try r.le(at: 0x104)
            let blocksHi: UInt32 = try r.le(at: 0x150)
            backupBGs = (try r.le(at: 0x24C), try r.le(at: 0x250))
            checksumType = try r.le(at: 0x175)
            checksumSeedField = try r.le(at: 0x270)
            storedChecksum = try r.le(at: 0x3FC)

            guard logBlock <= 6 else {
                throw EXT4.corrupt("block size 1024 << \(logBlock) is larger than 65536 bytes")
            }
            blockSize = 1024 << Int(logBlock)
            let is64 = featureIncompat & Incompat.bit64 != 0
            blocksCount = UInt64(blocksLo) | (is64 ? UInt64(blocksHi) << 32 : 0)

            if revLevel == 0 {
                firstInode = 11
                inodeSize = 128
            } else {
                firstInode = try r.le(at: 0x54)
                let isz: UInt16 = try r.le(at: 0x58)
                inodeSize = Int(isz)
                guard inodeSize >= 128, inodeSize <= blockSize, inodeSize & (inodeSize - 1) == 0 else {
                    throw EXT4.corrupt("inode size \(inodeSize) is not a power of two between 128 and the \(blockSize)-byte block size")
                }
            }
            if is64 {
                let ds: UInt16 = try r.le(at: 0xFE)
                descSize = Int(ds)
                guard descSize >= 64, descSize <= 1024, descSize & (descSize - 1) == 0 else {
                    throw EXT4.corrupt("group descriptor size \(descSize) is invalid for a 64bit filesystem")
                }
            } else {
                descSize = 32
            }

            // Incompatible features: refuse what we cannot read correctly.
            let unknown = featureIncompat & ~Incompat.supported
            if featureIncompat & Incompat.journalDev != 0 {
                throw EXT4.unsupported("this is an external journal device (journal_dev), not a filesystem")
            }
            if unknown != 0 {
                throw EXT4.unsupported("unsupported incompatible features \(hex(unknown)) (\(EXT4.incompatNames(unknown)))")
            }
            if featureROCompat & ROCompat.metadataCsum != 0 && checksumType != 1 {
                throw EXT4.unsupported("unknown metadata checksum type \(checksumType) (only 1 = crc32c exists)")
            }

            // Geometry. With bigalloc a group holds (8 × block size) clusters, each
            // clusterRatio blocks, and s_blocks_per_group counts blocks.
            if featureROCompat & ROCompat.bigalloc != 0 {
                let logCluster: UInt32 = try r.le(at: 0x1C)
                guard logCluster >= logBlock, logCluster - logBlock <= 16 else {
                    throw EXT4.corrupt("cluster size 1024 << \(logCluster) is not a block size (1024 << \(logBlock)) times a power of two up to 65536")
                }
                clusterRatio = 1 << Int(logCluster - logBlock)
                let clustersPerGroup: UInt32 = try r.le(at: 0x24)
                guard clustersPerGroup >= 8, clustersPerGroup <= UInt32(8 * blockSize),
                      UInt64(blocksPerGroup) == UInt64(clustersPerGroup) * UInt64(clusterRatio) else {
                    throw EXT4.corrupt("bigalloc: \(blocksPerGroup) blocks per group is not \(clustersPerGroup) clusters per group (8...\(8 * blockSize)) of \(clusterRatio) blocks")
                }
            } else {
                guard blocksPerGroup >= 8, blocksPerGroup <= UInt32(8 * blockSize) else {
                    throw EXT4.corrupt("blocks per group \(blocksPerGroup) is outside 8...\(8 * blockSize)")
                }
            }
            guard inodesPerGroup >= 1, inodesPerGroup <= UInt32(8 * blockSize) else {
                throw EXT4.corrupt("inodes per group \(inodesPerGroup) is outside 1...\(8 * blockSize)")
            }
            guard UInt64(firstDataBlock) < blocksCount, firstDataBlock <= 1 else {
                throw EXT4.corrupt("first data block \(firstDataBlock) is invalid for \(blocksCount) blocks")
            }
            let bs = UInt64(blockSize)
            let (bytes, ov) = blocksCount.multipliedReportingOverflow(by: bs)
            guard !ov, bytes <= deviceSize else {
                throw EXT4.corrupt("superblock claims \(blocksCount) blocks of \(blockSize) bytes, but the volume is only \(deviceSize) bytes")
            }
            let dataBlocks = blocksCount - UInt64(firstDataBlock)
            groupCount = (dataBlocks + UInt64(blocksPerGroup) - 1) / UInt64(blocksPerGroup)
            guard groupCount >= 1 else { throw EXT4.corrupt("filesystem has no block groups") }
            let (maxInodes, ov2) = groupCount.multipliedReportingOverflow(by: UInt64(inodesPerGroup))
            guard inodesCount >= 11 || revLevel == 0 && inodesCount >= 2, ov2 || UInt64(inodesCount) <= maxInodes else {
                throw EXT4.corrupt("inode count \(inodesCount) does not fit \(groupCount) groups of \(inodesPerGroup) inodes")
            }
            if featureIncompat & Incompat.metaBG != 0 {
                // First meta_bg must lie inside the descriptor table.
                let descBlocks = (groupCount + UInt64(blockSize / descSize) - 1) / UInt64(blockSize / descSize)
                guard UInt64(firstMetaBG) <= descBlocks else {
                    throw EXT4.corrupt("first meta_bg \(firstMetaBG) is beyond the \(descBlocks) descriptor blocks")
                }
            }
        }

        /// Where group `g`'s descriptor lives: the block and the byte offset in it. Without
        /// meta_bg (or below `s_first_meta_bg`) the table follows the primary superblock's
        /// block (block 1 with 1 KiB blocks, else 0), as the kernel reads it; with meta_bg each
        /// descriptor block sits at the start of the first group it describes, after that
        /// group's superblock backup if it has one.
        func descriptorLocation(ofGroup g: UInt64) throws -> (block: UInt64, offset: Int) {
            guard g < groupCount else { throw EXT4.corrupt("block group \(g) is beyond the \(groupCount) groups") }
            let perBlock = UInt64(descriptorsPerBlock)
            let descBlock = g / perBlock
            let block: UInt64
            if hasIncompat(Incompat.metaBG) && descBlock >= UInt64(firstMetaBG) {
                let firstGroup = descBlock * perBlock
                let groupStart = try Checked.add(try Checked.mul(firstGroup, UInt64(blocksPerGroup)), UInt64(firstDataBlock))
                block = groupStart + (groupHasSuper(firstGroup) ? 1 : 0)
            } else {
                block = (blockSize == 1024 ? 1 : 0) + 1 + descBlock
            }
            return (block, Int(g % perBlock) * descSize)
        }

        /// Whether `group` holds a superblock backup (and so, without meta_bg, a GDT copy).
        func groupHasSuper(_ group: UInt64) -> Bool {
            if group == 0 { return true }
            if hasCompat(Compat.sparseSuper2) {
                return group == UInt64(backupBGs.0) || group == UInt64(backupBGs.1)
            }
            if group <= 1 || !hasROCompat(ROCompat.sparseSuper) { return true }
            if group & 1 == 0 { return false }
            for base: UInt64 in [3, 5, 7] {
                var p = base
                while p < group { p *= base }
                if p == group { return true }
            }
            return false
        }
    }

    /// One block group descriptor (32- or 64-bit layout).
    public struct GroupDescriptor: Sendable {
        public var blockBitmap: UInt64
        public var inodeBitmap: UInt64
        public var inodeTable: UInt64
        public var flags: UInt16
        public var checksum: UInt16

        init(_ b: ArraySlice<UInt8>, descSize: Int) throws {
            let lo = { (o: Int) throws -> UInt32 in try b.le(o) }
            let wide = descSize >= 64
            blockBitmap = UInt64(try lo(0x0)) | (wide ? UInt64(try lo(0x20)) << 32 : 0)
            inodeBitmap = UInt64(try lo(0x4)) | (wide ? UInt64(try lo(0x24)) << 32 : 0)
            inodeTable = UInt64(try lo(0x8)) | (wide ? UInt64(try lo(0x28)) << 32 : 0)
            flags = try b.le(0x12)
            checksum = try b.le(0x1E)
        }
    }
}
