import Foundation

/// Registry hives for tests: hivex (`hivexregedit --merge`) writes every structure, but needs
/// a valid hive to start from, and Debian ships none. This script writes one: a base block with
/// its checksum, one hive bin, a root key `ROOT` and its security cell (8 KiB).
/// `python3 - OUT [--self-ri]`; `--self-ri` gives the root a subkey list that names itself.
public enum RegistryFixtures {
    public static let minimalHiveScript = #"""
    import struct, sys
    def cell(data):
        size = (len(data) + 4 + 7) // 8 * 8
        return struct.pack("<i", -size) + data + b"\0" * (size - 4 - len(data))
    sd = struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 20) + struct.pack("<BBHHH", 2, 0, 8, 0, 0)
    name = b"ROOT"
    root = 0x20
    nk_size = (76 + len(name) + 4 + 7) // 8 * 8
    sk_off = root + nk_size
    sk = struct.pack("<2sHIIII", b"sk", 0, sk_off, sk_off, 1, len(sd)) + sd
    ri_off = sk_off + len(cell(sk))
    self_ri = len(sys.argv) > 2 and sys.argv[2] == "--self-ri"
    nk = struct.pack("<2sHQIIIIIIIIIIIIIIIHH", b"nk", 0x2C, 0, 0, 0, 1 if self_ri else 0, 0,
                     ri_off if self_ri else 0xFFFFFFFF, 0xFFFFFFFF, 0, 0xFFFFFFFF,
                     sk_off, 0xFFFFFFFF, 0, 0, 0, 0, 0, len(name), 0) + name
    cells = cell(nk) + cell(sk)
    if self_ri:
        cells += cell(struct.pack("<2sHI", b"ri", 1, ri_off))
    free = 4096 - 0x20 - len(cells)
    cells += struct.pack("<i", free) + b"\0" * (free - 4)
    hbin = struct.pack("<4sII", b"hbin", 0, 4096) + b"\0" * 20 + cells
    base = bytearray(4096)
    struct.pack_into("<4sIIQIIIIIII", base, 0, b"regf", 1, 1, 0, 1, 3, 0, 1, root, 4096, 1)
    c = 0
    for i in range(127):
        c ^= struct.unpack_from("<I", base, i * 4)[0]
    struct.pack_into("<I", base, 508, c)
    open(sys.argv[1], "wb").write(bytes(base) + hbin)
    """#

    /// A .reg file's text (regedit 5.00 format, CRLF) from key sections: each key with its
    /// values already in .reg syntax. Parents are emitted first, as hivexregedit requires.
    public static func reg(_ keys: [(String, [String])]) -> String {
        var out = ["Windows Registry Editor Version 5.00", ""]
        var emitted = Set<String>()
        for (key, values) in keys {
            let parts = key.split(separator: "\\").map(String.init)
            for i in 1..<max(1, parts.count) {
                let parent = "\\" + parts.prefix(i).joined(separator: "\\")
                if emitted.insert(parent.uppercased()).inserted { out += ["[\(parent)]", ""] }
            }
            emitted.insert(("\\" + parts.joined(separator: "\\")).uppercased())
            out += ["[\\\(parts.joined(separator: "\\"))]"] + values + [""]
        }
        return out.joined(separator: "\r\n") + "\r\n"
    }

    /// A REG_SZ as a .reg `hex(1):` value (exact UTF-16LE, whatever the .reg file's encoding).
    public static func sz(_ name: String, _ value: String, type: UInt32 = 1) -> String {
        binary(name, Array((value + "\0").utf16).flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }, type: type)
    }
    public static func dword(_ name: String, _ value: UInt32) -> String { quoted(name) + "=dword:" + String(format: "%08x", value) }
    public static func binary(_ name: String, _ bytes: [UInt8], type: UInt32 = 3) -> String {
        quoted(name) + "=hex(\(String(type, radix: 16))):" + hex(bytes)
    }
    /// A value name as .reg writes it: `@` for the default value, else quoted with `\\` and `\"` escaped.
    static func quoted(_ name: String) -> String {
        name.isEmpty ? "@" : "\"" + name.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined(separator: ",") }
}
