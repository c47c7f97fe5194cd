import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// Hostile and damaged qcow2 input: everything must end in a `WardenError`
/// (or a successful read), never a trap, a hang or a huge allocation.
@Suite struct QCOW2DamagedTests {
    static let smallScript = """
        qemu-img create -q -f qcow2 img.qcow2 4M
        qemu-io -f qcow2 -c "write -P 0x11 0 128k" -c "write -z 256k 64k" -c "write -P 0x22 3M 64k" img.qcow2 >/dev/null
        qemu-img snapshot -c snap img.qcow2
        qemu-img create -q -f raw src.raw 4M
        qemu-io -f raw -c "write -P 0x33 0 1M" src.raw >/dev/null
        seq 1 100000 | dd of=src.raw bs=4096 seek=256 conv=notrunc status=none
        qemu-img convert -c -O qcow2 src.raw zlib.qcow2
        qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw zstd.qcow2
        """

    func small() throws -> String { try Q.fixture("damaged-small", Self.smallScript) }

    /// Patches a copy of `name` and returns the error from opening and reading it all.
    func damaged(file name: String = "img.qcow2", _ edits: [(Int, [UInt8])], truncate: Int? = nil,
                 options: OpenOptions = OpenOptions(format: .qcow2),
                 sourceLocation: SourceLocation = #_sourceLocation) throws -> WardenError? {
        let dir = try small()
        return try Fixtures.withTemporaryDirectory { tmp in
            let path = tmp + "/bad.qcow2"
            try Q.patch(dir + "/" + name, path, edits, truncate: truncate)
            return Q.openAndReadEverything(path, options: options, sourceLocation: sourceLocation)
        }
    }

    @Test func pristineSmallImagesRead() throws {
        let dir = try small()
        for name in ["img.qcow2", "zlib.qcow2", "zstd.qcow2"] {
            try Q.expectMatchesOracle(dir + "/" + name)
        }
    }

    @Test(arguments: ["img.qcow2", "zlib.qcow2", "zstd.qcow2"])
    func truncationAtManyLengthsThrowsOrReads(_ name: String) throws {
        let dir = try small()
        let full = try Fixtures.read(dir + "/" + name)
        var lengths = [0, 1, 3, 4, 7, 8, 20, 71, 72, 73, 100, 103, 104, 105, 111, 112, 200, 511, 512, 4096]
        lengths += stride(from: 65536 - 8, to: full.count, by: 4099).map { $0 }
        lengths += [full.count - 1, full.count - 512, full.count - 65536].filter { $0 > 0 }
        try Fixtures.withTemporaryDirectory { tmp in
            for n in lengths where n < full.count {
                let path = tmp + "/t\(n).qcow2"
                try Fixtures.write(Array(full.prefix(n)), to: path)
                // Forced qcow2 so even the tiny prefixes go through the qcow2 parser.
                let err = Q.openAndReadEverything(path, options: OpenOptions(format: .qcow2))
                if n < 104 { #expect(err?.code == .corrupt, "length \(n)") }
                try? FileManager.default.removeItem(atPath: path)
            }
        }
    }

    @Test func l1EntryPastEndOfFile() throws {
        let dir = try small()
        let bytes = try Fixtures.read(dir + "/img.qcow2")
        let l1 = Int(Q.readBE64(bytes, 40))
        let err = try damaged([(l1, Q.be64(0x8000_0000_0000_0000 | 0x7fff_0000))])
        #expect(err?.code == .corrupt)
        #expect(err?.message.contains("L2 table at offset 0x7fff0000") == true)
        #expect(err?.message.contains("lies beyond the end of the file") == true)
    }

    @Test func l1EntryUnaligned() throws {
        let dir = try small()
        let bytes = try Fixtures.read(dir + "/img.qcow2")
        let l1 = Int(Q.readBE64(bytes, 40))
        let err = try damaged([(l1, Q.be64(0x8000_0000_0003_0200))])
        #expect(err?.message.contains("L1 table entry 0 points at unaligned offset") == true)
    }

    @Test func l2EntryPastEndOfFile() throws {
        let dir = try small()
        let bytes = try Fixtures.read(dir + "/img.qcow2")
        let l1 = Int(Q.readBE64(bytes, 40))
        let l2 = Int(Q.readBE64(bytes, l1) & 0x00ff_ffff_ffff_fe00)
        let err = try damaged([(l2, Q.be64(0x8000_0000_0000_0000 | 0x10_0000_0000))])
        #expect(err?.code == .corrupt)
        #expect(err?.message.contains("data cluster at offset 0x1000000000 lies beyond the end of the file") == true)
        // Unaligned data cluster.
        let err2 = try damaged([(l2 + 8, Q.be64(0x8000_0000_0001_0200))])
        #expect(err2?.message.contains("unaligned offset 0x10200") == true)
        // Compressed cluster beyond the end.
        let err3 = try damaged([(l2 + 16, Q.be64(0x4000_0000_0000_0000 | 0xff_ffff_0000))])
        #expect(err3?.message.contains("compressed cluster at offset") == true)
    }

    @Test func l1TableItselfPastEndOfFile() throws {
        let err = try damaged([(40, Q.be64(0x7fff_0000))])
        #expect(err?.message.contains("L1 table at offset 0x7fff0000 lies beyond the end of the file") == true)
    }

    @Test func garbledCompressedData() throws {
        let dir = try small()
        for name in ["zlib.qcow2", "zstd.qcow2"] {
            let bytes = try Fixtures.read(dir + "/" + name)
            let l1 = Int(Q.readBE64(bytes, 40))
            let l2 = Int(Q.readBE64(bytes, l1) & 0x00ff_ffff_ffff_fe00)
            // Find the first compressed descriptor and garble the data it points at.
            var garbled: WardenError?
            for i in 0..<(65536 / 8) {
                let e = Q.readBE64(bytes, l2 + 8 * i)
                guard e & (1 << 62) != 0 else { continue }
                let off = Int(e & ((1 << 54) - 1))
                garbled = try damaged(file: name, [(off, [UInt8](repeating: 0xff, count: 64))])
                break
            }
            #expect(garbled?.code == .corrupt, "\(name)")
            #expect(garbled?.message.contains("does not decompress") == true, "\(name)")
        }
    }

    @Test func badMagicAndVersion() throws {
        #expect(try damaged([(0, [0x51, 0x46, 0x49, 0x00])])?.message.contains("bad qcow2 magic") == true)
        // Detection does not take it for qcow2 any more.
        #expect(try damaged([(0, [0x51, 0x46, 0x49, 0x00])], options: OpenOptions()) == nil)
        let v1 = try damaged([(4, Q.be32(1))])
        #expect(v1?.code == .unsupported)
        #expect(v1?.message.contains("version 1") == true)
        #expect(try damaged([(4, Q.be32(0xffff_ffff))])?.code == .unsupported)
    }

    @Test(arguments: [UInt32(0), 8, 22, 31, 63, 64, 0xffff_ffff])
    func clusterBitsOutOfRange(_ bits: UInt32) throws {
        let err = try damaged([(20, Q.be32(bits))])
        #expect(err != nil)
        #expect(err?.message.contains("cluster_bits \(bits) is out of range") == true)
    }

    @Test func hugeVirtualSizeAndL1() throws {
        // 2^62 bytes with the real (small) L1 table: refused as too small, no allocation.
        let e1 = try damaged([(24, Q.be64(1 << 62))])
        #expect(e1?.code == .corrupt)
        #expect(e1?.message.contains("too few") == true)
        // A huge L1 size: refused by the 32 MiB cap before reading anything.
        let e2 = try damaged([(24, Q.be64(1 << 62)), (36, Q.be32(0xffff_ffff))])
        #expect(e2?.code == .limitExceeded)
        // Largest virtual size the 32 MiB L1 can map (2 PiB at 64 KiB clusters), L1 past EOF.
        let e3 = try damaged([(24, Q.be64(1 << 51)), (36, Q.be32(4 << 20))])
        #expect(e3?.message.contains("L1 table at offset") == true)
        // Size overflowing the L1 arithmetic.
        #expect(try damaged([(24, Q.be64(UInt64.max))]) != nil)
    }

    @Test func hugeSparseImageMapsQuickly() throws {
        // A real 1 PiB image: only metadata, all unallocated. Mapping the whole
        // range must be one zero extent, and reading a little of it must work.
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("qemu-img create -q -f qcow2 -o cluster_size=2M huge.qcow2 1P", cwd: dir)
            let img = try ImageOpener.open(dir + "/huge.qcow2")
            #expect(img.device.size == 1 << 50)
            let map = try img.device.mapping(at: 0, length: img.device.size)
            #expect(map == [BlockExtent(offset: 0, length: 1 << 50, kind: .zero)])
            #expect(try img.device.read(at: (1 << 50) - 4096, count: 4096) == [UInt8](repeating: 0, count: 4096))
        }
    }

    @Test func sharedL2TablesCannotBlowUpMapping() throws {
        // 1 PiB, 2 MiB clusters: 2048 L1 entries, all pointing at one L2 table
        // whose entries alternate data/unallocated: 2^38 guest clusters of
        // alternating kinds described by a few MiB of file.
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("qemu-img create -q -f qcow2 -o cluster_size=2M huge.qcow2 1P", cwd: dir)
            var bytes = try Fixtures.read(dir + "/huge.qcow2")
            let cluster = 2 << 20
            let l1 = Int(Q.readBE64(bytes, 40))
            let l1Size = Int(Q.readBE64(bytes, 32) & 0xffff_ffff)
            let l2 = (bytes.count + cluster - 1) / cluster * cluster
            bytes += [UInt8](repeating: 0, count: l2 + cluster - bytes.count)
            for i in stride(from: 0, to: cluster / 8, by: 2) {
                bytes.replaceSubrange(l2 + 8 * i..<l2 + 8 * i + 8, with: Q.be64(UInt64(cluster)))
            }
            for i in 0..<l1Size {
                bytes.replaceSubrange(l1 + 8 * i..<l1 + 8 * i + 8, with: Q.be64(UInt64(l2)))
            }
            try Fixtures.write(bytes, to: dir + "/shared.qcow2")
            let img = try ImageOpener.open(dir + "/shared.qcow2")
            let map = try img.device.mapping(at: 0, length: img.device.size)
            #expect(map.count <= QCOW2.Device.mappingExtentLimit + 1)
            #expect(map.last?.kind == .data)
            #expect(map.last.map { $0.offset + $0.length } == img.device.size)
            #expect(map.prefix(3).map(\.kind) == [.data, .zero, .data])
        }
    }

    @Test func featureBitsAndEncryption() throws {
        // Legacy AES (crypt_method 1) is refused; LUKS (2) without its header extension is corrupt.
        let crypt = try damaged([(32, Q.be32(1))])
        #expect(crypt?.code == .unsupported)
        #expect(crypt?.message.contains("legacy AES encryption") == true)
        let luks = try damaged([(32, Q.be32(2))])
        #expect(luks?.code == .corrupt && luks?.message.contains("disagree") == true)
        // Unknown incompatible bit 7 is named.
        let unknown = try damaged([(72, Q.be64(1 << 7))])
        #expect(unknown?.code == .unsupported)
        #expect(unknown?.message.contains("bit 7") == true)
        // External data file.
        let ext = try damaged([(72, Q.be64(1 << 2))])
        #expect(ext?.code == .unsupported)
        #expect(ext?.message.contains("external data file") == true)
        // Dirty and corrupt bits: still readable, and reported.
        let dir = try small()
        try Fixtures.withTemporaryDirectory { tmp in
            try Q.patch(dir + "/img.qcow2", tmp + "/flags.qcow2", [(72, Q.be64(0b11))])
            let img = try ImageOpener.open(tmp + "/flags.qcow2")
            #expect(img.info.details["dirty"] == "true")
            #expect(img.info.details["corrupt"] == "true")
            #expect(Q.firstDifference(try Q.readAll(img.device), try Q.oracle(dir + "/img.qcow2")) == nil)
        }
        // Header length out of range, refcount order out of range.
        #expect(try damaged([(100, Q.be32(50))])?.message.contains("header_length") == true)
        #expect(try damaged([(100, Q.be32(0x10_0000))])?.message.contains("header_length") == true)
        #expect(try damaged([(96, Q.be32(7))])?.message.contains("refcount_order") == true)
    }

    @Test func realEncryptedImageIsRefused() throws {
        // Cached: LUKS creation benchmarks PBKDF on the CPU and can fail on a loaded machine
        // ("Unable to get accurate CPU usage"), so it is retried and made once.
        let fixture = try Fixtures.cached("qcow2-luks", recipe: "v1") { dir in
            try Tool.sh("""
                for i in 1 2 3 4 5; do
                  qemu-img create -q -f qcow2 --object secret,id=s0,data=pw \
                    -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 enc.qcow2 1M && exit 0
                  sleep 1
                done
                exit 1
                """, cwd: dir)
        }
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.run(["cp", fixture + "/enc.qcow2", dir + "/enc.qcow2"])
            let err = Q.openAndReadEverything(dir + "/enc.qcow2")
            #expect(err?.code == .unsupported)
            #expect(err?.message.contains("encrypted") == true)
        }
    }

    @Test func snapshotTableDamage() throws {
        // Count beyond the cap.
        let many = try damaged([(60, Q.be32(0x0100_0000))])
        #expect(many?.code == .limitExceeded)
        // Offset past the end of the file.
        let far = try damaged([(64, Q.be64(0x7fff_0000))])
        #expect(far?.message.contains("snapshot table entry 0") == true)
        // Unaligned offset.
        #expect(try damaged([(64, Q.be64(0x7fff_0008))])?.message.contains("not aligned") == true)
        // Snapshot's own L1 table is huge: refused when it is selected.
        let dir = try small()
        let bytes = try Fixtures.read(dir + "/img.qcow2")
        let snapTable = Int(Q.readBE64(bytes, 64))
        let big = try damaged([(snapTable + 8, Q.be32(0xffff_ffff))], options: OpenOptions(snapshot: "snap"))
        #expect(big?.code == .limitExceeded)
        // Extra data size beyond the cap.
        let extra = try damaged([(snapTable + 36, Q.be32(0x10_0000))])
        #expect(extra?.message.contains("extra data") == true)
    }

    @Test func headerExtensionDamage() throws {
        // Find the backing-format extension in a fixture that has one and corrupt it.
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("""
                qemu-img create -q -f raw base.raw 1M
                qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 1M
                """, cwd: dir)
            let bytes = try Fixtures.read(dir + "/top.qcow2")
            let fmtAt = try #require(findBE32(bytes, 0xe279_2aca))
            // Unsupported declared format.
            try Q.patch(dir + "/top.qcow2", dir + "/badfmt.qcow2", [(fmtAt + 8, Array("qed".utf8))])
            let e1 = Q.openAndReadEverything(dir + "/badfmt.qcow2")
            #expect(e1?.code == .unsupported)
            #expect(e1?.message.contains("backing format") == true)
            // Extension length larger than the header area.
            try Q.patch(dir + "/top.qcow2", dir + "/badlen.qcow2", [(fmtAt + 4, Q.be32(0x7fff_ffff))])
            let e2 = Q.openAndReadEverything(dir + "/badlen.qcow2")
            #expect(e2?.code == .corrupt)
            #expect(e2?.message.contains("header extension 0xe2792aca") == true)
            // Unknown extension type: skipped.
            try Q.patch(dir + "/top.qcow2", dir + "/unknown.qcow2", [(fmtAt, Q.be32(0x1234_5678))])
            let ok = try ImageOpener.open(dir + "/unknown.qcow2")
            #expect(ok.info.backingFormat == nil)
            #expect(ok.chain.count == 2)
            // Backing name length beyond the limit.
            #expect(Q.openAndReadEverything(dir + "/top.qcow2") == nil)
            try Q.patch(dir + "/top.qcow2", dir + "/longname.qcow2", [(16, Q.be32(5000))])
            #expect(Q.openAndReadEverything(dir + "/longname.qcow2")?.message.contains("backing file name") == true)
        }
    }

    func findBE32(_ bytes: [UInt8], _ v: UInt32) -> Int? {
        let pat = Q.be32(v)
        for i in 0..<min(bytes.count, 65536) - 4 where Array(bytes[i..<i + 4]) == pat { return i }
        return nil
    }

    @Test func randomByteFlipsInMetadataNeverTrap() throws {
        let dir = try small()
        var rng = SeededRandom(seed: 42)
        for name in ["img.qcow2", "zlib.qcow2"] {
            let bytes = try Fixtures.read(dir + "/" + name)
            let l1 = Int(Q.readBE64(bytes, 40))
            let l2 = Int(Q.readBE64(bytes, l1) & 0x00ff_ffff_ffff_fe00)
            for _ in 0..<40 {
                // Flip bytes in the header, the L1 table or the first L2 table.
                let region = [(0, 112), (l1, 64), (l2, 4096)][Int(rng.next() % 3)]
                let off = region.0 + Int(rng.next() % UInt64(region.1))
                let val = UInt8(truncatingIfNeeded: rng.next())
                _ = try damaged(file: name, [(off, [val])])
            }
        }
    }
}
