/// A bounds-checked little/big-endian cursor over a byte array.
///
/// Every read either returns a value or throws ``WardenError`` with code
/// `.corrupt`; nothing here can trap on short or hostile input.
public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    /// The current read position, relative to the start of `bytes`.
    public private(set) var position: Int
    /// A label used in error messages ("qcow2 header", "GPT entry 3").
    public var context: String

    public init(_ bytes: [UInt8], context: String = "structure") {
        self.bytes = bytes
        self.position = 0
        self.context = context
    }

    public init<S: Sequence>(_ bytes: S, context: String = "structure") where S.Element == UInt8 {
        self.init(Array(bytes), context: context)
    }

    public var count: Int { bytes.count }
    public var remaining: Int { bytes.count - position }

    private func need(_ n: Int, at offset: Int) throws {
        guard n >= 0, offset >= 0, offset <= bytes.count, n <= bytes.count - offset else {
            throw WardenError.corrupt("\(context) is truncated: need \(n) bytes at offset \(offset), have \(max(0, bytes.count - max(0, offset)))")
        }
    }

    public mutating func seek(to offset: Int) throws {
        try need(0, at: offset)
        position = offset
    }

    public mutating func skip(_ n: Int) throws {
        try need(n, at: position)
        position += n
    }

    public mutating func readBytes(_ n: Int) throws -> [UInt8] {
        try need(n, at: position)
        defer { position += n }
        return Array(bytes[position..<position + n])
    }

    public mutating func readU8() throws -> UInt8 {
        try need(1, at: position)
        defer { position += 1 }
        return bytes[position]
    }

    public mutating func readLE<T: FixedWidthInteger & UnsignedInteger>(_: T.Type = T.self) throws -> T {
        let v: T = try ByteReader.le(bytes, at: position, context: context)
        position += MemoryLayout<T>.size
        return v
    }

    public mutating func readBE<T: FixedWidthInteger & UnsignedInteger>(_: T.Type = T.self) throws -> T {
        let v: T = try ByteReader.be(bytes, at: position, context: context)
        position += MemoryLayout<T>.size
        return v
    }

    /// Reads a little-endian integer at an absolute offset without moving the cursor.
    public func le<T: FixedWidthInteger & UnsignedInteger>(at offset: Int, _: T.Type = T.self) throws -> T {
        try ByteReader.le(bytes, at: offset, context: context)
    }

    /// Reads a big-endian integer at an absolute offset without moving the cursor.
    public func be<T: FixedWidthInteger & UnsignedInteger>(at offset: Int, _: T.Type = T.self) throws -> T {
        try ByteReader.be(bytes, at: offset, context: context)
    }

    public func slice(_ offset: Int, _ n: Int) throws -> ArraySlice<UInt8> {
        try need(n, at: offset)
        return bytes[offset..<offset + n]
    }

    // MARK: Static helpers over any random-access byte collection

    // Inlinable: every reader in other modules calls these per field, and unspecialised
    // generic code across modules was a tenth of inspect's time on a real guest.
    @inlinable
    public static func le<T: FixedWidthInteger & UnsignedInteger, C: RandomAccessCollection>(
        _ bytes: C, at offset: Int, context: String = "structure"
    ) throws -> T where C.Element == UInt8, C.Index == Int {
        let n = MemoryLayout<T>.size
        let start = bytes.startIndex
        guard offset >= 0, offset <= bytes.count, n <= bytes.count - offset else {
            throw WardenError.corrupt("\(context) is truncated: need \(n) bytes at offset \(offset)")
        }
        var v: T = 0
        for i in 0..<n { v |= T(bytes[start + offset + i]) << (8 * i) }
        return v
    }

    @inlinable
    public static func be<T: FixedWidthInteger & UnsignedInteger, C: RandomAccessCollection>(
        _ bytes: C, at offset: Int, context: String = "structure"
    ) throws -> T where C.Element == UInt8, C.Index == Int {
        let n = MemoryLayout<T>.size
        let start = bytes.startIndex
        guard offset >= 0, offset <= bytes.count, n <= bytes.count - offset else {
            throw WardenError.corrupt("\(context) is truncated: need \(n) bytes at offset \(offset)")
        }
        var v: T = 0
        for i in 0..<n { v = (v << 8) | T(bytes[start + offset + i]) }
        return v
    }
}

extension Array where Element == UInt8 {
    /// Little-endian read at `offset`; throws on short input.
    @inlinable
    public func le<T: FixedWidthInteger & UnsignedInteger>(_ offset: Int, _: T.Type = T.self) throws -> T {
        try ByteReader.le(self, at: offset)
    }
    /// Big-endian read at `offset`; throws on short input.
    @inlinable
    public func be<T: FixedWidthInteger & UnsignedInteger>(_ offset: Int, _: T.Type = T.self) throws -> T {
        try ByteReader.be(self, at: offset)
    }
}

extension Array where Element == UInt8 {
    /// Little-endian value at `offset`, or nil when the array is too short: a non-throwing
    /// probe (like swift-nio's `getInteger(at:)`) for optional fields and magic checks.
    @inlinable
    public func peekLE<T: FixedWidthInteger & UnsignedInteger>(_ offset: Int, as _: T.Type = T.self) -> T? {
        try? ByteReader.le(self, at: offset)
    }
}

extension ArraySlice where Element == UInt8 {
    /// Little-endian value at `offset` relative to the slice start, or nil when too short.
    @inlinable
    public func peekLE<T: FixedWidthInteger & UnsignedInteger>(_ offset: Int, as _: T.Type = T.self) -> T? {
        try? ByteReader.le(self, at: offset)
    }

    /// Little-endian read at `offset` relative to the slice start; throws on short input.
    @inlinable
    public func le<T: FixedWidthInteger & UnsignedInteger>(_ offset: Int, _: T.Type = T.self) throws -> T {
        try ByteReader.le(self, at: offset)
    }
}
