import Foundation
import WardenCore

// Microsoft Virtual Hard Disk (VHD, qemu's "vpc"), read-only.
//
//   fixed:    [ guest bytes ............................ ][ footer 512 ]
//   dynamic:  [ footer copy 512 ][ dynamic header 1024 ][ BAT ][ blocks ... ][ footer 512 ]
//
//   footer (big-endian): "conectix", features, version, data offset (-> dynamic header),
//     timestamp, creator app/version/OS, original size, current size, CHS geometry, disk type
//     (2 fixed, 3 dynamic, 4 differencing), checksum (one's complement of the byte sum), uuid
//   dynamic header: "cxsparse", table offset (-> BAT), max table entries, block size, checksum,
//     parent uuid/name/locators (differencing)
//   BAT: u32 per block, the sector of the block (0xFFFFFFFF: not allocated, reads as zeros);
//     a block is a sector bitmap (rounded up to 512 bytes) followed by the block's data.

/// VHD images: fixed, dynamic and differencing (over a parent VHD found like a backing file).
public enum VHD {
    /// The largest block table accepted (16 Mi entries: 32 TiB of 2 MiB blocks).
    static let maxTableEntries: UInt32 = 1 << 24
    /// CHS geometry at its maximum: the size is then the footer's current size (as qemu).
    static let maxGeometrySectors: UInt64 = 65535 * 16 * 255

    struct Footer {
        var dataOffset: UInt64
        var creatorApp: [UInt8]
        var currentSize: UInt64
        var cylinders: UInt64, heads: UInt64, sectorsPerTrack: UInt64
        var diskType: UInt32
        var uuid: [UInt8]

        /// Parses a 512-byte footer; nil when the cookie or the checksum is wrong.
        init?(_ bytes: [UInt8]) {
            guard bytes.count >= 512, Array(bytes[0..<8]) == Array("conectix".utf8) else { return nil }
            let r = ByteReader(bytes, context: "VHD footer")
            guard let stored = try? r.be(at: 64, UInt32.self), stored == VHD.checksum(bytes[0..<512], skipping: 64) else { return nil }
            guard let data = try? r.be(at: 16, UInt64.self), let size = try? r.be(at: 48, UInt64.self), let cyl = try? r.be(at: 56, UInt16.self),
                  let type = try? r.be(at: 60, UInt32.self) else { return nil }
            dataOffset = data
            creatorApp = Array(bytes[28..<32])
            currentSize = size
            cylinders = UInt64(cyl); heads = UInt64(bytes[58]); sectorsPerTrack = UInt64(bytes[59])
            diskType = type
            uuid = Array(bytes[68..<84])
        }

        /// The guest size, as qemu reads it: the CHS geometry for images of Virtual PC and
        /// older qemu, the current size for Hyper-V, disk2vhd, XenServer, newer qemu, or
        /// when the geometry is at its maximum.
        var guestSize: UInt64 {
            let chs = cylinders * heads * sectorsPerTrack
            let bySize: [[UInt8]] = ["win ", "qem2", "d2v ", "CTXS"].map { Array($0.utf8) } + [[0x74, 0x61, 0x70, 0x00]]
            if bySize.contains(creatorApp) || chs == VHD.maxGeometrySectors { return currentSize }
            return chs * 512
        }
    }

    /// One's complement of the sum of `bytes`, the 4 bytes at `skipping` left out.
    static func checksum(_ bytes: ArraySlice<UInt8>, skipping: Int) -> UInt32 {
        var sum: UInt32 = 0
        for (i, b) in bytes.enumerated() where i < skipping || i >= skipping + 4 { sum &+= UInt32(b) }
        return ~sum
    }

    /// Whether the last 512 bytes of `file` are a valid fixed-disk footer (a fixed VHD has
    /// nothing at its start to recognise it by).
    static func hasFixedFooter(_ file: ImageFile) -> Bool {
        guard file.length >= 1024, let tail = try? file.read(at: file.length - 512, count: 512, what: "VHD footer"),
              let f = Footer(tail) else { return false }
        return f.diskType == 2 && f.guestSize <= file.length - 512
    }

    static func open(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        if context.options.snapshot != nil {
            throw WardenError(.invalidArgument, "VHD images have no internal snapshots", file: file.path)
        }
        guard file.length >= 1024 else { throw WardenError.corrupt("file too small for a VHD image", file: file.path) }
        // The footer at the end; a dynamic disk's copy at the start when that one is damaged.
        let tail = try file.read(at: file.length - 512, count: 512, what: "VHD footer")
        let head = try file.read(at: 0, count: 512, what: "VHD footer copy")
        guard let footer = Footer(tail) ?? Footer(head) else {
            throw WardenError.corrupt("VHD footer is missing or its checksum is wrong", file: file.path)
        }
        let size = footer.guestSize
        guard size > 0, size % 512 == 0 else { throw WardenError.corrupt("VHD disk size \(size) is not a positive multiple of 512", file: file.path) }
        var details: [String: String] = [
            "creator": String(decoding: footer.creatorApp.map { (0x20...0x7E).contains($0) ? $0 : 0x3F }, as: UTF8.self),
            "uuid": formatUUID(footer.uuid),
        ]
        let device: any BlockDevice
        var parent: OpenedImage?
        var parentName: String?
        switch footer.diskType {
        case 2:
            guard size <= file.length - 512 else {
                throw WardenError.corrupt("fixed VHD of \(size) bytes is larger than its file", file: file.path)
            }
            device = try SliceDevice(base: RawDevice(file: file), start: 0, size: size)
            details["subformat"] = "fixed"
        case 3, 4:
            let dyn = try file.read(at: footer.dataOffset, count: 1024, what: "VHD dynamic header")
            guard Array(dyn[0..<8]) == Array("cxsparse".utf8) else {
                throw WardenError.corrupt("VHD dynamic header at \(hex(footer.dataOffset)) has no cxsparse cookie", file: file.path)
            }
            let r = ByteReader(dyn, context: "VHD dynamic header")
            guard try r.be(at: 36, UInt32.self) == checksum(dyn[0..<1024], skipping: 36) else {
                throw WardenError.corrupt("VHD dynamic header checksum is wrong", file: file.path)
            }
            let tableOffset = try r.be(at: 16, UInt64.self)
            let entries = try r.be(at: 28, UInt32.self)
            let blockSize = UInt64(try r.be(at: 32, UInt32.self))
            guard blockSize >= 512, blockSize & (blockSize - 1) == 0 else {
                throw WardenError.corrupt("VHD block size \(blockSize) is not a power of two of at least 512", file: file.path)
            }
            guard entries <= maxTableEntries else {
                throw WardenError.limit("VHD block table has \(entries) entries, more than \(maxTableEntries)", file: file.path)
            }
            let bat = try file.read(at: tableOffset, count: Int(entries) * 4, what: "VHD block table")
            let bitmapBytes = (blockSize / 512 / 8 + 511) / 512 * 512
            var blocks: [BlockTableDevice.Block] = []
            blocks.reserveCapacity(Int(entries))
            for i in 0..<Int(entries) {
                let sector: UInt32 = try ByteReader.be(bat, at: 4 * i, context: "VHD block table")
                blocks.append(sector == 0xFFFF_FFFF ? .absent : .file(UInt64(sector) * 512 + bitmapBytes))
            }
            let dev = try BlockTableDevice(file: file, size: size, blockSize: blockSize, blocks: blocks, what: "VHD")
            details["block_size"] = String(blockSize)
            details["allocated_blocks"] = String(dev.allocatedBlocks)
            if footer.diskType == 3 {
                device = dev
                details["subformat"] = "dynamic"
            } else {
                let (p, name) = try openParent(dyn, file: file, context: context)
                parent = p
                parentName = name
                device = try DifferencingDevice(blocks: dev, bitmapBytes: bitmapBytes, file: file, parent: p.device)
                details["subformat"] = "differencing"
            }
        default:
            throw WardenError.corrupt("VHD disk type \(footer.diskType) is unknown", file: file.path)
        }
        let info = ImageInfo(path: file.path, format: .vhd, virtualSize: size, fileSize: file.length,
                             allocatedSize: file.allocatedBytes, details: details,
                             backingFile: parentName, backingFormat: parent == nil ? nil : "vpc")
        return OpenedImage(device: device, chain: [info] + (parent?.chain ?? []))
    }

    /// A differencing disk's parent, opened as the next link of the chain. Found, like a
    /// backing file, relative to this file: by the relative Windows locator (`W2ru`), else by
    /// the parent's name in this file's directory (the absolute locator `W2ku` names a path on
    /// the machine that made the disk). The parent's footer id must be the one this disk
    /// records, else the disk was made over other content.
    static func openParent(_ dyn: [UInt8], file: ImageFile, context: ChainContext) throws -> (OpenedImage, String) {
        let parentID = Array(dyn[40..<56])
        let nameBytes = Array(dyn[64..<576])
        var name = utf16(nameBytes, bigEndian: true)
        var candidates: [String] = []
        for i in 0..<8 {
            let e = 576 + 24 * i
            let code = Array(dyn[e..<e + 4])
            let length = Int(try ByteReader.be(dyn, at: e + 8, context: "VHD parent locator") as UInt32)
            let offset: UInt64 = try ByteReader.be(dyn, at: e + 16, context: "VHD parent locator")
            guard code == Array("W2ru".utf8) || code == Array("W2ku".utf8), length > 0 else { continue }
            guard length <= 4096 else { throw WardenError.corrupt("VHD parent locator \(i) is \(length) bytes long", file: file.path) }
            let raw = try file.read(at: offset, count: length, what: "VHD parent locator")
            let path = utf16(raw, bigEndian: false).replacingOccurrences(of: "\\", with: "/")
            if code == Array("W2ru".utf8) {
                candidates.insert(path.hasPrefix("./") ? String(path.dropFirst(2)) : path, at: 0)
            } else if let base = path.split(separator: "/").last {
                candidates.append(String(base))
            }
        }
        if name.contains("\\") || name.contains("/") {
            name = String(name.replacingOccurrences(of: "\\", with: "/").split(separator: "/").last ?? "")
        }
        if !name.isEmpty { candidates.append(name) }
        guard !candidates.isEmpty else {
            throw WardenError.corrupt("differencing VHD names no parent (no locator, no parent name)", file: file.path)
        }
        var lastError: WardenError?
        for c in candidates where !c.isEmpty && !c.hasPrefix("/") {
            let path = QCOW2.resolveBackingPath(c, relativeTo: file.path)
            guard FileManager.default.fileExists(atPath: path) else { continue }
            do {
                let parent = try context.openBacking(path: path, declaredFormat: .vhd, from: file.path)
                guard parent.info.details["uuid"] == formatUUID(parentID) else {
                    throw WardenError.corrupt("differencing VHD expects a parent with id \(formatUUID(parentID)); \(QCOW2.printable(c)) has \(parent.info.details["uuid"] ?? "none")", file: file.path)
                }
                return (parent, c)
            } catch let e as WardenError {
                lastError = e
            }
        }
        throw lastError ?? WardenError.notFound("differencing VHD's parent \(QCOW2.printable(candidates[0])) is not beside it", file: file.path)
    }

    static func utf16(_ bytes: [UInt8], bigEndian: Bool) -> String {
        var units: [UInt16] = []
        var i = 0
        while i + 1 < bytes.count {
            let u = bigEndian ? UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1]) : UInt16(bytes[i + 1]) << 8 | UInt16(bytes[i])
            if u == 0 { break }
            units.append(u)
            i += 2
        }
        return String(decoding: units, as: UTF16.self)
    }

    /// A differencing disk: each allocated block starts with a sector bitmap (bit set: the
    /// sector is in this file; clear: in the parent); unallocated blocks are the parent's.
    final class DifferencingDevice: BlockDevice, @unchecked Sendable {
        let blocks: BlockTableDevice
        let bitmapBytes: UInt64
        let file: ImageFile
        let parent: any BlockDevice
        var size: UInt64 { blocks.size }
        private let bitmaps = BoundedCache<Int, [UInt8]>(capacity: 64)

        init(blocks: BlockTableDevice, bitmapBytes: UInt64, file: ImageFile, parent: any BlockDevice) throws {
            self.blocks = blocks
            self.bitmapBytes = bitmapBytes
            self.file = file
            self.parent = parent
        }

        private func bitmap(_ block: Int, at fileOffset: UInt64) throws -> [UInt8] {
            if let b = bitmaps[block] { return b }
            guard fileOffset >= bitmapBytes else { throw WardenError.corrupt("VHD block \(block) has no room for its bitmap", file: file.path) }
            let b = try file.read(at: fileOffset - bitmapBytes, count: Int(bitmapBytes), what: "VHD sector bitmap")
            bitmaps.put(block, b)
            return b
        }

        func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
            try checkRange(offset, buffer.count)
            let bs = blocks.blockSize
            var done = 0
            while done < buffer.count {
                let pos = offset + UInt64(done)
                let block = Int(pos / bs), within = pos % bs
                let n = Int(min(UInt64(buffer.count - done), bs - within))
                let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n])
                guard let fileOffset = blocks.fileOffset(ofBlock: block) else {
                    try parent.readZeroExtended(at: pos, into: dst)
                    done += n
                    continue
                }
                let map = try bitmap(block, at: fileOffset)
                // The block's bitmap: most significant bit first.
                try forEachSectorRun(count: n, within: within, sectorSize: 512,
                                     present: { map[Int($0 / 8)] & (0x80 >> UInt8($0 % 8)) != 0 }) { run, mine in
                    let part = UnsafeMutableRawBufferPointer(rebasing: dst[run])
                    if mine { try file.read(at: fileOffset + within + UInt64(run.lowerBound), into: part) }
                    else { try parent.readZeroExtended(at: pos + UInt64(run.lowerBound), into: part) }
                }
                done += n
            }
        }
    }
}
