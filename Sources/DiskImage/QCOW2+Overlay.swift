#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WardenCore

// Writing a qcow2 image (see docs/write-path.md).
//
//   host file, as an overlay grows (everything new is appended, cluster aligned)
//   +--------+----------+-----------------+------------------+--------------------------
//   | header | L1 table | refcount table  | refcount block 0 | data, L2 tables, more refcount
//   | ext.   |          | (grows: moved   |                  | blocks, a moved refcount table,
//   | name   |          |  to the end)    |                  | in allocation order ...
//   +--------+----------+-----------------+------------------+--------------------------
//
//   Write order for one guest cluster that needs a new host cluster:
//     1. allocate at the end: ftruncate, refcount entries = 1 (new refcount blocks are
//        written before the refcount table entry naming them; a grown refcount table
//        is written before the header names it, and the old one is freed afterwards)
//     2. the data cluster (copy-on-write: the old guest bytes merged with the new ones)
//     3. barrier (fdatasync)
//     4. the L2 entry (or a new L2 table, barrier, then the L1 entry)
//     5. release what the entry used to point at (a compressed cluster): refcount - 1
//   An interruption between any two steps leaves clusters whose refcount is higher than
//   their references (leaks), never a reference to a cluster whose refcount is 0 or
//   whose data is not yet written.

/// A qcow2 image opened for writing: the overlay a clone writes into.
///
/// Writes allocate clusters at the end of the file, update L2 and L1 tables and
/// the refcounts (growing refcount blocks and the refcount table as needed),
/// and copy partial clusters from the backing chain, which is opened read-only
/// and never written. Reads go through the ``QCOW2/Device`` reader.
///
/// Refused (typed error, nothing written): images marked corrupt or dirty, images
/// with internal snapshots (clusters shared between snapshots), extended L2
/// entries, refcount widths under 8 bits, and anything the reader refuses.
///
/// Not thread-safe: one writer, and no reads concurrent with a write.
public final class QCOW2Overlay: WritableBlockDevice, @unchecked Sendable {
    /// How writes are ordered against power loss.
    public enum Durability: Sendable {
        /// `fdatasync` between data and the metadata that points at it (default).
        case barriers
        /// Program order only: safe against the process being killed, not against power loss.
        case processCrashOnly
    }

    public let path: String
    public let size: UInt64
    /// The chain as opened: this image first, then its backing files.
    public let chain: [ImageInfo]
    public var durability: Durability

    let file: ImageFile
    let reader: QCOW2.Device
    let header: QCOW2.Header
    let cs: UInt64
    let clusterBits: Int
    let l2Bits: Int
    /// Bits per refcount entry (8, 16, 32 or 64).
    let refBits: Int
    /// Clusters described by one refcount block.
    let refsPerBlock: UInt64
    var refTableOffset: UInt64
    var refTable: [UInt64]
    var refBlocks: [UInt64: [UInt8]] = [:]
    var fileEnd: UInt64
    var prepared = false
    /// Host clusters allocated by this object so far (for tests and statistics).
    public private(set) var clustersAllocated: UInt64 = 0

    static let copied: UInt64 = 1 << 63
    static let compressedBit: UInt64 = 1 << 62
    /// The largest refcount table accepted (8 MiB: a million refcount blocks).
    static let maxRefTableBytes: UInt64 = 8 << 20

    /// Opens the qcow2 image at `path` for writing. Its backing chain opens read-only.
    public static func open(_ path: String, options: OpenOptions = OpenOptions(),
                            durability: Durability = .barriers) throws -> QCOW2Overlay {
        do {
            return try QCOW2Overlay(path: path, options: options, durability: durability)
        } catch let e as WardenError {
            throw e.inFile(path)
        }
    }

    private init(path: String, options: OpenOptions, durability: Durability) throws {
        guard options.snapshot == nil else {
            throw WardenError(.invalidArgument, "an internal snapshot cannot be opened for writing")
        }
        let file = try ImageFile(path: path, writable: true)
        try file.refuseIfInUse()
        guard try ImageOpener.detect(file) == .qcow2 else {
            throw WardenError(.invalidArgument, "not a qcow2 image", file: path)
        }
        let header = try QCOW2.Header.parse(file)
        if header.encryption != nil {
            throw WardenError.unsupported("encrypted qcow2 images are not written by Warden", file: path)
        }
        if header.incompatibleFeatures & QCOW2.Incompatible.corrupt != 0 {
            throw WardenError.corrupt("the image is marked corrupt; refusing to write (repair it with qemu-img check -r all)", file: path)
        }
        if header.incompatibleFeatures & QCOW2.Incompatible.dirty != 0 {
            throw WardenError.unsupported("the image is marked dirty (lazy refcounts not yet repaired); refusing to write (run qemu-img check -r all)", file: path)
        }
        if header.extendedL2 {
            throw WardenError.unsupported("writing images with extended L2 entries (subclusters) is not supported", file: path)
        }
        if header.snapshotCount != 0 {
            throw WardenError.unsupported("the image has \(header.snapshotCount) internal snapshot(s) sharing clusters; writing such images is not supported", file: path)
        }
        guard header.refcountOrder >= 3 else {
            throw WardenError.unsupported("refcount width of \(1 << header.refcountOrder) bits is not supported for writing (8 to 64 bits are)", file: path)
        }
        let raw = try file.read(at: 48, count: 12, what: "qcow2 header")
        let rtOffset: UInt64 = try ByteReader.be(raw, at: 0)
        let rtClusters: UInt32 = try ByteReader.be(raw, at: 8)
        let cs = UInt64(header.clusterSize)
        guard rtOffset != 0, rtOffset & (cs - 1) == 0 else {
            throw WardenError.corrupt("refcount table offset \(hex(rtOffset)) is zero or not cluster aligned", file: path)
        }
        let rtBytes = UInt64(rtClusters) * cs
        guard rtClusters >= 1, rtBytes <= Self.maxRefTableBytes else {
            throw WardenError.limit("refcount table of \(rtClusters) clusters is outside 1 cluster ... \(Self.maxRefTableBytes >> 20) MiB", file: path)
        }
        let (rtEnd, o) = rtOffset.addingReportingOverflow(rtBytes)
        guard !o, rtEnd <= file.length else {
            throw WardenError.corrupt("refcount table at offset \(hex(rtOffset)) lies beyond the end of the file", file: path, offset: rtOffset)
        }
        var table = [UInt64](repeating: 0, count: Int(rtBytes / 8))
        try table.withUnsafeMutableBytes { try file.read(at: rtOffset, into: $0) }
        for i in table.indices {
            let e = UInt64(bigEndian: table[i])
            guard e & 0x1ff == 0 else {
                throw WardenError.corrupt("refcount table entry \(i) has reserved bits set (\(hex(e)))", file: path, offset: rtOffset + UInt64(i) * 8)
            }
            guard e & (cs - 1) == 0 else {
                throw WardenError.corrupt("refcount table entry \(i) points at unaligned offset \(hex(e))", file: path, offset: rtOffset + UInt64(i) * 8)
            }
            table[i] = e
        }

        // Open the image (and its chain, read-only) through the reader.
        let ctx = ChainContext(options: OpenOptions(format: .qcow2, snapshot: nil, maxBackingDepth: options.maxBackingDepth,
                                                    probeBacking: options.probeBacking),
                               depth: 0, visited: [file.identity], topPath: path)
        let opened = try QCOW2.open(file: file, context: ctx)
        guard let reader = opened.device as? QCOW2.Device else {
            throw WardenError(.internal, "qcow2 reader returned an unexpected device", file: path)
        }
        self.path = path
        self.file = file
        self.reader = reader
        self.header = header
        self.size = reader.size
        self.chain = opened.chain
        self.durability = durability
        self.cs = cs
        self.clusterBits = header.clusterBits
        self.l2Bits = header.l2Entries.trailingZeroBitCount
        self.refBits = 1 << Int(header.refcountOrder)
        self.refsPerBlock = cs * 8 / UInt64(1 << Int(header.refcountOrder))
        self.refTableOffset = rtOffset
        self.refTable = table
        self.fileEnd = (file.length + cs - 1) & ~(cs - 1)
    }

    // MARK: BlockDevice

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try reader.read(at: offset, into: buffer)
    }

    public func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
        try reader.mapping(at: offset, length: length)
    }

    // MARK: WritableBlockDevice

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        do {
            try checkRange(offset, bytes.count)
            try prepareForWrite()
            var done = 0
            while done < bytes.count {
                let pos = offset + UInt64(done)
                let inCluster = Int(pos & (cs - 1))
                let len = min(Int(cs) - inCluster, bytes.count - done)
                try writeCluster(guest: pos - UInt64(inCluster), inCluster: inCluster,
                                 UnsafeRawBufferPointer(rebasing: bytes[done..<(done + len)]))
                done += len
            }
        } catch let e as WardenError {
            throw e.inFile(path)
        }
    }

    public func flush() throws { try file.sync() }

    /// Writes whole clusters that have no host cluster yet (a fresh image being filled, as a
    /// pull does) in runs: one allocation, one data write and one L2 update per run of
    /// consecutive clusters within an L2 table, instead of one of each per cluster. Anything
    /// else — an unaligned piece, a cluster already allocated, compressed or zero-flagged, a
    /// shared L2 table — goes through ``write(_:at:)``. Same ordering: data, barrier, then the
    /// metadata that points at it.
    public func writeFresh(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        do {
            try checkRange(offset, bytes.count)
            guard offset & (cs - 1) == 0 else { return try write(bytes, at: offset) }
            try prepareForWrite()
            let whole = bytes.count / Int(cs) * Int(cs)
            var done = 0
            while done < whole {
                let guest = offset + UInt64(done)
                let clusterIndex = guest >> UInt64(clusterBits)
                let l1Index = Int(clusterIndex >> UInt64(l2Bits))
                let l2Index = Int(clusterIndex & ((1 << UInt64(l2Bits)) - 1))
                let run = min((1 << l2Bits) - l2Index, (whole - done) / Int(cs))
                let piece = UnsafeRawBufferPointer(rebasing: bytes[done..<(done + run * Int(cs))])
                guard l1Index < reader.l1.count else { throw WardenError(.internal, "guest offset \(hex(guest)) has no L1 entry") }
                let l1e = reader.l1[l1Index]
                let l2Off = l1e & QCOW2.offsetMask
                var table: [UInt64]? = nil
                if l2Off != 0 {
                    guard l1e & Self.copied != 0 else {
                        try write(piece, at: guest); done += piece.count; continue
                    }
                    table = try reader.l2Table(at: l2Off, l1Index: l1Index)
                    if table![l2Index..<(l2Index + run)].contains(where: { $0 != 0 }) {
                        try write(piece, at: guest); done += piece.count; continue
                    }
                }
                let host = try allocate(run)
                try file.write(piece, at: host)
                try barrier()
                if var t = table {
                    for k in 0..<run { t[l2Index + k] = (host + UInt64(k) * cs) | Self.copied }
                    try file.write(Self.bigEndianBytes(Array(t[l2Index..<(l2Index + run)])), at: l2Off + UInt64(l2Index) * 8)
                    reader.noteL2(l2Off, t)
                } else {
                    let newL2 = try allocate(1)
                    var t = [UInt64](repeating: 0, count: 1 << l2Bits)
                    for k in 0..<run { t[l2Index + k] = (host + UInt64(k) * cs) | Self.copied }
                    try file.write(Self.bigEndianBytes(t), at: newL2)
                    try barrier()
                    let l1Entry = newL2 | Self.copied
                    try file.write(Self.bigEndianBytes([l1Entry]), at: header.l1TableOffset + UInt64(l1Index) * 8)
                    reader.noteL1(l1Index, l1Entry)
                    reader.noteL2(newL2, t)
                }
                done += piece.count
            }
            if whole < bytes.count {
                try write(UnsafeRawBufferPointer(rebasing: bytes[whole...]), at: offset + UInt64(whole))
            }
        } catch let e as WardenError {
            throw e.inFile(path)
        }
    }

    /// Before the first write: clear autoclear feature bits (bitmaps this writer does
    /// not maintain become stale and QEMU ignores them, as it does on its own writes).
    private func prepareForWrite() throws {
        if prepared { return }
        prepared = true
        if header.version == 3 && header.autoclearFeatures != 0 {
            try file.write([UInt8](repeating: 0, count: 8), at: 88)
            try barrier()
        }
    }

    private func barrier() throws {
        if durability == .barriers { try file.sync() }
    }

    // MARK: Cluster writes

    private func writeCluster(guest: UInt64, inCluster: Int, _ data: UnsafeRawBufferPointer) throws {
        let clusterIndex = guest >> UInt64(clusterBits)
        let l1Index = Int(clusterIndex >> UInt64(l2Bits))
        let l2Index = Int(clusterIndex & ((1 << UInt64(l2Bits)) - 1))
        guard l1Index < reader.l1.count else {
            throw WardenError(.internal, "guest offset \(hex(guest)) has no L1 entry")
        }
        let l1e = reader.l1[l1Index]
        let l2Off = l1e & QCOW2.offsetMask
        var table: [UInt64]? = nil
        if l2Off != 0 {
            if l1e & Self.copied == 0 {
                let rc = try refcount(l2Off)
                guard rc == 1 else {
                    throw WardenError.unsupported("L2 table at offset \(hex(l2Off)) has refcount \(rc) (shared); writing shared clusters is not supported")
                }
            }
            table = try reader.l2Table(at: l2Off, l1Index: l1Index)
        }
        let entry = table?[l2Index] ?? 0
        let host = entry & QCOW2.offsetMask
        let isCompressed = entry & Self.compressedBit != 0
        let readsZero = entry & 1 != 0

        if !isCompressed && host != 0 {
            // The cluster already has a host cluster: write in place.
            if entry & Self.copied == 0 {
                let rc = try refcount(host)
                guard rc == 1 else {
                    throw WardenError.unsupported("data cluster at offset \(hex(host)) has refcount \(rc) (shared); writing shared clusters is not supported")
                }
            }
            let (end, o) = host.addingReportingOverflow(cs)
            guard !o, end <= fileEnd else {
                throw WardenError.corrupt("data cluster at offset \(hex(host)) lies beyond the end of the file", offset: host)
            }
            if !readsZero {
                try file.write(data, at: host + UInt64(inCluster))
                return
            }
            // A preallocated zero cluster: write all of it, then clear the zero flag.
            var content = [UInt8](repeating: 0, count: Int(cs))
            content.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[inCluster..<(inCluster + data.count)]).copyMemory(from: data) }
            try file.write(content, at: host)
            try barrier()
            try setL2Entry(l1Index: l1Index, l2Off: l2Off, table: table!, index: l2Index, value: host | Self.copied)
            return
        }

        // A new host cluster: build its whole content (copy-on-write).
        var content: [UInt8]
        if inCluster == 0 && data.count == Int(cs) {
            content = Array(data)
        } else {
            content = [UInt8](repeating: 0, count: Int(cs))
            if !readsZero || isCompressed {
                let n = Int(min(cs, size - guest))
                try content.withUnsafeMutableBytes { try reader.read(at: guest, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<n])) }
            }
            content.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[inCluster..<(inCluster + data.count)]).copyMemory(from: data) }
        }
        let newHost = try allocate(1)
        try file.write(content, at: newHost)
        try barrier()
        if let table {
            try setL2Entry(l1Index: l1Index, l2Off: l2Off, table: table, index: l2Index, value: newHost | Self.copied)
        } else {
            let newL2 = try allocate(1)
            var t = [UInt64](repeating: 0, count: 1 << l2Bits)
            t[l2Index] = newHost | Self.copied
            try file.write(Self.bigEndianBytes(t), at: newL2)
            try barrier()
            let l1Entry = newL2 | Self.copied
            try file.write(Self.bigEndianBytes([l1Entry]), at: header.l1TableOffset + UInt64(l1Index) * 8)
            reader.noteL1(l1Index, l1Entry)
            reader.noteL2(newL2, t)
        }
        if isCompressed {
            try releaseCompressed(entry)
            reader.lastCompressed.withLock { $0 = nil }
        }
    }

    private func setL2Entry(l1Index: Int, l2Off: UInt64, table: [UInt64], index: Int, value: UInt64) throws {
        try file.write(Self.bigEndianBytes([value]), at: l2Off + UInt64(index) * 8)
        var t = table
        t[index] = value
        reader.noteL2(l2Off, t)
    }

    /// Drops one reference from each host cluster a compressed cluster's bytes touch.
    private func releaseCompressed(_ entry: UInt64) throws {
        let shift = UInt64(62 - (clusterBits - 8))
        let coffset = entry & ((1 << shift) - 1)
        let sectors = (entry >> shift) & ((1 << UInt64(clusterBits - 8)) - 1)
        let last = coffset + (sectors + 1) * 512 - (coffset & 511) - 1
        var c = coffset & ~(cs - 1)
        while c <= last {
            if c < fileEnd { try addRefcount(c, -1) }
            c += cs
        }
    }

    static func bigEndianBytes(_ words: [UInt64]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: words.count * 8)
        for (i, w) in words.enumerated() {
            for b in 0..<8 { out[i * 8 + b] = UInt8(truncatingIfNeeded: w >> UInt64(56 - 8 * b)) }
        }
        return out
    }

    // MARK: Refcounts

    private func refBlock(_ offset: UInt64) throws -> [UInt8] {
        if let b = refBlocks[offset] { return b }
        let (end, o) = offset.addingReportingOverflow(cs)
        guard !o, end <= file.length else {
            throw WardenError.corrupt("refcount block at offset \(hex(offset)) lies beyond the end of the file", offset: offset)
        }
        let b = try file.read(at: offset, count: Int(cs), what: "refcount block")
        if refBlocks.count >= 256 { refBlocks.removeAll() }
        refBlocks[offset] = b
        return b
    }

    private func entry(_ block: [UInt8], _ i: Int) -> UInt64 {
        let w = refBits / 8
        var v: UInt64 = 0
        for b in 0..<w { v = v << 8 | UInt64(block[i * w + b]) }
        return v
    }

    private func setEntry(_ block: inout [UInt8], _ i: Int, _ v: UInt64) {
        let w = refBits / 8
        for b in 0..<w { block[i * w + b] = UInt8(truncatingIfNeeded: v >> UInt64(8 * (w - 1 - b))) }
    }

    /// The refcount of the host cluster at `host`.
    func refcount(_ host: UInt64) throws -> UInt64 {
        let c = host >> UInt64(clusterBits)
        let ri = c / refsPerBlock
        guard ri < UInt64(refTable.count), refTable[Int(ri)] != 0 else { return 0 }
        let block = try refBlock(refTable[Int(ri)])
        return entry(block, Int(c % refsPerBlock))
    }

    /// Adds `delta` to the refcount of an existing, covered cluster.
    private func addRefcount(_ host: UInt64, _ delta: Int) throws {
        let c = host >> UInt64(clusterBits)
        let ri = c / refsPerBlock
        guard ri < UInt64(refTable.count), refTable[Int(ri)] != 0 else {
            throw WardenError.corrupt("cluster at offset \(hex(host)) is in use but has no refcount block", offset: host)
        }
        let blockOff = refTable[Int(ri)]
        var block = try refBlock(blockOff)
        let i = Int(c % refsPerBlock)
        let old = entry(block, i)
        let max: UInt64 = refBits == 64 ? UInt64.max : (1 << UInt64(refBits)) - 1
        let new: UInt64
        if delta < 0 {
            guard old >= UInt64(-delta) else {
                throw WardenError.corrupt("cluster at offset \(hex(host)) is in use but its refcount is \(old)", offset: host)
            }
            new = old - UInt64(-delta)
        } else {
            guard old <= max - UInt64(delta) else {
                throw WardenError.corrupt("refcount of cluster at offset \(hex(host)) would overflow", offset: host)
            }
            new = old + UInt64(delta)
        }
        setEntry(&block, i, new)
        refBlocks[blockOff] = block
        let w = refBits / 8
        try file.write(Array(block[(i * w)..<((i + 1) * w)]), at: blockOff + UInt64(i * w))
    }

    /// Allocates `n` contiguous clusters at the end of the file, with refcount 1,
    /// adding refcount blocks and growing the refcount table as needed.
    func allocate(_ n: Int) throws -> UInt64 {
        let start = fileEnd
        let firstCluster = start / cs
        var total = UInt64(n)
        var missing: [UInt64] = []
        var tableClusters: UInt64 = 0
        var newTableEntries = UInt64(refTable.count)
        for _ in 0..<64 {
            let endCluster = firstCluster + total
            let lo = firstCluster / refsPerBlock, hi = (endCluster - 1) / refsPerBlock
            missing = (lo...hi).filter { $0 >= UInt64(refTable.count) || refTable[Int($0)] == 0 }
            tableClusters = 0
            newTableEntries = UInt64(refTable.count)
            if hi >= UInt64(refTable.count) {
                newTableEntries = Swift.max(hi + 1, UInt64(refTable.count) * 2)
                tableClusters = (newTableEntries * 8 + cs - 1) / cs
                newTableEntries = tableClusters * cs / 8
                guard tableClusters * cs <= Self.maxRefTableBytes else {
                    throw WardenError.limit("the refcount table would grow beyond \(Self.maxRefTableBytes >> 20) MiB")
                }
            }
            let next = UInt64(n) + UInt64(missing.count) + tableClusters
            if next == total { break }
            total = next
        }
        guard UInt64(n) + UInt64(missing.count) + tableClusters == total else {
            throw WardenError(.internal, "refcount allocation did not converge")
        }
        let end = start + total * cs
        guard end <= UInt64(Int64.max) else { throw WardenError.limit("the image would grow beyond the largest file size") }
        if end > file.length { try file.truncate(to: end) }

        // New refcount blocks, filled for the new clusters they cover.
        var newBlocks: [UInt64: (offset: UInt64, data: [UInt8])] = [:]
        for (k, ri) in missing.enumerated() {
            newBlocks[ri] = (start + (UInt64(n) + UInt64(k)) * cs, [UInt8](repeating: 0, count: Int(cs)))
        }
        var c = firstCluster
        while c < firstCluster + total {
            let ri = c / refsPerBlock
            if var nb = newBlocks[ri] {
                setEntry(&nb.data, Int(c % refsPerBlock), 1)
                newBlocks[ri] = nb
            } else {
                let old = try refcount(c * cs)
                guard old == 0 else {
                    throw WardenError.corrupt("cluster at offset \(hex(c * cs)), past the end of the file, has refcount \(old)", offset: c * cs)
                }
                try addRefcount(c * cs, 1)
            }
            c += 1
        }
        for (_, nb) in newBlocks {
            try file.write(nb.data, at: nb.offset)
            refBlocks[nb.offset] = nb.data
        }
        if tableClusters == 0 {
            if !newBlocks.isEmpty {
                try barrier()
                for (ri, nb) in newBlocks.sorted(by: { $0.key < $1.key }) {
                    try file.write(Self.bigEndianBytes([nb.offset]), at: refTableOffset + ri * 8)
                    refTable[Int(ri)] = nb.offset
                }
            }
        } else {
            // A new, larger refcount table at the end; the header switches to it in one
            // 12-byte write; the old table's clusters are released afterwards.
            var table = refTable + [UInt64](repeating: 0, count: Int(newTableEntries) - refTable.count)
            for (ri, nb) in newBlocks { table[Int(ri)] = nb.offset }
            let tableOffset = start + (UInt64(n) + UInt64(missing.count)) * cs
            try file.write(Self.bigEndianBytes(table), at: tableOffset)
            try barrier()
            var hdr = Self.bigEndianBytes([tableOffset])
            hdr += [UInt8(truncatingIfNeeded: tableClusters >> 24), UInt8(truncatingIfNeeded: tableClusters >> 16),
                    UInt8(truncatingIfNeeded: tableClusters >> 8), UInt8(truncatingIfNeeded: tableClusters)]
            try file.write(hdr, at: 48)
            try barrier()
            let oldOffset = refTableOffset
            let oldClusters = (UInt64(refTable.count) * 8 + cs - 1) / cs
            refTable = table
            refTableOffset = tableOffset
            for k in 0..<oldClusters { try addRefcount(oldOffset + k * cs, -1) }
        }
        fileEnd = end
        clustersAllocated += total
        return start
    }

    // MARK: Creating overlays

    /// Creates a qcow2 v3 overlay at `path` whose backing file is `backing`.
    ///
    /// `backing` is written into the header as given; a relative name is relative to
    /// the overlay's directory (as QEMU resolves it). The backing file is opened
    /// read-only, with `backingFormat` forced, to learn its virtual size. The new
    /// file is written under a temporary name, synced, and linked into place, so
    /// `path` is either absent or a complete image; an existing `path` is refused.
    ///
    /// With `durable` false the file and its directory are not synced: for a caller that
    /// creates the overlay under a temporary name and syncs it before its own commit point
    /// (``Clone``), where a second pair of syncs buys nothing. The file still appears whole
    /// or not at all to other processes.
    public static func create(at path: String, backing: String, backingFormat: String,
                              clusterSize: Int = 65536, durable: Bool = true) throws {
        guard let format = ImageFormat(qemuName: backingFormat) else {
            throw WardenError(.invalidArgument, "backing format '\(QCOW2.printable(backingFormat))' is not one of raw, qcow2, vmdk, vhd, vhdx, vdi")
        }
        guard clusterSize >= 512, clusterSize <= 2 << 20, clusterSize & (clusterSize - 1) == 0 else {
            throw WardenError(.invalidArgument, "cluster size \(clusterSize) is not a power of two between 512 and 2 MiB")
        }
        let nameBytes = Array(backing.utf8)
        guard !nameBytes.isEmpty, nameBytes.count <= 1023, !nameBytes.contains(0) else {
            throw WardenError(.invalidArgument, "backing file name must be 1 to 1023 bytes without NUL")
        }
        let resolved = QCOW2.resolveBackingPath(backing, relativeTo: path)
        let base = try ImageOpener.open(resolved, options: OpenOptions(format: format))
        let bytes = try image(size: base.device.size, backing: nameBytes, format: Array(format.qemuName.utf8),
                              clusterBits: clusterSize.trailingZeroBitCount)
        try writeNewFile(path, bytes, durable: durable)
    }

    /// Creates an empty qcow2 v3 image of `size` bytes without a backing file (what
    /// `qemu-img create -f qcow2 PATH SIZE` makes), exclusively, 0600.
    public static func createStandalone(at path: String, size: UInt64, clusterSize: Int = 65536, durable: Bool = true) throws {
        guard clusterSize >= 512, clusterSize <= 2 << 20, clusterSize & (clusterSize - 1) == 0 else {
            throw WardenError(.invalidArgument, "cluster size \(clusterSize) is not a power of two between 512 and 2 MiB")
        }
        guard size > 0, size % 512 == 0 else { throw WardenError(.invalidArgument, "a qcow2 disk is a positive number of 512-byte sectors, not \(size) bytes") }
        try writeNewFile(path, try image(size: size, backing: [], format: [], clusterBits: clusterSize.trailingZeroBitCount), durable: durable)
    }

    /// The bytes of a new, empty qcow2 v3 image (without a backing file when `backing` is empty).
    static func image(size: UInt64, backing: [UInt8], format: [UInt8], clusterBits: Int) throws -> [UInt8] {
        let cs = UInt64(1) << UInt64(clusterBits)
        let l2Span = (cs / 8) * cs
        let l1Entries = (size + l2Span - 1) / l2Span
        guard l1Entries * 8 <= QCOW2.maxL1Bytes else {
            throw WardenError.limit("a \(size)-byte disk needs an L1 table larger than \(QCOW2.maxL1Bytes >> 20) MiB with \(cs)-byte clusters")
        }
        let l1Clusters = Swift.max(1, (l1Entries * 8 + cs - 1) / cs)
        let refsPerBlock = cs / 2   // 16-bit refcounts
        var refBlocks: UInt64 = 1, refTableClusters: UInt64 = 1
        while true {
            let total = 1 + l1Clusters + refTableClusters + refBlocks
            let rb = (total + refsPerBlock - 1) / refsPerBlock
            let rt = (rb * 8 + cs - 1) / cs
            if rb == refBlocks && rt == refTableClusters { break }
            refBlocks = rb
            refTableClusters = rt
        }
        let l1Offset = cs
        let rtOffset = l1Offset + l1Clusters * cs
        let rbOffset = rtOffset + refTableClusters * cs
        let total = 1 + l1Clusters + refTableClusters + refBlocks
        var out = [UInt8](repeating: 0, count: Int(total * cs))
        func be<T: FixedWidthInteger>(_ v: T, at o: Int) {
            let n = MemoryLayout<T>.size
            for b in 0..<n { out[o + b] = UInt8(truncatingIfNeeded: v >> (8 * (n - 1 - b))) }
        }
        // Header extensions after the 112-byte header, then the backing file name.
        let fmtPadded = (format.count + 7) & ~7
        let nameOffset = 112 + 8 + fmtPadded + 8
        guard UInt64(nameOffset + backing.count) <= cs else {
            throw WardenError(.invalidArgument, "the backing file name does not fit in the first \(cs)-byte cluster")
        }
        be(UInt32(0x5146_49fb), at: 0)
        be(UInt32(3), at: 4)
        be(UInt64(backing.isEmpty ? 0 : nameOffset), at: 8)
        be(UInt32(backing.count), at: 16)
        be(UInt32(clusterBits), at: 20)
        be(size, at: 24)
        be(UInt32(0), at: 32)                 // crypt_method
        be(UInt32(l1Entries), at: 36)
        be(l1Offset, at: 40)
        be(rtOffset, at: 48)
        be(UInt32(refTableClusters), at: 56)
        be(UInt32(0), at: 60)                 // nb_snapshots
        be(UInt64(0), at: 64)                 // snapshots_offset
        be(UInt64(0), at: 72)                 // incompatible
        be(UInt64(0), at: 80)                 // compatible
        be(UInt64(0), at: 88)                 // autoclear
        be(UInt32(4), at: 96)                 // refcount_order: 16-bit
        be(UInt32(112), at: 100)              // header_length
        // byte 104: compression type 0 (zlib), then padding to 112.
        if !backing.isEmpty {
            be(QCOW2.Extension.backingFormat, at: 112)
            be(UInt32(format.count), at: 116)
            for (i, b) in format.enumerated() { out[120 + i] = b }
            // End-of-extensions marker is the 8 zero bytes at 120 + fmtPadded.
            for (i, b) in backing.enumerated() { out[nameOffset + i] = b }
        }   // else: the end-of-extensions marker is the 8 zero bytes at 112.
        for k in 0..<refBlocks { be(rbOffset + k * cs, at: Int(rtOffset) + Int(k) * 8) }
        for c in 0..<total {
            let blk = c / refsPerBlock, i = c % refsPerBlock
            be(UInt16(1), at: Int(rbOffset + blk * cs + i * 2))
        }
        return out
    }

    /// Removes the temporary files ``writeNewFile(_:_:durable:)`` may have left beside `path`.
    public static func removeWriterTemps(of path: String) {
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]) } ?? "."
        let base = (slash.map { String(path[path.index(after: $0)...]) } ?? path) + ".warden-tmp-"
        guard let d = opendir(dir.isEmpty ? "/" : dir) else { return }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name.hasPrefix(base) { names.append(name) }
        }
        for n in names { unlink((dir.isEmpty ? "" : dir) + "/" + n) }
    }

    /// Writes `bytes` to a temporary file beside `path`, syncs it (when `durable`), and links
    /// it into place (failing if `path` exists), then syncs the directory (when `durable`).
    static func writeNewFile(_ path: String, _ bytes: [UInt8], durable: Bool = true) throws {
        let tmp = path + ".warden-tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw WardenError(.io, "cannot create: \(String(cString: strerror(errno)))", file: path)
        }
        var ok = false
        defer {
            close(fd)
            if !ok { unlink(tmp) }
        }
        try bytes.withUnsafeBytes { try FileDescriptorIO.pwriteAll(fd, $0, at: 0, name: path) }
        if durable {
            guard fsync(fd) == 0 else { throw WardenError(.io, "cannot sync: \(String(cString: strerror(errno)))", file: path) }
        }
        guard link(tmp, path) == 0 else {
            let e = errno
            throw WardenError(e == EEXIST ? .conflict : .io, e == EEXIST ? "already exists" : "cannot create: \(String(cString: strerror(e)))", file: path)
        }
        ok = true
        unlink(tmp)
        guard durable else { return }
        FileDescriptorIO.syncDirectory(path.lastIndex(of: "/").map { String(path[..<$0]) } ?? ".")
    }
}

/// An image opened for writing: the guest-visible device plus its chain.
public final class WritableOpenedImage: @unchecked Sendable {
    public let device: any WritableBlockDevice
    public let chain: [ImageInfo]
    public var info: ImageInfo { chain[0] }

    public init(device: any WritableBlockDevice, chain: [ImageInfo]) {
        self.device = device
        self.chain = chain
    }
}

extension ImageOpener {
    /// Opens the image at `path` for writing: raw (the file itself) or qcow2 (a
    /// ``QCOW2Overlay``; its backing chain stays read-only). VMDK is refused.
    public static func openWritable(_ path: String, options: OpenOptions = OpenOptions(),
                                    durability: QCOW2Overlay.Durability = .barriers) throws -> WritableOpenedImage {
        let probe = try ImageFile(path: path)
        let format = try options.format ?? detect(probe)
        switch format {
        case .qcow2:
            let o = try QCOW2Overlay.open(path, options: options, durability: durability)
            return WritableOpenedImage(device: o, chain: o.chain)
        case .raw:
            if options.snapshot != nil {
                throw WardenError(.invalidArgument, "raw images have no internal snapshots", file: path)
            }
            let file = try ImageFile(path: path, writable: true)
            try file.refuseIfInUse()
            let dev = RawDevice(file: file)
            return WritableOpenedImage(device: dev, chain: [ImageInfo(
                path: path, format: .raw, virtualSize: dev.size, fileSize: file.length, allocatedSize: file.allocatedBytes)])
        case .vmdk, .vhd, .vhdx, .vdi, .ova:
            throw WardenError.unsupported("writing \(format.rawValue.uppercased()) images is not supported (use a qcow2 overlay)", file: path)
        }
    }
}
