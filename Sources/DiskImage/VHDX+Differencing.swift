import Foundation
import WardenCore

// Differencing VHDX (MS-VHDX 2.6.2.6, 2.5.1): the file parameters' HasParent bit, a parent
// locator metadata item (type B04AEFB7-…: UTF-16LE key/value pairs — parent_linkage, the
// parent's DataWriteGuid; relative_path; absolute_win32_path; volume_path), and in the BAT a
// sector-bitmap entry after every chunk of payload entries. Payload states: not present,
// undefined and unmapped read the parent; zero reads zeros; fully present reads this file;
// partially present reads, sector by sector, this file where the chunk's bitmap bit is set
// (bit n of the bitmap, least significant bit first, is sector n of the chunk) and the
// parent where it is clear.

extension VHDX {
    static let parentLocatorTypeGUID = guid("B04AEFB7-D19E-4A81-B789-25B8E9445913")

    /// A GUID's text as Windows writes it in a parent locator (lowercase, no braces).
    static func guidText(_ b: [UInt8]) -> String {
        guard b.count == 16 else { return "" }
        let le: [UInt8] = Array(b[0..<4].reversed()) + Array(b[4..<6].reversed()) + Array(b[6..<8].reversed()) + Array(b[8..<16])
        let h = le.map { String(format: "%02x", $0) }
        return h[0..<4].joined() + "-" + h[4..<6].joined() + "-" + h[6..<8].joined() + "-" + h[8..<10].joined() + "-" + h[10..<16].joined()
    }

    /// The key/value pairs of a parent locator item.
    static func parentLocator(_ item: [UInt8], file: ImageFile) throws -> [String: String] {
        let r = ByteReader(item, context: "VHDX parent locator")
        guard item.count >= 20, Array(item[0..<16]) == parentLocatorTypeGUID else {
            throw WardenError.unsupported("VHDX parent locator is of an unknown type", file: file.path)
        }
        let count = Int(try r.le(at: 18, UInt16.self))
        guard 20 + count * 12 <= item.count else { throw WardenError.corrupt("VHDX parent locator's \(count) entries do not fit it", file: file.path) }
        var out: [String: String] = [:]
        func text(_ off: UInt32, _ len: UInt16) throws -> String {
            let o = Int(off), l = Int(len)
            guard l % 2 == 0, o <= item.count, l <= item.count - o else {
                throw WardenError.corrupt("VHDX parent locator entry lies outside the locator", file: file.path)
            }
            return VHD.utf16(Array(item[o..<(o + l)]), bigEndian: false)
        }
        for i in 0..<count {
            let e = 20 + 12 * i
            let key = try text(try r.le(at: e, UInt32.self), try r.le(at: e + 8, UInt16.self))
            let value = try text(try r.le(at: e + 4, UInt32.self), try r.le(at: e + 10, UInt16.self))
            out[key] = value
        }
        return out
    }

    /// The parent, opened as the next link of the chain: by `relative_path` beside this file,
    /// else by the last component of `absolute_win32_path` or `volume_path` beside it (those
    /// name places on the machine that made the disk). Its DataWriteGuid must be the
    /// `parent_linkage` (or `parent_linkage2`) this disk records.
    static func openParent(_ item: [UInt8], file: ImageFile, context: ChainContext) throws -> (OpenedImage, String) {
        let kv = try parentLocator(item, file: file)
        func bare(_ g: String) -> String { g.trimmingCharacters(in: CharacterSet(charactersIn: "{}")).lowercased() }
        guard let linkage = kv["parent_linkage"].map(bare) else {
            throw WardenError.corrupt("differencing VHDX's parent locator has no parent_linkage", file: file.path)
        }
        let accepted = Set([linkage] + (kv["parent_linkage2"].map { [bare($0)] } ?? []))
        var candidates: [String] = []
        if let rel = kv["relative_path"] {
            let p = rel.replacingOccurrences(of: "\\", with: "/")
            candidates.append(p.hasPrefix("./") ? String(p.dropFirst(2)) : p)
        }
        for key in ["absolute_win32_path", "volume_path"] {
            if let v = kv[key], let last = v.replacingOccurrences(of: "\\", with: "/").split(separator: "/").last { candidates.append(String(last)) }
        }
        var lastError: WardenError?
        for c in candidates where !c.isEmpty && !c.hasPrefix("/") {
            let path = QCOW2.resolveBackingPath(c, relativeTo: file.path)
            guard FileManager.default.fileExists(atPath: path) else { continue }
            do {
                let parent = try context.openBacking(path: path, declaredFormat: .vhdx, from: file.path)
                guard let dw = parent.info.details["data_write_guid"], accepted.contains(dw) else {
                    throw WardenError.corrupt("differencing VHDX expects a parent with data write GUID \(linkage); \(QCOW2.printable(c)) has \(parent.info.details["data_write_guid"] ?? "none")", file: file.path)
                }
                return (parent, c)
            } catch let e as WardenError {
                lastError = e
            }
        }
        throw lastError ?? WardenError.notFound("differencing VHDX's parent \(QCOW2.printable(candidates.first ?? "(unnamed)")) is not beside it", file: file.path)
    }

    final class DifferencingDevice: BlockDevice, @unchecked Sendable {
        enum Block { case parent, zero, file(UInt64), partial(UInt64) }
        let size: UInt64
        let blockSize: UInt64
        let sectorSize: UInt64
        let chunkRatio: UInt64
        let file: ImageFile
        let parent: any BlockDevice
        private let blocks: [Block]
        /// File offset of each chunk's sector bitmap block, if present.
        private let bitmaps: [UInt64?]
        private let bitmapCache = BoundedCache<Int, [UInt8]>(capacity: 4)
        private let patch: LogReplay?

        init(bat: ByteReader, size: UInt64, blockSize: UInt64, sectorSize: UInt64, chunkRatio: UInt64, file: ImageFile,
             parent: any BlockDevice, patch: LogReplay?) throws {
            self.size = size
            self.blockSize = blockSize
            self.sectorSize = sectorSize
            self.chunkRatio = chunkRatio
            self.file = file
            self.parent = parent
            self.patch = patch.flatMap { $0.sectors.isEmpty ? nil : $0 }
            let dataBlocks = (size + blockSize - 1) / blockSize
            let chunks = (dataBlocks + chunkRatio - 1) / chunkRatio
            func inFile(_ off: UInt64, _ n: UInt64, _ what: String) throws {
                let (end, o) = off.addingReportingOverflow(n)
                guard !o, end <= file.length else {
                    throw WardenError.corrupt("VHDX \(what) at \(hex(off)) lies beyond the end of the file", file: file.path, offset: off)
                }
            }
            var maps: [UInt64?] = []
            for c in 0..<chunks {
                let e = try bat.le(at: Int(c * (chunkRatio + 1) + chunkRatio) * 8, UInt64.self)
                switch e & 7 {
                case 0: maps.append(nil)
                case 6:
                    let off = try Checked.mul(e >> 20, 1 << 20, "VHDX sector bitmap offset")
                    try inFile(off, 1 << 20, "sector bitmap of chunk \(c)")
                    maps.append(off)
                default: throw WardenError.corrupt("VHDX sector bitmap entry of chunk \(c) has state \(e & 7)", file: file.path)
                }
            }
            var list: [Block] = []
            list.reserveCapacity(Int(dataBlocks))
            for i in 0..<dataBlocks {
                let e = try bat.le(at: Int(i + i / chunkRatio) * 8, UInt64.self)
                let off = try Checked.mul(e >> 20, 1 << 20, "VHDX block offset")
                let inDisk = min(blockSize, size - i * blockSize)
                switch e & 7 {
                case 0, 1, 3: list.append(.parent)
                case 2: list.append(.zero)
                case 6:
                    try inFile(off, inDisk, "block \(i)")
                    list.append(.file(off))
                case 7:
                    try inFile(off, inDisk, "block \(i)")
                    guard maps[Int(i / chunkRatio)] != nil else {
                        throw WardenError.corrupt("VHDX block \(i) is partially present but its chunk has no sector bitmap", file: file.path)
                    }
                    list.append(.partial(off))
                default: throw WardenError.corrupt("VHDX block \(i) has state \(e & 7)", file: file.path)
                }
            }
            blocks = list
            bitmaps = maps
        }

        private func readFile(_ at: UInt64, _ dst: UnsafeMutableRawBufferPointer) throws {
            try file.read(at: at, into: dst)
            if let patch { VHDX.apply(patch, to: dst, at: at) }
        }

        private func bitmap(_ chunk: Int) throws -> [UInt8] {
            if let b = bitmapCache[chunk] { return b }
            guard let off = bitmaps[chunk] else { throw WardenError.corrupt("VHDX chunk \(chunk) has no sector bitmap", file: file.path) }
            var b = [UInt8](repeating: 0, count: 1 << 20)
            try b.withUnsafeMutableBytes { try readFile(off, $0) }
            bitmapCache.put(chunk, b)
            return b
        }

        func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
            try checkRange(offset, buffer.count)
            var done = 0
            while done < buffer.count {
                let pos = offset + UInt64(done)
                let block = Int(pos / blockSize), within = pos % blockSize
                let n = Int(min(UInt64(buffer.count - done), blockSize - within))
                let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n])
                switch blocks[block] {
                case .parent: try parent.readZeroExtended(at: pos, into: dst)
                case .zero: dst.initializeMemory(as: UInt8.self, repeating: 0)
                case .file(let off): try readFile(off + within, dst)
                case .partial(let off):
                    let map = try bitmap(block / Int(chunkRatio))
                    // The chunk's bitmap: least significant bit first, this block's sectors from `first`.
                    let first = UInt64(block) % chunkRatio * (blockSize / sectorSize)
                    try forEachSectorRun(count: n, within: within, sectorSize: sectorSize,
                                         present: { map[Int((first + $0) / 8)] & (1 << UInt8((first + $0) % 8)) != 0 }) { run, mine in
                        let part = UnsafeMutableRawBufferPointer(rebasing: dst[run])
                        if mine { try readFile(off + within + UInt64(run.lowerBound), part) }
                        else { try parent.readZeroExtended(at: pos + UInt64(run.lowerBound), into: part) }
                    }
                }
                done += n
            }
        }
    }
}
