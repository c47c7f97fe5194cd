import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// Fixtures and helpers shared by the VMDK tests.
enum VMDKFixture {
    /// 8 MiB + 3 sectors (capacity not a multiple of the grain) with constant
    /// patterns at aligned and unaligned offsets, a random stretch and data in the last sector.
    static let sourceRecipe = """
    set -e
    truncate -s $((8*1024*1024 + 1536)) src.raw
    qemu-io -f raw -c 'write -P 0x11 0 64k' -c 'write -P 0xa5 100000 300000' -c 'write -P 0x5a 3M 1M' \
        -c 'write -P 0x77 8389144 1000' src.raw >/dev/null
    dd if=/dev/urandom of=src.raw bs=4096 seek=1200 count=60 conv=notrunc status=none
    """

    static func source() throws -> String {
        try Fixtures.cached("vmdk-source", recipe: sourceRecipe) { dir in
            try Tool.sh(sourceRecipe, cwd: dir)
        } + "/src.raw"
    }

    /// `qemu-img convert` of the source into `subformat`; returns the directory
    /// (holding disk.vmdk, its extents, and oracle.raw converted back by qemu).
    static func converted(_ subformat: String) throws -> String {
        let src = try source()
        let recipe = "qemu-img convert -f raw -O vmdk -o subformat=\(subformat) SRC disk.vmdk; qemu-img convert -O raw disk.vmdk oracle.raw; v2"
        return try Fixtures.cached("vmdk-\(subformat)", recipe: recipe + src) { dir in
            try Tool.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=\(subformat)", src, "disk.vmdk"], cwd: dir)
            try Tool.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", "disk.vmdk", "oracle.raw"], cwd: dir)
        }
    }

    static func readAll(_ dev: any BlockDevice) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(dev.size))
        let chunk = 1 << 20
        var off = 0
        // Odd-sized reads too, so grain-crossing paths are exercised.
        var step = chunk - 4097
        while off < out.count {
            let n = min(step, out.count - off)
            try out.withUnsafeMutableBytes { try dev.read(at: UInt64(off), into: UnsafeMutableRawBufferPointer(rebasing: $0[off..<off + n])) }
            off += n
            step = step == chunk ? chunk - 4097 : chunk
        }
        return out
    }

    /// Byte-array equality that reports the first difference instead of dumping megabytes.
    static func same(_ a: [UInt8], _ b: [UInt8]) -> String {
        if a.count != b.count { return "sizes differ: \(a.count) vs \(b.count)" }
        let eq = a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } }
        if eq { return "same" }
        let i = (0..<a.count).first { a[$0] != b[$0] }!
        return "first difference at offset \(i): \(a[i]) vs \(b[i])"
    }

    static func virtualSize(_ path: String) throws -> UInt64 {
        let r = try Tool.run(["qemu-img", "info", "--output=json", path])
        let obj = try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any]
        return (obj?["virtual-size"] as? NSNumber)?.uint64Value ?? 0
    }

    static func patch(_ path: String, at offset: Int, _ bytes: [UInt8]) throws {
        var data = try Fixtures.read(path)
        for (i, b) in bytes.enumerated() { data[offset + i] = b }
        try Fixtures.write(data, to: path)
    }

    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// Copies a fixture directory's files into `dir`.
    static func copy(_ from: String, _ names: [String], to dir: String) throws {
        for n in names {
            try FileManager.default.copyItem(atPath: from + "/" + n, toPath: dir + "/" + n)
        }
    }

    /// Checks `mapping` covers the device in order and that every `.zero` run reads as zeros in `expected`.
    static func checkMapping(_ dev: any BlockDevice, expected: [UInt8]) throws {
        let map = try dev.mapping(at: 0, length: dev.size)
        var pos: UInt64 = 0
        for e in map {
            #expect(e.offset == pos)
            if e.kind == .zero {
                let allZero = expected[Int(e.offset)..<Int(e.offset + e.length)].allSatisfy { $0 == 0 }
                #expect(allZero, "zero run at \(e.offset)+\(e.length) holds data")
            }
            pos += e.length
        }
        #expect(pos == dev.size)
    }
}

@Suite struct VMDKTests {
    static let subformats = ["monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"]

    @Test(arguments: subformats)
    func readsLikeQemu(_ subformat: String) throws {
        let dir = try VMDKFixture.converted(subformat)
        let img = try ImageOpener.open(dir + "/disk.vmdk")
        #expect(img.info.format == .vmdk)
        #expect(img.info.details["subformat"] == subformat)
        #expect(img.info.details["extents"] == "1")
        #expect(img.device.size == (try VMDKFixture.virtualSize(dir + "/disk.vmdk")))
        if subformat.contains("Sparse") || subformat == "streamOptimized" {
            #expect(img.info.details["grain_size"] == "65536")
        }
        let ours = try VMDKFixture.readAll(img.device)
        let oracle = try Fixtures.read(dir + "/oracle.raw")
        #expect(VMDKFixture.same(ours, oracle) == "same")
        #expect(VMDKFixture.same(ours, (try Fixtures.read(try VMDKFixture.source()))) == "same")
        try VMDKFixture.checkMapping(img.device, expected: oracle)
        if subformat != "monolithicFlat" && subformat != "twoGbMaxExtentFlat" {
            let map = try img.device.mapping(at: 0, length: img.device.size)
            #expect(map.contains { $0.kind == .zero })  // unallocated grains are holes
        }
    }

    @Test func sparseExtentOpenedDirectly() throws {
        // The extent file of a twoGbMaxExtentSparse disk is itself a KDMV file.
        let dir = try VMDKFixture.converted("twoGbMaxExtentSparse")
        let img = try ImageOpener.open(dir + "/disk-s001.vmdk")
        #expect(VMDKFixture.same(try VMDKFixture.readAll(img.device), try Fixtures.read(dir + "/oracle.raw")) == "same")
    }

    @Test func streamOptimizedWithGrainDirectoryAtEnd() throws {
        let dir = try VMDKFixture.converted("streamOptimized")
        try Fixtures.withTemporaryDirectory { tmp in
            // Rewrite the header to say "GD at end" and append footer marker, footer header and EOS marker.
            var bytes = try Fixtures.read(dir + "/disk.vmdk")
            let header = Array(bytes[0..<512])
            for (i, b) in VMDKFixture.le64(0xFFFF_FFFF_FFFF_FFFF).enumerated() { bytes[56 + i] = b }
            var marker = [UInt8](repeating: 0, count: 512)
            marker[0] = 1; marker[12] = 3 // val = 1 sector of metadata, size 0, type FOOTER
            bytes += marker + header + [UInt8](repeating: 0, count: 512)
            let path = tmp + "/stream.vmdk"
            try Fixtures.write(bytes, to: path)
            let img = try ImageOpener.open(path)
            let ours = try VMDKFixture.readAll(img.device)
            #expect(VMDKFixture.same(ours, (try Fixtures.read(dir + "/oracle.raw"))) == "same")
            try Tool.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", path, tmp + "/q.raw"])
            #expect(VMDKFixture.same(ours, (try Fixtures.read(tmp + "/q.raw"))) == "same")

            // The same file with the footer marker destroyed is refused.
            bytes[bytes.count - 1536 + 12] = 0
            try Fixtures.write(bytes, to: path)
            #expect(throws: WardenError.self) { _ = try ImageOpener.open(path) }
        }
    }

    @Test func handWrittenMultiExtentDescriptor() throws {
        let sparse = try VMDKFixture.converted("twoGbMaxExtentSparse")
        let flat = try VMDKFixture.converted("monolithicFlat")
        let src = try Fixtures.read(try VMDKFixture.source())
        let sectors = src.count / 512
        try Fixtures.withTemporaryDirectory { tmp in
            try FileManager.default.createDirectory(atPath: tmp + "/sub", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: sparse + "/disk-s001.vmdk", toPath: tmp + "/sub/a.vmdk")
            try FileManager.default.copyItem(atPath: flat + "/disk-flat.vmdk", toPath: tmp + "/b-flat.vmdk")
            func descriptor(_ extents: String) -> String {
                "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n"
                    + "# Extent description\n" + extents + "\n# The Disk Data Base\nddb.adapterType = \"ide\"\n"
            }
            // qemu as the oracle (it reads RW SPARSE and FLAT extents; it skips ZERO and RDONLY lines,
            // and reads past the end of a sparse extent that ends mid-grain, so keep that grain-aligned).
            let aligned = sectors / 128 * 128
            try Tool.sh("head -c \(aligned * 512) '\(try VMDKFixture.source())' > p.raw && qemu-img convert -f raw -O vmdk -o subformat=twoGbMaxExtentSparse p.raw p.vmdk && mv p-s001.vmdk sub/p.vmdk", cwd: tmp)
            try Fixtures.write(Array(descriptor("""
                RW \(aligned) SPARSE "sub/p.vmdk"
                RW 4000 FLAT "b-flat.vmdk" 100
                RW 3000 FLAT "b-flat.vmdk" 7
                """).utf8), to: tmp + "/multi.vmdk")
            let img = try ImageOpener.open(tmp + "/multi.vmdk")
            #expect(img.info.details["extents"] == "3")
            #expect(img.device.size == UInt64(aligned + 4000 + 3000) * 512)
            #expect(img.device.size == (try VMDKFixture.virtualSize(tmp + "/multi.vmdk")))
            let ours = try VMDKFixture.readAll(img.device)
            try Tool.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", tmp + "/multi.vmdk", tmp + "/q.raw"])
            let oracle = try Fixtures.read(tmp + "/q.raw")
            #expect(VMDKFixture.same(ours, oracle) == "same")
            try VMDKFixture.checkMapping(img.device, expected: oracle)

            // ZERO and RDONLY extents: the oracle is built from the source bytes.
            try Fixtures.write(Array(descriptor("""
                RW \(sectors) SPARSE "sub/a.vmdk"
                RW 2048 ZERO
                RDONLY 4000 FLAT "b-flat.vmdk" 100
                RW 3000 FLAT "./b-flat.vmdk" 7
                """).utf8), to: tmp + "/multi2.vmdk")
            let img2 = try ImageOpener.open(tmp + "/multi2.vmdk")
            #expect(img2.info.details["extents"] == "4")
            let ours2 = try VMDKFixture.readAll(img2.device)
            let expected = src + [UInt8](repeating: 0, count: 2048 * 512)
                + Array(src[100 * 512 ..< 4100 * 512]) + Array(src[7 * 512 ..< 3007 * 512])
            #expect(VMDKFixture.same(ours2, expected) == "same")
            try VMDKFixture.checkMapping(img2.device, expected: expected)
            let map = try img2.device.mapping(at: UInt64(src.count), length: 2048 * 512)
            #expect(map == [BlockExtent(offset: UInt64(src.count), length: 2048 * 512, kind: .zero)])
        }
    }

    @Test func refusesHostileExtentPaths() throws {
        let flat = try VMDKFixture.converted("monolithicFlat")
        try Fixtures.withTemporaryDirectory { tmp in
            try FileManager.default.createDirectory(atPath: tmp + "/d", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: flat + "/disk-flat.vmdk", toPath: tmp + "/outside-flat.vmdk")
            for name in ["../outside-flat.vmdk", "/etc/passwd", tmp + "/outside-flat.vmdk", "x/../../outside-flat.vmdk", "", "missing.vmdk", "desc.vmdk"] {
                let desc = "# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"\(name)\" 0\n"
                try Fixtures.write(Array(desc.utf8), to: tmp + "/d/desc.vmdk")
                #expect(throws: WardenError.self, "extent \(name)") { _ = try ImageOpener.open(tmp + "/d/desc.vmdk") }
            }
            // Malformed extent lines, and a delta disk without its parent.
            for line in ["RW x FLAT \"a\" 0", "RW 8 BOGUS \"a\"", "RW 8 FLAT a 0", "RW 8 FLAT \"a", "RW 18446744073709551615 ZERO"] {
                let desc = "# Disk DescriptorFile\nversion=1\nRW 8 ZERO\n\(line)\n"
                try Fixtures.write(Array(desc.utf8), to: tmp + "/d/desc.vmdk")
                #expect(throws: WardenError.self, "line \(line)") { _ = try ImageOpener.open(tmp + "/d/desc.vmdk") }
            }
            let delta = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=abcdef01\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"monolithicSparse\"\nRW 8 ZERO\n"
            try Fixtures.write(Array(delta.utf8), to: tmp + "/d/delta.vmdk")
            // A delta disk whose parent is missing (deltas are read through their parent: VMDKDeltaTests).
            let e = #expect(throws: WardenError.self) { _ = try ImageOpener.open(tmp + "/d/delta.vmdk") }
            #expect(e?.code == .notFound)
            // Too many extents.
            let many = "# Disk DescriptorFile\n" + String(repeating: "RW 1 ZERO\n", count: VMDK.maxExtents + 1)
            try Fixtures.write(Array(many.utf8), to: tmp + "/d/many.vmdk")
            let l = #expect(throws: WardenError.self) { _ = try ImageOpener.open(tmp + "/d/many.vmdk") }
            #expect(l?.code == .limitExceeded)
            // ZERO-only descriptor works.
            try Fixtures.write(Array("# Disk DescriptorFile\nRW 16 ZERO\n".utf8), to: tmp + "/d/z.vmdk")
            let z = try ImageOpener.open(tmp + "/d/z.vmdk")
            #expect(try z.device.read(at: 0, count: 8192) == [UInt8](repeating: 0, count: 8192))
        }
    }

    @Test func damagedSparseHeadersThrow() throws {
        let dir = try VMDKFixture.converted("monolithicSparse")
        let original = try Fixtures.read(dir + "/disk.vmdk")
        let gdOffset = Int(try original.le(56, UInt64.self))
        try Fixtures.withTemporaryDirectory { tmp in
            let path = tmp + "/d.vmdk"
            func attempt(_ what: String, _ edit: (inout [UInt8]) -> Void) throws -> WardenError? {
                var b = original
                edit(&b)
                try Fixtures.write(b, to: path)
                do {
                    let img = try ImageOpener.open(path)
                    _ = try VMDKFixture.readAll(img.device)
                    _ = try img.device.mapping(at: 0, length: img.device.size)
                    return nil
                } catch let e as WardenError {
                    return e
                }
            }
            // Grain directory past the end of the file.
            #expect(try attempt("gd") { b in b.replaceSubrange(56..<64, with: VMDKFixture.le64(0x7FFF_FFFF)) } != nil)
            // A grain table pointer past EOF.
            #expect(try attempt("gde") { b in b.replaceSubrange(gdOffset * 512 ..< gdOffset * 512 + 4, with: VMDKFixture.le32(0x7FFF_FFF0)) } != nil)
            // A grain pointer past EOF (first GTE of the first table).
            let gt0 = Int(try original.le(gdOffset * 512, UInt32.self))
            #expect(try attempt("gte") { b in b.replaceSubrange(gt0 * 512 ..< gt0 * 512 + 4, with: VMDKFixture.le32(0xFFFF_FFF0)) } != nil)
            // Huge capacity: refused without allocating a petabyte-sized directory.
            let huge = try attempt("capacity") { b in b.replaceSubrange(12..<20, with: VMDKFixture.le64(1 << 52)) }
            #expect(huge != nil)
            #expect(try attempt("capacity-max") { b in b.replaceSubrange(12..<20, with: VMDKFixture.le64(.max)) } != nil)
            // Bad geometry.
            #expect(try attempt("grain") { b in b.replaceSubrange(20..<28, with: VMDKFixture.le64(3)) } != nil)
            #expect(try attempt("gtes") { b in b.replaceSubrange(44..<48, with: VMDKFixture.le32(0)) } != nil)
            #expect(try attempt("version") { b in b.replaceSubrange(4..<8, with: VMDKFixture.le32(99)) } != nil)
        }
    }

    @Test func damagedCompressedGrainsThrow() throws {
        let dir = try VMDKFixture.converted("streamOptimized")
        let original = try Fixtures.read(dir + "/disk.vmdk")
        let gdOffset = Int(try original.le(56, UInt64.self))
        let gt0 = Int(try original.le(gdOffset * 512, UInt32.self))
        let grain0 = Int(try original.le(gt0 * 512, UInt32.self))
        try Fixtures.withTemporaryDirectory { tmp in
            let path = tmp + "/d.vmdk"
            for edit in [(grain0 * 512 + 8, VMDKFixture.le32(0xFFFF_FFFF)),   // absurd compressed size
                         (grain0 * 512 + 12, [UInt8](repeating: 0xFF, count: 16)), // garbage deflate
                         (grain0 * 512 + 8, VMDKFixture.le32(3))] {             // truncated stream
                var b = original
                b.replaceSubrange(edit.0 ..< edit.0 + edit.1.count, with: edit.1)
                try Fixtures.write(b, to: path)
                let img = try ImageOpener.open(path)
                #expect(throws: WardenError.self) { _ = try img.device.read(at: 0, count: 512) }
            }
        }
    }

    @Test(arguments: ["monolithicSparse", "streamOptimized"])
    func truncatedFilesNeverTrap(_ subformat: String) throws {
        let dir = try VMDKFixture.converted(subformat)
        let original = try Fixtures.read(dir + "/disk.vmdk")
        let oracle = try Fixtures.read(dir + "/oracle.raw")
        var lengths = [0, 1, 4, 100, 511, 512, 513, 1024, 4096, 10000]
        var l = 12 * 1024
        while l < original.count { lengths.append(l); l += original.count / 23 + 511 }
        lengths.append(original.count - 1)
        try Fixtures.withTemporaryDirectory { tmp in
            let path = tmp + "/t.vmdk"
            var cuts = Rejections(.corrupt, .unsupported, .limitExceeded, .notFound)
            defer { #expect(cuts.rejected > 0 && cuts.accepted + cuts.rejected == lengths.count, "\(cuts.rejected) of \(lengths.count) refused") }
            for n in lengths {
                try Fixtures.write(Array(original[0..<n]), to: path)
                cuts.feed {
                    let img = try ImageOpener.open(path, options: OpenOptions(format: .vmdk))
                    // Whatever can be read must match the oracle.
                    var off = 0
                    while off < Int(img.device.size) {
                        let c = min(1 << 16, Int(img.device.size) - off)
                        if let got = try? img.device.read(at: UInt64(off), count: c) {
                            #expect(VMDKFixture.same(got, Array(oracle[off..<off + c])) == "same", "length \(n) offset \(off)")
                        }
                        off += c
                    }
                }
            }
        }
    }

    /// Real multi-extent split files: qemu cuts twoGbMaxExtent* disks into 2 GiB extents.
    @Test(arguments: ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
    func largeSplitDiskAcrossExtentBoundaries(_ subformat: String) throws {
        let recipe = """
        truncate -s 4700000256 src.raw
        qemu-io -f raw -c 'write -P 0x31 0 64k' -c 'write -P 0x32 2147450000 70000' \\
            -c 'write -P 0x33 4294900000 200000' -c 'write -P 0x34 4699999000 1256' src.raw >/dev/null
        qemu-img convert -f raw -O vmdk -o subformat=\(subformat) src.raw disk.vmdk
        qemu-img convert -f vmdk -O raw disk.vmdk oracle.raw
        rm src.raw
        """
        let dir = try Fixtures.cached("vmdk-large-\(subformat)", recipe: recipe) { try Tool.sh(recipe, cwd: $0) }
        let img = try ImageOpener.open(dir + "/disk.vmdk")
        #expect(img.info.details["extents"] == "3")
        #expect(img.device.size == (try VMDKFixture.virtualSize(dir + "/disk.vmdk")))
        let oracle = try ImageFile(path: dir + "/oracle.raw")
        #expect(oracle.length == img.device.size)
        let windows: [(UInt64, Int)] = [(0, 70000), (2147450000 - 1000, 80000), (2147483648 - 300, 600),
                                        (4294967296 - 70000, 140000), (img.device.size - 5000, 5000), (3000000000, 100000)]
        for (off, n) in windows {
            #expect(VMDKFixture.same(try img.device.read(at: off, count: n), try oracle.read(at: off, count: n)) == "same", "window \(off)")
        }
        let map = try img.device.mapping(at: 0, length: img.device.size)
        #expect(map.reduce(0) { $0 + $1.length } == img.device.size)
        if subformat.hasSuffix("Sparse") {
            #expect(map.filter { $0.kind == .data }.reduce(0) { $0 + $1.length } < 4 << 20)
        }
    }

    @Test func readsRefusePastEnd() throws {
        let dir = try VMDKFixture.converted("monolithicSparse")
        let img = try ImageOpener.open(dir + "/disk.vmdk")
        #expect(throws: WardenError.self) { _ = try img.device.read(at: img.device.size - 10, count: 11) }
        #expect(throws: WardenError.self) { _ = try img.device.read(at: .max - 3, count: 8) }
        #expect(throws: WardenError.self) { _ = try img.device.mapping(at: img.device.size, length: 1) }
        #expect(try img.device.read(at: img.device.size, count: 0).isEmpty)
    }
}
