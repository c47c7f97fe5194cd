import WardenCore

/// A block device over bytes in memory: for tests, fuzzing, and small embedded images.
public final class MemoryDevice: BlockDevice, @unchecked Sendable {
    public let bytes: [UInt8]
    public var size: UInt64 { UInt64(bytes.count) }

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        let start = Int(offset)
        bytes.withUnsafeBytes { src in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[start..<start + buffer.count]))
        }
    }
}

/// A writable block device over bytes in memory (tests, fuzzing).
public final class MutableMemoryDevice: WritableBlockDevice, @unchecked Sendable {
    public private(set) var bytes: [UInt8]
    public var size: UInt64 { UInt64(bytes.count) }
    /// Number of write calls so far.
    public private(set) var writeCount = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        let start = Int(offset)
        bytes.withUnsafeBytes { src in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[start..<start + buffer.count]))
        }
    }

    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try checkRange(offset, data.count)
        let start = Int(offset)
        bytes.withUnsafeMutableBytes { dst in
            UnsafeMutableRawBufferPointer(rebasing: dst[start..<start + data.count]).copyMemory(from: data)
        }
        writeCount += 1
    }

    public func flush() throws {}
}
