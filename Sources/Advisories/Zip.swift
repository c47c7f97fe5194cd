import Foundation
import WardenCore
import CZlib

/// A small, hostile-input-safe reader for zip archives (PKWARE APPNOTE 6.3), enough for the
/// OSV `all.zip` feeds: the end-of-central-directory record (and its zip64 form), the central
/// directory, and entries that are stored (method 0) or deflated (method 8, raw inflate via
/// zlib). Encrypted entries, multi-disk archives and other methods are refused.
///
/// ```
/// [local header 1][data 1] … [local header n][data n]
/// [central directory header 1 … n]            ← offset and size from the EOCD
/// [zip64 EOCD record][zip64 EOCD locator]     ← only when counts or offsets overflow 16/32 bits
/// [EOCD record: "PK\5\6" … comment]           ← searched for in the last 64 KiB + 22 bytes
/// ```
///
/// Every offset and size is checked against the file; entry count, entry size and the
/// compression ratio are capped; each entry's CRC-32 is verified.
public struct ZipArchive {
    public struct Entry: Sendable {
        public var name: String
        public var method: UInt16
        public var flags: UInt16
        public var crc32: UInt32
        public var compressedSize: UInt64
        public var uncompressedSize: UInt64
        public var localHeaderOffset: UInt64
        public var isDirectory: Bool { name.hasSuffix("/") }
    }

    public enum Limits {
        public static let maxEntries = 2_000_000
        public static let maxEntryBytes: UInt64 = 64 << 20
        /// Largest uncompressed/compressed ratio accepted for entries over 1 MiB.
        public static let maxRatio: UInt64 = 200
        public static let maxCentralDirectoryBytes: UInt64 = 512 << 20
        /// The most all entries together may expand to.
        public static let maxTotalBytes: UInt64 = 8 << 30
        /// Largest ratio of all entries' uncompressed bytes to the archive's size, once the
        /// total passes 64 MiB (real feeds compress JSON about 10:1).
        public static let maxTotalRatio: UInt64 = 200
    }

    public let file: String
    public let entries: [Entry]
    private let data: Data

    /// Opens the archive at `path` (memory-mapped) and reads its central directory.
    public init(path: String) throws {
        let d: Data
        do { d = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw WardenError(.notFound, "cannot open: \(FileManager.default.fileExists(atPath: path) ? "not readable" : "No such file or directory")", file: path)
        }
        try self.init(data: d, file: path)
    }

    public init(data: Data, file: String) throws {
        self.file = file
        self.data = data
        self.entries = try data.withUnsafeBytes { try Self.readDirectory($0, file: file) }
    }

    // MARK: little-endian reads with bounds checks

    static func u16(_ p: UnsafeRawBufferPointer, _ o: UInt64, _ file: String) throws -> UInt16 {
        guard o <= UInt64(p.count), UInt64(p.count) - o >= 2 else { throw WardenError.corrupt("zip structure at \(hex(o)) runs past the end of the file", file: file) }
        let i = Int(o)
        return UInt16(p[i]) | UInt16(p[i + 1]) << 8
    }
    static func u32(_ p: UnsafeRawBufferPointer, _ o: UInt64, _ file: String) throws -> UInt32 {
        UInt32(try u16(p, o, file)) | UInt32(try u16(p, o + 2, file)) << 16
    }
    static func u64(_ p: UnsafeRawBufferPointer, _ o: UInt64, _ file: String) throws -> UInt64 {
        UInt64(try u32(p, o, file)) | UInt64(try u32(p, o + 4, file)) << 32
    }

    static func readDirectory(_ p: UnsafeRawBufferPointer, file: String) throws -> [Entry] {
        let size = UInt64(p.count)
        guard size >= 22 else { throw WardenError.corrupt("not a zip archive (\(size) bytes, too short for an end-of-central-directory record)", file: file) }
        // Find the EOCD: the last "PK\5\6" whose comment length reaches exactly the end.
        var eocd: UInt64?
        var o = size - 22
        let lowest = size > 22 + 65_535 ? size - 22 - 65_535 : 0
        while true {
            if try u32(p, o, file) == 0x0605_4B50, try UInt64(u16(p, o + 20, file)) == size - o - 22 { eocd = o; break }
            if o == lowest { break }
            o -= 1
        }
        guard let eocd else {
            throw WardenError.corrupt("not a zip archive, or truncated: no end-of-central-directory record", file: file)
        }
        let disk = try u16(p, eocd + 4, file), cdDisk = try u16(p, eocd + 6, file)
        var count = UInt64(try u16(p, eocd + 10, file))
        var cdSize = UInt64(try u32(p, eocd + 12, file))
        var cdOffset = UInt64(try u32(p, eocd + 16, file))
        if count == 0xFFFF || cdSize == 0xFFFF_FFFF || cdOffset == 0xFFFF_FFFF {
            // zip64: the locator sits just before the EOCD.
            guard eocd >= 20, try u32(p, eocd - 20, file) == 0x0706_4B50 else {
                throw WardenError.corrupt("zip64 end-of-central-directory locator missing", file: file)
            }
            let z = try u64(p, eocd - 20 + 8, file)
            guard z < eocd, try u32(p, z, file) == 0x0606_4B50 else {
                throw WardenError.corrupt("zip64 end-of-central-directory record at \(hex(z)) is invalid", file: file)
            }
            count = try u64(p, z + 32, file)
            cdSize = try u64(p, z + 40, file)
            cdOffset = try u64(p, z + 48, file)
        } else if disk != 0 || cdDisk != 0 {
            throw WardenError.unsupported("multi-disk zip archives are not supported", file: file)
        }
        guard count <= UInt64(Limits.maxEntries) else {
            throw WardenError.limit("zip archive claims \(count) entries; the limit is \(Limits.maxEntries)", file: file)
        }
        guard cdSize <= Limits.maxCentralDirectoryBytes else {
            throw WardenError.limit("zip central directory is \(cdSize) bytes; the limit is \(Limits.maxCentralDirectoryBytes)", file: file)
        }
        guard cdOffset <= size, cdSize <= size - cdOffset, count <= cdSize / 46 || count == 0 else {
            throw WardenError.corrupt("zip central directory (\(count) entries, \(cdSize) bytes at \(hex(cdOffset))) does not fit in the file", file: file)
        }
        var entries: [Entry] = []
        entries.reserveCapacity(Int(count))
        var at = cdOffset
        let end = cdOffset + cdSize
        for i in 0..<count {
            guard at <= end, end - at >= 46, try u32(p, at, file) == 0x0201_4B50 else {
                throw WardenError.corrupt("zip central directory entry \(i) at \(hex(at)) is invalid", file: file)
            }
            let flags = try u16(p, at + 8, file)
            let method = try u16(p, at + 10, file)
            let crc = try u32(p, at + 16, file)
            var csize = UInt64(try u32(p, at + 20, file))
            var usize = UInt64(try u32(p, at + 24, file))
            let nameLen = UInt64(try u16(p, at + 28, file))
            let extraLen = UInt64(try u16(p, at + 30, file))
            let commentLen = UInt64(try u16(p, at + 32, file))
            var local = UInt64(try u32(p, at + 42, file))
            let next = at + 46 + nameLen + extraLen + commentLen
            guard next <= end else { throw WardenError.corrupt("zip central directory entry \(i) runs past the directory", file: file) }
            let nameStart = Int(at + 46)
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: p[nameStart..<nameStart + Int(nameLen)]), as: UTF8.self)
            // zip64 extended information extra field (id 1): the overflowed values, in order.
            var x = at + 46 + nameLen
            let xEnd = x + extraLen
            while x + 4 <= xEnd {
                let id = try u16(p, x, file), len = UInt64(try u16(p, x + 2, file))
                guard x + 4 + len <= xEnd else { throw WardenError.corrupt("zip entry \(i): extra field runs past its end", file: file) }
                if id == 1 {
                    var f = x + 4
                    func take() throws -> UInt64 {
                        guard f + 8 <= x + 4 + len else { throw WardenError.corrupt("zip entry \(i): zip64 extra field too short", file: file) }
                        defer { f += 8 }
                        return try u64(p, f, file)
                    }
                    if usize == 0xFFFF_FFFF { usize = try take() }
                    if csize == 0xFFFF_FFFF { csize = try take() }
                    if local == 0xFFFF_FFFF { local = try take() }
                }
                x += 4 + len
            }
            entries.append(Entry(name: name, method: method, flags: flags, crc32: crc, compressedSize: csize,
                                 uncompressedSize: usize, localHeaderOffset: local))
            at = next
        }
        try checkLayout(entries, directoryOffset: cdOffset, archiveSize: size, file: file)
        return entries
    }

    /// Every entry's local header and data lie before the central directory, and no two
    /// entries share or overlap them: an archive whose directory points many entries at one
    /// compressed record (a zip bomb that multiplies one record) is refused, and so is one
    /// whose entries together expand past ``Limits/maxTotalBytes`` or ``Limits/maxTotalRatio``.
    static func checkLayout(_ entries: [Entry], directoryOffset: UInt64, archiveSize: UInt64, file: String) throws {
        let byOffset = entries.indices.sorted { entries[$0].localHeaderOffset < entries[$1].localHeaderOffset }
        var previousEnd: UInt64 = 0
        var previous: Int?
        for i in byOffset {
            let e = entries[i]
            // The least an entry occupies: its 30-byte local header and its compressed data.
            let (span, o) = e.compressedSize.addingReportingOverflow(30)
            let (end, o2) = e.localHeaderOffset.addingReportingOverflow(span)
            guard !o, !o2, end <= directoryOffset else {
                throw WardenError.corrupt("zip entry \(oneLine(e.name)) at \(hex(e.localHeaderOffset)) runs into the central directory", file: file)
            }
            if let previous, e.localHeaderOffset < previousEnd {
                throw WardenError.corrupt("zip entries \(oneLine(entries[previous].name)) and \(oneLine(e.name)) share or overlap their data at \(hex(e.localHeaderOffset))", file: file)
            }
            previousEnd = end
            previous = i
        }
        var total: UInt64 = 0
        for e in entries {
            let (t, o) = total.addingReportingOverflow(e.uncompressedSize)
            guard !o, t <= Limits.maxTotalBytes else {
                throw WardenError.limit("zip entries expand to more than \(Limits.maxTotalBytes) bytes in all", file: file)
            }
            total = t
        }
        if total > 64 << 20, total / max(archiveSize, 1) > Limits.maxTotalRatio {
            throw WardenError.limit("zip entries expand \(archiveSize) bytes to \(total) (ratio over \(Limits.maxTotalRatio)); refused as a possible zip bomb", file: file)
        }
    }

    /// The uncompressed bytes of `entry`, checked against its size and CRC-32.
    public func extract(_ entry: Entry) throws -> Data {
        let where_ = "\(file): \(oneLine(entry.name))"
        if entry.flags & 1 != 0 { throw WardenError.unsupported("encrypted zip entries are not supported", file: where_) }
        guard entry.uncompressedSize <= Limits.maxEntryBytes else {
            throw WardenError.limit("zip entry is \(entry.uncompressedSize) bytes uncompressed; the limit is \(Limits.maxEntryBytes)", file: where_)
        }
        if entry.uncompressedSize > 1 << 20,
           entry.uncompressedSize / max(entry.compressedSize, 1) > Limits.maxRatio {
            throw WardenError.limit("zip entry expands \(entry.compressedSize) bytes to \(entry.uncompressedSize) (ratio over \(Limits.maxRatio)); refused as a possible zip bomb", file: where_)
        }
        return try data.withUnsafeBytes { p -> Data in
            let size = UInt64(p.count)
            let lh = entry.localHeaderOffset
            guard try Self.u32(p, lh, where_) == 0x0403_4B50 else {
                throw WardenError.corrupt("zip local header at \(hex(lh)) is invalid", file: where_)
            }
            let start = lh + 30 + UInt64(try Self.u16(p, lh + 26, where_)) + UInt64(try Self.u16(p, lh + 28, where_))
            guard start <= size, entry.compressedSize <= size - start else {
                throw WardenError.corrupt("zip entry data (\(entry.compressedSize) bytes at \(hex(start))) runs past the end of the file", file: where_)
            }
            let input = UnsafeRawBufferPointer(rebasing: p[Int(start)..<Int(start + entry.compressedSize)])
            var out = Data(count: Int(entry.uncompressedSize))
            switch entry.method {
            case 0:
                guard entry.compressedSize == entry.uncompressedSize else {
                    throw WardenError.corrupt("stored zip entry has different compressed and uncompressed sizes", file: where_)
                }
                out.withUnsafeMutableBytes { o in if input.count > 0 { o.copyMemory(from: input) } }
            case 8:
                try Self.inflateRaw(input, into: &out, file: where_)
            default:
                throw WardenError.unsupported("zip compression method \(entry.method) is not supported (only stored and deflate)", file: where_)
            }
            let crc = out.withUnsafeBytes { o -> UInt32 in
                UInt32(CZlib.crc32(0, o.bindMemory(to: Bytef.self).baseAddress, uInt(o.count)))
            }
            guard crc == entry.crc32 else {
                throw WardenError.corrupt("zip entry CRC-32 mismatch (\(hex(crc)) instead of \(hex(entry.crc32)))", file: where_)
            }
            return out
        }
    }

    /// Raw inflate of `input` into exactly `out.count` bytes; more or less output is corruption.
    static func inflateRaw(_ input: UnsafeRawBufferPointer, into out: inout Data, file: String) throws {
        var strm = z_stream()
        guard inflateInit2_(&strm, -15, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw WardenError(.internal, "zlib inflateInit failed", file: file)
        }
        defer { inflateEnd(&strm) }
        let expected = out.count
        var spare: UInt8 = 0
        let result: (Int32, Int) = out.withUnsafeMutableBytes { o in
            strm.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            strm.avail_in = uInt(input.count)
            strm.next_out = o.bindMemory(to: Bytef.self).baseAddress
            strm.avail_out = uInt(o.count)
            var r = CZlib.inflate(&strm, Z_FINISH)
            let produced = o.count - Int(strm.avail_out)
            if r != Z_STREAM_END && strm.avail_out == 0 {
                // Output full but the stream is not finished: does it want more?
                withUnsafeMutablePointer(to: &spare) { sp in
                    strm.next_out = sp
                    strm.avail_out = 1
                    r = CZlib.inflate(&strm, Z_FINISH)
                    if strm.avail_out == 0 { r = -1000 }
                }
            }
            return (r, produced)
        }
        if result.0 == -1000 {
            throw WardenError.corrupt("deflate stream is longer than the declared \(expected) bytes", file: file)
        }
        guard result.0 == Z_STREAM_END else {
            throw WardenError.corrupt("deflate stream is damaged or truncated (zlib \(result.0))", file: file)
        }
        guard result.1 == expected else {
            throw WardenError.corrupt("deflate stream gives \(result.1) bytes, not the declared \(expected)", file: file)
        }
    }
}
