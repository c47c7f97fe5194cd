import WardenCore

extension XFS {
    /// The fields of the primary superblock this reader uses, validated.
    public struct SuperBlock: Sendable {
        public var blockSize: Int
        public var blockLog: Int
        public var dataBlocks: UInt64
        public var uuid: [UInt8]
        public var rootInode: UInt64
        public var agBlocks: UInt32
        public var agCount: UInt32
        public var versionNum: UInt16
        public var sectorSize: Int
        public var inodeSize: Int
        public var inodesPerBlock: Int
        public var name: [UInt8]
        public var inodesPerBlockLog: Int
        public var agBlockLog: Int
        public var dirBlockLog: Int
        public var features2: UInt32
        public var featuresIncompat: UInt32
        public var storedCRC: UInt32

        /// 4 (v4, no checksums) or 5 (v5, crc32c on all metadata).
        public var version: Int { Int(versionNum & 0xF) }
        public var hasCRC: Bool { version == 5 }
        /// Directory entries carry a file type byte.
        public var hasFtype: Bool {
            hasCRC ? featuresIncompat & Incompat.ftype != 0
                : (versionNum & VersionBits.moreBits != 0 && features2 & Features2.ftype != 0)
        }
        public var hasNRExt64: Bool { hasCRC && featuresIncompat & Incompat.nrext64 != 0 }
        public var dirBlockSize: Int { blockSize << dirBlockLog }
        /// Fork core size of the inodes this filesystem writes.
        public var label: String? {
            let n = name.prefix { $0 != 0 }
            return n.isEmpty ? nil : String(decoding: n, as: UTF8.self)
        }

        /// Byte offset of the crc field.
        static let crcOffset = 224

        /// Parses and validates `raw` (at least 512 bytes from byte 0 of the volume).
        init(_ raw: [UInt8], deviceSize: UInt64) throws {
            let r = ByteReader(raw, context: "xfs superblock")
            let m: UInt32 = try r.be(at: 0)
            guard m == XFS.magic else { throw XFS.corrupt("bad superblock magic \(hex(m))") }
            let bs: UInt32 = try r.be(at: 4)
            dataBlocks = try r.be(at: 8)
            uuid = Array(try r.slice(32, 16))
            rootInode = try r.be(at: 56)
            agBlocks = try r.be(at: 84)
            agCount = try r.be(at: 88)
            versionNum = try r.be(at: 100)
            let ss: UInt16 = try r.be(at: 102)
            let isz: UInt16 = try r.be(at: 104)
            let ipb: UInt16 = try r.be(at: 106)
            name = Array(try r.slice(108, 12))
            let blog: UInt8 = try r.be(at: 120)
            let slog: UInt8 = try r.be(at: 121)
            let ilog: UInt8 = try r.be(at: 122)
            let iplog: UInt8 = try r.be(at: 123)
            let aglog: UInt8 = try r.be(at: 124)
            let dlog: UInt8 = try r.be(at: 192)
            features2 = try r.be(at: 200)

            let v = Int(versionNum & 0xF)
            guard v == 4 || v == 5 else {
                if v >= 1 && v <= 3 {
                    throw XFS.unsupported("superblock version \(v) is too old (only v4 and v5 are read)")
                }
                throw XFS.corrupt("unknown superblock version \(v)")
            }
            if v == 5 {
                featuresIncompat = try r.be(at: 216)
                storedCRC = try r.le(at: SuperBlock.crcOffset)
            } else {
                featuresIncompat = 0
                storedCRC = 0
                guard versionNum & VersionBits.dirV2 != 0 else {
                    throw XFS.unsupported("v4 filesystem with version 1 directories")
                }
                if versionNum & VersionBits.moreBits != 0 && features2 & Features2.crc != 0 {
                    throw XFS.corrupt("v4 superblock claims the v5 crc feature")
                }
            }
            let unknown = featuresIncompat & ~Incompat.supported
            guard unknown == 0 else {
                throw XFS.unsupported("incompatible features \(XFS.incompatNames(unknown)) (\(hex(featuresIncompat))) are not supported")
            }

            guard blog >= 9, blog <= 16, bs == UInt32(1) << UInt32(blog) else {
                throw XFS.corrupt("block size \(bs) does not match log \(blog) (or is outside 512...65536)")
            }
            blockSize = Int(bs)
            blockLog = Int(blog)
            guard slog >= 9, slog <= 15, UInt32(ss) == UInt32(1) << UInt32(slog), ss <= bs else {
                throw XFS.corrupt("sector size \(ss) does not match log \(slog) (or is outside 512...32768)")
            }
            sectorSize = Int(ss)
            guard ilog >= 8, ilog <= 11, UInt32(isz) == UInt32(1) << UInt32(ilog), UInt32(isz) <= bs else {
                throw XFS.corrupt("inode size \(isz) does not match log \(ilog) (or is outside 256...2048 and the \(bs)-byte block)")
            }
            inodeSize = Int(isz)
            guard Int(iplog) == Int(blog) - Int(ilog), Int(ipb) == Int(bs) / Int(isz) else {
                throw XFS.corrupt("\(ipb) inodes per block (log \(iplog)) do not match block size \(bs) and inode size \(isz)")
            }
            inodesPerBlock = Int(ipb)
            inodesPerBlockLog = Int(iplog)
            guard agBlocks >= 1, agCount >= 1 else {
                throw XFS.corrupt("\(agCount) allocation groups of \(agBlocks) blocks")
            }
            // sb_agblklog is log2 of agblocks rounded up.
            var need = 0
            while need < 32 && (UInt64(1) << UInt64(need)) < UInt64(agBlocks) { need += 1 }
            guard Int(aglog) == need, Int(aglog) + Int(iplog) <= 56 else {
                throw XFS.corrupt("AG block log \(aglog) does not match \(agBlocks) blocks per AG")
            }
            agBlockLog = Int(aglog)
            guard Int(blog) + Int(dlog) <= 16 else {
                throw XFS.corrupt("directory block log \(dlog) makes directory blocks larger than 64 KiB")
            }
            dirBlockLog = Int(dlog)
            let maxBlocks = UInt64(agCount) * UInt64(agBlocks)
            guard dataBlocks >= 1, dataBlocks <= maxBlocks, dataBlocks > maxBlocks - UInt64(agBlocks) else {
                throw XFS.corrupt("\(dataBlocks) data blocks do not fit \(agCount) AGs of \(agBlocks) blocks")
            }
            let bytes = try Checked.mul(dataBlocks, UInt64(bs), "xfs volume size")
            guard bytes <= deviceSize else {
                throw XFS.corrupt("the superblock claims \(dataBlocks) blocks of \(bs) bytes (\(bytes) bytes) but the volume holds \(deviceSize)")
            }
            guard raw.count >= sectorSize else {
                throw XFS.corrupt("superblock sector of \(sectorSize) bytes is truncated to \(raw.count)")
            }
        }

        /// The v5 crc32c over the superblock sector.
        func computedCRC(_ raw: [UInt8]) -> UInt32 {
            XFS.crc(raw[0..<min(raw.count, sectorSize)], crcOffset: SuperBlock.crcOffset).computed
        }
    }
}
