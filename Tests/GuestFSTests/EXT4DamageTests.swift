import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// Damaged and hostile ext4 images: everything must end in a WardenError, never a trap or a hang.
@Suite struct EXT4DamageTests {
    /// Copies the small fixture image, lets `patch` edit its bytes, and runs `body` on the copy's path.
    @discardableResult
    func withPatched<T>(_ patch: (inout [UInt8], String) throws -> Void, _ body: (String) throws -> T) throws -> T {
        let original = try EXT4Fixture.small()
        return try Fixtures.withTemporaryDirectory { dir in
            let path = dir + "/fs.img"
            var bytes = try Fixtures.read(original)
            try patch(&bytes, original)
            try Fixtures.write(bytes, to: path)
            return try body(path)
        }
    }

    static func putLE32(_ v: UInt32, _ bytes: inout [UInt8], at o: Int) {
        for i in 0..<4 { bytes[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }
    static func putLE16(_ v: UInt16, _ bytes: inout [UInt8], at o: Int) {
        bytes[o] = UInt8(truncatingIfNeeded: v)
        bytes[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
    static func fixSuperblockChecksum(_ bytes: inout [UInt8]) {
        let c = CRC32.castagnoli.update(0xFFFF_FFFF, bytes[1024..<(1024 + 0x3FC)])
        putLE32(c, &bytes, at: 1024 + 0x3FC)
    }
    /// Parses "(ETB0):N" / "(0):N" style block numbers out of debugfs stat.
    static func firstBlock(_ image: String, _ path: String, tag: String) throws -> Int {
        let out = try EXT4Fixture.debugfs(image, ["stat \(path)"])
        guard let r = out.range(of: "(\(tag)):") else { throw WardenError.notFound("no \(tag) in debugfs stat \(path)") }
        let digits = out[r.upperBound...].prefix { $0.isNumber }
        return Int(digits) ?? -1
    }
    /// Byte offset of inode `path` in the image, from debugfs imap.
    static func inodeOffset(_ image: String, _ path: String, blockSize: Int = 1024) throws -> Int {
        let out = try EXT4Fixture.debugfs(image, ["imap \(path)"])
        guard let r = out.range(of: "located at block "), let c = out.range(of: ", offset 0x") else {
            throw WardenError.notFound("no imap for \(path)")
        }
        let block = Int(out[r.upperBound...].prefix { $0.isNumber }) ?? 0
        let off = Int(String(out[c.upperBound...].prefix { $0.isHexDigit }), radix: 16) ?? 0
        return block * blockSize + off
    }

    func entry(_ fs: EXT4Volume, _ dir: UInt64, _ name: String) throws -> UInt64 {
        try #require(try fs.readDirectory(dir).first { $0.name == name }).inode
    }

    @Test func intactSmallImageReadsCleanly() throws {
        let fs = try EXT4Fixture.open(try EXT4Fixture.small())
        #expect(walkEverything(fs).isEmpty)
        #expect(fs.warnings.isEmpty, "\(fs.warnings)")
    }

    @Test func truncatedImagesThrow() throws {
        let original = try Fixtures.read(try EXT4Fixture.small())
        try Fixtures.withTemporaryDirectory { dir in
            for len in [0, 100, 1024, 1080, 2047, 2048, 3000, 4096, 8192, 65536, 1 << 20, original.count - 1024, original.count - 1] {
                let path = dir + "/t\(len).img"
                try Fixtures.write(Array(original[0..<len]), to: path)
                #expect(throws: WardenError.self, "length \(len)") { _ = try EXT4Fixture.open(path) }
                // Same, but with the block count shrunk to fit: opens (maybe), then every read stays safe.
                if len >= 2048 {
                    var b = Array(original[0..<len])
                    Self.putLE32(UInt32(len / 1024), &b, at: 1024 + 4)
                    try Fixtures.write(b, to: path)
                    if let fs = try? EXT4Fixture.open(path) {
                        #expect(walkEverything(fs).isEmpty, "length \(len)")
                    }
                }
            }
        }
    }

    @Test func zeroedAndGarbledSuperblocks() throws {
        try withPatched({ b, _ in for i in 1024..<2048 { b[i] = 0 } }) { path in
            #expect(throws: WardenError.self) { _ = try EXT4Fixture.open(path) }
        }
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        var inputs = Rejections(.corrupt, .unsupported, .limitExceeded)
        defer { #expect(inputs.accepted + inputs.rejected == 40 && inputs.rejected > 0, "\(inputs.rejected) refused") }
        for round in 0..<40 {
            try withPatched({ b, _ in
                for i in 1024..<2048 {
                    state ^= state << 13; state ^= state >> 7; state ^= state << 17
                    if round < 20 || state % 8 == 0 { b[i] = UInt8(truncatingIfNeeded: state) }
                }
                b[1024 + 0x38] = 0x53
                b[1024 + 0x39] = 0xEF
            }) { path in
                inputs.feed {
                    let fs = try EXT4Fixture.open(path)
                    #expect(walkEverything(fs, budget: 2000).isEmpty, "round \(round)")
                }
            }
        }
    }

    @Test func garbledMetadataNeverTraps() throws {
        var state: UInt64 = 0x1234_5678_9ABC_DEF1
        var inputs = Rejections(.corrupt, .unsupported, .limitExceeded)
        defer { #expect(inputs.accepted + inputs.rejected == 40, "\(inputs.rejected) refused") }
        for round in 0..<40 {
            try withPatched({ b, _ in
                for _ in 0..<(8 + round) {
                    state ^= state << 13; state ^= state >> 7; state ^= state << 17
                    let pos = 2048 + Int(state % UInt64(min(b.count, 600_000) - 2048))
                    b[pos] = UInt8(truncatingIfNeeded: state >> 32)
                }
            }) { path in
                inputs.feed {
                    let fs = try EXT4Fixture.open(path)
                    let problems = walkEverything(fs)
                    #expect(problems.isEmpty, "round \(round): \(problems)")
                }
            }
        }
    }

    @Test func extentLoopThrows() throws {
        // Root depth 1 -> leaf L. Make the root claim depth 2 and L an index node pointing at itself.
        try withPatched({ b, image in
            let leaf = try Self.firstBlock(image, "/frag", tag: "ETB0")
            let ino = try Self.inodeOffset(image, "/frag")
            let rootDepth = Int(b[ino + 0x28 + 6]) | Int(b[ino + 0x28 + 7]) << 8
            #expect(rootDepth == 1)
            Self.putLE16(2, &b, at: ino + 0x28 + 6)
            let o = leaf * 1024
            Self.putLE16(0xF30A, &b, at: o)
            Self.putLE16(1, &b, at: o + 2)
            Self.putLE16(84, &b, at: o + 4)
            Self.putLE16(1, &b, at: o + 6)
            Self.putLE32(0, &b, at: o + 12)
            Self.putLE32(UInt32(leaf), &b, at: o + 16)
            Self.putLE16(0, &b, at: o + 20)
        }) { path in
            let fs = try EXT4Fixture.open(path)
            let frag = try entry(fs, fs.rootInode, "frag")
            let e = #expect(throws: WardenError.self) { _ = try fs.read(frag, at: 0, count: 4096) }
            #expect(e?.message.contains("loop") == true, "\(String(describing: e))")
            #expect(throws: WardenError.self) { try fs.forEachChunk(frag) { _ in } }
        }
        // An extent header claiming more entries than fit in its block.
        try withPatched({ b, image in
            let leaf = try Self.firstBlock(image, "/frag", tag: "ETB0")
            Self.putLE16(0xFFFF, &b, at: leaf * 1024 + 2)
            Self.putLE16(0xFFFF, &b, at: leaf * 1024 + 4)
        }) { path in
            let fs = try EXT4Fixture.open(path)
            let frag = try entry(fs, fs.rootInode, "frag")
            #expect(throws: WardenError.self) { _ = try fs.read(frag, at: 0, count: 10) }
        }
        // A tree deeper than 5 levels.
        try withPatched({ b, image in
            let ino = try Self.inodeOffset(image, "/frag")
            Self.putLE16(9, &b, at: ino + 0x28 + 6)
        }) { path in
            let fs = try EXT4Fixture.open(path)
            let frag = try entry(fs, fs.rootInode, "frag")
            let e = #expect(throws: WardenError.self) { _ = try fs.read(frag, at: 0, count: 10) }
            #expect(e?.message.contains("deeper than 5 levels") == true)
            #expect(fs.warnings.contains { $0.contains("inode") && $0.contains("checksum mismatch") })
        }
    }

    @Test func directoryWithZeroRecLenThrows() throws {
        try withPatched({ b, image in
            let block = try Self.firstBlock(image, "/d", tag: "0")
            Self.putLE16(0, &b, at: block * 1024 + 4)
        }) { path in
            let fs = try EXT4Fixture.open(path)
            let d = try entry(fs, fs.rootInode, "d")
            let e = #expect(throws: WardenError.self) { _ = try fs.readDirectory(d) }
            #expect(e?.message.contains("rec_len 0") == true, "\(String(describing: e))")
        }
    }

    @Test func inodeNumbersOutOfRangeThrow() throws {
        let fs = try EXT4Fixture.open(try EXT4Fixture.small())
        for n: UInt64 in [0, UInt64(fs.sb.inodesCount) + 1, UInt64(UInt32.max), UInt64.max] {
            #expect(throws: WardenError.self) { _ = try fs.stat(n) }
            #expect(throws: WardenError.self) { _ = try fs.readDirectory(n) }
            #expect(throws: WardenError.self) { _ = try fs.read(n, at: 0, count: 1) }
            #expect(throws: WardenError.self) { _ = try fs.readLink(n) }
        }
        // A directory entry pointing past the inode count.
        try withPatched({ b, image in
            let block = try Self.firstBlock(image, "/d", tag: "0") * 1024
            var off = 0
            while off < 1024 - 8 {
                let rec = Int(b[block + off + 4]) | Int(b[block + off + 5]) << 8
                let nameLen = Int(b[block + off + 6])
                if Array(b[(block + off + 8)..<(block + off + 8 + nameLen)]) == Array("b".utf8) {
                    Self.putLE32(0xFFFF_FFF0, &b, at: block + off)
                    break
                }
                if rec == 0 { break }
                off += rec
            }
        }) { path in
            let fs = try EXT4Fixture.open(path)
            let d = try entry(fs, fs.rootInode, "d")
            let e = #expect(throws: WardenError.self) { _ = try fs.readDirectory(d) }
            #expect(e?.message.contains("4294967280") == true, "\(String(describing: e))")
            #expect(fs.warnings.contains { $0.contains("directory inode \(d) block 0 checksum mismatch") }, "\(fs.warnings)")
        }
    }

    @Test func unknownIncompatFeatureIsRefused() throws {
        try withPatched({ b, _ in
            b[1024 + 0x62] |= 0x04  // incompat bit 0x40000
            Self.fixSuperblockChecksum(&b)
        }) { path in
            let e = #expect(throws: WardenError.self) { _ = try EXT4Fixture.open(path) }
            #expect(e?.code == .unsupported)
            #expect(e?.message.contains("0x40000") == true, "\(String(describing: e))")
        }
        try withPatched({ b, _ in
            b[1024 + 0x60] |= 0x08  // journal_dev
            Self.fixSuperblockChecksum(&b)
        }) { path in
            let e = #expect(throws: WardenError.self) { _ = try EXT4Fixture.open(path) }
            #expect(e?.code == .unsupported)
        }
        // needs_recovery over an empty journal: readable, with a warning that there is nothing to replay.
        try withPatched({ b, _ in
            b[1024 + 0x60] |= 0x04
            Self.fixSuperblockChecksum(&b)
        }) { path in
            let fs = try EXT4Fixture.open(path)
            #expect(fs.warnings.contains { $0.contains("flagged for recovery") || $0.contains("journal needs recovery") }, "\(fs.warnings)")
            #expect(walkEverything(fs).isEmpty)
        }
    }

    @Test func hugeClaimedBlockCountThrows() throws {
        try withPatched({ b, _ in
            Self.putLE32(0xFFFF_FFFF, &b, at: 1024 + 4)
            Self.putLE32(0xFFFF_FFFF, &b, at: 1024 + 0x150)
            Self.fixSuperblockChecksum(&b)
        }) { path in
            let e = #expect(throws: WardenError.self) { _ = try EXT4Fixture.open(path) }
            #expect(e?.code == .corrupt)
        }
        try withPatched({ b, _ in
            Self.putLE32(0xFFFF_FFFF, &b, at: 1024 + 0)  // inode count
            Self.fixSuperblockChecksum(&b)
        }) { path in
            #expect(throws: WardenError.self) { _ = try EXT4Fixture.open(path) }
        }
    }

    @Test func hostileFileSizes() throws {
        // A size beyond what the extent tree can address is refused.
        try withPatched({ b, image in
            let ino = try Self.inodeOffset(image, "/a")
            Self.putLE32(0xFFFF_FFFF, &b, at: ino + 0x04)
            Self.putLE32(0xFFFF_FFFF, &b, at: ino + 0x6C)
        }) { path in
            let fs = try EXT4Fixture.open(path)
            let a = try entry(fs, fs.rootInode, "a")
            #expect(throws: WardenError.self) { _ = try fs.read(a, at: UInt64.max - 100, count: 50) }
            #expect(throws: WardenError.self) { _ = try fs.stat(a) }
        }
        // The largest addressable size reads as data then zeros, right up to the end, without overflow.
        try withPatched({ b, image in
            let ino = try Self.inodeOffset(image, "/a")
            Self.putLE32(0, &b, at: ino + 0x04)
            Self.putLE32(1 << 10, &b, at: ino + 0x6C)  // 2^42 bytes = 2^32 blocks of 1 KiB
        }) { path in
            let fs = try EXT4Fixture.open(path)
            let a = try entry(fs, fs.rootInode, "a")
            #expect(try fs.stat(a).size == 1 << 42)
            #expect(try fs.read(a, at: 0, count: 6) == Array("hello\n".utf8))
            #expect(try fs.read(a, at: (1 << 42) - 10, count: 50) == [UInt8](repeating: 0, count: 10))
            #expect(throws: WardenError.self) { _ = try fs.read(a, at: 0, count: Int.max) }
        }
    }

    @Test func timesPast2038UseEpochBits() throws {
        let fs = try EXT4Fixture.open(try EXT4Fixture.small())
        var raw = [UInt8](repeating: 0, count: 256)
        raw[0] = 0xA4; raw[1] = 0x81  // 0o100644
        Self.putLE32(0xF555_C526, &raw, at: 0x10)
        Self.putLE16(32, &raw, at: 0x80)
        Self.putLE32(1, &raw, at: 0x88)
        let ino = try EXT4.Inode(number: 12, raw: raw, sb: fs.sb, warn: { _ in })
        #expect(ino.mtime == 4_116_038_950)
        Self.putLE32(0, &raw, at: 0x88)
        #expect(try EXT4.Inode(number: 12, raw: raw, sb: fs.sb, warn: { _ in }).mtime == -178_928_346)
    }

    @Test func checksumMismatchesAreWarnings() throws {
        try withPatched({ b, image in
            let ino = try Self.inodeOffset(image, "/a")
            b[ino + 0x24] ^= 0xFF  // osd1: not used by the reader
            b[1024 + 0x3FC] ^= 0x01  // superblock checksum
        }) { path in
            let fs = try EXT4Fixture.open(path)
            let a = try entry(fs, fs.rootInode, "a")
            #expect(try fs.read(a, at: 0, count: 100) == Array("hello\n".utf8))
            #expect(fs.warnings.contains { $0.contains("superblock checksum mismatch") })
            #expect(fs.warnings.contains { $0.contains("inode \(a) checksum mismatch") }, "\(fs.warnings)")
        }
    }
}
