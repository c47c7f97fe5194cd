/// A small, bounded, non-validating, streaming XML reader for hostile documents: libvirt's
/// domain XML and OVF descriptors.
///
/// It checks well-formedness as far as Warden relies on it: one root element, every start tag
/// closed by an end tag of the same name, quoted attribute values without `<`, no duplicate
/// attributes, at most ``maxDepth`` levels, at most ``maxAttributes`` attributes per element,
/// names of at most ``maxNameLength`` bytes, valid UTF-8 in names, values and text. A DOCTYPE
/// is refused (libvirt and OVF tools never need one, and it is where entity expansion attacks live); the
/// only references understood are `&lt; &gt; &amp; &apos; &quot;` and `&#…;`/`&#x…;`.
/// Comments, processing instructions and CDATA sections are handled. Every failure is a
/// ``Failure`` naming the byte offset; nothing traps.
public struct XMLStreamReader {
    public struct Failure: Error, Sendable {
        public var message: String
        public init(_ message: String) { self.message = message }
    }

    public protocol Handler {
        mutating func start(_ element: String, attributes: [(String, String)]) throws
        mutating func characters(_ s: String) throws
        mutating func end(_ element: String) throws
        /// Whether text at the current position is wanted (text elsewhere is checked, not decoded).
        var collectsText: Bool { get }
    }

    static let maxDepth = 64
    static let maxAttributes = 256
    static let maxNameLength = 256

    let b: UnsafeBufferPointer<UInt8>
    var i = 0

    public init(_ bytes: UnsafeBufferPointer<UInt8>) { b = bytes }

    func fail(_ what: String) -> Failure { Failure("\(what) at byte \(i)") }

    func peek(_ s: StaticString) -> Bool {
        let n = s.utf8CodeUnitCount
        guard b.count - i >= n else { return false }
        let p = s.utf8Start
        for k in 0..<n where b[i + k] != p[k] { return false }
        return true
    }

    static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D }

    static func isNameByte(_ c: UInt8, first: Bool) -> Bool {
        switch c {
        case 0x41...0x5A, 0x61...0x7A, 0x5F, 0x3A: return true       // A-Z a-z _ :
        case 0x30...0x39, 0x2D, 0x2E: return !first                  // 0-9 - .
        case 0x80...0xFF: return true                                // non-ASCII name characters (validated as UTF-8)
        default: return false
        }
    }

    mutating func skipSpace() { while i < b.count, Self.isSpace(b[i]) { i += 1 } }

    /// Advances past the next occurrence of `terminator`; returns the range before it.
    mutating func until(_ terminator: StaticString, what: String) throws -> Range<Int> {
        let start = i
        while i < b.count {
            if peek(terminator) { let r = start..<i; i += terminator.utf8CodeUnitCount; return r }
            i += 1
        }
        throw Failure("unterminated \(what) starting at byte \(start)")
    }

    func string(_ r: Range<Int>, what: String) throws -> String {
        guard let s = String(validating: UnsafeBufferPointer(rebasing: b[r]), as: UTF8.self) else {
            throw Failure("\(what) at byte \(r.lowerBound) is not valid UTF-8")
        }
        return s
    }

    mutating func name() throws -> String {
        let start = i
        guard i < b.count, Self.isNameByte(b[i], first: true) else { throw fail("expected a name") }
        while i < b.count, Self.isNameByte(b[i], first: false) {
            i += 1
            guard i - start <= Self.maxNameLength else { throw Failure("a name longer than \(Self.maxNameLength) bytes at byte \(start)") }
        }
        return try string(start..<i, what: "a name")
    }

    /// Decodes text or an attribute value: references resolved, and (for attributes) literal
    /// tab, newline and carriage return normalised to spaces, as XML prescribes.
    func decode(_ r: Range<Int>, attribute: Bool) throws -> String {
        var out: [UInt8] = []
        out.reserveCapacity(r.count)
        var k = r.lowerBound
        while k < r.upperBound {
            let c = b[k]
            if c == 0x26 {                                                   // &
                var e = k + 1
                while e < r.upperBound, b[e] != 0x3B, e - k <= 12 { e += 1 }
                guard e < r.upperBound, b[e] == 0x3B else { throw Failure("an unterminated reference at byte \(k)") }
                let ref = Array(b[(k + 1)..<e])
                switch ref {
                case Array("lt".utf8): out.append(0x3C)
                case Array("gt".utf8): out.append(0x3E)
                case Array("amp".utf8): out.append(0x26)
                case Array("apos".utf8): out.append(0x27)
                case Array("quot".utf8): out.append(0x22)
                default:
                    guard ref.first == 0x23 else { throw Failure("an undefined entity reference at byte \(k)") }
                    let hex = ref.count > 1 && (ref[1] == 0x78)
                    let digits = ref.dropFirst(hex ? 2 : 1)
                    guard !digits.isEmpty, let text = String(validating: digits, as: UTF8.self),
                          let v = UInt32(text, radix: hex ? 16 : 10), v != 0, let scalar = Unicode.Scalar(v) else {
                        throw Failure("a malformed character reference at byte \(k)")
                    }
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                }
                k = e + 1
            } else if c == 0x3C {
                throw Failure("'<' inside \(attribute ? "an attribute value" : "text") at byte \(k)")
            } else {
                out.append(attribute && (c == 0x09 || c == 0x0A || c == 0x0D) ? 0x20 : c)
                k += 1
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw Failure("text at byte \(r.lowerBound) is not valid UTF-8") }
        return s
    }

    /// Comments, processing instructions and whitespace, allowed before and after the root.
    mutating func skipMisc() throws {
        while true {
            skipSpace()
            if peek("<!--") { i += 4; _ = try until("-->", what: "comment") }
            else if peek("<?") { i += 2; _ = try until("?>", what: "processing instruction") }
            else { return }
        }
    }

    public mutating func read<H: Handler>(into handler: inout H) throws {
        if b.count >= 3, b[0] == 0xEF, b[1] == 0xBB, b[2] == 0xBF { i = 3 }  // UTF-8 byte order mark
        try skipMisc()
        if peek("<!DOCTYPE") || peek("<!doctype") { throw fail("a DOCTYPE (not allowed: no entity is ever expanded)") }
        guard i < b.count else { throw Failure(b.isEmpty ? "empty document" : "no root element") }
        guard b[i] == 0x3C else { throw fail("text before the root element") }
        var stack: [String] = []
        repeat {
            if peek("<!--") {
                i += 4; _ = try until("-->", what: "comment")
            } else if peek("<![CDATA[") {
                i += 9
                let r = try until("]]>", what: "CDATA section")
                if handler.collectsText { try handler.characters(string(r, what: "CDATA text")) }
                else { _ = try string(r, what: "CDATA text") }
            } else if peek("<!") {
                throw fail("a markup declaration inside the document")
            } else if peek("<?") {
                i += 2; _ = try until("?>", what: "processing instruction")
            } else if peek("</") {
                i += 2
                let n = try name()
                skipSpace()
                guard i < b.count, b[i] == 0x3E else { throw fail("a malformed end tag </\(n)") }
                i += 1
                guard let open = stack.last else { throw fail("an end tag </\(n)> without a start tag") }
                guard open == n else { throw fail("</\(n)> closes <\(open)>") }
                stack.removeLast()
                try handler.end(n)
            } else if i < b.count, b[i] == 0x3C {
                i += 1
                let n = try name()
                var attributes: [(String, String)] = []
                var selfClosing = false
                while true {
                    let hadSpace = i < b.count && Self.isSpace(b[i])
                    skipSpace()
                    guard i < b.count else { throw Failure("an unterminated start tag <\(n)") }
                    if b[i] == 0x3E { i += 1; break }
                    if peek("/>") { i += 2; selfClosing = true; break }
                    guard hadSpace else { throw fail("a malformed start tag <\(n)") }
                    let an = try name()
                    skipSpace()
                    guard i < b.count, b[i] == 0x3D else { throw fail("attribute \(an) without a value") }
                    i += 1
                    skipSpace()
                    guard i < b.count, b[i] == 0x22 || b[i] == 0x27 else { throw fail("attribute \(an) without a quoted value") }
                    let quote = b[i]
                    i += 1
                    let start = i
                    while i < b.count, b[i] != quote { i += 1 }
                    guard i < b.count else { throw Failure("an unterminated value of attribute \(an) at byte \(start)") }
                    let value = try decode(start..<i, attribute: true)
                    i += 1
                    guard !attributes.contains(where: { $0.0 == an }) else { throw fail("attribute \(an) given twice") }
                    guard attributes.count < Self.maxAttributes else { throw fail("more than \(Self.maxAttributes) attributes") }
                    attributes.append((an, value))
                }
                guard stack.count < Self.maxDepth else { throw fail("elements nested deeper than \(Self.maxDepth)") }
                stack.append(n)
                try handler.start(n, attributes: attributes)
                if selfClosing { stack.removeLast(); try handler.end(n) }
            } else {
                let start = i
                while i < b.count, b[i] != 0x3C { i += 1 }
                if handler.collectsText { try handler.characters(decode(start..<i, attribute: false)) }
                else { _ = try decode(start..<i, attribute: false) }
            }
            if !stack.isEmpty, i >= b.count { throw Failure("truncated: <\(stack.last!)> is not closed") }
        } while !stack.isEmpty
        try skipMisc()
        guard i == b.count else { throw fail(b[i] == 0x3C ? "a second root element" : "text after the root element") }
    }
}
