import Foundation
import WardenCore
import DiskImage

// Writing ext2/3/4 (see docs/write-path.md).
//
//   one operation, in write order
//   +-----------------------------------------------------------------------------+
//   | 1. allocate: bitmap block, group descriptor (free counts, flags, checksums) |
//   | 2. new data blocks, new extent-tree / indirect blocks                       |
//   | 3. the inode (size, i_block, i_blocks, times, checksum)                     |
//   | 4. the directory entry (insert) -- or, for unlink, the entry goes first     |
//   | 5. free what the inode no longer uses: bitmaps, group descriptors           |
//   | 6. superblock free counts and checksum                                      |
//   +-----------------------------------------------------------------------------+
//   An interruption leaves at worst leaked blocks or an orphan inode (which e2fsck
//   reclaims), never a directory entry or extent pointing at unwritten metadata.

extension EXT4 {
    /// Opens the ext2/3/4 filesystem on `device` for writing.
    ///
    /// Refuses (nothing is written) when the journal needs recovery, the filesystem
    /// is not clean or has errors, a feature this writer does not maintain is set
    /// (each is named), the block size is 64 KiB, or a checksum of the superblock
    /// does not match.
    public static func openWritable(_ device: any WritableBlockDevice) throws -> EXT4WritableVolume {
        try EXT4WritableVolume(device: device)
    }

    /// Incompatible features the writer maintains.
    static let writableIncompat: UInt32 = Incompat.filetype | Incompat.metaBG | Incompat.extents | Incompat.bit64
        | Incompat.flexBG | Incompat.csumSeed | Incompat.largeDir
    /// Read-only-compatible features the writer maintains: sparse_super, large_file,
    /// btree_dir, huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum, project.
    static let writableROCompat: UInt32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x400 | 0x2000
    static let roCompatNames: [(UInt32, String)] = [
        (0x1, "sparse_super"), (0x2, "large_file"), (0x4, "btree_dir"), (0x8, "huge_file"), (0x10, "uninit_bg"),
        (0x20, "dir_nlink"), (0x40, "extra_isize"), (0x80, "has_snapshot"), (0x100, "quota"), (0x200, "bigalloc"),
        (0x400, "metadata_csum"), (0x800, "replica"), (0x1000, "read-only"), (0x2000, "project"),
        (0x4000, "shared_blocks"), (0x8000, "verity"), (0x10000, "orphan_present"),
    ]
}

/// An ext2/3/4 filesystem opened for writing over a ``WritableBlockDevice``.
///
/// Reads go through a fresh ``EXT4Volume`` after every change (so no reader
/// cache is ever stale). Writes keep the bitmaps, group descriptors (free
/// counts, flags, checksums), superblock counts, extent trees or block maps,
/// and every metadata_csum (crc32c) or gdt_csum (crc16) consistent.
///
/// Not thread-safe: one writer.
public final class EXT4WritableVolume: MutableFileSystem, @unchecked Sendable {
    public let device: any WritableBlockDevice
    private(set) var reader: EXT4Volume
    var sb: EXT4.SuperBlock
    /// The primary superblock as it will be written.
    var sbRaw: [UInt8]
    let bs: Int
    let bs64: UInt64
    var fsSeed: UInt32
    let hasCsum: Bool
    let hasGdtCsum: Bool
    let hasExtents: Bool
    let is64: Bool
    var freeBlocksDelta: Int64 = 0
    var freeInodesDelta: Int64 = 0
    /// Most blocks one file may use through this writer (data + tree).
    static let maxFileBlocks: UInt64 = 1 << 20
    /// Largest content accepted by one write.
    static let maxContentBytes = 256 << 20

    public var typeName: String { reader.typeName }
    public var label: String? { reader.label }
    public var uuid: String? { reader.uuid }
    public var rootInode: UInt64 { EXT4.rootInode }
    public var warnings: [String] { reader.warnings }

    init(device: any WritableBlockDevice) throws {
        self.device = device
        let reader = try EXT4Volume(device: device)
        let sb = reader.sb
        if sb.hasIncompat(EXT4.Incompat.recover) {
            throw EXT4.unsupported("the journal needs recovery (needs_recovery is set); refusing to write (replay it with e2fsck first)")
        }
        let badIncompat = sb.featureIncompat & ~EXT4.writableIncompat
        if badIncompat != 0 {
            throw EXT4.unsupported("refusing to write: incompatible feature(s) not supported for writing: \(EXT4.incompatNames(badIncompat))")
        }
        let badRO = sb.featureROCompat & ~EXT4.writableROCompat
        if badRO != 0 {
            throw EXT4.unsupported("refusing to write: read-only-compatible feature(s) not supported for writing: \(describeFeatureBits(badRO, names: EXT4.roCompatNames))")
        }
        if sb.state & 1 == 0 {
            throw EXT4.unsupported("refusing to write: the filesystem was not cleanly unmounted (it may be mounted, or need e2fsck)")
        }
        if sb.state & 2 != 0 {
            throw EXT4.unsupported("refusing to write: the filesystem is marked as having errors (run e2fsck)")
        }
        if sb.hasMetadataCsum && sb.storedChecksum != sb.computedChecksum {
            throw EXT4.corrupt("superblock checksum mismatch (stored \(hex(sb.storedChecksum)), computed \(hex(sb.computedChecksum))); refusing to write")
        }
        guard sb.blockSize <= 32768 else {
            throw EXT4.unsupported("writing filesystems with \(sb.blockSize)-byte blocks is not supported")
        }
        self.reader = reader
        self.sb = sb
        self.sbRaw = sb.raw
        bs = sb.blockSize
        bs64 = UInt64(sb.blockSize)
        fsSeed = sb.checksumSeed
        hasCsum = sb.hasMetadataCsum
        hasGdtCsum = !sb.hasMetadataCsum && sb.hasROCompat(EXT4.ROCompat.gdtCsum)
        hasExtents = sb.hasIncompat(EXT4.Incompat.extents)
        is64 = sb.hasIncompat(EXT4.Incompat.bit64)
    }

    /// Starts a fresh reader after a change.
    func refresh() throws {
        reader = try EXT4Volume(device: device)
    }

    // MARK: Little-endian helpers

    @inline(__always) static func get16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
    @inline(__always) static func get32(_ b: [UInt8], _ o: Int) -> UInt32 {
        UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
    }
    @inline(__always) static func put16(_ b: inout [UInt8], _ o: Int, _ v: UInt16) {
        b[o] = UInt8(truncatingIfNeeded: v); b[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
    @inline(__always) static func put32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) {
        for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> UInt32(8 * i)) }
    }
    static func le32(_ v: UInt32) -> [UInt8] { [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 24)] }

    // MARK: Blocks

    func readBlock(_ n: UInt64) throws -> [UInt8] {
        guard n < sb.blocksCount else {
            throw EXT4.corrupt("block \(n) lies beyond the end of the \(sb.blocksCount)-block volume")
        }
        return try device.read(at: n * bs64, count: bs)
    }

    /// Writes one whole block; never outside the filesystem's blocks.
    func writeBlock(_ n: UInt64, _ bytes: [UInt8]) throws {
        guard n < sb.blocksCount, n > 0 || sb.firstDataBlock == 0 else {
            throw EXT4.corrupt("refusing to write block \(n): outside the \(sb.blocksCount)-block filesystem")
        }
        guard bytes.count == bs else { throw WardenError(.internal, "ext4: block write of \(bytes.count) bytes") }
        try device.write(bytes, at: n * bs64)
    }

    // MARK: Group descriptors

    struct GD {
        var group: UInt64
        var block: UInt64
        var offset: Int
        var raw: [UInt8]
    }

    func gdLocation(_ g: UInt64) throws -> (block: UInt64, offset: Int) {
        try sb.descriptorLocation(ofGroup: g)
    }

    func readGD(_ g: UInt64) throws -> GD {
        let (block, off) = try gdLocation(g)
        let b = try readBlock(block)
        let raw = Array(b[off..<(off + sb.descSize)])
        let stored = Self.get16(raw, 0x1E)
        if (hasCsum || hasGdtCsum) && stored != gdChecksum(g, raw) {
            throw EXT4.corrupt("group \(g) descriptor checksum mismatch; refusing to write")
        }
        return GD(group: g, block: block, offset: off, raw: raw)
    }

    func gdChecksum(_ g: UInt64, _ raw: [UInt8]) -> UInt16 {
        let groupLE = Self.le32(UInt32(truncatingIfNeeded: g))
        var copy = raw
        copy[0x1E] = 0
        copy[0x1F] = 0
        if hasCsum {
            let c = CRC32.castagnoli.update(CRC32.castagnoli.update(fsSeed, groupLE), copy)
            return UInt16(truncatingIfNeeded: c)
        }
        if hasGdtCsum {
            var c = EXT4CRC16.update(0xFFFF, sb.uuid)
            c = EXT4CRC16.update(c, groupLE)
            c = EXT4CRC16.update(c, raw[0..<0x1E])
            if sb.descSize > 0x20 { c = EXT4CRC16.update(c, raw[0x20..<sb.descSize]) }
            return c
        }
        return 0
    }

    func writeGD(_ gd: GD) throws {
        var raw = gd.raw
        if hasCsum || hasGdtCsum { Self.put16(&raw, 0x1E, gdChecksum(gd.group, raw)) }
        var b = try readBlock(gd.block)
        b.replaceSubrange(gd.offset..<(gd.offset + sb.descSize), with: raw)
        try writeBlock(gd.block, b)
    }

    func gdField(_ gd: GD, lo: Int, hi: Int, wide32: Bool = false) -> UInt64 {
        if wide32 {
            return UInt64(Self.get32(gd.raw, lo)) | (sb.descSize >= 64 ? UInt64(Self.get32(gd.raw, hi)) << 32 : 0)
        }
        return UInt64(Self.get16(gd.raw, lo)) | (sb.descSize >= 64 ? UInt64(Self.get16(gd.raw, hi)) << 16 : 0)
    }

    func setGDField(_ gd: inout GD, lo: Int, hi: Int, _ v: UInt64) {
        Self.put16(&gd.raw, lo, UInt16(truncatingIfNeeded: v))
        if sb.descSize >= 64 { Self.put16(&gd.raw, hi, UInt16(truncatingIfNeeded: v >> 16)) }
    }

    func blockBitmapBlock(_ gd: GD) -> UInt64 { gdField(gd, lo: 0x0, hi: 0x20, wide32: true) }
    func inodeBitmapBlock(_ gd: GD) -> UInt64 { gdField(gd, lo: 0x4, hi: 0x24, wide32: true) }
    func inodeTableBlock(_ gd: GD) -> UInt64 { gdField(gd, lo: 0x8, hi: 0x28, wide32: true) }
    func freeBlocks(_ gd: GD) -> UInt64 { gdField(gd, lo: 0x0C, hi: 0x2C) }
    func freeInodes(_ gd: GD) -> UInt64 { gdField(gd, lo: 0x0E, hi: 0x2E) }
    func usedDirs(_ gd: GD) -> UInt64 { gdField(gd, lo: 0x10, hi: 0x30) }
    func itableUnused(_ gd: GD) -> UInt64 { gdField(gd, lo: 0x1C, hi: 0x32) }
    func flags(_ gd: GD) -> UInt16 { Self.get16(gd.raw, 0x12) }
    static let inodeUninit: UInt16 = 1, blockUninit: UInt16 = 2, itableZeroed: UInt16 = 4
    var uninitMeaningful: Bool { hasCsum || hasGdtCsum }

    func setBitmapChecksum(_ gd: inout GD, bitmap: [UInt8], inode: Bool) {
        guard hasCsum else { return }
        let n = inode ? Int(sb.inodesPerGroup) / 8 : Int(sb.blocksPerGroup) / 8
        let c = CRC32.castagnoli.update(fsSeed, bitmap[0..<min(n, bitmap.count)])
        let (lo, hi) = inode ? (0x1A, 0x3A) : (0x18, 0x38)
        Self.put16(&gd.raw, lo, UInt16(truncatingIfNeeded: c))
        if sb.descSize >= 64 { Self.put16(&gd.raw, hi, UInt16(truncatingIfNeeded: c >> 16)) }
    }

    func groupFirstBlock(_ g: UInt64) -> UInt64 { g * UInt64(sb.blocksPerGroup) + UInt64(sb.firstDataBlock) }
    func blocksInGroup(_ g: UInt64) -> UInt64 {
        min(UInt64(sb.blocksPerGroup), sb.blocksCount - groupFirstBlock(g))
    }

    /// The block bitmap of group `g`, built from the layout when BLOCK_UNINIT is set.
    func blockBitmap(_ gd: GD) throws -> (bitmap: [UInt8], initialised: Bool) {
        let g = gd.group
        if uninitMeaningful && flags(gd) & Self.blockUninit != 0 {
            return (try buildBlockBitmap(g), true)
        }
        let b = try readBlock(try checkedMeta(blockBitmapBlock(gd), "block bitmap of group \(g)"))
        return (b, false)
    }

    func checkedMeta(_ n: UInt64, _ what: String) throws -> UInt64 {
        guard n > UInt64(sb.firstDataBlock) || (sb.firstDataBlock == 0 && n > 0), n < sb.blocksCount else {
            throw EXT4.corrupt("\(what) is at block \(n), outside the filesystem")
        }
        return n
    }

    /// Builds the bitmap of a BLOCK_UNINIT group: superblock and descriptor copies,
    /// reserved GDT blocks, and any group's bitmaps and inode table inside it.
    func buildBlockBitmap(_ g: UInt64) throws -> [UInt8] {
        var bm = [UInt8](repeating: 0, count: bs)
        let first = groupFirstBlock(g)
        let count = blocksInGroup(g)
        func mark(_ b: UInt64) {
            guard b >= first, b < first + count else { return }
            let i = Int(b - first)
            bm[i / 8] |= 1 << UInt8(i % 8)
        }
        if sb.groupHasSuper(g) {
            var n: UInt64 = 1
            let perBlock = UInt64(sb.descriptorsPerBlock)
            let descBlocks = (sb.groupCount + perBlock - 1) / perBlock
            if !sb.hasIncompat(EXT4.Incompat.metaBG) {
                n += descBlocks + UInt64(Self.get16(sbRaw, 0xCE))   // s_reserved_gdt_blocks
            } else {
                n += UInt64(sb.firstMetaBG)
            }
            for k in 0..<n { mark(first + k) }
        }
        if sb.hasIncompat(EXT4.Incompat.metaBG) {
            let perBlock = UInt64(sb.descriptorsPerBlock)
            let metaGroup = g / perBlock
            if metaGroup >= UInt64(sb.firstMetaBG) {
                let idx = g % perBlock
                if idx == 0 || idx == 1 || idx == perBlock - 1 {
                    mark(first + (sb.groupHasSuper(g) ? 1 : 0))
                }
            }
        }
        let itBlocks = (UInt64(sb.inodesPerGroup) * UInt64(sb.inodeSize) + bs64 - 1) / bs64
        guard sb.groupCount <= 1 << 20 else { throw EXT4.limit("too many block groups to initialise a bitmap") }
        for o in 0..<sb.groupCount {
            let ogd = try readGD(o)
            mark(blockBitmapBlock(ogd))
            mark(inodeBitmapBlock(ogd))
            let it = inodeTableBlock(ogd)
            if it + itBlocks > first && it < first + count {
                for k in 0..<itBlocks { mark(it + k) }
            }
        }
        for i in Int(count)..<(bs * 8) { bm[i / 8] |= 1 << UInt8(i % 8) }
        return bm
    }

    // MARK: Block allocation

    /// Allocates `count` blocks, preferring group `goal`, as few runs as possible.
    func allocateBlocks(_ count: UInt64, goal: UInt64) throws -> [(start: UInt64, count: UInt64)] {
        var out: [(start: UInt64, count: UInt64)] = []
        var need = count
        guard need > 0 else { return out }
        let groups = sb.groupCount
        var tried: UInt64 = 0
        var g = goal % groups
        while need > 0 && tried < groups {
            defer { tried += 1; g = (g + 1) % groups }
            var gd = try readGD(g)
            if freeBlocks(gd) == 0 { continue }
            var (bm, initialised) = try blockBitmap(gd)
            let first = groupFirstBlock(g)
            let n = Int(blocksInGroup(g))
            var took: UInt64 = 0
            var i = 0
            while i < n && need > 0 {
                if bm[i / 8] & (1 << UInt8(i % 8)) != 0 { i += 1; continue }
                let block = first + UInt64(i)
                if block == 0 || block <= UInt64(sb.firstDataBlock) { i += 1; continue }
                bm[i / 8] |= 1 << UInt8(i % 8)
                took += 1
                need -= 1
                if let last = out.last, last.start + last.count == block, last.count < 32768 {
                    out[out.count - 1].count += 1
                } else {
                    out.append((block, 1))
                }
                i += 1
            }
            if took == 0 { continue }
            let free = freeBlocks(gd)
            guard free >= took else {
                throw EXT4.corrupt("group \(g) free block count \(free) is lower than its bitmap says; refusing to write")
            }
            setGDField(&gd, lo: 0x0C, hi: 0x2C, free - took)
            if initialised { Self.put16(&gd.raw, 0x12, flags(gd) & ~Self.blockUninit) }
            setBitmapChecksum(&gd, bitmap: bm, inode: false)
            try writeBlock(try checkedMeta(blockBitmapBlock(gd), "block bitmap of group \(g)"), bm)
            try writeGD(gd)
            freeBlocksDelta -= Int64(took)
        }
        guard need == 0 else {
            // Give back what was taken, so the filesystem stays consistent.
            try freeBlockRuns(out)
            throw WardenError(.limitExceeded, "ext4: no space left for \(count) blocks")
        }
        return out
    }

    /// Frees runs of blocks.
    func freeBlockRuns(_ runs: [(start: UInt64, count: UInt64)]) throws {
        var byGroup: [UInt64: [UInt64]] = [:]
        for r in runs {
            guard r.start >= UInt64(sb.firstDataBlock), r.start + r.count <= sb.blocksCount else {
                throw EXT4.corrupt("cannot free blocks \(r.start)..<\(r.start + r.count): outside the filesystem")
            }
            for b in r.start..<(r.start + r.count) {
                byGroup[(b - UInt64(sb.firstDataBlock)) / UInt64(sb.blocksPerGroup), default: []].append(b)
            }
        }
        for (g, blocks) in byGroup.sorted(by: { $0.key < $1.key }) {
            var gd = try readGD(g)
            var (bm, initialised) = try blockBitmap(gd)
            let first = groupFirstBlock(g)
            for b in blocks {
                let i = Int(b - first)
                guard bm[i / 8] & (1 << UInt8(i % 8)) != 0 else {
                    throw EXT4.corrupt("block \(b) is in use by a file but free in the bitmap; refusing to write")
                }
                bm[i / 8] &= ~(1 << UInt8(i % 8))
            }
            setGDField(&gd, lo: 0x0C, hi: 0x2C, freeBlocks(gd) + UInt64(blocks.count))
            if initialised { Self.put16(&gd.raw, 0x12, flags(gd) & ~Self.blockUninit) }
            setBitmapChecksum(&gd, bitmap: bm, inode: false)
            try writeBlock(try checkedMeta(blockBitmapBlock(gd), "block bitmap of group \(g)"), bm)
            try writeGD(gd)
            freeBlocksDelta += Int64(blocks.count)
        }
    }

    // MARK: Inode allocation

    /// Allocates an inode, preferring group `goal`; returns its number.
    func allocateInode(goal: UInt64, directory: Bool) throws -> UInt64 {
        let groups = sb.groupCount
        let ipg = UInt64(sb.inodesPerGroup)
        for k in 0..<groups {
            let g = (goal + k) % groups
            var gd = try readGD(g)
            if freeInodes(gd) == 0 { continue }
            var bm: [UInt8]
            let uninit = uninitMeaningful && flags(gd) & Self.inodeUninit != 0
            if uninit {
                bm = [UInt8](repeating: 0, count: bs)
                for i in Int(ipg)..<(bs * 8) { bm[i / 8] |= 1 << UInt8(i % 8) }
            } else {
                bm = try readBlock(try checkedMeta(inodeBitmapBlock(gd), "inode bitmap of group \(g)"))
            }
            var found: UInt64?
            for i in 0..<ipg {
                let n = g * ipg + i + 1
                if n < UInt64(sb.firstInode) || n > UInt64(sb.inodesCount) { continue }
                if bm[Int(i) / 8] & (1 << UInt8(i % 8)) == 0 { found = i; break }
            }
            guard let i = found else { continue }
            bm[Int(i) / 8] |= 1 << UInt8(i % 8)
            setGDField(&gd, lo: 0x0E, hi: 0x2E, freeInodes(gd) - 1)
            if directory { setGDField(&gd, lo: 0x10, hi: 0x30, usedDirs(gd) + 1) }
            if uninitMeaningful {
                let unused = uninit ? ipg : itableUnused(gd)
                if i >= ipg - min(unused, ipg) { setGDField(&gd, lo: 0x1C, hi: 0x32, ipg - i - 1) }
                Self.put16(&gd.raw, 0x12, flags(gd) & ~Self.inodeUninit)
            }
            setBitmapChecksum(&gd, bitmap: bm, inode: true)
            try writeBlock(try checkedMeta(inodeBitmapBlock(gd), "inode bitmap of group \(g)"), bm)
            try writeGD(gd)
            freeInodesDelta -= 1
            return g * ipg + i + 1
        }
        throw WardenError(.limitExceeded, "ext4: no free inodes")
    }

    func freeInode(_ n: UInt64, directory: Bool) throws {
        let ipg = UInt64(sb.inodesPerGroup)
        let g = (n - 1) / ipg, i = (n - 1) % ipg
        var gd = try readGD(g)
        guard !(uninitMeaningful && flags(gd) & Self.inodeUninit != 0) else {
            throw EXT4.corrupt("inode \(n) is in use but its group's inode bitmap is uninitialised")
        }
        var bm = try readBlock(try checkedMeta(inodeBitmapBlock(gd), "inode bitmap of group \(g)"))
        guard bm[Int(i) / 8] & (1 << UInt8(i % 8)) != 0 else {
            throw EXT4.corrupt("inode \(n) is in use but free in the bitmap; refusing to write")
        }
        bm[Int(i) / 8] &= ~(1 << UInt8(i % 8))
        setGDField(&gd, lo: 0x0E, hi: 0x2E, freeInodes(gd) + 1)
        if directory && usedDirs(gd) > 0 { setGDField(&gd, lo: 0x10, hi: 0x30, usedDirs(gd) - 1) }
        setBitmapChecksum(&gd, bitmap: bm, inode: true)
        try writeBlock(try checkedMeta(inodeBitmapBlock(gd), "inode bitmap of group \(g)"), bm)
        try writeGD(gd)
        freeInodesDelta += 1
    }

    // MARK: Inodes

    func inodeLocation(_ n: UInt64) throws -> (block: UInt64, offset: Int) {
        guard n >= 1, n <= UInt64(sb.inodesCount) else { throw EXT4.corrupt("inode \(n) is out of range") }
        let ipg = UInt64(sb.inodesPerGroup)
        let gd = try readGD((n - 1) / ipg)
        let byte = ((n - 1) % ipg) * UInt64(sb.inodeSize)
        let block = try checkedMeta(inodeTableBlock(gd), "inode table of group \((n - 1) / ipg)") + byte / bs64
        return (block, Int(byte % bs64))
    }

    func readInodeRaw(_ n: UInt64) throws -> [UInt8] {
        let (block, off) = try inodeLocation(n)
        let b = try readBlock(block)
        return Array(b[off..<(off + sb.inodeSize)])
    }

    /// Whether the inode has the high 16 bits of its checksum (i_extra_isize >= 4).
    func inodeHasCsumHi(_ raw: [UInt8]) -> Bool {
        raw.count > 128 && Int(Self.get16(raw, 0x80)) >= 4 && 128 + Int(Self.get16(raw, 0x80)) <= raw.count
    }

    func inodeChecksum(_ n: UInt64, _ raw: [UInt8]) -> UInt32 {
        var copy = raw
        copy[0x7C] = 0; copy[0x7D] = 0
        let hi = inodeHasCsumHi(raw)
        if hi { copy[0x82] = 0; copy[0x83] = 0 }
        let crc = CRC32.castagnoli
        var c = crc.update(fsSeed, Self.le32(UInt32(truncatingIfNeeded: n)))
        c = crc.update(c, Self.le32(Self.get32(raw, 0x64)))
        c = crc.update(c, copy)
        return hi ? c : c & 0xFFFF
    }

    /// The crc32c seed for an inode's metadata blocks (extent blocks, directory blocks).
    func inodeSeed(_ n: UInt64, _ raw: [UInt8]) -> UInt32 {
        let crc = CRC32.castagnoli
        return crc.update(crc.update(fsSeed, Self.le32(UInt32(truncatingIfNeeded: n))), Self.le32(Self.get32(raw, 0x64)))
    }

    func writeInodeRaw(_ n: UInt64, _ raw: [UInt8]) throws {
        var r = raw
        if hasCsum {
            let c = inodeChecksum(n, r)
            Self.put16(&r, 0x7C, UInt16(truncatingIfNeeded: c))
            if inodeHasCsumHi(r) { Self.put16(&r, 0x82, UInt16(truncatingIfNeeded: c >> 16)) }
        }
        let (block, off) = try inodeLocation(n)
        var b = try readBlock(block)
        b.replaceSubrange(off..<(off + sb.inodeSize), with: r)
        try writeBlock(block, b)
    }

    // MARK: Superblock

    /// Applies the accumulated free-count changes to the primary superblock and writes it.
    func writeSuperblock() throws {
        let blocksFree = UInt64(Self.get32(sbRaw, 0x0C)) | (is64 ? UInt64(Self.get32(sbRaw, 0x158)) << 32 : 0)
        let newBlocks = Int64(bitPattern: blocksFree) + freeBlocksDelta
        let inodesFree = Int64(Self.get32(sbRaw, 0x10)) + freeInodesDelta
        guard newBlocks >= 0, inodesFree >= 0 else { throw EXT4.corrupt("superblock free counts are inconsistent") }
        Self.put32(&sbRaw, 0x0C, UInt32(truncatingIfNeeded: UInt64(newBlocks)))
        if is64 { Self.put32(&sbRaw, 0x158, UInt32(truncatingIfNeeded: UInt64(newBlocks) >> 32)) }
        Self.put32(&sbRaw, 0x10, UInt32(truncatingIfNeeded: inodesFree))
        Self.put32(&sbRaw, 0x30, UInt32(truncatingIfNeeded: Int(Date().timeIntervalSince1970))) // s_wtime
        if hasCsum { Self.put32(&sbRaw, 0x3FC, CRC32.castagnoli.update(0xFFFF_FFFF, sbRaw[0..<0x3FC])) }
        try device.write(sbRaw, at: EXT4.superBlockOffset)
        freeBlocksDelta = 0
        freeInodesDelta = 0
    }

    public func commit() throws { try device.flush() }
}
