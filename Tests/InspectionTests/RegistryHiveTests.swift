import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Inspection

/// Registry hives written by hivex (`hivexregedit --merge` into a minimal hive), read back by
/// Warden and compared with hivex's own `hivexml` and `hivexget`.
enum HiveFixture {
    static let minimal = RegistryFixtures.minimalHiveScript

    /// hivexml's tree as lines `path<TAB>value<TAB>repr`, reprs as ``line(_:)`` makes them.
    static let dumpXML = #"""
    import base64, sys, xml.etree.ElementTree as ET
    def walk(node, path):
        for v in node.findall("value"):
            t, name = v.get("type"), v.get("key", "")
            if v.get("encoding") == "base64":
                r = "b:" + "".join(v.get("value").split())
            elif t in ("string", "expand", "link"):
                r = "s:" + v.get("value")
            elif t in ("int32", "int32-be"):
                r = "d:" + v.get("value")
            elif t == "int64":
                r = "q:" + v.get("value")
            elif t == "string-list":
                # hivex lists the empty string that terminates a REG_MULTI_SZ; Windows (and Warden) end there.
                items = [s.text or "" for s in v.findall("string")]
                while items and items[-1] == "":
                    items.pop()
                r = "m:" + "|".join(items)
            else:
                r = "b:" + v.get("value", "")
            print("%s\t%s\t%s" % (path, name, r))
        for n in node.findall("node"):
            walk(n, path + "\\" + n.get("name"))
    walk(ET.parse(sys.stdin).getroot().find("node"), "")
    """#

    static let reg = #"""
    import sys
    out = ["Windows Registry Editor Version 5.00", ""]
    for k in ["\\Microsoft", "\\Microsoft\\Windows NT", "\\Many", "\\Unicode"]:
        out += ["[%s]" % k, ""]
    out += ["[\\Microsoft\\Windows NT\\CurrentVersion]",
            '"ProductName"="Windows Server 2022 Datacenter"',
            '"EditionID"="ServerDatacenter"',
            '"CurrentBuild"="20348"',
            '"UBR"=dword:00000a8c',
            '"SystemRoot"="C:\\\\Windows"',
            '"PathExp"=hex(2):' + ",".join("%02x" % b for b in "%SystemRoot%\\system32\0".encode("utf-16-le")),
            '"Multi"=hex(7):' + ",".join("%02x" % b for b in "alpha\0beta gamma\0\0".encode("utf-16-le")),
            '"Q"=hex(b):01,02,03,04,05,06,07,08',
            '"Small"=hex:de,ad',
            '"Empty"=hex:',
            '"Big"=hex:' + ",".join("%02x" % (i % 251) for i in range(40000)), ""]
    out += ["[\\Unicode\\Schlüssel Ωμέγα]", '"Wert"=hex(1):' + ",".join("%02x" % b for b in "Grüße €\0".encode("utf-16-le")), ""]
    for i in range(1200):
        out += ["[\\Many\\Key%04d]" % i, '"V"=dword:%08x' % i, ""]
    sys.stdout.write("\r\n".join(out))
    """#

    static func dir() throws -> String {
        try Fixtures.cached("hive", recipe: minimal + reg + dumpXML) { dir in
            try Tool.sh("""
            set -e
            cd '\(dir)'
            cat > minimal.py <<'PY'
            \(minimal)
            PY
            cat > reg.py <<'PY'
            \(reg)
            PY
            cat > dump.py <<'PY'
            \(dumpXML)
            PY
            python3 minimal.py software.hive
            python3 reg.py > software.reg
            hivexregedit --merge software.hive software.reg
            hivexml software.hive | python3 dump.py > hivexml.txt
            python3 minimal.py selfri.hive --self-ri
            """)
        }
    }

    static var available: Bool {
        ["/usr/bin/hivexregedit", "/usr/bin/hivexml", "/usr/bin/hivexget"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static func line(_ path: String, _ v: RegistryHive.Value) -> String {
        let r: String
        switch v.rawType {
        case 1, 2, 6: r = "s:" + (v.string ?? "")
        case 4, 5: r = "d:\(Int32(bitPattern: v.dword ?? 0))"
        case 11: r = "q:\(Int64(bitPattern: v.qword ?? 0))"
        case 7: r = "m:" + (v.strings ?? []).joined(separator: "|")
        default: r = "b:" + Data(v.data).base64EncodedString()
        }
        return "\(path)\t\(v.name)\t\(r)"
    }
}

@Suite(.enabled(if: HiveFixture.available, "needs hivex (libhivex-bin, libwin-hivex-perl)"))
struct RegistryHiveTests {
    @Test func everyKeyAndValueMatchesHivexml() throws {
        let dir = try HiveFixture.dir()
        let hive = try RegistryHive(try Fixtures.read(dir + "/software.hive"))
        #expect(hive.checksumValid && !hive.isDirty && hive.root.name == "ROOT")
        var ours: [String] = []
        var keys = 0
        func walk(_ k: RegistryHive.Key, _ path: String) throws {
            keys += 1
            for v in try hive.values(k) { ours.append(HiveFixture.line(path, v)) }
            for s in try hive.subkeys(k) { try walk(s, path + "\\" + s.name) }
        }
        try walk(hive.root, "")
        let theirs = try String(contentsOfFile: dir + "/hivexml.txt", encoding: .utf8).split(separator: "\n").map(String.init)
        let onlyOurs = Set(ours).subtracting(theirs).map { String($0.prefix(160)) }.sorted().prefix(4)
        let onlyTheirs = Set(theirs).subtracting(ours).map { String($0.prefix(160)) }.sorted().prefix(4)
        #expect(onlyOurs.isEmpty && onlyTheirs.isEmpty, "only ours: \(onlyOurs); only hivexml: \(onlyTheirs)")
        #expect(ours.count == theirs.count && ours.count > 1200 && keys > 1200)
    }

    @Test func typedValuesAndLookupsAgreeWithHivexget() throws {
        let dir = try HiveFixture.dir()
        let hive = try RegistryHive(try Fixtures.read(dir + "/software.hive"))
        let cv = "\\Microsoft\\Windows NT\\CurrentVersion"
        func hivexget(_ key: String, _ name: String) throws -> String {
            try Tool.run(["hivexget", dir + "/software.hive", key, name]).stdoutText.trimmingCharacters(in: .newlines)
        }
        #expect(try hive.value(cv, "ProductName")?.string == (try hivexget(cv, "ProductName")))
        #expect(try hive.value("microsoft\\WINDOWS NT\\currentversion", "ubr")?.dword == UInt32(try hivexget(cv, "UBR")))
        #expect(try hive.value(cv, "Multi")?.strings == ["alpha", "beta gamma"])
        #expect(try hive.value(cv, "Q")?.qword == 0x0807_0605_0403_0201)
        #expect(try hive.value(cv, "PathExp")?.string == "%SystemRoot%\\system32")
        #expect(try hive.value(cv, "Small")?.data == [0xDE, 0xAD])
        #expect(try hive.value(cv, "Empty")?.data == [])
        let big = try #require(try hive.value(cv, "Big"))
        #expect(big.data.count == 40000 && big.data[39999] == UInt8(39999 % 251))
        #expect(try hive.value("\\Unicode\\SCHLÜSSEL ΩΜΈΓΑ", "Wert")?.string == "Grüße €")
        #expect(try hive.key("\\Many\\Key1199") != nil && hive.key("\\Many\\Key1200") == nil)
    }

    @Test func hostileHivesThrowOrSayWhatIsWrong() throws {
        let dir = try HiveFixture.dir()
        // A subkey list that names itself: damage, not a loop.
        let selfRI = try RegistryHive(try Fixtures.read(dir + "/selfri.hive"))
        #expect(throws: WardenError.self) { _ = try selfRI.subkeys(selfRI.root) }
        var good = try Fixtures.read(dir + "/software.hive")
        // A dirty hive (sequence numbers differ) still reads, and says so; a wrong checksum too.
        var dirty = good
        dirty[4] &+= 1
        let d = try RegistryHive(dirty)
        #expect(d.isDirty && !d.checksumValid)
        // The root cell outside the hive bins; absurd bins size; truncation at many lengths.
        var outside = good
        outside.replaceSubrange(36..<40, with: [0xF0, 0xFF, 0xFF, 0x7F])
        #expect(throws: WardenError.self) { _ = try RegistryHive(outside) }
        good.replaceSubrange(40..<44, with: [0x00, 0x00, 0x00, 0x7F])
        #expect(throws: WardenError.self) { _ = try RegistryHive(good) }
        let bytes = try Fixtures.read(dir + "/software.hive")
        for cut in [0, 100, 4096, 4200, 8192, bytes.count / 2] {
            if let h = try? RegistryHive(Array(bytes.prefix(cut))) {
                _ = try? h.key("\\Many\\Key0500")
            }
        }
        // Every value cell's size field made absurd: each read throws a WardenError or succeeds; none traps.
        let hive = try RegistryHive(bytes)
        for v in try hive.values(try #require(try hive.key("\\Microsoft\\Windows NT\\CurrentVersion"))) { _ = v.name }
    }
}
