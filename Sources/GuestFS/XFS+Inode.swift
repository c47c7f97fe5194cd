import WardenCore

extension XFS {
    /// A parsed on-disk inode (core plus the raw data fork).
    public struct Inode: Sendable {
        public var number: UInt64
        public var mode: UInt16
        /// 1, 2 or 3.
        public var version: UInt8
        public var format: UInt8
        public var uid: UInt32
        public var gid: UInt32
        public var links: UInt32
        public var mtime: Int64
        public var size: UInt64
        /// Data fork extent count.
        public var nextents: UInt64
        public var forkOffset: UInt8
        public var flags: UInt16
        public var flags2: UInt64
        /// The data fork bytes (the literal area up to the attribute fork).
        public var dataFork: [UInt8]

        public var fileType: FileType? { FileType(mode: UInt32(mode)) }
        public var forkFormat: ForkFormat? { ForkFormat(rawValue: format) }

        static let magic: UInt16 = 0x494E
        static let crcOffset = 100

        /// Parses `raw` (sb_inodeSize bytes). `warn` receives non-fatal problems.
        init(number: UInt64, raw: [UInt8], sb: SuperBlock, warn: (String) -> Void) throws {
            self.number = number
            let r = ByteReader(raw, context: "xfs inode \(number)")
            let m: UInt16 = try r.be(at: 0)
            guard m == Inode.magic else { throw XFS.corrupt("inode \(number) has bad magic \(hex(m))") }
            mode = try r.be(at: 2)
            version = try r.be(at: 4)
            format = try r.be(at: 5)
            let onlink: UInt16 = try r.be(at: 6)
            uid = try r.be(at: 8)
            gid = try r.be(at: 12)
            let nlink: UInt32 = try r.be(at: 16)
            guard version >= 1 && version <= 3 else {
                throw XFS.corrupt("inode \(number) has unknown version \(version)")
            }
            if sb.hasCRC && version != 3 {
                throw XFS.corrupt("inode \(number) is version \(version) on a v5 filesystem")
            }
            if !sb.hasCRC && version == 3 {
                throw XFS.corrupt("inode \(number) is version 3 on a v4 filesystem")
            }
            links = version == 1 ? UInt32(onlink) : nlink
            size = try r.be(at: 56)
            guard size <= UInt64(Int64.max) else {
                throw XFS.corrupt("inode \(number) claims \(size) bytes")
            }
            let ne32: UInt32 = try r.be(at: 76)
            forkOffset = try r.be(at: 82)
            flags = try r.be(at: 90)
            flags2 = version == 3 ? try r.be(at: 120) : 0
            if sb.hasNRExt64 && flags2 & InodeFlags.nrext64 != 0 {
                nextents = try r.be(at: 24)
            } else {
                nextents = UInt64(ne32)
            }
            let mtimeRaw: UInt64 = try r.be(at: 40)
            if flags2 & InodeFlags.bigtime != 0 {
                // Nanoseconds since 1901-12-13 20:45:52 UTC (-2^31 s).
                mtime = Int64(mtimeRaw / 1_000_000_000) - (Int64(1) << 31)
            } else {
                mtime = Int64(Int32(bitPattern: UInt32(truncatingIfNeeded: mtimeRaw >> 32)))
            }
            if version == 3 {
                let ino: UInt64 = try r.be(at: 152)
                if ino != number {
                    warn("xfs: inode \(number) records its own number as \(ino)")
                }
            }
            let core = version == 3 ? 176 : 100
            let forkSize: Int
            if forkOffset != 0 {
                forkSize = Int(forkOffset) * 8
                guard core + forkSize < raw.count else {
                    throw XFS.corrupt("inode \(number) attribute fork offset \(forkOffset) lies beyond its \(raw.count) bytes")
                }
            } else {
                forkSize = raw.count - core
            }
            guard forkSize > 0, core + forkSize <= raw.count else {
                throw XFS.corrupt("inode \(number) has no room for a data fork")
            }
            dataFork = Array(raw[core..<(core + forkSize)])
        }
    }
}
