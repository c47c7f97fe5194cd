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

/// VHD images: fixed and dynamic. Differencing disks are refused (no tool on this machine
/// makes one to test against; docs/decisions.md).
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
        ]
        let device: any BlockDevice
        switch footer.diskType {
        case 2:
            guard size <= file.length - 512 else {
                throw WardenError.corrupt("fixed VHD of \(size) bytes is larger than its file", file: file.path)
            }
            device = try SliceDevice(base: RawDevice(file: file), start: 0, size: size)
            details["subformat"] = "fixed"
        case 3:
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
            device = dev
            details["subformat"] = "dynamic"
            details["block_size"] = String(blockSize)
            details["allocated_blocks"] = String(dev.allocatedBlocks)
        case 4:
            throw WardenError.unsupported("differencing VHD images (a disk with a parent) are not supported", file: file.path)
        default:
            throw WardenError.corrupt("VHD disk type \(footer.diskType) is unknown", file: file.path)
        }
        let info = ImageInfo(path: file.path, format: .vhd, virtualSize: size, fileSize: file.length,
                             allocatedSize: file.allocatedBytes, details: details)
        return OpenedImage(device: device, chain: [info])
    }
}
