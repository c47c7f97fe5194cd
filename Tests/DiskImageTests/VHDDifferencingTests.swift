import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

enum Libvhdi {
    static var available: Bool {
        (try? Tool.run(["/usr/bin/python3", "-c", "import pyvhdi"], check: false).status) == 0
    }
}

/// Differencing VHDs against libvhdi (libyal's independent reader; Debian's python3-libvhdi,
/// with the parent set as libvhdi's own API takes it). No tool on this machine writes a
/// differencing VHD, so the test writes one over a dynamic parent made by qemu-img: a copy of
/// the parent's footer and dynamic header turned into a child (type 4, the parent's id and
/// name, relative and absolute Windows locators), blocks with full, partial and alternating
/// sector bitmaps, and blocks left to the parent. The parent has data where the child has
/// none, so reading the parent matters.
@Suite(.enabled(if: Libvhdi.available, "needs python3-libvhdi (scripts/install-deps)"))
struct VHDDifferencingTests {
    static let writer = #"""
    import struct, sys, uuid, time
    parent_path, child_path, name = sys.argv[1], sys.argv[2], sys.argv[3]
    p = open(parent_path, 'rb').read()
    foot = bytearray(p[-512:]); dyn = bytearray(p[512:1536])
    assert foot[:8] == b'conectix' and dyn[:8] == b'cxsparse'
    def csum(b, at):
        b[at:at+4] = b'\0\0\0\0'; b[at:at+4] = struct.pack('>I', (~sum(b)) & 0xffffffff)
    entries = struct.unpack('>I', dyn[28:32])[0]; bs = struct.unpack('>I', dyn[32:36])[0]
    bitmap = (bs // 512 // 8 + 511) // 512 * 512
    parent_id = bytes(foot[68:84])
    # Layout: footer copy | dynamic header | BAT | 2 locator sectors | blocks | footer
    bat_off = 1536; bat_len = (entries * 4 + 511) // 512 * 512
    loc_off = bat_off + bat_len
    data_off = loc_off + 1024
    bat = [0xffffffff] * entries
    blocks = []
    def block(i, bits, fill):
        nonlocal_data = bytearray(bitmap + bs)
        for s in range(bs // 512):
            if bits(s):
                nonlocal_data[s // 8] |= 0x80 >> (s % 8)
                nonlocal_data[bitmap + s * 512: bitmap + (s + 1) * 512] = bytes([fill ^ (s & 0xff)]) * 512
        blocks.append((i, nonlocal_data))
    block(0, lambda s: s < 8, 0xcc)                 # the first 4 KiB: the rest is the parent's
    block(2, lambda s: True, 0xdd)                  # a whole block of the child's
    block(5, lambda s: (s // 8) % 2 == 1, 0xee)     # every other 4 KiB (a writer with 4 KiB pages)
    block(entries - 1, lambda s: 100 <= s < 300, 0x77)
    out = bytearray()
    pos = data_off
    for i, b in blocks:
        bat[i] = pos // 512; pos += len(b)
    f = bytearray(foot); f[60:64] = struct.pack('>I', 4); f[16:24] = struct.pack('>Q', 512)
    f[68:84] = uuid.uuid4().bytes; csum(f, 64)
    d = bytearray(dyn); d[16:24] = struct.pack('>Q', bat_off)
    d[40:56] = parent_id; d[56:60] = struct.pack('>I', int(time.time()) - 946684800)
    pname = name.encode('utf-16-be'); d[64:576] = pname + b'\0' * (512 - len(pname))
    rel = ('.\\' + name).encode('utf-16-le'); absl = ('C:\\vms\\' + name).encode('utf-16-le')
    d[576:600] = b'W2ru' + struct.pack('>III', 512, len(rel), 0) + struct.pack('>Q', loc_off)
    d[600:624] = b'W2ku' + struct.pack('>III', 512, len(absl), 0) + struct.pack('>Q', loc_off + 512)
    csum(d, 36)
    out += f; out += d
    out += b''.join(struct.pack('>I', x) for x in bat) + b'\xff' * (bat_len - entries * 4)
    out += rel + b'\0' * (512 - len(rel)) + absl + b'\0' * (512 - len(absl))
    for i, b in blocks: out += b
    out += f
    open(child_path, 'wb').write(out)
    """#

    static let recipe = #"""
    set -euo pipefail
    qemu-img create -q -f raw src.raw 24M
    qemu-io -f raw -c "write -P 0x11 0 3M" -c "write -P 0x22 9M 2M" -c "write -P 0x33 22M 2M" src.raw >/dev/null
    qemu-img convert -O vpc -o subformat=dynamic src.raw parent.vhd
    /usr/bin/python3 writer.py parent.vhd child.vhd parent.vhd
    /usr/bin/python3 - <<'PY'
    import pyvhdi
    c = pyvhdi.file(); c.open('child.vhd'); p = pyvhdi.file(); p.open('parent.vhd'); c.set_parent(p)
    open('oracle.raw', 'wb').write(c.read_buffer_at_offset(c.get_media_size(), 0))
    open('oracle.parent-name', 'w').write(c.get_parent_filename() or '')
    PY
    """#

    static func fixtures() throws -> String {
        try Fixtures.cached("vhd-differencing", recipe: recipe + writer) { dir in
            try writer.write(toFile: dir + "/writer.py", atomically: true, encoding: .utf8)
            try Tool.run(["bash", "-euo", "pipefail", "-c", recipe], cwd: dir)
        }
    }

    @Test func readsAsLibvhdiReads() throws {
        let dir = try Self.fixtures()
        let oracle = try Fixtures.read(dir + "/oracle.raw")
        let img = try ImageOpener.open(dir + "/child.vhd")
        #expect(img.chain.count == 2)
        #expect(img.chain[0].details["subformat"] == "differencing")
        #expect(img.chain[0].backingFile == "parent.vhd")
        #expect(try String(contentsOfFile: dir + "/oracle.parent-name", encoding: .utf8).hasSuffix("parent.vhd"))
        let mine = try img.device.read(at: 0, count: Int(img.device.size))
        #expect(mine.count == oracle.count)
        let firstDifference = mine == oracle ? nil : zip(mine, oracle).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(firstDifference == nil, "the child reads as libvhdi reads it (first difference at byte \(firstDifference ?? -1))")
        // Both the child's sectors and the parent's show through.
        #expect(oracle[0] == 0xcc && oracle[4096] == 0x11, "block 0: 4 KiB of the child, then the parent")
        #expect(oracle[5 * (2 << 20)] == 0x22 && oracle[5 * (2 << 20) + 4096] == 0xee ^ 8, "alternating runs")
        // Reads that straddle blocks and runs agree too.
        for (at, n) in [(4000, 300), ((2 << 20) - 100, 1000), (5 * (2 << 20) + 700, 3000)] {
            #expect(try img.device.read(at: UInt64(at), count: n) == Array(oracle[at..<(at + n)]))
        }
    }

    @Test func aMissingOrForeignParentIsRefused() throws {
        let dir = try Self.fixtures()
        try Fixtures.withTemporaryDirectory { tmp in
            try Tool.run(["cp", dir + "/child.vhd", tmp + "/child.vhd"])
            #expect(throws: WardenError.self) { _ = try ImageOpener.open(tmp + "/child.vhd") }
            // Another VHD under the parent's name: its id is not the one the child records.
            try Tool.run(["qemu-img", "create", "-q", "-f", "vpc", tmp + "/parent.vhd", "24M"])
            do {
                _ = try ImageOpener.open(tmp + "/child.vhd")
                Issue.record("a foreign parent was accepted")
            } catch let e as WardenError {
                #expect(e.message.contains("expects a parent with id"), "\(e.message)")
            }
        }
    }
}
