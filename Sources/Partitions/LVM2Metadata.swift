import WardenCore

extension LVM2 {
    /// A value in LVM2's text metadata: `key = value` assignments and `name { ... }` sections.
    public indirect enum Value: Sendable, Equatable {
        case string(String)
        case integer(Int64)
        case array([Value])
        case section(Section)

        public var string: String? { if case .string(let s) = self { return s }; return nil }
        public var integer: Int64? { if case .integer(let i) = self { return i }; return nil }
        public var array: [Value]? { if case .array(let a) = self { return a }; return nil }
        public var section: Section? { if case .section(let s) = self { return s }; return nil }
    }

    /// An ordered list of named values (a section body, or the whole file).
    public struct Section: Sendable, Equatable {
        public var items: [(name: String, value: Value)]
        public init(items: [(name: String, value: Value)] = []) { self.items = items }

        public subscript(_ name: String) -> Value? { items.first { $0.name == name }?.value }
        /// The sub-sections, in order.
        public var sections: [(name: String, section: Section)] {
            items.compactMap { i in i.value.section.map { (i.name, $0) } }
        }

        public static func == (a: Section, b: Section) -> Bool {
            a.items.count == b.items.count && zip(a.items, b.items).allSatisfy { $0.name == $1.name && $0.value == $1.value }
        }
    }

    /// Caps for the metadata parser.
    public enum MetadataLimits {
        public static let maxTextBytes = 4 << 20
        public static let maxDepth = 32
        public static let maxItems = 200_000
        public static let maxArrayElements = 65536
    }

    /// Parses LVM2 text metadata. Hostile-input safe: depth, size and counts are capped and
    /// every error is a one-line ``WardenError``.
    public static func parseMetadata(_ text: [UInt8]) throws -> Section {
        guard text.count <= MetadataLimits.maxTextBytes else {
            throw WardenError.limit("lvm2: metadata text of \(text.count) bytes exceeds the \(MetadataLimits.maxTextBytes)-byte limit")
        }
        var p = MetadataParser(bytes: text)
        let s = try p.parseBody(depth: 0, closing: false)
        return s
    }
}

struct MetadataParser {
    let bytes: [UInt8]
    var pos = 0
    var items = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    func fail(_ what: String) -> WardenError {
        var line = 1
        for b in bytes[0..<min(pos, bytes.count)] where b == 0x0A { line += 1 }
        return WardenError.corrupt("lvm2: metadata line \(line): \(what)")
    }

    mutating func skipSpace() {
        while pos < bytes.count {
            let c = bytes[pos]
            if c == 0x23 { // '#' comment to end of line
                while pos < bytes.count, bytes[pos] != 0x0A { pos += 1 }
            } else if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D || c == 0 {
                pos += 1
            } else {
                return
            }
        }
    }

    static func isIdent(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
            || c == 0x5F || c == 0x2D || c == 0x2E || c == 0x2B || c == 0x2F
    }

    mutating func identifier() throws -> String {
        let start = pos
        while pos < bytes.count, MetadataParser.isIdent(bytes[pos]) { pos += 1 }
        guard pos > start else {
            throw fail("expected a name, found \(pos < bytes.count ? "byte \(hex(bytes[pos]))" : "end of text")")
        }
        return String(decoding: bytes[start..<pos], as: UTF8.self)
    }

    mutating func countItem() throws {
        items += 1
        guard items <= LVM2.MetadataLimits.maxItems else {
            throw WardenError.limit("lvm2: metadata has more than \(LVM2.MetadataLimits.maxItems) items")
        }
    }

    /// Parses `name = value` and `name { ... }` items until `}` (if `closing`) or the end.
    mutating func parseBody(depth: Int, closing: Bool) throws -> LVM2.Section {
        guard depth <= LVM2.MetadataLimits.maxDepth else {
            throw WardenError.limit("lvm2: metadata nests deeper than \(LVM2.MetadataLimits.maxDepth) sections")
        }
        var section = LVM2.Section()
        while true {
            skipSpace()
            if pos >= bytes.count {
                if closing { throw fail("unexpected end of text: missing '}'") }
                return section
            }
            if bytes[pos] == 0x7D { // '}'
                guard closing else { throw fail("unbalanced '}'") }
                pos += 1
                return section
            }
            let name = try identifier()
            try countItem()
            skipSpace()
            guard pos < bytes.count else { throw fail("unexpected end of text after \"\(name.prefix(64))\"") }
            if bytes[pos] == 0x7B { // '{'
                pos += 1
                section.items.append((name, .section(try parseBody(depth: depth + 1, closing: true))))
            } else if bytes[pos] == 0x3D { // '='
                pos += 1
                skipSpace()
                section.items.append((name, try value(depth: depth + 1)))
            } else {
                throw fail("expected '=' or '{' after \"\(name.prefix(64))\"")
            }
        }
    }

    mutating func value(depth: Int) throws -> LVM2.Value {
        guard depth <= LVM2.MetadataLimits.maxDepth else {
            throw WardenError.limit("lvm2: metadata nests deeper than \(LVM2.MetadataLimits.maxDepth) levels")
        }
        guard pos < bytes.count else { throw fail("unexpected end of text: missing value") }
        let c = bytes[pos]
        if c == 0x22 { return .string(try string()) }
        if c == 0x5B { // '['
            pos += 1
            var elements: [LVM2.Value] = []
            while true {
                skipSpace()
                guard pos < bytes.count else { throw fail("unexpected end of text: missing ']'") }
                if bytes[pos] == 0x5D { pos += 1; return .array(elements) }
                if !elements.isEmpty {
                    guard bytes[pos] == 0x2C else { throw fail("expected ',' or ']' in array") }
                    pos += 1
                    skipSpace()
                }
                guard elements.count < LVM2.MetadataLimits.maxArrayElements else {
                    throw WardenError.limit("lvm2: metadata array has more than \(LVM2.MetadataLimits.maxArrayElements) elements")
                }
                try countItem()
                elements.append(try value(depth: depth + 1))
            }
        }
        if c == 0x2D || (c >= 0x30 && c <= 0x39) { return .integer(try integer()) }
        throw fail("unexpected byte \(hex(c)) where a value should start")
    }

    mutating func string() throws -> String {
        pos += 1 // opening quote
        var out: [UInt8] = []
        while true {
            guard pos < bytes.count else { throw fail("unterminated string") }
            let c = bytes[pos]
            pos += 1
            if c == 0x22 { return String(decoding: out, as: UTF8.self) }
            if c == 0x5C { // backslash escapes the next byte
                guard pos < bytes.count else { throw fail("unterminated string") }
                out.append(bytes[pos])
                pos += 1
            } else {
                out.append(c)
            }
        }
    }

    mutating func integer() throws -> Int64 {
        var negative = false
        if bytes[pos] == 0x2D { negative = true; pos += 1 }
        var v: Int64 = 0
        var digits = 0
        while pos < bytes.count, bytes[pos] >= 0x30, bytes[pos] <= 0x39 {
            let d = Int64(bytes[pos] - 0x30)
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(negative ? -d : d)
            guard !o1, !o2 else { throw fail("integer does not fit in 64 bits") }
            v = a
            digits += 1
            pos += 1
        }
        guard digits > 0 else { throw fail("'-' without digits") }
        if pos < bytes.count, bytes[pos] == 0x2E { throw fail("floating-point values are not supported") }
        return v
    }
}
