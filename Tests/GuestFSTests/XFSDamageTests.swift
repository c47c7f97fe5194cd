import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// A device that overlays byte patches on a base device and may be cut short.
final class XFSPatchedDevice: BlockDevice, @unchecked Sendable {
    let base: any BlockDevice
    let size: UInt64
    var patches: [(UInt64, [UInt8])] = []

    init(_ base: any BlockDevice, size: UInt64? = nil) {
        self.base = base
        self.size = min(size ?? base.size, base.size)
    }

    func patch(_ offset: UInt64, _ bytes: [UInt8]) { patches.append((offset, bytes)) }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        try base.read(at: offset, into: buffer)
        let end = offset + UInt64(buffer.count)
        for (o, bytes) in patches {
            for (i, b) in bytes.enumerated() {
                let p = o + UInt64(i)
                if p >= offset && p < end { buffer[Int(p - offset)] = b }
            }
        }
    }
}

@Suite struct XFSDamageTests {
    static func base() throws -> RawDevice {
        RawDevice(file: try ImageFile(path: try XFSFixture.image(XFSFixture.variants[0])))
    }

    static func be(_ v: UInt64, _ n: Int) -> [UInt8] {
        (0..<n).map { UInt8(truncatingIfNeeded: v >> UInt64(8 * (n - 1 - $0))) }
    }

    /// Walks the whole tree (bounded), reading a little of every file; returns the first error.
    static func walk(_ fs: XFSVolume) -> [String] {
        var errors: [String] = []
        var seen = Set<UInt64>()
        var queue = [fs.rootInode]
        while let dir = queue.popLast(), seen.count < 20000 {
            guard seen.insert(dir).inserted else { continue }
            do {
                for e in try fs.readDirectory(dir) {
                    do {
                        let st = try fs.stat(e.inode)
                        switch st.type {
                        case .directory: queue.append(e.inode)
                        case .regular:
                            _ = try fs.read(e.inode, at: 0, count: 65536)
                            if st.size > 1_000_000 { _ = try fs.read(e.inode, at: st.size - 100, count: 100) }
                        case .symlink: _ = try fs.readLink(e.inode)
                        default: break
                        }
                    } catch let w as WardenError {
                        errors.append(w.message)
                    } catch {
                        errors.append("NOT A WardenError: \(error)")
                    }
                }
            } catch let w as WardenError {
                errors.append(w.message)
            } catch {
                errors.append("NOT A WardenError: \(error)")
            }
        }
        return errors
    }

    @Test func intactImageWalksCleanly() throws {
        let fs = try XFS.open(try Self.base())
        #expect(Self.walk(fs).isEmpty)
    }

    @Test func truncatedImagesThrow() throws {
        let base = try Self.base()
        for len: UInt64 in [0, 3, 100, 511, 512, 1024, 4096, 65536, 1 << 20, 100 << 20, base.size / 2, base.size - 4096, base.size - 1] {
            let dev = XFSPatchedDevice(base, size: len)
            #expect(throws: WardenError.self, "length \(len)") { _ = try XFS.open(dev) }
        }
    }

    @Test func zeroedAndGarbledSuperblocks() throws {
        let base = try Self.base()
        let zero = XFSPatchedDevice(base)
        zero.patch(0, [UInt8](repeating: 0, count: 512))
        #expect(throws: WardenError.self) { _ = try XFS.open(zero) }
        // (offset, bytes) pairs that each break one geometry field.
        let garbles: [(UInt64, [UInt8])] = [
            (4, Self.be(3000, 4)),               // block size
            (4, Self.be(0, 4)),
            (8, Self.be(UInt64.max, 8)),         // dblocks
            (56, Self.be(UInt64.max, 8)),        // root inode
            (56, Self.be(1, 8)),
            (84, Self.be(0, 4)),                 // agblocks
            (88, Self.be(0, 4)),                 // agcount
            (88, Self.be(0xFFFF_FFFF, 4)),
            (100, Self.be(0xB4A3, 2)),           // version 3
            (100, Self.be(0xB4A9, 2)),           // version 9
            (102, Self.be(7, 2)),                // sector size
            (104, Self.be(100, 2)),              // inode size
            (120, [30]),                         // block log
            (122, [3]),                          // inode log
            (124, [40]),                         // AG block log
            (192, [12]),                         // dir block log
        ]
        for (o, b) in garbles {
            let dev = XFSPatchedDevice(base)
            dev.patch(o, b)
            do {
                let fs = try XFS.open(dev)
                _ = Self.walk(fs)  // must not trap or hang
            } catch let e as WardenError {
                _ = e
            } catch {
                Issue.record("offset \(o): not a WardenError: \(error)")
            }
        }
    }

    @Test func unknownIncompatFeatureIsRefused() throws {
        let dev = XFSPatchedDevice(try Self.base())
        dev.patch(216, Self.be(0x8000_0001, 4))
        do {
            _ = try XFS.open(dev)
            Issue.record("opened a filesystem with an unknown incompat bit")
        } catch let e as WardenError {
            #expect(e.code == .unsupported)
            #expect(e.message.contains("unknown 0x80000000"), "\(e.message)")
        }
    }

    /// Byte offset of the data fork of `path`'s inode.
    static func forkOffset(_ fs: XFSVolume, _ path: String) throws -> (UInt64, XFS.Inode) {
        let ino = try fs.inode(try XFSTests.lookup(fs, path))
        return (try fs.inodeOffset(ino.number) + (fs.sb.hasCRC ? 176 : 100), ino)
    }

    @Test func bmbtPointerPastTheEndThrows() throws {
        let base = try Self.base()
        let fs = try XFS.open(base)
        let (fork, ino) = try Self.forkOffset(fs, "/many")
        #expect(ino.forkFormat == .btree)
        let maxrecs = (ino.dataFork.count - 4) / 16
        let dev = XFSPatchedDevice(base)
        dev.patch(fork + 4 + UInt64(maxrecs) * 8, Self.be(0x7FFF_FFFF_FFFF, 8))
        let bad = try XFS.open(dev)
        #expect(throws: WardenError.self) { try bad.readDirectory(ino.number) }
        #expect(!bad.warnings.isEmpty)  // the inode crc no longer matches

        let deep = XFSPatchedDevice(base)
        deep.patch(fork, Self.be(20, 2))
        do {
            _ = try XFS.open(deep).readDirectory(ino.number)
            Issue.record("read a 20-level bmbt")
        } catch let e as WardenError {
            #expect(e.message.contains("deeper than 8 levels"), "\(e.message)")
        }
        let many = XFSPatchedDevice(base)
        many.patch(fork + 2, Self.be(0xFFFF, 2))
        #expect(throws: WardenError.self) { try XFS.open(many).readDirectory(ino.number) }
    }

    @Test func extentPastTheEndThrows() throws {
        let base = try Self.base()
        let fs = try XFS.open(base)
        let (fork, ino) = try Self.forkOffset(fs, "/size_3000000")
        #expect(ino.forkFormat == .extents)
        let dev = XFSPatchedDevice(base)
        dev.patch(fork + 6, [ino.dataFork[6] | 1, 0xFF])
        #expect(throws: WardenError.self) { try XFS.open(dev).read(ino.number, at: 0, count: 10) }
        // A huge extent count.
        let count = XFSPatchedDevice(base)
        count.patch(try fs.inodeOffset(ino.number) + 76, Self.be(0xFFFF_FFFF, 4))
        #expect(throws: WardenError.self) { try XFS.open(count).read(ino.number, at: 0, count: 10) }
        // A zero-length extent.
        let empty = XFSPatchedDevice(base)
        empty.patch(fork + 13, [ino.dataFork[13] & 0xE0, 0, 0])
        #expect(throws: WardenError.self) { try XFS.open(empty).read(ino.number, at: 0, count: 10) }
    }

    @Test func directoryBlockWithBadEntryLengthThrows() throws {
        let base = try Self.base()
        let fs = try XFS.open(base)
        let ino = try fs.inode(try XFSTests.lookup(fs, "/mid"))
        let ext = try fs.extents(ino)
        let block = try fs.diskBlock(ext[0].start, count: 1, what: "test") * UInt64(fs.sb.blockSize)
        // v5 data block: 64-byte header, "." (16 bytes), ".." (16 bytes), then the first name.
        let first = block + 96
        let longName = XFSPatchedDevice(base)
        longName.patch(first + 8, [250])
        #expect(throws: WardenError.self) { try XFS.open(longName).readDirectory(ino.number) }
        let zeroName = XFSPatchedDevice(base)
        zeroName.patch(first + 8, [0])
        #expect(throws: WardenError.self) { try XFS.open(zeroName).readDirectory(ino.number) }
        let badFree = XFSPatchedDevice(base)
        badFree.patch(first, [0xFF, 0xFF, 0x00, 0x03])
        #expect(throws: WardenError.self) { try XFS.open(badFree).readDirectory(ino.number) }
        let hugeFree = XFSPatchedDevice(base)
        hugeFree.patch(first, [0xFF, 0xFF, 0xFF, 0xF8])
        #expect(throws: WardenError.self) { try XFS.open(hugeFree).readDirectory(ino.number) }
        let magic = XFSPatchedDevice(base)
        magic.patch(block, [0, 0, 0, 0])
        #expect(throws: WardenError.self) { try XFS.open(magic).readDirectory(ino.number) }
        let tail = XFSPatchedDevice(base)
        tail.patch(block + UInt64(fs.sb.dirBlockSize) - 8, Self.be(0xFFFF_FFFF, 4))
        #expect(throws: WardenError.self) { try XFS.open(tail).readDirectory(ino.number) }
    }

    @Test func shortformDirectoryDamageThrows() throws {
        let base = try Self.base()
        let fs = try XFS.open(base)
        let (fork, ino) = try Self.forkOffset(fs, "/few")
        #expect(ino.forkFormat == .local)
        let dev = XFSPatchedDevice(base)
        dev.patch(fork, [200])  // entry count
        #expect(throws: WardenError.self) { try XFS.open(dev).readDirectory(ino.number) }
        let size = XFSPatchedDevice(base)
        size.patch(try fs.inodeOffset(ino.number) + 56, Self.be(1 << 40, 8))
        #expect(throws: WardenError.self) { try XFS.open(size).readDirectory(ino.number) }
    }

    @Test func checksumMismatchesAreWarnings() throws {
        let base = try Self.base()
        let fs = try XFS.open(base)
        let n = try XFSTests.lookup(fs, "/small.txt")
        let dev = XFSPatchedDevice(base)
        dev.patch(try fs.inodeOffset(n) + 132, [0x5A])  // di_pad2
        dev.patch(200, [0xAA])  // sb_features2 byte nobody checks (it is the high byte)
        let bad = try XFS.open(dev)
        #expect(try bad.read(n, at: 0, count: 100) == Array("hello, world\n".utf8))
        #expect(bad.warnings.contains { $0.contains("inode \(n) checksum mismatch") }, "\(bad.warnings)")
        #expect(bad.warnings.contains { $0.contains("superblock checksum mismatch") }, "\(bad.warnings)")
    }

    @Test func garbledMetadataNeverTraps() throws {
        let base = try Self.base()
        // Deterministic xorshift so failures reproduce.
        for seed in 1...24 {
            var s = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15
            func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
            let dev = XFSPatchedDevice(base)
            for _ in 0..<300 {
                // Metadata of AG 0 (inode chunks, directory and bmbt blocks) sits in its first MiBs.
                let off = 512 + next() % (3 << 20)
                dev.patch(off, [UInt8(truncatingIfNeeded: next())])
            }
            do {
                let fs = try XFS.open(dev)
                let errors = Self.walk(fs)
                #expect(!errors.contains { $0.hasPrefix("NOT A WardenError") }, "seed \(seed): \(errors.prefix(3))")
            } catch is WardenError {
            } catch {
                Issue.record("seed \(seed): not a WardenError: \(error)")
            }
        }
    }
}
