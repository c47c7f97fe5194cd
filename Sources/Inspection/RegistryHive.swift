import GuestFS
import WardenCore

/// A Windows registry hive file (regf), read from hostile bytes: the base block with its
/// checksum, hive bins and cells, key nodes (`nk`), values (`vk`), the subkey lists (`lf`, `lh`,
/// `li`, `ri`) and big-data records (`db`). Read-only; transaction logs are not replayed (a
/// dirty hive says so in ``isDirty``).
///
/// Every cell offset is checked against the hive bins, every length against its cell; subkey
/// lists are walked with a visited set (a list that points back into itself is damage, not a
/// loop); counts and sizes are capped.
public struct RegistryHive: Sendable {
    public enum Limits {
        public static let maxHiveBytes = 1 << 30
        public static let maxSubkeys = 1 << 20
        public static let maxValues = 1 << 16
        public static let maxValueBytes = 16 << 20
        public static let maxListDepth = 8
        public static let maxPathComponents = 512
    }

    public enum ValueType: UInt32, Sendable {
        case none = 0, string = 1, expandString = 2, binary = 3, dword = 4, dwordBigEndian = 5, link = 6
        case multiString = 7, resourceList = 8, fullResourceDescriptor = 9, resourceRequirementsList = 10, qword = 11
    }

    /// A key node.
    public struct Key: Sendable, Equatable {
        public var offset: UInt32
        public var name: String
        /// Last written, seconds since the Unix epoch.
        public var lastWritten: Int64
        public var subkeyCount: Int
        public var valueCount: Int
        var subkeyList: UInt32
        var valueList: UInt32
    }

    /// A value: its name ("" for the default value), type and raw data.
    public struct Value: Sendable, Equatable {
        public var name: String
        public var rawType: UInt32
        public var data: [UInt8]
        public var type: ValueType? { ValueType(rawValue: rawType) }

        /// REG_SZ / REG_EXPAND_SZ (UTF-16LE, up to the first NUL).
        public var string: String? {
            guard rawType == 1 || rawType == 2 || rawType == 6 else { return nil }
            return RegistryHive.utf16String(data)
        }
        /// REG_MULTI_SZ: the strings, up to the empty one that ends the list.
        public var strings: [String]? {
            guard rawType == 7 else { return nil }
            var out: [String] = []
            var units: [UInt16] = []
            var i = 0
            while i + 1 < data.count {
                let u = UInt16(data[i]) | UInt16(data[i + 1]) << 8
                i += 2
                if u == 0 {
                    if units.isEmpty { break }
                    out.append(String(decoding: units, as: UTF16.self)); units = []
                } else { units.append(u) }
            }
            if !units.isEmpty { out.append(String(decoding: units, as: UTF16.self)) }
            return out
        }
        public var dword: UInt32? {
            switch rawType {
            case 4: return data.peekLE(0, as: UInt32.self)
            case 5: return data.count >= 4 ? UInt32(data[0]) << 24 | UInt32(data[1]) << 16 | UInt32(data[2]) << 8 | UInt32(data[3]) : nil
            default: return nil
            }
        }
        public var qword: UInt64? { rawType == 11 ? data.peekLE(0, as: UInt64.self) : nil }
    }

    private let bytes: [UInt8]
    /// The hive bins' extent (offsets are relative to byte 4096).
    private let binsSize: Int
    public let root: Key
    /// The primary and secondary sequence numbers differ: the hive was not closed cleanly and
    /// its transaction logs (`.LOG1`, `.LOG2`) hold changes Warden has not replayed.
    public let isDirty: Bool
    public let lastWritten: Int64
    /// The name recorded in the base block (often the hive's path on its own system).
    public let fileName: String
    public let checksumValid: Bool

    static func corrupt(_ m: String) -> WardenError { WardenError.corrupt("registry hive: " + m) }

    public init(_ bytes: [UInt8]) throws {
        guard bytes.count >= 4096 + 32 else { throw Self.corrupt("\(bytes.count) bytes is too short for a base block and a hive bin") }
        guard bytes.count <= Limits.maxHiveBytes else { throw WardenError.limit("registry hive: \(bytes.count) bytes is larger than \(Limits.maxHiveBytes)") }
        guard Array(bytes[0..<4]) == Array("regf".utf8) else { throw Self.corrupt("no regf signature") }
        self.bytes = bytes
        let primary = try bytes.le(4, UInt32.self), secondary = try bytes.le(8, UInt32.self)
        isDirty = primary != secondary
        lastWritten = Self.unixTime(try bytes.le(12, UInt64.self))
        let major = try bytes.le(20, UInt32.self)
        guard major == 1 else { throw WardenError.unsupported("registry hive: format version \(major)") }
        var sum: UInt32 = 0
        for i in 0..<127 { sum ^= try bytes.le(i * 4, UInt32.self) }
        if sum == 0xFFFF_FFFF { sum = 0xFFFF_FFFE } else if sum == 0 { sum = 1 }
        checksumValid = sum == (try bytes.le(508, UInt32.self))
        let declared = Int(try bytes.le(40, UInt32.self))
        guard declared >= 4096, declared % 4096 == 0, 4096 + declared <= bytes.count else {
            throw Self.corrupt("hive bins of \(declared) bytes in a \(bytes.count)-byte file")
        }
        binsSize = declared
        let nameUnits = stride(from: 48, to: 48 + 64, by: 2).map { UInt16(bytes[$0]) | UInt16(bytes[$0 + 1]) << 8 }
        fileName = String(decoding: nameUnits.prefix { $0 != 0 }, as: UTF16.self)
        let rootOffset = try bytes.le(36, UInt32.self)
        root = try Self.key(bytes: bytes, binsSize: declared, at: rootOffset)
    }

    // MARK: Cells

    /// The data of the allocated cell at `offset` (relative to the hive bins).
    private static func cell(_ bytes: [UInt8], binsSize: Int, _ offset: UInt32, what: String) throws -> ArraySlice<UInt8> {
        let o = Int(offset)
        guard offset != 0xFFFF_FFFF, o % 8 == 0, o + 4 <= binsSize else { throw corrupt("\(what) cell offset 0x\(String(offset, radix: 16)) lies outside the hive bins") }
        let at = 4096 + o
        let raw = Int32(bitPattern: try bytes.le(at, UInt32.self))
        guard raw < 0 else { throw corrupt("\(what) cell at 0x\(String(offset, radix: 16)) is free") }
        let size = Int(-Int64(raw))
        guard size >= 8, o + size <= binsSize else { throw corrupt("\(what) cell at 0x\(String(offset, radix: 16)) of \(size) bytes runs past the hive bins") }
        return bytes[(at + 4)..<(at + size)]
    }

    private func cell(_ offset: UInt32, what: String) throws -> ArraySlice<UInt8> {
        try Self.cell(bytes, binsSize: binsSize, offset, what: what)
    }

    private static func key(bytes: [UInt8], binsSize: Int, at offset: UInt32) throws -> Key {
        let c = try cell(bytes, binsSize: binsSize, offset, what: "key")
        guard c.count >= 76, c[c.startIndex] == 0x6E, c[c.startIndex + 1] == 0x6B else { throw corrupt("cell 0x\(String(offset, radix: 16)) is not a key node") }
        let flags = try c.le(2, UInt16.self)
        let nameLength = Int(try c.le(72, UInt16.self))
        guard 76 + nameLength <= c.count else { throw corrupt("key at 0x\(String(offset, radix: 16)): name of \(nameLength) bytes runs past its cell") }
        let raw = Array(c[(c.startIndex + 76)..<(c.startIndex + 76 + nameLength)])
        let name = flags & 0x20 != 0 ? latin1(raw) : utf16String(raw, stopAtNul: false)
        return Key(offset: offset, name: name, lastWritten: unixTime(try c.le(4, UInt64.self)),
                   subkeyCount: Int(try c.le(20, UInt32.self)), valueCount: Int(try c.le(36, UInt32.self)),
                   subkeyList: try c.le(28, UInt32.self), valueList: try c.le(40, UInt32.self))
    }

    // MARK: Keys

    public func subkeys(_ key: Key) throws -> [Key] {
        guard key.subkeyCount > 0 else { return [] }
        guard key.subkeyCount <= Limits.maxSubkeys else { throw WardenError.limit("registry hive: key \(key.name) claims \(key.subkeyCount) subkeys") }
        var offsets: [UInt32] = []
        var visited = Set<UInt32>()
        try collect(key.subkeyList, depth: 0, into: &offsets, visited: &visited, owner: key)
        var out: [Key] = []
        out.reserveCapacity(offsets.count)
        var seen = Set<UInt32>()
        for o in offsets where seen.insert(o).inserted {
            out.append(try Self.key(bytes: bytes, binsSize: binsSize, at: o))
        }
        return out
    }

    private func collect(_ list: UInt32, depth: Int, into out: inout [UInt32], visited: inout Set<UInt32>, owner: Key) throws {
        guard depth <= Limits.maxListDepth else { throw Self.corrupt("subkey lists of \(owner.name) nest deeper than \(Limits.maxListDepth)") }
        guard visited.insert(list).inserted else { throw Self.corrupt("subkey list 0x\(String(list, radix: 16)) of \(owner.name) refers to itself") }
        let c = try cell(list, what: "subkey list")
        guard c.count >= 4 else { throw Self.corrupt("subkey list 0x\(String(list, radix: 16)) is empty") }
        let sig = String(decoding: c.prefix(2), as: UTF8.self)
        let count = Int(try c.le(2, UInt16.self))
        let stride: Int
        switch sig {
        case "lf", "lh": stride = 8
        case "li", "ri": stride = 4
        default: throw Self.corrupt("cell 0x\(String(list, radix: 16)) is not a subkey list (\(sig.debugDescription))")
        }
        guard 4 + count * stride <= c.count else { throw Self.corrupt("subkey list 0x\(String(list, radix: 16)) of \(count) entries runs past its cell") }
        for i in 0..<count {
            let o = try c.le(4 + i * stride, UInt32.self)
            if sig == "ri" {
                try collect(o, depth: depth + 1, into: &out, visited: &visited, owner: owner)
            } else {
                guard out.count < Limits.maxSubkeys else { throw WardenError.limit("registry hive: more than \(Limits.maxSubkeys) subkeys under \(owner.name)") }
                out.append(o)
            }
        }
    }

    /// The key at `path` below `from` (the root by default): components separated by `\`,
    /// compared case-insensitively as Windows does; nil when a component does not exist.
    public func key(_ path: String, from: Key? = nil) throws -> Key? {
        var k = from ?? root
        let parts = path.split(separator: "\\").filter { !$0.isEmpty }
        guard parts.count <= Limits.maxPathComponents else { throw WardenError.limit("registry path of \(parts.count) components") }
        for p in parts {
            let want = p.uppercased()
            guard let next = try subkeys(k).first(where: { $0.name.uppercased() == want }) else { return nil }
            k = next
        }
        return k
    }

    // MARK: Values

    public func values(_ key: Key) throws -> [Value] {
        guard key.valueCount > 0 else { return [] }
        guard key.valueCount <= Limits.maxValues else { throw WardenError.limit("registry hive: key \(key.name) claims \(key.valueCount) values") }
        let list = try cell(key.valueList, what: "value list")
        guard key.valueCount * 4 <= list.count else { throw Self.corrupt("value list of \(key.name) holds fewer than \(key.valueCount) entries") }
        return try (0..<key.valueCount).map { try value(at: try list.le($0 * 4, UInt32.self)) }
    }

    public func value(_ key: Key, _ name: String) throws -> Value? {
        let want = name.uppercased()
        return try values(key).first { $0.name.uppercased() == want }
    }

    /// The value `name` of the key at `path`, or nil when either is missing.
    public func value(_ path: String, _ name: String) throws -> Value? {
        guard let k = try key(path) else { return nil }
        return try value(k, name)
    }

    private func value(at offset: UInt32) throws -> Value {
        let c = try cell(offset, what: "value")
        guard c.count >= 20, c[c.startIndex] == 0x76, c[c.startIndex + 1] == 0x6B else { throw Self.corrupt("cell 0x\(String(offset, radix: 16)) is not a value") }
        let nameLength = Int(try c.le(2, UInt16.self))
        let rawSize = try c.le(4, UInt32.self)
        let dataOffset = try c.le(8, UInt32.self)
        let type = try c.le(12, UInt32.self)
        let flags = try c.le(16, UInt16.self)
        guard 20 + nameLength <= c.count else { throw Self.corrupt("value at 0x\(String(offset, radix: 16)): name runs past its cell") }
        let rawName = Array(c[(c.startIndex + 20)..<(c.startIndex + 20 + nameLength)])
        let name = flags & 0x0001 != 0 ? Self.latin1(rawName) : Self.utf16String(rawName, stopAtNul: false)
        let size = Int(rawSize & 0x7FFF_FFFF)
        guard size <= Limits.maxValueBytes else { throw WardenError.limit("registry hive: value \(name) of \(size) bytes") }
        let data: [UInt8]
        if rawSize & 0x8000_0000 != 0 {
            // Stored in the offset field itself.
            guard size <= 4 else { throw Self.corrupt("value \(name): \(size) bytes cannot be stored inline") }
            data = Array(c[(c.startIndex + 8)..<(c.startIndex + 8 + size)])
        } else if size == 0 {
            data = []
        } else {
            let d = try cell(dataOffset, what: "value data")
            if size > 16344, d.count >= 8, d[d.startIndex] == 0x64, d[d.startIndex + 1] == 0x62 {
                data = try bigData(d, size: size, name: name)
            } else {
                guard size <= d.count else { throw Self.corrupt("value \(name): \(size) bytes of data in a \(d.count)-byte cell") }
                data = Array(d.prefix(size))
            }
        }
        return Value(name: name, rawType: type, data: data)
    }

    /// Big data (`db`): a list of segments of at most 16344 bytes each.
    private func bigData(_ db: ArraySlice<UInt8>, size: Int, name: String) throws -> [UInt8] {
        let count = Int(try db.le(2, UInt16.self))
        let listOffset = try db.le(4, UInt32.self)
        guard count >= 1, count * 16344 >= size else { throw Self.corrupt("value \(name): \(count) big-data segments for \(size) bytes") }
        let list = try cell(listOffset, what: "big-data list")
        guard count * 4 <= list.count else { throw Self.corrupt("value \(name): big-data list of \(count) entries runs past its cell") }
        var out: [UInt8] = []
        out.reserveCapacity(size)
        for i in 0..<count where out.count < size {
            let seg = try cell(try list.le(i * 4, UInt32.self), what: "big-data segment")
            out += seg.prefix(min(16344, size - out.count))
        }
        guard out.count == size else { throw Self.corrupt("value \(name): big data holds \(out.count) of \(size) bytes") }
        return out
    }

    // MARK: Text

    static func latin1(_ b: [UInt8]) -> String { String(b.map { Character(Unicode.Scalar($0)) }) }

    static func utf16String(_ b: [UInt8], stopAtNul: Bool = true) -> String {
        var units: [UInt16] = []
        var i = 0
        while i + 1 < b.count {
            let u = UInt16(b[i]) | UInt16(b[i + 1]) << 8
            if u == 0 && stopAtNul { break }
            units.append(u)
            i += 2
        }
        return String(decoding: units, as: UTF16.self)
    }

    /// FILETIME to Unix seconds (0 stays 0: "never written").
    static func unixTime(_ ft: UInt64) -> Int64 { ft == 0 ? 0 : NTFS.unixTime(ft) }
}
