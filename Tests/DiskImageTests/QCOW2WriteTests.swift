import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// Writable qcow2 overlays and raw images, checked with qemu-img (check, info,
/// convert, compare) and sha256 of the backing file.
@Suite struct QCOW2WriteTests {
    static func sha(_ path: String) throws -> String {
        String(try Tool.run(["sha256sum", path]).stdoutText.prefix(64))
    }

    /// `qemu-img check` must report no errors and no corruption; leaks are returned.
    @discardableResult
    static func check(_ image: String, allowLeaks: Bool = false) throws -> Int {
        let r = try Tool.run(["qemu-img", "check", "--output=json", image], check: false)
        let json = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any], "qemu-img check: \(r.stderr)")
        let corruptions = json["corruptions"] as? Int ?? 0
        let errors = json["check-errors"] as? Int ?? 0
        let leaks = json["leaks"] as? Int ?? 0
        #expect(corruptions == 0 && errors == 0, "qemu-img check \(image): \(r.stdoutText)")
        if !allowLeaks { #expect(leaks == 0, "qemu-img check \(image): \(r.stdoutText)") }
        return leaks
    }

    static func raw(_ image: String, _ out: String) throws -> [UInt8] {
        try Tool.run(["qemu-img", "convert", "-O", "raw", image, out])
        return try Fixtures.read(out)
    }

    /// A random base (raw or qcow2, with a compressed and zero cluster) and expected bytes.
    static func makeBase(_ dir: String, format: String, size: Int) throws -> [UInt8] {
        var rng = SeededRandom(seed: 42)
        var bytes = [UInt8](repeating: 0, count: size)
        for i in stride(from: 0, to: size, by: 8) {
            let v = rng.next()
            for k in 0..<min(8, size - i) { bytes[i + k] = UInt8(truncatingIfNeeded: v >> UInt64(8 * k)) }
        }
        // A zero region, to become a zero cluster in qcow2.
        for i in 65536..<(3 * 65536) where i < size { bytes[i] = 0 }
        try Fixtures.write(bytes, to: dir + "/base.raw")
        if format == "qcow2" {
            try Tool.run(["qemu-img", "convert", "-c", "-O", "qcow2", dir + "/base.raw", dir + "/base.qcow2"])
            try FileManager.default.removeItem(atPath: dir + "/base.raw")
        }
        return bytes
    }

    @Test(arguments: [(512, "raw"), (4096, "qcow2"), (65536, "qcow2"), (512, "qcow2")])
    func overlayWritesMatchQEMU(clusterSize: Int, baseFormat: String) throws {
        try Fixtures.withTemporaryDirectory { dir in
            // With 512-byte clusters the overlay passes 8 MiB, the reach of a one-cluster
            // refcount table, so refcount blocks and the table itself must grow.
            let size = clusterSize == 512 ? 10 << 20 : 3 << 20
            var expected = try Self.makeBase(dir, format: baseFormat, size: size)
            let base = dir + "/base." + baseFormat
            let before = try Self.sha(base)
            try QCOW2Overlay.create(at: dir + "/top.qcow2", backing: "base." + baseFormat, backingFormat: baseFormat,
                                    clusterSize: clusterSize)
            let info = try Tool.run(["qemu-img", "info", "--output=json", dir + "/top.qcow2"]).stdoutText
            #expect(info.contains("\"backing-filename\": \"base.\(baseFormat)\""))
            #expect(info.contains("\"backing-filename-format\": \"\(baseFormat)\""))
            try Self.check(dir + "/top.qcow2")

            let o = try QCOW2Overlay.open(dir + "/top.qcow2", durability: .processCrashOnly)
            #expect(o.size == UInt64(size))
            var rng = SeededRandom(seed: UInt64(clusterSize))
            for _ in 0..<300 {
                let off = Int(rng.next() % UInt64(size - 1))
                let len = Int(rng.next() % 9000) + 1
                let n = min(len, size - off)
                let data = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                try o.write(data, at: UInt64(off))
                expected.replaceSubrange(off..<(off + n), with: data)
            }
            // A large aligned write and one that crosses many clusters.
            let big = (0..<(clusterSize == 512 ? 9_000_000 : 700_000)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            try o.write(big, at: 1_000_001)
            expected.replaceSubrange(1_000_001..<(1_000_001 + big.count), with: big)
            try o.flush()
            // Our reader and QEMU agree with the expected bytes.
            #expect(try o.read(at: 0, count: size) == expected)
            let reopened = try ImageOpener.open(dir + "/top.qcow2")
            #expect(try reopened.device.read(at: 0, count: size) == expected)
            #expect(try Self.raw(dir + "/top.qcow2", dir + "/out.raw") == expected)
            try Self.check(dir + "/top.qcow2")
            #expect(try Self.sha(base) == before, "the backing file changed")
            if clusterSize == 512 {
                // Small clusters: refcount blocks and the refcount table had to grow.
                let hdr = try Fixtures.read(dir + "/top.qcow2")
                let rtClusters = UInt32(hdr[56]) << 24 | UInt32(hdr[57]) << 16 | UInt32(hdr[58]) << 8 | UInt32(hdr[59])
                #expect(rtClusters > 1, "refcount table did not grow")
            }
        }
    }

    @Test func writesIntoQEMUMadeOverlayAndChains() throws {
        try Fixtures.withTemporaryDirectory { dir in
            var expected = try Self.makeBase(dir, format: "qcow2", size: 2 << 20)
            try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.qcow2", "-F", "qcow2", dir + "/mid.qcow2"])
            try Tool.run(["qemu-io", "-c", "write -P 0x5a 8192 20000", "-c", "write -z 100000 8192", dir + "/mid.qcow2"])
            for i in 8192..<28192 { expected[i] = 0x5a }
            for i in 100_000..<108_192 { expected[i] = 0 }
            try QCOW2Overlay.create(at: dir + "/top.qcow2", backing: dir + "/mid.qcow2", backingFormat: "qcow2", clusterSize: 65536)
            let before = (try Self.sha(dir + "/base.qcow2"), try Self.sha(dir + "/mid.qcow2"))
            // Write into the QEMU-made middle layer first (in place and new clusters), then the top.
            let mid = try QCOW2Overlay.open(dir + "/mid.qcow2")
            try mid.write([UInt8](repeating: 0xA1, count: 100), at: 8200)       // allocated cluster: in place
            try mid.write([UInt8](repeating: 0xB2, count: 5000), at: 101_000)   // zero cluster: copy-on-write
            try mid.write([UInt8](repeating: 0xC3, count: 3), at: 1_500_000)    // compressed backing cluster
            try mid.flush()
            for i in 8200..<8300 { expected[i] = 0xA1 }
            for i in 101_000..<106_000 { expected[i] = 0xB2 }
            for i in 1_500_000..<1_500_003 { expected[i] = 0xC3 }
            try Self.check(dir + "/mid.qcow2")
            let midAfter = try Self.sha(dir + "/mid.qcow2")
            let top = try QCOW2Overlay.open(dir + "/top.qcow2")
            try top.write([UInt8](repeating: 0xD4, count: 70000), at: 60000)
            for i in 60000..<130_000 { expected[i] = 0xD4 }
            #expect(try Self.raw(dir + "/top.qcow2", dir + "/out.raw") == expected)
            try Self.check(dir + "/top.qcow2")
            #expect(try Self.sha(dir + "/base.qcow2") == before.0)
            #expect(try Self.sha(dir + "/mid.qcow2") == midAfter)
            #expect(before.1 != midAfter)
        }
    }

    @Test func refusesCorruptDirtySnapshotsAndVMDK() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let img = dir + "/a.qcow2"
            try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "1M"])
            // corrupt bit
            var b = try Fixtures.read(img)
            b[79] |= 2
            try Fixtures.write(b, to: img)
            let sum = try Self.sha(img)
            #expect { try QCOW2Overlay.open(img) } throws: { e in
                (e as? WardenError)?.code == .corrupt && "\(e)".contains("marked corrupt") && "\(e)".hasPrefix(img)
            }
            b[79] = 1   // dirty only
            try Fixtures.write(b, to: img)
            #expect { try QCOW2Overlay.open(img) } throws: { e in "\(e)".contains("dirty") }
            // internal snapshot
            let s = dir + "/s.qcow2"
            try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", s, "1M"])
            try Tool.run(["qemu-img", "snapshot", "-c", "one", s])
            let ssum = try Self.sha(s)
            #expect { try QCOW2Overlay.open(s) } throws: { e in (e as? WardenError)?.code == .unsupported && "\(e)".contains("snapshot") }
            #expect(try Self.sha(s) == ssum)
            #expect(try Self.sha(img) != sum)   // (we changed it ourselves above)
            // vmdk
            let v = dir + "/v.vmdk"
            try Tool.run(["qemu-img", "create", "-q", "-f", "vmdk", v, "1M"])
            #expect { try ImageOpener.openWritable(v) } throws: { e in (e as? WardenError)?.code == .unsupported }
            // create refuses an existing path and leaves it alone
            try Tool.run(["qemu-img", "create", "-q", "-f", "raw", dir + "/base.raw", "1M"])
            #expect { try QCOW2Overlay.create(at: s, backing: "base.raw", backingFormat: "raw") } throws: { e in
                (e as? WardenError)?.code == .conflict
            }
            #expect(try Self.sha(s) == ssum)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir).allSatisfy { !$0.contains("warden-tmp") })
        }
    }

    /// An image QEMU has open (here qemu-io, as a running VM would) is not written.
    @Test func refusesImagesInUse() throws {
        try Fixtures.withTemporaryDirectory { dir in
            for fmt in ["qcow2", "raw"] {
                let img = dir + "/busy." + fmt
                try Tool.run(["qemu-img", "create", "-q", "-f", fmt, img, "1M"])
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-io")
                p.arguments = ["-f", fmt, "-c", "sleep 20000", img]
                p.standardOutput = FileHandle.nullDevice
                p.standardError = FileHandle.nullDevice
                try p.run()
                defer { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
                let sum = try Self.sha(img)
                var refused = false
                for _ in 0..<100 {   // wait until qemu-io has the image open
                    do {
                        _ = try ImageOpener.openWritable(img)
                        usleep(50_000)
                    } catch let e as WardenError {
                        #expect(e.code == .conflict && "\(e)".contains("in use"))
                        refused = true
                        break
                    }
                }
                #expect(refused, "\(fmt): the writer did not notice qemu-io holding the image")
                #expect(try Self.sha(img) == sum)
            }
        }
    }

    @Test func rawWritableAndReadOnlyRefusal() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let img = dir + "/d.raw"
            try Fixtures.write([UInt8](repeating: 0, count: 8192), to: img)
            let w = try ImageOpener.openWritable(img)
            try w.device.write([1, 2, 3], at: 8189)
            #expect { try w.device.write([1, 2, 3, 4], at: 8189) } throws: { e in (e as? WardenError)?.code == .invalidArgument }
            try w.device.flush()
            let r = try Fixtures.read(img)
            #expect(r.count == 8192 && Array(r[8189...]) == [1, 2, 3])
            let ro = RawDevice(file: try ImageFile(path: img))
            #expect { try ro.write([9], at: 0) } throws: { e in (e as? WardenError)?.code == .invalidArgument }
            let slice = try SliceDevice(base: w.device, start: 4096, size: 4096)
            try slice.write([7, 7], at: 4094)
            #expect { try slice.write([7], at: 4096) } throws: { _ in true }
            #expect(Array(try Fixtures.read(img)[8189...]) == [1, 7, 7])
        }
    }
}

/// qcow2 images without a backing file, as `vm pull` writes them: checked by qemu-img.
@Suite struct QCOW2StandaloneTests {
    @Test func freshRunsCrossL2TablesAndUnalignedTails() throws {
        try Fixtures.withTemporaryDirectory { dir in
            // 4 KiB clusters: an L2 table covers 2 MiB, so a 3 MiB run crosses two tables.
            let path = dir + "/s.qcow2"
            try QCOW2Overlay.createStandalone(at: path, size: (8 << 20) + 1024, clusterSize: 4096)
            let o = try QCOW2Overlay.open(path, durability: .barriers)
            let data = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 >> 12) }
            try data.withUnsafeBytes { try o.writeFresh($0, at: 1 << 20) }
            let tail = [UInt8](repeating: 0x77, count: 1000)
            try tail.withUnsafeBytes { try o.writeFresh($0, at: 8 << 20) }
            try o.flush()
            #expect(try Tool.run(["qemu-img", "check", path], check: false).status == 0)
            try Tool.sh("truncate -s \((8 << 20) + 1024) '\(dir)/r.raw'")
            try Data(data).write(to: URL(fileURLWithPath: dir + "/d.bin"))
            try Data(tail).write(to: URL(fileURLWithPath: dir + "/t.bin"))
            try Tool.run(["dd", "if=\(dir)/d.bin", "of=\(dir)/r.raw", "bs=1M", "seek=1", "conv=notrunc", "status=none"])
            try Tool.run(["dd", "if=\(dir)/t.bin", "of=\(dir)/r.raw", "bs=1M", "seek=8", "conv=notrunc", "status=none"])
            let cmp = try Tool.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", dir + "/r.raw", path], check: false)
            #expect(cmp.status == 0, "\(cmp.stdoutText) \(cmp.stderr)")
        }
    }

    @Test func aStandaloneImageIsCleanAndHoldsWhatWasWritten() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let path = dir + "/s.qcow2"
            try QCOW2Overlay.createStandalone(at: path, size: 64 << 20)
            let info = try Tool.run(["qemu-img", "info", "--output=json", path])
            let obj = try #require(try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any])
            #expect(obj["virtual-size"] as? Int == 64 << 20)
            #expect(obj["backing-filename"] == nil)
            let o = try QCOW2Overlay.open(path, durability: .processCrashOnly)
            let a = [UInt8](repeating: 0xA5, count: 1 << 20), b = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            // Runs of fresh clusters (writeFresh), one written twice (the second through write),
            // a run crossing into the next L2 table's range is not needed at 64 MiB.
            try a.withUnsafeBytes { try o.writeFresh($0, at: 0) }
            try a.withUnsafeBytes { try o.writeFresh(UnsafeRawBufferPointer(rebasing: $0[0..<65536]), at: 0) }
            try b.withUnsafeBytes { try o.writeFresh($0, at: 40 << 20) }
            try o.flush()
            #expect(try Tool.run(["qemu-img", "check", path], check: false).status == 0)
            try Tool.sh("""
                truncate -s 64M '\(dir)/r.raw'
                qemu-io -f raw -c 'write -P 0xa5 0 1M' '\(dir)/r.raw' >/dev/null
                """)
            try Data(b).write(to: URL(fileURLWithPath: dir + "/b.bin"))
            try Tool.run(["dd", "if=\(dir)/b.bin", "of=\(dir)/r.raw", "bs=64k", "seek=640", "conv=notrunc", "status=none"])
            #expect(try Tool.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", dir + "/r.raw", path], check: false).status == 0)
            #expect(throws: WardenError.self) { try QCOW2Overlay.createStandalone(at: path, size: 1 << 20) }   // exists
        }
    }
}
