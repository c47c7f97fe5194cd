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

/// Differencing VHDX against libvhdi, the same way: a child written over a dynamic parent made by
/// qemu-img (HasParent, a parent locator with parent_linkage and relative and absolute paths,
/// fully and partially present blocks with the chunk's sector bitmap, and blocks left to the
/// parent).
@Suite(.enabled(if: Libvhdi.available, "needs python3-libvhdi (scripts/install-deps)"))
struct VHDXDifferencingTests {
    static let writer = #"""
    import struct, sys, uuid
    parent_path, child_path, name = sys.argv[1], sys.argv[2], sys.argv[3]
    T = []
    for i in range(256):
        c = i
        for _ in range(8): c = (0x82F63B78 ^ (c >> 1)) if c & 1 else c >> 1
        T.append(c)
    def crc32c(b):
        c = 0xFFFFFFFF
        for x in b: c = T[(c ^ x) & 0xFF] ^ (c >> 8)
        return c ^ 0xFFFFFFFF
    def reseal(buf, start, length):
        buf[start + 4:start + 8] = b'\0\0\0\0'
        buf[start + 4:start + 8] = struct.pack('<I', crc32c(bytes(buf[start:start + length])))
    def guid(text):
        return uuid.UUID(text).bytes_le
    d = bytearray(open(parent_path, 'rb').read())
    MB = 1 << 20
    # Current header (higher sequence) gives the parent's data write GUID.
    hs = [(struct.unpack_from('<Q', d, off + 8)[0], off) for off in (64 << 10, 128 << 10)]
    cur = max(hs)[1]
    parent_dw = uuid.UUID(bytes_le=bytes(d[cur + 32:cur + 48]))
    # New identity for the child: file write and data write GUIDs in both headers.
    for _, off in hs:
        d[off + 16:off + 32] = uuid.uuid4().bytes_le
        d[off + 32:off + 48] = uuid.uuid4().bytes_le
        reseal(d, off, 4096)
    # Region table: BAT and metadata offsets.
    regs = {}
    rt = 192 << 10
    n = struct.unpack_from('<I', d, rt + 8)[0]
    for i in range(n):
        e = rt + 16 + 32 * i
        regs[bytes(d[e:e + 16])] = struct.unpack_from('<QI', d, e + 16)
    bat_off, bat_len = regs[guid('2DC27766-F623-4200-9D64-115E9BFD4A08')]
    meta_off, meta_len = regs[guid('8B7CA206-4790-4B9A-B8FE-575F050F886E')]
    # Metadata: set HasParent, add a parent locator item.
    cnt = struct.unpack_from('<H', d, meta_off + 10)[0]
    items = {}
    end = 64 << 10
    for i in range(cnt):
        e = meta_off + 32 + 32 * i
        gid, o, l = bytes(d[e:e + 16]), *struct.unpack_from('<II', d, e + 16)
        items[gid] = (e, o, l)
        end = max(end, o + l)
    fp_e, fp_o, _ = items[guid('CAA16737-FA36-4D43-B3B6-33F0AA44E76B')]
    block = struct.unpack_from('<I', d, meta_off + fp_o)[0]
    d[meta_off + fp_o + 4] |= 2
    sector = struct.unpack_from('<I', d, meta_off + items[guid('8141BF1D-A96F-4709-BA47-F233A8FAAB5F')][1])[0]
    kv = [('parent_linkage', '{%s}' % parent_dw), ('relative_path', '.\\' + name), ('absolute_win32_path', 'C:\\vms\\' + name)]
    hdr = guid('B04AEFB7-D19E-4A81-B789-25B8E9445913') + struct.pack('<HH', 0, len(kv))
    body = b''
    entries = b''
    base = len(hdr) + 12 * len(kv)
    for k, v in kv:
        kb, vb = k.encode('utf-16-le'), v.encode('utf-16-le')
        entries += struct.pack('<IIHH', base + len(body), base + len(body) + len(kb), len(kb), len(vb))
        body += kb + vb
    loc = hdr + entries + body
    loc_off = (end + 4095) // 4096 * 4096
    d[meta_off + loc_off:meta_off + loc_off + len(loc)] = loc
    e = meta_off + 32 + 32 * cnt
    d[e:e + 32] = guid('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C') + struct.pack('<IIII', loc_off, len(loc), 4, 0)
    struct.pack_into('<H', d, meta_off + 10, cnt + 1)
    # BAT: everything from the parent, then some blocks of the child's.
    size = struct.unpack_from('<Q', d, meta_off + items[guid('2FA54224-CD1B-4876-B211-5DBED83BF4B8')][1])[0]
    cr = (1 << 23) * sector // block
    blocks = (size + block - 1) // block
    d[bat_off:bat_off + bat_len] = b'\0' * bat_len
    def put(i, state, off): struct.pack_into('<Q', d, bat_off + 8 * i, state | (off // MB) << 20)
    def payload_index(b): return b + b // cr
    if len(d) % MB: d += b'\0' * (MB - len(d) % MB)
    bitmap = bytearray(MB)
    def child_block(b, fill, bits=None):
        off = len(d)
        data = bytearray(block)
        for s in range(block // sector):
            if bits is None or bits(s):
                data[s * sector:(s + 1) * sector] = bytes([(fill ^ s) & 0xff]) * sector
                if bits is not None:
                    bit = (b % cr) * (block // sector) + s
                    bitmap[bit // 8] |= 1 << (bit % 8)
        d.extend(data)
        put(payload_index(b), 6 if bits is None else 7, off)
    child_block(2, 0xdd)                                   # fully present
    child_block(0, 0xcc, lambda s: s < 8)                  # the first 4 KiB
    child_block(10, 0xee, lambda s: (s // 8) % 2 == 1)     # every other 4 KiB
    child_block(blocks - 1, 0x77, lambda s: 100 <= s < 300)
    # (No block is declared ZERO: libvhdi 20210425 reads one from the parent; MS-VHDX and Warden read zeros.)
    bm_off = len(d); d.extend(bitmap)
    put(cr, 6, bm_off)                                     # the sector bitmap block of chunk 0
    open(child_path, 'wb').write(d)
    """#

    static let recipe = #"""
    set -euo pipefail
    qemu-img create -q -f raw src.raw 24M
    qemu-io -f raw -c "write -P 0x11 0 3M" -c "write -P 0x22 9M 2M" -c "write -P 0x33 22M 2M" src.raw >/dev/null
    qemu-img convert -O vhdx -o subformat=dynamic,block_size=1M,log_size=1M src.raw parent.vhdx
    /usr/bin/python3 writer.py parent.vhdx child.vhdx parent.vhdx
    /usr/bin/python3 - <<'PY'
    import pyvhdi
    c = pyvhdi.file(); c.open('child.vhdx'); p = pyvhdi.file(); p.open('parent.vhdx'); c.set_parent(p)
    open('oracle.raw', 'wb').write(c.read_buffer_at_offset(c.get_media_size(), 0))
    PY
    """#

    static func fixtures() throws -> String {
        try Fixtures.cached("vhdx-differencing", recipe: recipe + writer) { dir in
            try writer.write(toFile: dir + "/writer.py", atomically: true, encoding: .utf8)
            try Tool.run(["bash", "-euo", "pipefail", "-c", recipe], cwd: dir)
        }
    }

    @Test func readsAsLibvhdiReads() throws {
        let dir = try Self.fixtures()
        let oracle = try Fixtures.read(dir + "/oracle.raw")
        let img = try ImageOpener.open(dir + "/child.vhdx")
        #expect(img.chain.count == 2)
        #expect(img.chain[0].details["subformat"] == "differencing")
        #expect(img.chain[0].backingFile == "parent.vhdx")
        let mine = try img.device.read(at: 0, count: Int(img.device.size))
        #expect(mine.count == oracle.count)
        let firstDifference = mine == oracle ? nil : zip(mine, oracle).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(firstDifference == nil, "the child reads as libvhdi reads it (first difference at byte \(firstDifference ?? -1))")
        #expect(oracle[0] == 0xcc && oracle[4096] == 0x11 && oracle[1 << 20] == 0x11 && oracle[2 << 20] == 0xdd && oracle[9 << 20] == 0x22,
                "child, parent, parent, full child block, parent")
        for (at, n) in [(4000, 300), ((1 << 20) - 100, 1000), ((10 << 20) + 700, 9000)] {
            #expect(try img.device.read(at: UInt64(at), count: n) == Array(oracle[at..<(at + n)]))
        }
    }

    @Test func aMissingOrForeignParentIsRefused() throws {
        let dir = try Self.fixtures()
        try Fixtures.withTemporaryDirectory { tmp in
            try Tool.run(["cp", dir + "/child.vhdx", tmp + "/child.vhdx"])
            #expect(throws: WardenError.self) { _ = try ImageOpener.open(tmp + "/child.vhdx") }
            try Tool.run(["qemu-img", "create", "-q", "-f", "vhdx", tmp + "/parent.vhdx", "24M"])
            do {
                _ = try ImageOpener.open(tmp + "/child.vhdx")
                Issue.record("a foreign parent was accepted")
            } catch let e as WardenError {
                #expect(e.message.contains("expects a parent with data write GUID"), "\(e.message)")
            }
        }
    }
}
