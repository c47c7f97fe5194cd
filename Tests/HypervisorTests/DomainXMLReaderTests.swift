import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import HypervisorHook

/// The hook's own domain XML reader, checked against Python's expat-based ElementTree (an
/// independent, conforming XML parser) and against hostile input.
@Suite struct DomainXMLReaderTests {
    /// What ElementTree says about each document: the mapped fields, or "error".
    static let oracle = #"""
    import json, re, sys
    import xml.etree.ElementTree as ET
    UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
    def secret(disk):
        # <encryption format='luks'><secret type='passphrase' uuid=…/> in the disk or its <source>, the last one wins.
        found = None
        encs = []
        for child in disk:
            if child.tag == "encryption": encs.append(child)
            if child.tag == "source": encs.extend(e for e in child if e.tag == "encryption")
        for enc in encs:
            for s in enc:
                if s.tag == "secret" and enc.get("format") == "luks" and s.get("type") == "passphrase" and UUID.fullmatch(s.get("uuid") or ""):
                    found = s.get("uuid").lower()
        return found
    out = []
    for path in sys.argv[1:]:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            out.append("error"); continue
        if root.tag != "domain":
            out.append("error"); continue
        disks, formats, secrets = [], [], []
        for d in root.findall("devices/disk"):
            if d.get("device", "disk") != "disk":
                continue
            src = None
            for s in d.findall("source"):
                src = s.get("file") or s.get("dev")
            fmt = "unknown"
            for drv in d.findall("driver"):
                t = drv.get("type")
                if t is not None and len(t) <= 16 and t.isascii() and t.isalnum():
                    fmt = t
            if src is not None and src.startswith("/"):
                disks.append(src); formats.append(fmt); secrets.append(secret(d))
        out.append({"type": root.get("type"), "name": "".join(root.find("name").itertext()).strip() if root.find("name") is not None else None,
                    "uuid": root.findtext("uuid"), "disks": disks, "formats": formats, "secrets": secrets})
    print(json.dumps(out))
    """#

    /// Well-formed documents: ElementTree and Warden must agree on every field.
    static let agreeing: [String] = [
        """
        <?xml version="1.0" encoding="UTF-8"?>
        <!-- written by hand -->
        <domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
          <name>web&amp;db</name>
          <uuid>6F1C8A4E-3B1D-4C2A-9E0F-0123456789AB</uuid>
          <metadata><app:info xmlns:app="urn:x"><name>decoy</name></app:info></metadata>
          <devices>
            <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
              <source file='/srv/a&amp;b/&#x44;isk one.qcow2'/><target dev='vda'/></disk>
            <disk type='file'><source file="/srv/default-device.raw"/></disk>
            <disk type='file' device='cdrom'><source file='/srv/x.iso'/></disk>
            <disk device='disk'><driver type='r-aw'/><source dev='/dev/sdb'/></disk>
            <disk device='disk'><source file='relative.img'/></disk>
          </devices>
          <qemu:commandline/>
        </domain>
        <?trailing pi?>
        """,
        "<domain><name><![CDATA[cdata<name>]]></name><devices><disk><source file='/a\nb\tc'/></disk></devices></domain>",
        "\u{FEFF}<domain type='qemu'><name>caf\u{E9} &#233; &#x1F600;</name></domain>",
        "<domain><name>x</name><devices><disk><source file='/first'/><source file='/second'/></disk></devices></domain>",
        "<domain><name>x</name><devices></devices><devices><disk><source dev='/dev/two'/></disk></devices></domain>",
        "<domain   type = \"qemu\" ><name >  padded  </name ><uuid/></domain >",
        // LUKS secrets: in <source>, directly in <disk>, the wrong format or type, a backing store's, not a UUID.
        """
        <domain><name>enc</name><devices>
          <disk type='file' device='disk'><source file='/a.qcow2'><encryption format='luks'><secret type='passphrase' uuid='0B6E3D3A-1C2B-4D5E-8F90-A1B2C3D4E5F6'/></encryption></source></disk>
          <disk type='file' device='disk'><encryption format='luks'><secret type='passphrase' uuid='0b6e3d3a-1c2b-4d5e-8f90-a1b2c3d4e5f7'/></encryption><source file='/b.qcow2'/></disk>
          <disk type='file' device='disk'><source file='/c.qcow2'><encryption format='qcow'><secret type='passphrase' uuid='0b6e3d3a-1c2b-4d5e-8f90-a1b2c3d4e5f8'/></encryption></source></disk>
          <disk type='file' device='disk'><source file='/d.qcow2'><encryption format='luks'><secret type='volume' uuid='0b6e3d3a-1c2b-4d5e-8f90-a1b2c3d4e5f9'/></encryption></source></disk>
          <disk type='file' device='disk'><source file='/e.qcow2'/><backingStore><source file='/f.qcow2'><encryption format='luks'><secret type='passphrase' uuid='0b6e3d3a-1c2b-4d5e-8f90-a1b2c3d4e5fa'/></encryption></source></backingStore></disk>
          <disk type='file' device='disk'><source file='/g.qcow2'><encryption format='luks'><secret type='passphrase' uuid='not-a-uuid'/></encryption></source></disk>
          <disk type='file' device='disk'><source file='/h.qcow2'><encryption format='luks'><secret type='passphrase' uuid='0b6e3d3a-1c2b-4d5e-8f90-a1b2c3d4e5fb'/><secret type='passphrase' uuid='0b6e3d3a-1c2b-4d5e-8f90-a1b2c3d4e5fc'/></encryption></source></disk>
        </devices></domain>
        """,
    ]

    /// Malformed documents: both must refuse them.
    static let refused: [String] = [
        "", "   ", "<domain>", "<domain><name>x</name>", "<domain><name>x</domain></name>",
        "<domain><name>x</name></domain><domain/>", "<domain><name>x</name></domain>trailing",
        "<domain a='1' a='2'><name>x</name></domain>", "<domain a=1><name>x</name></domain>",
        "<domain a='<'><name>x</name></domain>", "<domain><name>&nbsp;</name></domain>",
        "<domain><name>&#0;</name></domain>", "<domain><name>&#xD800;</name></domain>", "<domain><name>a & b</name></domain>",
        "<domain><name>x</name><!-- unterminated </domain>", "<domain><name><![CDATA[x</name></domain>",
        "<domain><name>x</name><disk source='/a'</domain>", "text<domain/>", "<1domain/>",
        "<domain><name>x</name></domain  x>", "<domain><name>x</name><a b='1'c='2'/></domain>",
    ]

    @Test func agreesWithElementTree() throws {
        try Fixtures.withTemporaryDirectory { dir in
            var docs = Self.agreeing.map { Data($0.utf8) } + Self.refused.map { Data($0.utf8) }
            // Invalid UTF-8 in text and in an attribute value.
            docs.append(Data("<domain><name>".utf8) + Data([0xC3, 0x28]) + Data("</name></domain>".utf8))
            docs.append(Data("<domain><name>x</name><devices><disk><source file='/a".utf8) + Data([0xFF]) + Data("'/></disk></devices></domain>".utf8))
            // A real libvirt domain, from libvirt's built-in test driver.
            let real = try Tool.run(["virsh", "-c", "test:///default", "dumpxml", "test"], check: false)
            if real.status == 0 { docs.append(real.stdout) } else { print("virsh test driver unavailable: \(real.stderr)") }
            var paths: [String] = []
            for (i, d) in docs.enumerated() {
                let p = dir + "/doc\(i).xml"
                try d.write(to: URL(fileURLWithPath: p))
                paths.append(p)
            }
            try Self.oracle.write(toFile: dir + "/oracle.py", atomically: true, encoding: .utf8)
            let out = try Tool.run(["python3", dir + "/oracle.py"] + paths)
            let expected = try #require(try JSONSerialization.jsonObject(with: out.stdout) as? [Any])
            try #require(expected.count == docs.count)
            for (i, d) in docs.enumerated() {
                let ours = Result { try LibvirtDomain.parse(d) }
                if let e = expected[i] as? String, e == "error" {
                    #expect(throws: WardenError.self, "doc\(i): \(String(decoding: d, as: UTF8.self))") { try ours.get() }
                    continue
                }
                let fields = try #require(expected[i] as? [String: Any])
                guard case .success(let got) = ours else {
                    Issue.record("doc\(i) refused, ElementTree reads it: \(String(decoding: d, as: UTF8.self))"); continue
                }
                #expect(got.type == fields["type"] as? String, "doc\(i)")
                #expect(got.name == (fields["name"] as? String), "doc\(i)")
                #expect(got.uuid?.uuidString.lowercased() == (fields["uuid"] as? String)?.trimmingCharacters(in: .whitespaces).lowercased().nilIfEmpty, "doc\(i)")
                #expect(got.diskPaths == fields["disks"] as? [String], "doc\(i)")
                #expect(got.diskFormats == fields["formats"] as? [String], "doc\(i)")
                #expect(got.diskSecrets.map { $0?.uuidString.lowercased() ?? "none" } == (fields["secrets"] as? [Any])?.map { ($0 as? String) ?? "none" }, "doc\(i)")
            }
            #expect(docs.count == Self.agreeing.count + Self.refused.count + 2 + (real.status == 0 ? 1 : 0))
        }
    }

    @Test func hostileInputIsRefusedWithTypedErrors() throws {
        // DTDs (and with them entity expansion) are refused outright.
        let laughs = "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]><domain><name>&b;</name></domain>"
        #expect(throws: WardenError.self) { try LibvirtDomain.parse(Data(laughs.utf8)) }
        // Depth, size and length caps.
        let deep = String(repeating: "<a>", count: 64) + String(repeating: "</a>", count: 64)
        #expect(throws: WardenError.self) { try LibvirtDomain.parse(Data("<domain><name>x</name>\(deep)</domain>".utf8)) }
        let shallow = String(repeating: "<a>", count: 62) + String(repeating: "</a>", count: 62)
        #expect(try LibvirtDomain.parse(Data("<domain><name>x</name>\(shallow)</domain>".utf8)).name == "x")
        #expect(throws: WardenError.self) { try LibvirtDomain.parse(Data(repeating: 0x20, count: LibvirtDomain.maxSize + 1)) }
        let longName = String(repeating: "n", count: LibvirtDomain.maxTextLength + 1)
        #expect(throws: WardenError.self) { try LibvirtDomain.parse(Data("<domain><name>\(longName)</name></domain>".utf8)) }
        let longTag = String(repeating: "t", count: 300)
        #expect(throws: WardenError.self) { try LibvirtDomain.parse(Data("<domain><name>x</name><\(longTag)/></domain>".utf8)) }
        let manyAttributes = (0..<300).map { "a\($0)='1'" }.joined(separator: " ")
        #expect(throws: WardenError.self) { try LibvirtDomain.parse(Data("<domain \(manyAttributes)><name>x</name></domain>".utf8)) }
        // Only the first 256 disks are used.
        let disks = (0..<300).map { "<disk><source file='/d\($0)'/></disk>" }.joined()
        #expect(try LibvirtDomain.parse(Data("<domain><name>x</name><devices>\(disks)</devices></domain>".utf8)).diskPaths.count == 256)
        // The error names the problem and where.
        do {
            _ = try LibvirtDomain.parse(Data("<domain><name>x</nam></domain>".utf8))
            Issue.record("accepted")
        } catch let e as WardenError {
            #expect(e.message == "domain XML: </nam> closes <name> at byte 21", "\(e.message)")
        }
    }

    /// Fed truncated at every length, and with every single byte flipped: an answer or a
    /// WardenError, never a trap; and no prefix of a document is accepted as a whole one.
    @Test func everyTruncationAndByteFlip() throws {
        let xml = Array(Self.agreeing[0].utf8)
        var cuts = Rejections(.corrupt)
        for n in 0..<xml.count { cuts.feed { try LibvirtDomain.parse(Data(xml[0..<n])) } }
        #expect(cuts.rejected >= xml.count - 12, "\(cuts.accepted) of \(xml.count) truncations accepted")
        // The root closes near the end: every prefix before "</domain>" is refused.
        let end = try #require(String(decoding: xml, as: UTF8.self).range(of: "</domain>")).upperBound.utf16Offset(in: Self.agreeing[0])
        for n in stride(from: 0, to: end, by: 1) {
            #expect(throws: WardenError.self) { try LibvirtDomain.parse(Data(xml[0..<n])) }
        }
        var r = SeededRandom(seed: 6)
        var flips = Rejections(.corrupt)
        for _ in 0..<2000 {
            var m = xml
            m[Int(r.next() % UInt64(m.count))] = UInt8(truncatingIfNeeded: r.next())
            flips.feed { try LibvirtDomain.parse(Data(m)) }
        }
        #expect(flips.rejected > 0 && flips.accepted > 0, "\(flips.rejected) refused, \(flips.accepted) accepted")
    }
}

extension String {
    fileprivate var nilIfEmpty: String? { isEmpty ? nil : self }
}
