import WardenCore

/// A read-only, random-access view of a guest-visible virtual disk.
///
/// Implementations (raw files, qcow2, VMDK, slices of other devices) must
/// throw ``WardenError`` rather than trap on any input, and must never read
/// beyond `size`: a read that crosses the end throws `.invalidArgument`.
public protocol BlockDevice: AnyObject, Sendable {
    /// The guest-visible size in bytes.
    var size: UInt64 { get }
    /// Fills `buffer` with the bytes at `offset ..< offset + buffer.count`.
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    /// Describes how the bytes in `offset ..< offset+length` are stored, in
    /// order, so copiers can skip holes. Default: one `.data` extent.
    func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent]
}

/// A block device that can also be written: a raw file opened read-write, a
/// writable qcow2 overlay (``QCOW2Overlay``), a slice of either, or memory.
///
/// A write never changes `size` and never reaches a backing file. A write that
/// crosses the end throws `.invalidArgument`. ``flush()`` makes every write so
/// far durable. Writers are single-threaded: one writer, no concurrent reads
/// during a write.
public protocol WritableBlockDevice: BlockDevice {
    /// Writes `bytes` at `offset ..< offset + bytes.count`.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Makes every completed write durable (fsync).
    func flush() throws
}

extension WritableBlockDevice {
    /// Writes `bytes` at `offset`.
    public func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }
}

/// How a run of guest bytes is stored.
public struct BlockExtent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Reads as zeros and takes no space (unallocated, zero cluster, sparse hole).
        case zero
        /// Holds data (which may still happen to be zeros).
        case data
    }
    public var offset: UInt64
    public var length: UInt64
    public var kind: Kind
    public init(offset: UInt64, length: UInt64, kind: Kind) {
        self.offset = offset
        self.length = length
        self.kind = kind
    }
}

extension BlockDevice {
    public func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
        [BlockExtent(offset: offset, length: length, kind: .data)]
    }

    /// Reads `count` bytes at `offset` into a new array.
    public func read(at offset: UInt64, count: Int) throws -> [UInt8] {
        guard count >= 0 else { throw WardenError(.invalidArgument, "negative read length") }
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(at: offset, into: $0) }
        return out
    }

    /// Throws unless `offset ..< offset+count` lies inside the device.
    public func checkRange(_ offset: UInt64, _ count: Int) throws {
        let (end, o) = offset.addingReportingOverflow(UInt64(count))
        guard !o, end <= size else {
            throw WardenError(.invalidArgument, "read of \(count) bytes at \(hex(offset)) is beyond the end of the \(size)-byte device")
        }
    }
}

extension Array where Element == BlockExtent {
    /// Appends `x`, extending the last extent instead when `x` continues it with the same kind;
    /// empty extents are dropped. Every `mapping` builds its answer with this.
    public mutating func appendMerging(_ x: BlockExtent) {
        guard x.length > 0 else { return }
        if let last = self.last, last.kind == x.kind, last.offset + last.length == x.offset {
            self[count - 1].length += x.length
        } else {
            append(x)
        }
    }
}
