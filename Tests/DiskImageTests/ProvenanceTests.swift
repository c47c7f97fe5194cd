import DiskImage
import Foundation
import Testing
import WardenCore
import WardenTestSupport

/// `ProvenanceDevice` against `qemu-img map`: each range is defined by the layer qemu names
/// (depth 0 the overlay, depth 1 its base), a range across both has no one source, and a
/// base that changed (its change time) is another source.
@Suite struct ProvenanceTests {
    @Test func sourcesAgreeWithQemuImgMapDepths() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("""
            cd '\(dir)'
            qemu-img create -q -f qcow2 base.qcow2 16M
            qemu-io -c 'write -P 0x11 0 1M' -c 'write -P 0x22 4M 2M' -c 'write -z 10M 64k' base.qcow2 > /dev/null
            qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 top.qcow2
            qemu-io -c 'write -P 0x33 512k 64k' -c 'write -P 0x44 8M 128k' -c 'write -z 4M 64k' top.qcow2 > /dev/null
            """)
            let map = try JSONSerialization.jsonObject(with: try Tool.run(["qemu-img", "map", "--output=json", dir + "/top.qcow2"]).stdout) as? [[String: Any]] ?? []
            #expect(map.count >= 5)
            let top = try ImageOpener.open(dir + "/top.qcow2")
            let device = try #require(top.device as? ProvenanceDevice)
            let base = try #require((try ImageOpener.open(dir + "/base.qcow2")).device as? ProvenanceDevice)
            let topID = try #require(try device.source(at: 512 << 10, length: 64 << 10))
            let baseID = try #require(try base.source(at: 0, length: 4096))
            #expect(topID != baseID)
            for e in map {
                let start = UInt64(e["start"] as? Int ?? 0), length = UInt64(e["length"] as? Int ?? 0)
                let depth = e["depth"] as? Int ?? -1
                let got = try device.source(at: start, length: length)
                #expect(got == (depth == 0 ? topID : baseID), "\(start)+\(length) depth \(depth)")
            }
            // Across a written cluster of the overlay and base data: no one source.
            #expect(try device.source(at: 0, length: 1 << 20) == nil)
            // Out of bounds: nil, not a trap.
            #expect(try device.source(at: 16 << 20, length: 1) == nil)
            #expect(try device.source(at: UInt64.max, length: 2) == nil)
            // A base that changed since is another source (its change time moved).
            try Tool.run(["qemu-io", "-c", "write -P 0x55 12M 4k", dir + "/base.qcow2"])
            let again = try #require(try ImageOpener.open(dir + "/base.qcow2").device as? ProvenanceDevice)
            #expect(try again.source(at: 0, length: 4096) != baseID)
            // A slice carries its start: the same bytes seen at another offset are another key.
            let slice = try SliceDevice(base: top.device, start: 1 << 20, size: 8 << 20)
            #expect(try slice.source(at: 4 << 20, length: 4096) == baseID + "@\(1 << 20)")
        }
    }
}
