import WardenCore
import DiskImage

// A read-only reader for FAT12, FAT16 and FAT32 (EFI system partitions, USB sticks).
//
// On-disk layout (all sizes in sectors of BPB_BytsPerSec bytes):
//
//   +-----------------+-----------+-----------+----------------------+---------------------------+
//   | reserved region | FAT #1    | FAT #2 .. | root directory       | data region: clusters 2.. |
//   | (boot sector +  | (FATSz)   | (NumFATs) | (FAT12/16 only,      | (SecPerClus sectors each) |
//   |  BPB, FSInfo,   |           |           |  RootEntCnt * 32 B)  |                           |
//   |  backup boot)   |           |           |                      |                           |
//   +-----------------+-----------+-----------+----------------------+---------------------------+
//
//   The FAT type follows from the number of data clusters (< 4085: FAT12, < 65525: FAT16,
//   else FAT32); a BPB with BPB_FATSz16 == 0 is FAT32 (as Linux and blkid decide). On FAT32
//   the root directory is an ordinary cluster chain starting at BPB_RootClus.
//
//   directory entry (32 bytes): name[8] ext[3] attr u8, NT flags u8 (0x08 base lower case,
//   0x10 extension lower case), ctime..., cluster hi u16 @20, mtime u16 @22, mdate u16 @24,
//   cluster lo u16 @26, size u32 @28. Long-name (VFAT) entries (attr 0x0F) precede their
//   short entry in reverse order, each with 13 UTF-16 units and the short name's checksum.

/// Namespace for the FAT reader. Start with ``FAT/open(_:)``.
public enum FAT {
    /// Inode number of the root directory (directory-entry inodes are byte offsets >= 512).
    public static let rootInode: UInt64 = 1

    /// Caps that keep memory and time bounded whatever the image claims.
    public enum Limits {
        /// Largest directory read (the spec allows 65536 entries of 32 bytes).
        public static let maxDirectoryBytes: UInt64 = 2 << 20
        /// Most contiguous runs collected for one cluster chain.
        public static let maxRuns = 1 << 20
        /// Largest single `read` call.
        public static let maxReadBytes = 256 << 20
        /// Most warnings kept.
        public static let maxWarnings = 1000
    }

    public enum Kind: String, Sendable {
        case fat12 = "FAT12", fat16 = "FAT16", fat32 = "FAT32"
    }

    /// The validated BIOS parameter block and the geometry derived from it.
    public struct BootSector: Sendable {
        public var bytesPerSector: UInt64
        public var sectorsPerCluster: UInt64
        public var reservedSectors: UInt64
        public var fatCount: UInt64
        public var rootEntryCount: UInt64
        public var totalSectors: UInt64
        public var fatSectors: UInt64
        public var rootCluster: UInt32
        public var fsInfoSector: UInt64
        public var kind: Kind
        /// Number of data clusters; valid cluster numbers are 2 ... clusterCount + 1.
        public var clusterCount: UInt64
        public var volumeID: UInt32?
        public var bpbLabel: [UInt8]?

        public var clusterSize: UInt64 { bytesPerSector * sectorsPerCluster }
        public var fatOffset: UInt64 { reservedSectors * bytesPerSector }
        public var rootDirOffset: UInt64 { (reservedSectors + fatCount * fatSectors) * bytesPerSector }
        public var rootDirBytes: UInt64 { rootEntryCount * 32 }
        public var dataOffset: UInt64 {
            let rootSectors = (rootDirBytes + bytesPerSector - 1) / bytesPerSector
            return (reservedSectors + fatCount * fatSectors + rootSectors) * bytesPerSector
        }
        public var maxCluster: UInt64 { clusterCount + 1 }

        /// Parses and validates the first sector against a device of `deviceSize` bytes.
        public init(_ b: [UInt8], deviceSize: UInt64) throws {
            guard b.count >= 512 else { throw FAT.corrupt("boot sector is truncated (\(b.count) bytes)") }
            guard b[0] == 0xEB || b[0] == 0xE9 else {
                throw FAT.corrupt("boot sector has no x86 jump instruction (first byte \(hex(b[0])))")
            }
            let bps = UInt64(try b.le(11, UInt16.self))
            guard bps >= 512, bps <= 4096, bps & (bps - 1) == 0 else {
                throw FAT.corrupt("bytes per sector \(bps) is not a power of two in 512...4096")
            }
            let spc = UInt64(b[13])
            guard spc >= 1, spc & (spc - 1) == 0 else {
                throw FAT.corrupt("sectors per cluster \(spc) is not a power of two in 1...128")
            }
            let rsvd = UInt64(try b.le(14, UInt16.self))
            guard rsvd >= 1 else { throw FAT.corrupt("reserved sector count is 0") }
            let nfats = UInt64(b[16])
            guard nfats >= 1, nfats <= 4 else { throw FAT.corrupt("FAT count \(nfats) is not in 1...4") }
            let rootEnt = UInt64(try b.le(17, UInt16.self))
            let tot16 = UInt64(try b.le(19, UInt16.self))
            let fatSz16 = UInt64(try b.le(22, UInt16.self))
            let tot32 = UInt64(try b.le(32, UInt32.self))
            let total = tot16 != 0 ? tot16 : tot32
            guard total != 0 else { throw FAT.corrupt("total sector count is 0") }
            let isFAT32Layout = fatSz16 == 0
            let fatSz = isFAT32Layout ? UInt64(try b.le(36, UInt32.self)) : fatSz16
            guard fatSz != 0 else { throw FAT.corrupt("FAT size is 0 sectors") }
            // All products below use values < 2^32 times small factors, so they fit in UInt64.
            let volumeBytes = total * bps
            guard volumeBytes <= deviceSize else {
                throw FAT.corrupt("volume of \(total) sectors of \(bps) bytes (\(volumeBytes) bytes) does not fit the \(deviceSize)-byte device")
            }
            let rootSectors = (rootEnt * 32 + bps - 1) / bps
            let meta = rsvd + nfats * fatSz + rootSectors
            guard meta < total else {
                throw FAT.corrupt("metadata (\(meta) sectors) fills the whole \(total)-sector volume")
            }
            let clusters = (total - meta) / spc
            guard clusters >= 1 else { throw FAT.corrupt("volume has no data clusters") }
            let kind: Kind
            if isFAT32Layout {
                guard rootEnt == 0 else { throw FAT.corrupt("FAT32 boot sector has \(rootEnt) fixed root entries (must be 0)") }
                kind = .fat32
            } else if clusters < 4085 {
                kind = .fat12
            } else if clusters < 65525 {
                kind = .fat16
            } else {
                throw FAT.corrupt("\(clusters) clusters need FAT32, but the boot sector has a FAT12/16 layout")
            }
            if kind != .fat32 {
                guard rootEnt != 0 else { throw FAT.corrupt("\(kind.rawValue) boot sector has no root directory entries") }
            }
            guard clusters <= 0x0FFF_FFF5 else { throw FAT.corrupt("\(clusters) clusters is more than FAT32 can address") }
            // The FAT must have an entry for every cluster (plus the two reserved ones).
            let entries = clusters + 2
            let needBytes: UInt64
            switch kind {
            case .fat12: needBytes = (entries * 3 + 1) / 2
            case .fat16: needBytes = entries * 2
            case .fat32: needBytes = entries * 4
            }
            guard fatSz * bps >= needBytes else {
                throw FAT.corrupt("FAT of \(fatSz) sectors is too small for \(clusters) clusters (\(needBytes) bytes needed)")
            }
            bytesPerSector = bps
            sectorsPerCluster = spc
            reservedSectors = rsvd
            fatCount = nfats
            rootEntryCount = rootEnt
            totalSectors = total
            fatSectors = fatSz
            clusterCount = clusters
            self.kind = kind
            let sigOffset = kind == .fat32 ? 66 : 38
            if kind == .fat32 {
                rootCluster = try b.le(44, UInt32.self) & 0x0FFF_FFFF
                guard rootCluster >= 2, UInt64(rootCluster) <= clusters + 1 else {
                    throw FAT.corrupt("FAT32 root cluster \(rootCluster) is outside 2...\(clusters + 1)")
                }
                fsInfoSector = UInt64(try b.le(48, UInt16.self))
            } else {
                rootCluster = 0
                fsInfoSector = 0
            }
            if b[sigOffset] == 0x29 || b[sigOffset] == 0x28 {
                volumeID = try b.le(sigOffset + 1, UInt32.self)
                bpbLabel = b[sigOffset] == 0x29 ? Array(b[(sigOffset + 5)..<(sigOffset + 16)]) : nil
            } else {
                volumeID = nil
                bpbLabel = nil
            }
        }
    }

    /// True if `device` starts with a plausible FAT boot sector.
    public static func probe(_ device: any BlockDevice) -> Bool {
        guard device.size >= 512, let b = try? device.read(at: 0, count: 512) else { return false }
        return (try? BootSector(b, deviceSize: device.size)) != nil
    }

    /// Opens the filesystem on `device` (a whole disk or a partition slice).
    public static func open(_ device: any BlockDevice) throws -> FATVolume {
        try FATVolume(device: device)
    }

    static func corrupt(_ message: String) -> WardenError {
        WardenError.corrupt("vfat: " + message)
    }

    /// The 8.3 name checksum stored in each long-name entry.
    static func shortNameChecksum<C: Collection>(_ name: C) -> UInt8 where C.Element == UInt8 {
        var sum: UInt8 = 0
        for c in name { sum = ((sum & 1) << 7) &+ (sum >> 1) &+ c }
        return sum
    }

    /// Seconds since the epoch (UTC) from a DOS date and time; out-of-range fields are clamped.
    static func dosTime(date: UInt16, time: UInt16) -> Int64 {
        if date == 0 { return 315_532_800 } // 1980-01-01, like Linux for a zero date
        let year = Int64(date >> 9) + 1980
        let month = min(max(Int64((date >> 5) & 0xF), 1), 12)
        let day = max(Int64(date & 0x1F), 1)
        let hour = min(Int64(time >> 11), 23)
        let minute = min(Int64((time >> 5) & 0x3F), 59)
        let second = min(Int64(time & 0x1F) * 2, 59)
        // Days from civil (proleptic Gregorian), Howard Hinnant's algorithm.
        let y = month <= 2 ? year - 1 : year
        let era = y / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return days * 86400 + hour * 3600 + minute * 60 + second
    }
}
