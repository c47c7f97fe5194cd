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

    /// Reads `buffer.count` bytes at `offset`, as a parent disk is read through a child that
    /// may be larger: bytes past this device's end read as zeros.
    func readZeroExtended(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let inside = offset >= size ? 0 : Int(min(UInt64(buffer.count), size - offset))
        if inside > 0 { try read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<inside])) }
        if inside < buffer.count { UnsafeMutableRawBufferPointer(rebasing: buffer[inside...]).initializeMemory(as: UInt8.self, repeating: 0) }
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

/// Splits `count` bytes of a block, starting `within` bytes into it, into runs of whole or
/// partial sectors that share one bit of a sector bitmap (`present(sector)`: the sector's
/// index in the block), and calls `body` with each run (a range of the `count` bytes) and
/// its bit. Differencing disks read set runs from their own file and clear runs from the parent.
func forEachSectorRun(count: Int, within: UInt64, sectorSize: UInt64, present: (UInt64) -> Bool,
                      _ body: (Range<Int>, Bool) throws -> Void) rethrows {
    var i = 0
    while i < count {
        let mine = present((within + UInt64(i)) / sectorSize)
        var j = i
        while j < count {
            let sector = (within + UInt64(j)) / sectorSize
            if present(sector) != mine { break }
            j = min(count, Int((sector + 1) * sectorSize - within))
        }
        try body(i..<j, mine)
        i = j
    }
}
