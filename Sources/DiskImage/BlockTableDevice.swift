import WardenCore

/// A guest disk stored as equal blocks, each in the image file, absent (reads as zeros) or
/// explicitly zero: the shape of VHD dynamic disks, VDI and VHDX. The block table is read
/// whole when the image is opened (its size is capped by the format reader) and checked
/// against the file, so a read never goes where the table did not say.
final class BlockTableDevice: BlockDevice, @unchecked Sendable {
    /// Where one block's bytes are.
    enum Block: Equatable {
        /// Not allocated: zeros.
        case absent
        /// Declared zero.
        case zero
        /// In the image file, starting at this byte.
        case file(UInt64)
    }

    let size: UInt64
    let blockSize: UInt64
    private let file: ImageFile
    /// Per block: file offset, or ``absentMark`` / ``zeroMark``.
    private let table: [UInt64]
    private static let absentMark = UInt64.max
    private static let zeroMark = UInt64.max - 1

    /// Changes bytes read from the file (at that file offset) before they are returned: a
    /// VHDX log replayed in memory.
    typealias Patch = @Sendable (UnsafeMutableRawBufferPointer, UInt64) -> Void
    private let patch: Patch?

    /// `blocks` must cover `size`; every file block must lie inside the file.
    init(file: ImageFile, size: UInt64, blockSize: UInt64, blocks: [Block], what: String, patch: Patch? = nil) throws {
        self.patch = patch
        guard blockSize > 0 else { throw WardenError.corrupt("\(what): block size is 0", file: file.path) }
        let needed = size / blockSize + (size % blockSize == 0 ? 0 : 1)
        guard UInt64(blocks.count) >= needed else {
            throw WardenError.corrupt("\(what): its block table has \(blocks.count) entries, the \(size)-byte disk needs \(needed)", file: file.path)
        }
        var table: [UInt64] = []
        table.reserveCapacity(Int(needed))
        for (i, b) in blocks.prefix(Int(needed)).enumerated() {
            switch b {
            case .absent: table.append(Self.absentMark)
            case .zero: table.append(Self.zeroMark)
            case .file(let off):
                // The last block may end past the disk's end; only the part inside the disk is read.
                let inDisk = min(blockSize, size - UInt64(i) * blockSize)
                let (end, o) = off.addingReportingOverflow(inDisk)
                guard !o, end <= file.length, off < Self.zeroMark else {
                    throw WardenError.corrupt("\(what): block \(i) at \(hex(off)) lies beyond the end of the file", file: file.path, offset: off)
                }
                table.append(off)
            }
        }
        self.file = file
        self.size = size
        self.blockSize = blockSize
        self.table = table
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let pos = offset + UInt64(done)
            let block = Int(pos / blockSize), within = pos % blockSize
            let n = Int(min(UInt64(buffer.count - done), blockSize - within))
            let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n])
            let entry = table[block]
            if entry >= Self.zeroMark {
                dst.initializeMemory(as: UInt8.self, repeating: 0)
            } else {
                try file.read(at: entry + within, into: dst)
                patch?(dst, entry + within)
            }
            done += n
        }
    }

    func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
        let (end, o) = offset.addingReportingOverflow(length)
        guard !o, end <= size else {
            throw WardenError(.invalidArgument, "mapping of \(length) bytes at \(hex(offset)) is beyond the end of the \(size)-byte device")
        }
        var out: [BlockExtent] = []
        func add(_ at: UInt64, _ n: UInt64, _ kind: BlockExtent.Kind) { out.appendMerging(BlockExtent(offset: at, length: n, kind: kind)) }
        var pos = offset
        while pos < end {
            let block = Int(pos / blockSize), within = pos % blockSize
            let n = min(end - pos, blockSize - within)
            let entry = table[block]
            if entry >= Self.zeroMark {
                add(pos, n, .zero)
            } else {
                // An allocated block may still be a hole in the host file (written in part).
                // (With a patch, every allocated byte is data: a patched sector may lie in a hole.)
                let start = entry + within
                if patch != nil { add(pos, n, .data); pos += n; continue }
                for h in try file.holes(offset: start, length: n) { add(pos + (h.offset - start), h.length, h.kind) }
            }
            pos += n
        }
        return out
    }

    /// Where block `i` starts in the file, or nil when it is absent or zero.
    func fileOffset(ofBlock i: Int) -> UInt64? {
        guard i >= 0, i < table.count, table[i] < Self.zeroMark else { return nil }
        return table[i]
    }

    /// Blocks stored in the file.
    var allocatedBlocks: Int { table.filter { $0 < Self.zeroMark }.count }
}
