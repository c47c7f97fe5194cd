import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import Partitions

/// Two PVs made by the real LVM tools on loop devices. The sandbox has no device-mapper,
/// so LVs are created with activation disabled (metadata only); LV contents are checked
/// against a position pattern written straight into the PV images, mapped with the
/// extents `lvs --segments` reports.
enum LVM2Fixture {
    static let script = #"""
    D="$1"; cd "$D"
    export LVM_SUPPRESS_FD_WARNINGS=1
    CFG='global { activation = 0 } devices { use_devicesfile = 0 } backup { backup = 0 archive = 0 }'
    VG="warden-vg$$"
    truncate -s 64M pv1.img pv2.img
    L1=$(losetup -f --show pv1.img)
    L2=""
    cleanup() { [ -n "$L1" ] && losetup -d "$L1" || true; [ -n "$L2" ] && losetup -d "$L2" || true; }
    trap cleanup EXIT
    L2=$(losetup -f --show pv2.img)
    lvm pvcreate -q --config "$CFG" "$L1" "$L2"
    lvm vgcreate -q --config "$CFG" -s 1M "$VG" "$L1" "$L2"
    lvm lvcreate -q --config "$CFG" -an -Zn -y -L 8M -n lv1 "$VG" "$L1"
    lvm lvcreate -q --config "$CFG" -an -Zn -y -i 2 -I 64k -L 16M -n lv-2 "$VG"
    lvm lvcreate -q --config "$CFG" -an -Zn -y -L 4M -n lv3 "$VG" "$L1"
    lvm lvextend -q --config "$CFG" -L +6M "$VG/lv1" "$L2"
    lvm lvs --config "$CFG" --segments --reportformat json --units b --nosuffix \
      -o lv_name,vg_name,lv_size,lv_uuid,seg_start_pe,seg_size_pe,segtype,stripes,stripe_size,seg_pe_ranges "$VG" > lvs.json
    lvm pvs --config "$CFG" --reportformat json --units b --nosuffix -o pv_name,pv_uuid,pe_start,vg_extent_size \
      "$L1" "$L2" > pvs.json
    lvm vgchange -q --config "$CFG" -an "$VG" >/dev/null
    """#

    static var available: Bool {
        getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control")
            && ((try? Tool.run(["lvm", "version"], check: false).status) == 0)
    }

    static func dir() throws -> String {
        try Fixtures.cached("lvm2", recipe: script) { dir in
            try Tool.run(["bash", "-euo", "pipefail", "-c", script, "lvm2", dir])
        }
    }

    static func json(_ path: String, _ key: String) throws -> [[String: String]] {
        let obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path)))
        guard let report = (obj as? [String: Any])?["report"] as? [[String: Any]],
              let rows = report.first?[key] as? [[String: String]] else { throw WardenError.corrupt("bad json \(path)") }
        return rows
    }

    /// PV bytes with every 8-byte word from pe_start on replaced by (pv index << 48 | offset).
    static func patterned(_ bytes: [UInt8], pvIndex: UInt64, peStart: Int) -> [UInt8] {
        var b = bytes
        var o = peStart
        while o + 8 <= b.count {
            let v = pvIndex << 48 | UInt64(o)
            for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
            o += 8
        }
        return b
    }
}

@Suite(.enabled(if: LVM2Fixture.available, "needs root, loop devices and lvm2"))
struct LVM2Tests {
    struct World {
        var pvBytes: [[UInt8]]
        var pvs: [[String: String]]
        var segs: [[String: String]]
        var devices: [String: any BlockDevice]
        var vg: LVM2.VolumeGroup
        var extentSize: UInt64
    }

    func world() throws -> World {
        let dir = try LVM2Fixture.dir()
        let pvs = try LVM2Fixture.json(dir + "/pvs.json", "pv")
        let segs = try LVM2Fixture.json(dir + "/lvs.json", "seg")
        var bytes: [[UInt8]] = []
        var devices: [String: any BlockDevice] = [:]
        var vg: LVM2.VolumeGroup?
        for (i, file) in ["pv1.img", "pv2.img"].enumerated() {
            let raw = try Fixtures.read("\(dir)/\(file)")
            let pv = try LVM2.readPhysicalVolume(MemoryDevice(raw))
            #expect(pv.warnings.isEmpty)
            #expect(pv.uuid == pvs[i]["pv_uuid"])
            #expect(pv.deviceSize == 64 << 20)
            let peStart = try #require(Int(pvs[i]["pe_start"] ?? ""))
            #expect(pv.dataAreas.first?.offset == UInt64(peStart))
            let b = LVM2Fixture.patterned(raw, pvIndex: UInt64(i), peStart: peStart)
            bytes.append(b)
            devices[pv.uuid] = MemoryDevice(b)
            if i == 0 { vg = try pv.volumeGroup() }
        }
        let es = try #require(UInt64(pvs[0]["vg_extent_size"] ?? ""))
        return World(pvBytes: bytes, pvs: pvs, segs: segs, devices: devices, vg: try #require(vg), extentSize: es)
    }

    /// The expected pattern word at LV byte `x` (8-aligned), from `lvs --segments` alone.
    func expectedWord(_ w: World, lv: String, at x: UInt64) throws -> UInt64 {
        for s in w.segs where s["lv_name"] == lv {
            let start = UInt64(s["seg_start_pe"]!)! * w.extentSize
            let len = UInt64(s["seg_size_pe"]!)! * w.extentSize
            guard x >= start, x < start + len else { continue }
            let ranges = s["seg_pe_ranges"]!.split(separator: " ").map { r -> (Int, UInt64) in
                let p = r.split(separator: ":")
                let pvIndex = w.pvs.firstIndex { $0["pv_name"] == String(p[0]) }!
                return (pvIndex, UInt64(p[1].split(separator: "-")[0])!)
            }
            let n = UInt64(ranges.count)
            let ss = n > 1 ? UInt64(s["stripe_size"]!)! : len
            let off = x - start
            let chunk = off / ss
            let (pv, firstPE) = ranges[Int(chunk % n)]
            let pvOff = UInt64(w.pvs[pv]["pe_start"]!)! + firstPE * w.extentSize + (chunk / n) * ss + off % ss
            return UInt64(pv) << 48 | pvOff
        }
        throw WardenError.notFound("no segment for \(lv) at \(x)")
    }

    @Test func volumesMatchLvsReport() throws {
        let w = try world()
        #expect(w.vg.name.hasPrefix("warden-vg"))
        #expect(w.vg.extentSize == w.extentSize)
        let lvs = try LVM2.logicalVolumes(w.vg, pvs: w.devices)
        #expect(Set(lvs.map(\.name)) == Set(w.segs.compactMap { $0["lv_name"] }))
        for lv in lvs {
            let row = try #require(w.segs.first { $0["lv_name"] == lv.name })
            #expect(lv.vgName == row["vg_name"])
            #expect(String(lv.size) == row["lv_size"])
            #expect(lv.uuid == row["lv_uuid"])
            #expect(lv.device.size == lv.size)
            // Every 4 KiB plus both sides of each 64 KiB boundary.
            let samples = Array(stride(from: UInt64(0), to: lv.size, by: 4096)) + Array(stride(from: UInt64(65528), to: lv.size - 8, by: 65536))
            for x in samples where x + 16 <= lv.size {
                let b = try lv.device.read(at: x, count: 16)
                for k in 0..<2 {
                    let got = try b.le(8 * k, UInt64.self)
                    #expect(got == (try expectedWord(w, lv: lv.name, at: x + UInt64(8 * k))), "\(lv.name) at \(x)")
                }
            }
            // A large read crossing segment and stripe boundaries equals piecewise reads.
            let all = try lv.device.read(at: 0, count: Int(lv.size))
            var pieces: [UInt8] = []
            var o: UInt64 = 0
            while o < lv.size { let n = min(UInt64(100_003), lv.size - o); pieces += try lv.device.read(at: o, count: Int(n)); o += n }
            #expect(all == pieces)
            #expect(throws: WardenError.self) { _ = try lv.device.read(at: lv.size - 1, count: 2) }
        }
        #expect(lvs.first { $0.name == "lv-2" }?.mapperPath == "/dev/mapper/\(w.vg.name.replacingOccurrences(of: "-", with: "--"))-lv--2")
        #expect(w.vg.logicalVolumes.first { $0.name == "lv1" }?.segments.count == 2)
        #expect(w.vg.logicalVolumes.first { $0.name == "lv-2" }?.segments.first?.stripes.count == 2)
    }

    @Test func probe() throws {
        let w = try world()
        #expect(LVM2.probe(MemoryDevice(w.pvBytes[0])))
        #expect(!LVM2.probe(MemoryDevice([UInt8](repeating: 0, count: 8192))))
        #expect(!LVM2.probe(MemoryDevice([1, 2, 3])))
    }

    @Test func missingPVIsNotFound() throws {
        let w = try world()
        let one = w.devices.filter { $0.key == w.pvs[0]["pv_uuid"] }
        #expect(throws: WardenError.self) { _ = try LVM2.logicalVolumes(w.vg, pvs: one) }
    }
}
