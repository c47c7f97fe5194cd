import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// VHD, VHDX and VDI against qemu-img: each image is made by `qemu-img convert` from the same
/// patterned source, and must read byte for byte as `qemu-img convert -f FORMAT -O raw` reads it.
@Suite struct VirtualDiskFormatsTests {
    /// (qemu format, its -o options, file name, the format Warden must detect, subformat detail).
    static let cases: [(qemu: String, options: String, name: String, format: ImageFormat, subformat: String?)] = [
        ("vpc", "subformat=dynamic", "dynamic.vhd", .vhd, "dynamic"),
        ("vpc", "subformat=dynamic,force_size=on", "dynamic-sized.vhd", .vhd, "dynamic"),
        ("vpc", "subformat=fixed", "fixed.vhd", .vhd, "fixed"),
        ("vpc", "subformat=fixed,force_size=on", "fixed-sized.vhd", .vhd, "fixed"),
        ("vhdx", "subformat=dynamic", "dynamic.vhdx", .vhdx, nil),
        ("vhdx", "subformat=fixed", "fixed.vhdx", .vhdx, nil),
        ("vhdx", "subformat=dynamic,block_size=1M,log_size=1M", "small-blocks.vhdx", .vhdx, nil),
        ("vhdx", "subformat=dynamic,block_size=64M", "large-blocks.vhdx", .vhdx, nil),
        ("vdi", "static=off", "dynamic.vdi", .vdi, "dynamic"),
        ("vdi", "static=on", "static.vdi", .vdi, "static"),
    ]

    /// The converted images and qemu's raw reading of each, cached by recipe.
    static func converted() throws -> String {
        let src = try VMDKFixture.source()
        let recipe = cases.map { "\($0.qemu) \($0.options) \($0.name)" }.joined(separator: ";") + " v1 " + src
        return try Fixtures.cached("virtual-disk-formats", recipe: recipe) { dir in
            for c in cases {
                try Tool.run(["qemu-img", "convert", "-f", "raw", "-O", c.qemu, "-o", c.options, src, c.name], cwd: dir)
                try Tool.run(["qemu-img", "convert", "-f", c.qemu, "-O", "raw", c.name, c.name + ".oracle"], cwd: dir)
            }
        }
    }

    @Test(arguments: cases.map(\.name)) func readsAsQemuReads(_ name: String) throws {
        let dir = try Self.converted()
        let c = try #require(Self.cases.first { $0.name == name })
        let path = dir + "/" + name
        #expect(try ImageOpener.detect(ImageFile(path: path)) == c.format, "detected by content")
        let img = try ImageOpener.open(path)
        #expect(img.info.format == c.format)
        if let sub = c.subformat { #expect(img.info.details["subformat"] == sub) }
        let oracle = try Fixtures.read(path + ".oracle")
        #expect(img.device.size == UInt64(oracle.count))
        let mine = try VMDKFixture.readAll(img.device)
        #expect(VMDKFixture.same(mine, oracle) == "same")
        // The mapping covers the disk, and what it calls zero reads as zeros.
        let map = try img.device.mapping(at: 0, length: img.device.size)
        #expect(map.reduce(UInt64(0)) { $0 + $1.length } == img.device.size)
        for e in map where e.kind == .zero {
            #expect(mine[Int(e.offset)..<Int(e.offset + e.length)].allSatisfy { $0 == 0 }, "zero extent at \(e.offset)")
        }
        if c.subformat != "fixed" && c.subformat != "static" && c.format != .vhdx {
            #expect(map.contains { $0.kind == .zero }, "a sparse image maps its holes")
        }
    }

    /// Copies `name` into `tmp`, lets `patch` change its bytes, and returns the error opening it raises.
    func openError(_ name: String, in tmp: String, _ patch: (inout [UInt8]) -> Void) throws -> WardenError? {
        var bytes = try Fixtures.read(try Self.converted() + "/" + name)
        patch(&bytes)
        let path = tmp + "/" + name
        try Fixtures.write(bytes, to: path)
        do {
            let img = try ImageOpener.open(path)
            _ = try VMDKFixture.readAll(img.device)
            return nil
        } catch let e as WardenError {
            #expect(e.message.contains("\n") == false)
            return e
        }
    }

    static func putBE32(_ v: UInt32, _ bytes: inout [UInt8], at: Int) { for k in 0..<4 { bytes[at + k] = UInt8(truncatingIfNeeded: v >> (24 - 8 * k)) } }
    static func putLE32(_ v: UInt32, _ bytes: inout [UInt8], at: Int) { for k in 0..<4 { bytes[at + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) } }

    /// Rewrites a VHD footer's checksum after a change.
    static func fixFooter(_ bytes: inout [UInt8], at base: Int) {
        putBE32(VHD.checksum(bytes[base..<base + 512], skipping: 64), &bytes, at: base + 64)
    }

    @Test func hostileVHDsAreRefusedWithTheirReason() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            // A differencing disk (footers rewritten with valid checksums).
            var e = try openError("dynamic.vhd", in: tmp) { b in
                for base in [0, b.count - 512] { b[base + 63] = 4; Self.fixFooter(&b, at: base) }
            }
            #expect(e?.code == .unsupported && e?.message.contains("differencing") == true, "\(String(describing: e))")
            // Both footers damaged.
            e = try openError("dynamic.vhd", in: tmp) { b in b[100] ^= 0xFF; b[b.count - 512 + 100] ^= 0xFF }
            #expect(e?.code == .corrupt && e?.message.contains("checksum") == true, "\(String(describing: e))")
            // Only the end footer damaged: the copy at the start is used.
            e = try openError("dynamic.vhd", in: tmp) { b in b[b.count - 512 + 100] ^= 0xFF }
            #expect(e == nil)
            // A block-table entry pointing far beyond the file.
            e = try openError("dynamic.vhd", in: tmp) { b in
                let header = 512, table = Int(UInt64(bigEndianBytes: b[header + 16..<header + 24]))
                Self.putBE32(0x7FFF_FF00, &b, at: table)
            }
            #expect(e?.code == .corrupt && e?.message.contains("beyond the end of the file") == true, "\(String(describing: e))")
            // A table claiming 2^31 entries.
            e = try openError("dynamic.vhd", in: tmp) { b in
                Self.putBE32(0x8000_0000, &b, at: 512 + 28)
                Self.putBE32(VHD.checksum(b[512..<1536], skipping: 36), &b, at: 512 + 36)
            }
            #expect(e?.code == .limitExceeded, "\(String(describing: e))")
            // Truncated to half: a clear error, never a trap.
            e = try openError("dynamic.vhd", in: tmp) { b in b.removeLast(b.count / 2) }
            #expect(e != nil)
        }
    }

    @Test func hostileVDIsAreRefusedWithTheirReason() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            var e = try openError("dynamic.vdi", in: tmp) { b in Self.putLE32(4, &b, at: 0x4C) }
            #expect(e?.code == .unsupported && e?.message.contains("differencing") == true, "\(String(describing: e))")
            e = try openError("dynamic.vdi", in: tmp) { b in
                let map = Int(UInt32(littleEndianBytes: b[0x154..<0x158]))
                Self.putLE32(0x00FF_FFFF, &b, at: map)
            }
            #expect(e?.code == .corrupt, "\(String(describing: e))")
            e = try openError("dynamic.vdi", in: tmp) { b in Self.putLE32(0xFFFF_FFF0, &b, at: 0x180) }
            #expect(e?.code == .limitExceeded, "\(String(describing: e))")
            e = try openError("dynamic.vdi", in: tmp) { b in Self.putLE32(4096, &b, at: 0x168) }
            #expect(e?.code == .unsupported, "\(String(describing: e))")
            e = try openError("dynamic.vdi", in: tmp) { b in b.removeLast(b.count / 2) }
            #expect(e != nil)
        }
    }

    @Test func hostileVHDXsAreRefusedWithTheirReason() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            // A log that was never replayed: both headers name a log (CRC-32C recomputed).
            var e = try openError("dynamic.vhdx", in: tmp) { b in
                for base in [64 << 10, 128 << 10] {
                    b[base + 48] = 0x42
                    for k in 0..<4 { b[base + 4 + k] = 0 }
                    Self.putLE32(CRC32.castagnoli.checksum(b[base..<base + 4096]), &b, at: base + 4)
                }
            }
            #expect(e?.code == .unsupported && e?.message.contains("log") == true, "\(String(describing: e))")
            // Both headers damaged.
            e = try openError("dynamic.vhdx", in: tmp) { b in b[(64 << 10) + 200] ^= 1; b[(128 << 10) + 200] ^= 1 }
            #expect(e?.code == .corrupt && e?.message.contains("header") == true, "\(String(describing: e))")
            // Both region tables damaged.
            e = try openError("dynamic.vhdx", in: tmp) { b in b[(192 << 10) + 100] ^= 1; b[(256 << 10) + 100] ^= 1 }
            #expect(e?.code == .corrupt && e?.message.contains("region") == true, "\(String(describing: e))")
            e = try openError("dynamic.vhdx", in: tmp) { b in b.removeLast(b.count / 2) }
            #expect(e != nil)
        }
    }
}

extension UInt64 {
    init<C: Collection>(bigEndianBytes b: C) where C.Element == UInt8 { self = b.reduce(0) { $0 << 8 | UInt64($1) } }
}
extension UInt32 {
    init<C: Collection>(littleEndianBytes b: C) where C.Element == UInt8 { self = b.reversed().reduce(0) { $0 << 8 | UInt32($1) } }
}

/// VMDK delta disks (snapshots over a parent), as qemu-img makes them: a monolithicSparse delta
/// over a base and a twoGbMaxExtentSparse delta over that, read through the whole chain.
@Suite struct VMDKDeltaTests {
    static let recipe = """
    qemu-img convert -q -f raw -O vmdk SRC base.vmdk
    qemu-img create -q -f vmdk -b base.vmdk -F vmdk mid.vmdk
    qemu-io -f vmdk -c 'write -P 0x99 1M 64k' -c 'write -P 0x98 3M 2M' mid.vmdk
    qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse -b mid.vmdk -F vmdk top.vmdk
    qemu-io -f vmdk -c 'write -P 0x97 2M 1M' -c 'write -z 3M 64k' top.vmdk
    qemu-img convert -f vmdk -O raw top.vmdk top.oracle; qemu-img convert -f vmdk -O raw mid.vmdk mid.oracle
    """

    static func chain() throws -> String {
        let src = try VMDKFixture.source()
        return try Fixtures.cached("vmdk-delta", recipe: recipe + src) { dir in
            try Tool.sh(recipe.replacingOccurrences(of: "SRC", with: src), cwd: dir)
        }
    }

    @Test(arguments: ["mid", "top"]) func readsThroughTheChainAsQemu(_ name: String) throws {
        let dir = try Self.chain()
        let img = try ImageOpener.open(dir + "/\(name).vmdk")
        #expect(img.chain.count == (name == "top" ? 3 : 2))
        #expect(img.info.backingFile == (name == "top" ? "mid.vmdk" : "base.vmdk") && img.info.backingFormat == "vmdk")
        let mine = try VMDKFixture.readAll(img.device)
        #expect(VMDKFixture.same(mine, try Fixtures.read(dir + "/\(name).oracle")) == "same")
        let map = try img.device.mapping(at: 0, length: img.device.size)
        #expect(map.reduce(UInt64(0)) { $0 + $1.length } == img.device.size)
        for e in map where e.kind == .zero { #expect(mine[Int(e.offset)..<Int(e.offset + e.length)].allSatisfy { $0 == 0 }) }
    }

    /// Rewrites the text descriptor line starting with `key` in a monolithicSparse file.
    static func setDescriptor(_ bytes: inout [UInt8], _ key: String, _ value: String) {
        let needle = Array(("\n" + key + "=").utf8)
        guard let at = (0..<min(bytes.count, 64 << 10) - needle.count).first(where: { Array(bytes[$0..<$0 + needle.count]) == needle }) else { return }
        let start = at + needle.count
        var end = start
        while bytes[end] != 0x0A { end += 1 }
        let old = end - start
        var v = Array(value.utf8)
        if v.count < old { v += Array(repeating: 0x20, count: old - v.count) }   // same length: pad with spaces
        for (i, b) in v.prefix(old).enumerated() { bytes[start + i] = b }
    }

    @Test func brokenChainsAreRefused() throws {
        let dir = try Self.chain()
        try Fixtures.withTemporaryDirectory { tmp in
            for n in ["base.vmdk"] { try FileManager.default.copyItem(atPath: dir + "/" + n, toPath: tmp + "/" + n) }
            var mid = try Fixtures.read(dir + "/mid.vmdk")
            // The parent's content id differs from the one the delta was made over.
            var wrong = mid
            Self.setDescriptor(&wrong, "parentCID", "12345678")
            try Fixtures.write(wrong, to: tmp + "/wrong.vmdk")
            var e = #expect(throws: WardenError.self) { _ = try ImageOpener.open(tmp + "/wrong.vmdk") }
            #expect(e?.code == .corrupt && e?.message.contains("content id") == true, "\(String(describing: e))")
            // A delta that names itself: a cycle.
            Self.setDescriptor(&mid, "parentFileNameHint", "\"self.vmdk\"")
            try Fixtures.write(mid, to: tmp + "/self.vmdk")
            e = #expect(throws: WardenError.self) { _ = try ImageOpener.open(tmp + "/self.vmdk") }
            #expect(e?.message.contains("cycle") == true, "\(String(describing: e))")
            // A missing parent.
            try FileManager.default.removeItem(atPath: tmp + "/base.vmdk")
            try FileManager.default.copyItem(atPath: dir + "/mid.vmdk", toPath: tmp + "/orphan.vmdk")
            #expect(throws: WardenError.self) { _ = try ImageOpener.open(tmp + "/orphan.vmdk") }
        }
    }
}
