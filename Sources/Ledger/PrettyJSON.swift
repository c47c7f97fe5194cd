import Foundation
import WardenCore

/// Pretty, sorted-key JSON written by hand, byte for byte what the CLI's `JSONEncoder`
/// (`.prettyPrinted, .sortedKeys, .withoutEscapingSlashes`, snake_case keys, RFC 3339 times)
/// writes, for answers too large to go through `Encodable` (an exposure of tens of thousands
/// of VMs: JSONEncoder took seconds). Callers must emit keys in sorted order.
///
/// Layout: two spaces per level, `"key" : value`, an empty array as `[` newline newline
/// indent `]`. Strings escape `"`, `\` and control characters (`\n`, `\r`, `\t`, `\b`, `\f`,
/// else `\u00xx`); everything else, `/` included, is raw UTF-8.
///
/// Output is handed to `sink` in chunks of about 64 KiB, so the whole document is never held.
public struct PrettyJSONWriter {
    public private(set) var buffer: [UInt8] = []
    /// One entry per open container: true while it has no element yet.
    private var empty: [Bool] = []
    private let sink: ([UInt8]) throws -> Void
    private let chunk = 1 << 16

    public init(sink: @escaping ([UInt8]) throws -> Void) {
        self.sink = sink
        buffer.reserveCapacity(chunk + 4096)
    }

    /// Hands what is buffered to the sink.
    public mutating func flush() throws {
        guard !buffer.isEmpty else { return }
        try sink(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    private mutating func newline(depth: Int) {
        buffer.append(0x0A)
        for _ in 0..<(depth * 2) { buffer.append(0x20) }
    }

    /// Before a value in an array, or a key in an object.
    private mutating func element() throws {
        guard let last = empty.last else { return }
        if !last { buffer.append(UInt8(ascii: ",")) }
        empty[empty.count - 1] = false
        newline(depth: empty.count)
        if buffer.count >= chunk { try flush() }
    }

    public mutating func endObject() { close(UInt8(ascii: "}")) }
    public mutating func endArray() { close(UInt8(ascii: "]")) }

    private mutating func close(_ c: UInt8) {
        let wasEmpty = empty.removeLast()
        if wasEmpty { buffer.append(0x0A) }
        newline(depth: empty.count)
        buffer.append(c)
    }

    /// `"key" : ` inside an object; the value follows (scalars with the `value` calls, containers
    /// with ``openObject()`` and ``openArray()``).
    public mutating func key(_ k: StaticString) throws {
        try element()
        buffer.append(UInt8(ascii: "\""))
        k.withUTF8Buffer { buffer.append(contentsOf: $0) }
        buffer.append(contentsOf: "\" : ".utf8)
        pendingValue = true
    }

    /// Set after a key: the next value or container opens right after it, not on a new line.
    private var pendingValue = false

    private mutating func valueStart() throws {
        if pendingValue { pendingValue = false } else { try element() }
    }

    public mutating func string(_ s: String) throws {
        try valueStart()
        var s = s
        s.withUTF8 { Self.escape($0, into: &buffer) }
    }

    /// A UUID in lower case, quoted.
    public mutating func uuid(_ u: UUID) throws {
        try valueStart()
        buffer.append(UInt8(ascii: "\""))
        FastUUID.write(u, into: &buffer)
        buffer.append(UInt8(ascii: "\""))
    }

    /// A time as RFC 3339 UTC with microseconds, quoted.
    public mutating func time(_ d: Date) throws {
        try valueStart()
        buffer.append(UInt8(ascii: "\""))
        LedgerEntry.writeTime(LedgerTime.micros(d), into: &buffer)
        buffer.append(UInt8(ascii: "\""))
    }

    public mutating func int(_ v: Int) throws {
        try valueStart()
        LedgerEntry.writeInt(Int64(v), into: &buffer)
    }

    public mutating func null() throws {
        try valueStart()
        buffer.append(contentsOf: "null".utf8)
    }

    public mutating func openObject() throws {
        if pendingValue { pendingValue = false } else { try element() }
        buffer.append(UInt8(ascii: "{")); empty.append(true)
    }

    public mutating func openArray() throws {
        if pendingValue { pendingValue = false } else { try element() }
        buffer.append(UInt8(ascii: "[")); empty.append(true)
    }

    static func escape(_ b: UnsafeBufferPointer<UInt8>, into o: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        o.append(UInt8(ascii: "\""))
        for c in b {
            switch c {
            case UInt8(ascii: "\""): o.append(0x5C); o.append(c)
            case UInt8(ascii: "\\"): o.append(0x5C); o.append(c)
            case 0x0A: o.append(0x5C); o.append(UInt8(ascii: "n"))
            case 0x0D: o.append(0x5C); o.append(UInt8(ascii: "r"))
            case 0x09: o.append(0x5C); o.append(UInt8(ascii: "t"))
            case 0x08: o.append(0x5C); o.append(UInt8(ascii: "b"))
            case 0x0C: o.append(0x5C); o.append(UInt8(ascii: "f"))
            case 0..<0x20:
                o.append(contentsOf: "\\u00".utf8); o.append(hex[Int(c >> 4)]); o.append(hex[Int(c & 0xF)])
            default: o.append(c)
            }
        }
        o.append(UInt8(ascii: "\""))
    }
}

extension ExposureReport {
    /// The report as `warden exposure --json` prints it (docs/json-schemas/exposure.v1.json),
    /// streamed to `sink` in chunks, with a final newline.
    public func writeJSON(to sink: @escaping ([UInt8]) throws -> Void) throws {
        var w = PrettyJSONWriter(sink: sink)
        try w.openObject()
        try w.key("from"); try w.time(from)
        try w.key("host"); try w.string(host.value)
        try w.key("now"); try w.time(now)
        try w.key("schema"); try w.string(schema)
        try w.key("to"); try w.time(to)
        try w.key("vms"); try w.openArray()
        for v in vms {
            try w.openObject()
            try w.key("exposed_since"); try w.time(v.exposedSince)
            try w.key("how"); try w.string(v.how)
            try w.key("inherited_from")
            if let p = v.inheritedFrom { try w.uuid(p.uuid) } else { try w.null() }
            try w.key("name"); try w.string(v.name)
            try w.key("owner"); try w.string(v.owner)
            try w.key("residencies"); try w.openArray()
            for r in v.residencies {
                try w.openObject()
                try w.key("from"); try w.time(r.from)
                try w.key("kind"); try w.string(r.kind.rawValue)
                try w.key("to")
                if let t = r.to { try w.time(t) } else { try w.null() }
                w.endObject()
            }
            w.endArray()
            try w.key("source"); try w.uuid(v.source.uuid)
            try w.key("state"); try w.string(v.state.rawValue)
            try w.key("steps"); try w.int(v.steps)
            try w.key("vm"); try w.uuid(v.vm.uuid)
            w.endObject()
        }
        w.endArray()
        w.endObject()
        try w.flush()
        try sink([0x0A])
    }
}
