import WardenCore

extension EXT4 {
    /// A parsed on-disk inode.
    public struct Inode: Sendable {
        public var number: UInt64
        public var raw: [UInt8]
        public var mode: UInt16
        public var uid: UInt32
        public var gid: UInt32
        public var size: UInt64
        public var links: UInt16
        public var mtime: Int64
        public var flags: UInt32
        public var blocks512: UInt64
        public var generation: UInt32
        public var fileACL: UInt64
        /// 128 + i_extra_isize, or 128 when the extra field is absent or invalid.
        public var coreSize: Int

        /// The 60 bytes of `i_block`.
        public var iBlock: ArraySlice<UInt8> { raw[0x28..<0x64] }

        public var fileType: FileType? { FileType(mode: UInt32(mode)) }
        public func has(_ flag: UInt32) -> Bool { flags & flag != 0 }

        /// Parses `raw` (s_inode_size bytes). `warn` receives non-fatal problems.
        init(number: UInt64, raw: [UInt8], sb: SuperBlock, warn: (String) -> Void) throws {
            self.number = number
            self.raw = raw
            let r = ByteReader(raw, context: "ext4 inode \(number)")
            mode = try r.le(at: 0x00)
            let uidLo: UInt16 = try r.le(at: 0x02)
            let sizeLo: UInt32 = try r.le(at: 0x04)
            let mtimeLo: UInt32 = try r.le(at: 0x10)
            let gidLo: UInt16 = try r.le(at: 0x18)
            links = try r.le(at: 0x1A)
            let blocksLo: UInt32 = try r.le(at: 0x1C)
            flags = try r.le(at: 0x20)
            generation = try r.le(at: 0x64)
            let aclLo: UInt32 = try r.le(at: 0x68)
            let sizeHi: UInt32 = try r.le(at: 0x6C)
            let blocksHi: UInt16 = try r.le(at: 0x74)
            let aclHi: UInt16 = try r.le(at: 0x76)
            let uidHi: UInt16 = try r.le(at: 0x78)
            let gidHi: UInt16 = try r.le(at: 0x7A)
            uid = UInt32(uidLo) | UInt32(uidHi) << 16
            gid = UInt32(gidLo) | UInt32(gidHi) << 16
            size = UInt64(sizeLo) | UInt64(sizeHi) << 32
            fileACL = UInt64(aclLo) | (sb.hasIncompat(Incompat.bit64) ? UInt64(aclHi) << 32 : 0)
            blocks512 = UInt64(blocksLo) | (sb.hasROCompat(ROCompat.hugeFile) ? UInt64(blocksHi) << 32 : 0)

            coreSize = 128
            var mtimeExtra: UInt32 = 0
            if raw.count > 128 {
                let extra: UInt16 = try r.le(at: 0x80)
                let cs = 128 + Int(extra)
                if extra & 3 != 0 || cs > raw.count {
                    warn("ext4: inode \(number) has invalid extra size \(extra) for \(raw.count)-byte inodes")
                } else {
                    coreSize = cs
                    if cs >= 0x8C { mtimeExtra = try r.le(at: 0x88) }
                }
            }
            mtime = Int64(Int32(bitPattern: mtimeLo)) + (Int64(mtimeExtra & 3) << 32)
        }

        /// The crc32c of this inode as metadata_csum defines it, and the stored value,
        /// both truncated to the stored width.
        func checksums(seed: UInt32) -> (computed: UInt32, stored: UInt32) {
            let crc = CRC32.castagnoli
            var le = withUnsafeBytes(of: UInt32(truncatingIfNeeded: number).littleEndian) { Array($0) }
            var c = crc.update(seed, le)
            le = withUnsafeBytes(of: generation.littleEndian) { Array($0) }
            c = crc.update(c, le)
            var copy = raw
            let storedLo = UInt32(raw[0x7C]) | UInt32(raw[0x7D]) << 8
            copy[0x7C] = 0
            copy[0x7D] = 0
            let hasHi = raw.count > 128 && coreSize >= 0x84
            var stored = storedLo
            if hasHi {
                stored |= (UInt32(raw[0x82]) | UInt32(raw[0x83]) << 8) << 16
                copy[0x82] = 0
                copy[0x83] = 0
            }
            c = crc.update(c, copy)
            return (hasHi ? c : c & 0xFFFF, stored)
        }
    }
}
