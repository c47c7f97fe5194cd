import WardenCore

// Microsoft VHDX, read-only (MS-VHDX).
//
//   0        file identifier "vhdxfile"
//   64 KiB   header 1 ─┐ "head", CRC-32C, sequence number, log GUID, log offset/length:
//   128 KiB  header 2 ─┘ the valid one with the higher sequence number is current
//   192 KiB  region table 1 ─┐ "regi", CRC-32C, entries (GUID, offset, length, required):
//   256 KiB  region table 2 ─┘ the BAT and the metadata region
//   metadata region: "metadata", entries (GUID, offset, length, flags): file parameters
//     (block size, has-parent), virtual disk size, logical sector size, …
//   BAT: u64 per entry: state in bits 0-2, file offset in MiB in bits 20-63. Payload block i
//     is entry i + i / chunk ratio (a sector-bitmap entry follows every chunk-ratio payloads;
//     chunk ratio = 2^23 × logical sector size / block size). States: 0 not present,
//     1 undefined, 2 zero, 3 unmapped (all read as zeros), 6 fully present, 7 partially
//     present (differencing only).
//
// A non-empty log (a header with a log GUID) means the file was not closed cleanly and its
// newest metadata may be in the log: it is replayed in memory (VHDX+Log.swift).

/// VHDX images: fixed, dynamic and differencing (over a parent found like a backing file),
/// with a log left by an unclean close replayed in memory.
public enum VHDX {
    static let maxRegionEntries = 2047
    static let maxMetadataEntries = 2047
    /// The largest BAT accepted (2^24 entries: 512 TiB of 32 MiB blocks).
    static let maxBATEntries: UInt64 = 1 << 24

    static let batGUID = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
    static let metadataGUID = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
    static let fileParametersGUID = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
    static let virtualDiskSizeGUID = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
    static let logicalSectorSizeGUID = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
    static let physicalSectorSizeGUID = guid("CDA348C7-445D-4471-9CC9-E9885251C556")
    /// Page 83 data: the virtual disk's id.
    static let page83GUID = guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
    static let parentLocatorGUID = guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")

    /// A GUID's on-disk bytes (the first three fields little-endian).
    static func guid(_ text: String) -> [UInt8] {
        let hex = Array(text.replacingOccurrences(of: "-", with: "").utf8)
        var b: [UInt8] = stride(from: 0, to: 32, by: 2).map { i in
            func v(_ c: UInt8) -> UInt8 { c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10 }
            return v(hex[i]) << 4 | v(hex[i + 1])
        }
        b[0..<4].reverse(); b[4..<6].reverse(); b[6..<8].reverse()
        return b
    }

    /// Whether the CRC-32C stored at `at` matches `bytes` with that field zeroed.
    static func checksumOK(_ bytes: [UInt8], at: Int) -> Bool {
        guard let stored: UInt32 = try? ByteReader.le(bytes, at: at) else { return false }
        var copy = bytes
        copy[at] = 0; copy[at + 1] = 0; copy[at + 2] = 0; copy[at + 3] = 0
        return CRC32.castagnoli.checksum(copy) == stored
    }

    struct Header {
        var sequence: UInt64
        var dataWriteGUID: [UInt8] = []
        var logGUID: [UInt8]
        var version: UInt16
        var logLength: UInt32 = 0
        var logOffset: UInt64 = 0
    }

    static func header(_ file: ImageFile, at offset: UInt64) -> Header? {
        guard let b = try? file.read(at: offset, count: 4096, what: "VHDX header"), Array(b[0..<4]) == Array("head".utf8),
              checksumOK(b, at: 4) else { return nil }
        let r = ByteReader(b, context: "VHDX header")
        guard let seq = try? r.le(at: 8, UInt64.self), let version = try? r.le(at: 66, UInt16.self),
              let logLength = try? r.le(at: 68, UInt32.self), let logOffset = try? r.le(at: 72, UInt64.self) else { return nil }
        return Header(sequence: seq, dataWriteGUID: Array(b[32..<48]), logGUID: Array(b[48..<64]), version: version,
                      logLength: logLength, logOffset: logOffset)
    }

    struct Region { var offset: UInt64; var length: UInt32 }

    static func regions(_ file: ImageFile, at offset: UInt64) throws -> [[UInt8]: Region]? {
        guard let b = try? file.read(at: offset, count: 65536, what: "VHDX region table"), Array(b[0..<4]) == Array("regi".utf8),
              checksumOK(b, at: 4) else { return nil }
        let r = ByteReader(b, context: "VHDX region table")
        let count = Int(try r.le(at: 8, UInt32.self))
        guard count <= maxRegionEntries else { throw WardenError.corrupt("VHDX region table has \(count) entries", file: file.path) }
        var out: [[UInt8]: Region] = [:]
        for i in 0..<count {
            let e = 16 + 32 * i
            let id = Array(b[e..<e + 16])
            let region = Region(offset: try r.le(at: e + 16, UInt64.self), length: try r.le(at: e + 24, UInt32.self))
            let required = try r.le(at: e + 28, UInt32.self) & 1 == 1
            if id != batGUID && id != metadataGUID && required {
                throw WardenError.unsupported("VHDX has a required region this reader does not know", file: file.path)
            }
            guard region.offset % (1 << 20) == 0, region.length % (1 << 20) == 0, region.offset >= 1 << 20 else {
                throw WardenError.corrupt("VHDX region at \(hex(region.offset)) is not aligned to 1 MiB", file: file.path)
            }
            out[id] = region
        }
        return out
    }

    static func open(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        if context.options.snapshot != nil {
            throw WardenError(.invalidArgument, "VHDX images have no internal snapshots", file: file.path)
        }
        guard try file.readPrefix(at: 0, count: 8) == Array("vhdxfile".utf8) else {
            throw WardenError.corrupt("VHDX file identifier is missing", file: file.path)
        }
        let headers = [header(file, at: 64 << 10), header(file, at: 128 << 10)].compactMap { $0 }
        guard let current = headers.max(by: { $0.sequence < $1.sequence }) else {
            throw WardenError.corrupt("neither VHDX header is valid", file: file.path)
        }
        guard current.version == 1 else { throw WardenError.unsupported("VHDX version \(current.version) is not supported (1 is)", file: file.path) }
        // A log GUID: the file was not closed cleanly; what the log holds is replayed in memory.
        let replay: LogReplay? = current.logGUID.allSatisfy({ $0 == 0 }) ? nil : try replayLog(file, header: current)
        guard let regions = try regions(file, at: 192 << 10) ?? regions(file, at: 256 << 10) else {
            throw WardenError.corrupt("neither VHDX region table is valid", file: file.path)
        }
        guard let bat = regions[batGUID], let meta = regions[metadataGUID] else {
            throw WardenError.corrupt("VHDX region table lacks the BAT or the metadata region", file: file.path)
        }

        // Metadata.
        guard meta.length >= 65536, meta.length <= 1 << 26 else { throw WardenError.corrupt("VHDX metadata region of \(meta.length) bytes", file: file.path) }
        let m = try read(file, at: meta.offset, count: Int(meta.length), what: "VHDX metadata region", replay: replay)
        guard Array(m[0..<8]) == Array("metadata".utf8) else { throw WardenError.corrupt("VHDX metadata region has no signature", file: file.path) }
        let mr = ByteReader(m, context: "VHDX metadata")
        let entries = Int(try mr.le(at: 10, UInt16.self))
        guard entries <= maxMetadataEntries else { throw WardenError.corrupt("VHDX metadata has \(entries) entries", file: file.path) }
        var items: [[UInt8]: ArraySlice<UInt8>] = [:]
        let known = [fileParametersGUID, virtualDiskSizeGUID, logicalSectorSizeGUID, physicalSectorSizeGUID, page83GUID, parentLocatorGUID]
        for i in 0..<entries {
            let e = 32 + 32 * i
            let id = Array(m[e..<e + 16])
            let off = Int(try mr.le(at: e + 16, UInt32.self)), len = Int(try mr.le(at: e + 20, UInt32.self))
            let flags = try mr.le(at: e + 24, UInt32.self)
            if flags & 4 != 0 && !known.contains(id) {
                throw WardenError.unsupported("VHDX has required metadata this reader does not know", file: file.path)
            }
            guard off <= m.count, len <= m.count - off, len == 0 || off >= 65536 else {
                throw WardenError.corrupt("VHDX metadata item \(i) lies outside the metadata region", file: file.path)
            }
            items[id] = m[off..<off + len]
        }
        func item(_ id: [UInt8], _ n: Int, _ name: String) throws -> ByteReader {
            guard let s = items[id], s.count >= n else { throw WardenError.corrupt("VHDX metadata lacks the \(name)", file: file.path) }
            return ByteReader(Array(s), context: "VHDX \(name)")
        }
        let params = try item(fileParametersGUID, 8, "file parameters")
        let blockSize = UInt64(try params.le(at: 0, UInt32.self))
        let hasParent = try params.le(at: 4, UInt32.self) & 2 != 0
        let size = try item(virtualDiskSizeGUID, 8, "virtual disk size").le(at: 0, UInt64.self)
        let sector = UInt64(try item(logicalSectorSizeGUID, 4, "logical sector size").le(at: 0, UInt32.self))
        guard blockSize >= 1 << 20, blockSize <= 256 << 20, blockSize & (blockSize - 1) == 0 else {
            throw WardenError.corrupt("VHDX block size \(blockSize) is not a power of two between 1 MiB and 256 MiB", file: file.path)
        }
        guard sector == 512 || sector == 4096 else { throw WardenError.corrupt("VHDX logical sector size \(sector) is neither 512 nor 4096", file: file.path) }
        guard size > 0, size % sector == 0, size <= 64 << 40 else {
            throw WardenError.corrupt("VHDX virtual disk size \(size) is not a positive multiple of \(sector) up to 64 TiB", file: file.path)
        }
        var parent: OpenedImage?
        var parentName: String?
        if hasParent {
            guard let loc = items[parentLocatorGUID] else {
                throw WardenError.corrupt("differencing VHDX has no parent locator", file: file.path)
            }
            (parent, parentName) = try openParent(Array(loc), file: file, context: context)
        }

        // The BAT: payload entries interleaved with sector-bitmap entries.
        let chunkRatio = (UInt64(1) << 23) * sector / blockSize
        let dataBlocks = (size + blockSize - 1) / blockSize
        let chunks = (dataBlocks + chunkRatio - 1) / chunkRatio
        // A differencing disk has a sector-bitmap entry after every chunk, the last one included.
        let total = hasParent ? chunks * (chunkRatio + 1) : dataBlocks + (dataBlocks - 1) / chunkRatio
        guard total <= maxBATEntries, total * 8 <= UInt64(bat.length) else {
            throw WardenError.corrupt("VHDX BAT of \(bat.length) bytes cannot hold \(total) entries", file: file.path)
        }
        let raw = try read(file, at: bat.offset, count: Int(total) * 8, what: "VHDX BAT", replay: replay)
        let br = ByteReader(raw, context: "VHDX BAT")
        if let parent {
            let dev = try DifferencingDevice(bat: br, size: size, blockSize: blockSize, sectorSize: sector, chunkRatio: chunkRatio,
                                             file: file, parent: parent.device, patch: replay)
            var details = ["block_size": String(blockSize), "logical_sector_size": String(sector), "subformat": "differencing",
                           "header_sequence": String(current.sequence), "data_write_guid": guidText(current.dataWriteGUID)]
            if let replay {
                details["log"] = "not closed cleanly; replayed in memory: \(replay.entries) log entr\(replay.entries == 1 ? "y" : "ies") (the file is unchanged)"
            }
            let info = ImageInfo(path: file.path, format: .vhdx, virtualSize: size, fileSize: file.length, allocatedSize: file.allocatedBytes,
                                 details: details, backingFile: parentName, backingFormat: "vhdx")
            return OpenedImage(device: dev, chain: [info] + parent.chain)
        }
        var blocks: [BlockTableDevice.Block] = []
        blocks.reserveCapacity(Int(dataBlocks))
        for i in 0..<dataBlocks {
            let e = try br.le(at: Int(i + i / chunkRatio) * 8, UInt64.self)
            switch e & 7 {
            case 0, 1, 2, 3: blocks.append(e & 7 == 2 ? .zero : .absent)
            case 6: blocks.append(.file(try Checked.mul(e >> 20, 1 << 20, "VHDX block offset")))
            case 7: throw WardenError.corrupt("VHDX block \(i) is partially present, which only a differencing image may be", file: file.path)
            default: throw WardenError.corrupt("VHDX block \(i) has state \(e & 7)", file: file.path)
            }
        }
        var patch: BlockTableDevice.Patch?
        if let replay, !replay.sectors.isEmpty { patch = { buf, at in VHDX.apply(replay, to: buf, at: at) } }
        let dev = try BlockTableDevice(file: file, size: size, blockSize: blockSize, blocks: blocks, what: "VHDX", patch: patch)
        var details = ["block_size": String(blockSize), "logical_sector_size": String(sector),
                       "allocated_blocks": String(dev.allocatedBlocks), "header_sequence": String(current.sequence),
                       "data_write_guid": guidText(current.dataWriteGUID)]
        if let replay {
            details["log"] = replay.entries == 0
                ? "not closed cleanly; the log holds no complete entry, so nothing was replayed"
                : "not closed cleanly; replayed in memory: \(replay.entries) log entr\(replay.entries == 1 ? "y" : "ies") up to sequence \(replay.sequence), \(replay.sectors.count) sector\(replay.sectors.count == 1 ? "" : "s") (the file is unchanged)"
        }
        let info = ImageInfo(path: file.path, format: .vhdx, virtualSize: size, fileSize: file.length, allocatedSize: file.allocatedBytes,
                             details: details)
        return OpenedImage(device: dev, chain: [info])
    }
}
