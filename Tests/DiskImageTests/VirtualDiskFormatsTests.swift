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
            // A differencing disk that names no parent (footers rewritten with valid checksums;
            // VHDDifferencingTests reads real ones).
            var e = try openError("dynamic.vhd", in: tmp) { b in
                for base in [0, b.count - 512] { b[base + 63] = 4; Self.fixFooter(&b, at: base) }
            }
            #expect(e?.code == .corrupt && e?.message.contains("names no parent") == true, "\(String(describing: e))")
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
            // Both headers name a log GUID that no log entry carries (CRC-32C recomputed): as in
            // qemu, there is nothing to replay, and the image opens (VHDXLogTests replays real logs).
            var e = try openError("dynamic.vhdx", in: tmp) { b in
                for base in [64 << 10, 128 << 10] {
                    b[base + 48] = 0x42
                    for k in 0..<4 { b[base + 4 + k] = 0 }
                    Self.putLE32(CRC32.castagnoli.checksum(b[base..<base + 4096]), &b, at: base + 4)
                }
            }
            #expect(e == nil, "\(String(describing: e))")
            // Both headers damaged.
            e = try openError("dynamic.vhdx", in: tmp) { b in b[(64 << 10) + 200] ^= 1; b[(128 << 10) + 200] ^= 1 }
            #expect(e?.code == .corrupt && e?.message.contains("header") == true, "\(String(describing: e))")
            // Both region tables damaged.
            e = try openError("dynamic.vhdx", in: tmp) { b in b[(192 << 10) + 100] ^= 1; b[(256 << 10) + 100] ^= 1 }
            #expect(e?.code == .corrupt && e?.message.contains("region") == true, "\(String(describing: e))")
            e = try openError("dynamic.vhdx", in: tmp) { b in b.removeLast(b.count / 2) }
            #expect(e != nil)
            // A metadata entry of length 0 at an offset past the region (a fuzzer's find: it
            // trapped once): refused, region tables rewritten with valid checksums.
            let file = try ImageFile(path: try Self.converted() + "/dynamic.vhdx")
            let meta = try #require(try VHDX.regions(file, at: 192 << 10)?[VHDX.metadataGUID])
            e = try openError("dynamic.vhdx", in: tmp) { b in
                let entry = Int(meta.offset) + 32
                Self.putLE32(0xFFFF_FFF0, &b, at: entry + 16)
                Self.putLE32(0, &b, at: entry + 20)
            }
            #expect(e?.code == .corrupt, "\(String(describing: e))")
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

/// OVA appliances written by the test with GNU tar (ustar, gnu and pax formats) around a
/// streamOptimized VMDK from qemu-img: read in place, the OVF facts reported.
@Suite struct OVATests {
    static func ovf(disk: String = "disk1.vmdk", extra: String = "", doctype: String = "") -> String {
        """
        <?xml version="1.0" encoding="UTF-8"?>\(doctype)
        <Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
          <References><File ovf:id="file1" ovf:href="\(disk)"/>\(extra)</References>
          <DiskSection><Info>disks</Info><Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20"/></DiskSection>
          <NetworkSection><Info>nets</Info><Network ovf:name="VM Network"/><Network ovf:name="backend &amp; db"/></NetworkSection>
          <VirtualSystem ovf:id="web">
            <Info>A virtual machine</Info><Name>web-appliance</Name>
            <OperatingSystemSection ovf:id="96"><Info>os</Info><Description>Debian GNU/Linux 12 (64-bit)</Description></OperatingSystemSection>
            <VirtualHardwareSection><Info>hw</Info>
              <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
              <Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>3</rasd:VirtualQuantity></Item>
              <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
            </VirtualHardwareSection>
          </VirtualSystem>
        </Envelope>
        """
    }

    static func archives() throws -> String {
        let src = try VMDKFixture.source()
        let text = ovf()
        return try Fixtures.cached("ova", recipe: "v1 \(src) \(text)") { dir in
            try Tool.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", src, "disk1.vmdk"], cwd: dir)
            try Tool.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", "disk1.vmdk", "oracle.raw"], cwd: dir)
            try text.write(toFile: dir + "/web.ovf", atomically: true, encoding: .utf8)
            for f in ["ustar", "gnu", "pax"] { try Tool.run(["tar", "--format=\(f)", "-cf", "web-\(f).ova", "web.ovf", "disk1.vmdk"], cwd: dir) }
        }
    }

    @Test(arguments: ["ustar", "gnu", "pax"]) func readsInPlaceWithItsOVFFacts(_ format: String) throws {
        let dir = try Self.archives()
        let path = dir + "/web-\(format).ova"
        #expect(try ImageOpener.detect(ImageFile(path: path)) == .ova)
        let img = try ImageOpener.open(path)
        let d = img.info.details
        #expect(img.info.format == .ova && img.chain.count == 2 && img.chain[1].format == .vmdk)
        #expect(d["ovf_name"] == "web-appliance" && d["ovf_cpus"] == "4" && d["ovf_memory_mib"] == "3072")
        #expect(d["ovf_networks"] == "VM Network,backend & db" && d["ovf_os"] == "Debian GNU/Linux 12 (64-bit)")
        #expect(d["ovf_disk_files"] == "disk1.vmdk" && d["disk_member"] == "disk1.vmdk")
        #expect(VMDKFixture.same(try VMDKFixture.readAll(img.device), try Fixtures.read(dir + "/oracle.raw")) == "same")
    }

    /// Builds an archive in `tmp` from (name, bytes) members with GNU tar.
    static func archive(_ tmp: String, _ members: [(String, [UInt8])]) throws -> String {
        for (n, b) in members { try Fixtures.write(b, to: tmp + "/" + n) }
        try Tool.run(["tar", "--format=ustar", "-cf", "x.ova"] + members.map(\.0), cwd: tmp)
        return tmp + "/x.ova"
    }

    @Test func hostileAppliancesAreRefusedWithTheirReason() throws {
        let dir = try Self.archives()
        let disk = try Fixtures.read(dir + "/disk1.vmdk")
        try Fixtures.withTemporaryDirectory { tmp in
            // An entity-expansion attempt: DOCTYPE refused, nothing expanded.
            let bomb = Self.ovf(doctype: "<!DOCTYPE e [<!ENTITY a \"aaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]>")
            var e = #expect(throws: WardenError.self) { _ = try ImageOpener.open(try Self.archive(tmp, [("a.ovf", Array(bomb.utf8)), ("disk1.vmdk", disk)])) }
            #expect(e?.code == .corrupt && e?.message.contains("DOCTYPE") == true, "\(String(describing: e))")
            // A disk the archive does not hold.
            e = #expect(throws: WardenError.self) { _ = try ImageOpener.open(try Self.archive(tmp, [("b.ovf", Array(Self.ovf(disk: "missing.vmdk").utf8)), ("disk1.vmdk", disk)])) }
            #expect(e?.message.contains("not in the archive") == true, "\(String(describing: e))")
            // A VMDK descriptor member that names another file: it would reach outside the archive.
            let desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 16 FLAT \"secret.img\" 0\n"
            e = #expect(throws: WardenError.self) { _ = try ImageOpener.open(try Self.archive(tmp, [("c.ovf", Array(Self.ovf().utf8)), ("disk1.vmdk", Array(desc.utf8))])) }
            #expect(e?.code == .unsupported, "\(String(describing: e))")
            // A truncated archive: the disk member runs past the end.
            var bytes = try Fixtures.read(dir + "/web-ustar.ova")
            bytes.removeLast(bytes.count / 3)
            try Fixtures.write(bytes, to: tmp + "/cut.ova")
            e = #expect(throws: WardenError.self) { _ = try ImageOpener.open(tmp + "/cut.ova") }
            #expect(e?.code == .corrupt, "\(String(describing: e))")
        }
    }
}
