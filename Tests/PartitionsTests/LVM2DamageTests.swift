import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import Partitions

/// Hostile LVM2 input: everything must end in a WardenError (or a warning), never a trap or hang.
@Suite struct LVM2MetadataParserTests {
    @Test func parsesNestedSectionsArraysAndComments() throws {
        let text = #"""
        # comment
        vg {
            id = "abc-def"   # trailing comment
            seqno = 7
            neg = -42
            extent_size = 8192
            status = ["READ", "WRITE"]
            empty = []
            s = "quote \" and \\ backslash"
            physical_volumes { pv0 { id = "x" pe_start = 2048 pe_count = 10 } }
        }
        contents = "Text Format Volume Group"
        """#
        let m = try LVM2.parseMetadata(Array(text.utf8))
        let vg = try #require(m["vg"]?.section)
        #expect(vg["seqno"]?.integer == 7)
        #expect(vg["neg"]?.integer == -42)
        #expect(vg["status"]?.array == [.string("READ"), .string("WRITE")])
        #expect(vg["empty"]?.array == [])
        #expect(vg["s"]?.string == "quote \" and \\ backslash")
        #expect(m["contents"]?.string == "Text Format Volume Group")
        let g = try LVM2.VolumeGroup(metadata: m)
        #expect(g.name == "vg" && g.extentSize == 8192 * 512 && g.physicalVolumes.first?.peStart == 2048 * 512)
    }

    @Test func rejectsHostileText() {
        let deep = String(repeating: "a {", count: 100_000)
        let deepArray = "a = " + String(repeating: "[", count: 100_000)
        let cases = [
            "vg { a = 1", "vg { a = 1 } }", "}", "a = ", "a = \"unterminated", "a = 99999999999999999999",
            "a = -99999999999999999999", "a = [1, 2", "a = [1 2]", "a 1", "a = 1.5", "a = -", "= 3", "a = @",
            deep, deepArray, String(repeating: "x = [", count: 40) + String(repeating: "]", count: 40),
        ]
        for c in cases {
            #expect(throws: WardenError.self, "\(c.prefix(40))") { _ = try LVM2.parseMetadata(Array(c.utf8)) }
        }
        let many = String(repeating: "a = 1\n", count: 300_000)
        #expect(throws: WardenError.self) { _ = try LVM2.parseMetadata(Array(many.utf8)) }
        #expect(throws: WardenError.self) { _ = try LVM2.parseMetadata([UInt8](repeating: 0x41, count: 5 << 20)) }
    }

    @Test func randomBytesNeverTrap() {
        var s: UInt64 = 0x1234_5678
        let alphabet = Array("ab{}[]=,\"\\-019 \n#".utf8)
        var inputs = Rejections(.corrupt, .limitExceeded, .unsupported)
        defer { #expect(inputs.rejected > 0, "no random metadata was refused") }
        for _ in 0..<2000 {
            var t: [UInt8] = []
            for _ in 0..<Int(s % 200) {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17
                t.append(alphabet[Int(s % UInt64(alphabet.count))])
            }
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            inputs.feed { try LVM2.parseMetadata(t) }
        }
    }
}

@Suite(.enabled(if: LVM2Fixture.available, "needs root, loop devices and lvm2"))
struct LVM2DamageTests {
    static func pv(_ n: Int) throws -> [UInt8] { try Fixtures.read("\(try LVM2Fixture.dir())/pv\(n).img") }

    static func put(_ v: UInt64, width: Int, _ b: inout [UInt8], at o: Int) {
        for i in 0..<width { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    /// The whole pipeline; true if the LVs were mapped and read without error.
    @discardableResult
    static func pipeline(_ pv1: [UInt8], _ pv2: [UInt8]) -> Bool {
        do {
            let a = try LVM2.readPhysicalVolume(MemoryDevice(pv1))
            let b = try LVM2.readPhysicalVolume(MemoryDevice(pv2))
            let vg = try a.volumeGroup()
            let lvs = try LVM2.logicalVolumes(vg, pvs: [a.uuid: MemoryDevice(pv1), b.uuid: MemoryDevice(pv2)])
            for lv in lvs { _ = try lv.device.read(at: lv.size - 4096, count: 4096) }
            return true
        } catch is WardenError {
            return false
        } catch {
            Issue.record("non-WardenError: \(error)")
            return false
        }
    }

    @Test func truncatedPV() throws {
        let a = try Self.pv(1), b = try Self.pv(2)
        #expect(Self.pipeline(a, b))
        // Every LV ends within the first 40 MiB of each PV; shorter PVs must fail.
        for n in [0, 1, 100, 511, 512, 600, 1024, 2047, 4096, 4097, 4608, 5000, 8192, 100_000, 1 << 20, (1 << 20) + 1, 10 << 20] {
            let okA = Self.pipeline(Array(a[0..<n]), b)
            #expect(!okA, "pv1 truncated to \(n)")
            let okB = Self.pipeline(a, Array(b[0..<n]))
            #expect(!okB, "pv2 truncated to \(n)")
        }
        // Cut past the last extent used: still readable, with a size warning.
        let short = Array(a[0..<((64 << 20) - 1)])
        let pv = try LVM2.readPhysicalVolume(MemoryDevice(short))
        #expect(pv.warnings.contains { $0.contains("claims") })
    }

    @Test func checksumMismatchesWarn() throws {
        var a = try Self.pv(1)
        let pv = try LVM2.readPhysicalVolume(MemoryDevice(a))
        let mda = Int(try #require(pv.metadataAreas.first).offset)
        a[mda + 200] ^= 0xFF // inside the header, past raw_locn[]
        let bad = try LVM2.readPhysicalVolume(MemoryDevice(a))
        #expect(bad.warnings.contains { $0.contains("metadata area header checksum mismatch") })
        #expect(try bad.volumeGroup().name == (try pv.volumeGroup().name))
        // Damaged label checksum.
        var c = try Self.pv(1)
        c[512 + 100] ^= 1
        #expect(try LVM2.readPhysicalVolume(MemoryDevice(c)).warnings.contains { $0.contains("label checksum") })
        // Damaged text: checksum warning, then a parse error or a still-parsable text.
        var d = try Self.pv(1)
        let loc = Int(try d.le(mda + 40, UInt64.self))
        d[mda + loc + 2] = 0x7B
        let t = try LVM2.readPhysicalVolume(MemoryDevice(d))
        #expect(t.warnings.contains { $0.contains("text checksum mismatch") })
    }

    @Test func wrappedCircularBuffer() throws {
        var a = try Self.pv(1)
        let pv = try LVM2.readPhysicalVolume(MemoryDevice(a))
        let area = try #require(pv.metadataAreas.first)
        let mda = Int(area.offset), size = Int(area.size)
        let loc = Int(try a.le(mda + 40, UInt64.self)), len = Int(try a.le(mda + 48, UInt64.self))
        let text = Array(a[(mda + loc)..<(mda + loc + len)])
        // Move the text so that it starts 100 bytes before the area end and wraps.
        let newLoc = size - 100
        for i in 0..<len {
            let at = newLoc + i < size ? mda + newLoc + i : mda + 512 + (newLoc + i - size)
            a[at] = text[i]
        }
        Self.put(UInt64(newLoc), width: 8, &a, at: mda + 40)
        Self.put(UInt64(LVM2.crc(a[(mda + 4)..<(mda + 512)])), width: 4, &a, at: mda)
        let moved = try LVM2.readPhysicalVolume(MemoryDevice(a))
        #expect(moved.warnings.isEmpty)
        #expect(moved.metadataText == pv.metadataText)
        // A text size larger than the area is refused.
        Self.put(UInt64(size), width: 8, &a, at: mda + 48)
        Self.put(UInt64(LVM2.crc(a[(mda + 4)..<(mda + 512)])), width: 4, &a, at: mda)
        #expect(throws: WardenError.self) { _ = try LVM2.readPhysicalVolume(MemoryDevice(a)) }
    }

    /// Edits the VG metadata text and maps the LVs.
    func mapEdited(_ edit: (String) -> String) throws -> [LVM2.LogicalVolume] {
        let a = try Self.pv(1), b = try Self.pv(2)
        let pa = try LVM2.readPhysicalVolume(MemoryDevice(a)), pb = try LVM2.readPhysicalVolume(MemoryDevice(b))
        let text = edit(String(decoding: try #require(pa.metadataText), as: UTF8.self))
        let vg = try LVM2.VolumeGroup(metadata: try LVM2.parseMetadata(Array(text.utf8)))
        return try LVM2.logicalVolumes(vg, pvs: [pa.uuid: MemoryDevice(a), pb.uuid: MemoryDevice(b)])
    }

    @Test func hostileSegments() throws {
        #expect(try mapEdited { $0 }.count == 3)
        func replacingFirst(_ s: String, _ re: String, _ with: String) -> String {
            guard let r = s.range(of: re, options: .regularExpression) else { Issue.record("no \(re)"); return s }
            return s.replacingCharacters(in: r, with: with)
        }
        let edits: [(String, String)] = [
            (#"pe_count = \d+"#, "pe_count = 3"),                 // segments past the PV's extents
            (#"pe_start = \d+"#, "pe_start = 130000"),            // data area past the device end
            (#"pe_start = \d+"#, "pe_start = 9223372036854775807"),
            (#"extent_size = \d+"#, "extent_size = 0"),
            (#"extent_size = \d+"#, "extent_size = 4294967296"),
            (#"extent_count = \d+"#, "extent_count = 9223372036854775807"),
            (#"start_extent = 0"#, "start_extent = 5"),
            (#"stripes = \[\s*"pv\d""#, #"stripes = ["pv9""#),
            (#"stripes = \[\s*"pv(\d)",\s*\d+"#, #"stripes = ["pv0", 18446744073"#),
            (#"stripe_count = 2"#, "stripe_count = 3"),
            (#"stripe_size = \d+"#, "stripe_size = 0"),
        ]
        for (re, with) in edits {
            do {
                _ = try mapEdited { replacingFirst($0, re, with) }
                Issue.record("accepted edit \(with)")
            } catch is WardenError {
            } catch { Issue.record("non-WardenError \(error)") }
        }
        do {
            _ = try mapEdited { replacingFirst($0, #"type = "striped""#, #"type = "cache""#) }
            Issue.record("cache accepted")
        } catch let e as WardenError {
            #expect(e.code == .unsupported && e.message.contains("cache"))
        }
        // A thin segment that names no pool device is damage, not an unknown type.
        do {
            _ = try mapEdited { replacingFirst($0, #"type = "striped""#, #"type = "thin""#) }
            Issue.record("thin without a device id accepted")
        } catch let e as WardenError {
            #expect(e.code == .corrupt && e.message.contains("device_id"), "\(e)")
        }
    }

    @Test func randomHeaderCorruption() throws {
        let good = try Self.pv(1), b = try Self.pv(2)
        var s: UInt64 = 0xDEAD_BEEF
        for _ in 0..<300 {
            var a = good
            for _ in 0..<(1 + Int(s % 8)) {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17
                let o = s % 3 == 0 ? 512 + Int(s % 512) : 4096 + Int((s >> 8) % 1024)
                s ^= s << 13; s ^= s >> 7; s ^= s << 17
                a[o] = UInt8(truncatingIfNeeded: s)
            }
            Self.pipeline(a, b)
        }
    }
}
