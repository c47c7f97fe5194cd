import WardenCore

// VirtualBox Disk Image (VDI), read-only.
//
//   0x000 text "<<< … VirtualBox Disk Image >>>"   0x040 u32 signature 0xBEDA107F
//   0x044 u32 version (1.1)   0x048 u32 header size   0x04C u32 type (1 dynamic, 2 static,
//   3 undo, 4 differencing)   0x154 u32 block map offset   0x158 u32 data offset
//   0x168 u32 sector size (512)   0x170 u64 disk size   0x178 u32 block size (1 MiB)
//   0x17C u32 extra bytes per block   0x180 u32 blocks in image   0x184 u32 allocated
//   block map: u32 per block, little-endian: 0xFFFFFFFF not allocated, 0xFFFFFFFE discarded
//   (both read as zeros), else n: the block is at data offset + n × block size.

/// VDI images: dynamic and static. Undo and differencing images are refused.
public enum VDI {
    static let signature: UInt32 = 0xBEDA_107F
    /// The largest block map accepted (64 Mi blocks: 64 TiB of 1 MiB blocks).
    static let maxBlocks: UInt32 = 1 << 26

    static func open(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        if context.options.snapshot != nil {
            throw WardenError(.invalidArgument, "VDI images have no internal snapshots", file: file.path)
        }
        let h = ByteReader(try file.read(at: 0, count: 512, what: "VDI header"), context: "VDI header")
        guard try h.le(at: 0x40, UInt32.self) == signature else { throw WardenError.corrupt("VDI signature is missing", file: file.path) }
        let version = try h.le(at: 0x44, UInt32.self)
        guard version >> 16 == 1 else {
            throw WardenError.unsupported("VDI version \(version >> 16).\(version & 0xFFFF) is not supported (1.x is)", file: file.path)
        }
        let type = try h.le(at: 0x4C, UInt32.self)
        switch type {
        case 1, 2: break
        case 3, 4: throw WardenError.unsupported("VDI \(type == 3 ? "undo" : "differencing") images (a disk with a parent) are not supported", file: file.path)
        default: throw WardenError.corrupt("VDI image type \(type) is unknown", file: file.path)
        }
        let mapOffset = UInt64(try h.le(at: 0x154, UInt32.self)), dataOffset = UInt64(try h.le(at: 0x158, UInt32.self))
        let sectorSize = try h.le(at: 0x168, UInt32.self)
        let size = try h.le(at: 0x170, UInt64.self)
        let blockSize = UInt64(try h.le(at: 0x178, UInt32.self))
        let extra = try h.le(at: 0x17C, UInt32.self)
        let count = try h.le(at: 0x180, UInt32.self)
        guard sectorSize == 512 else { throw WardenError.unsupported("VDI sector size \(sectorSize) is not supported (512 is)", file: file.path) }
        guard blockSize >= 512, blockSize <= 1 << 26, blockSize & (blockSize - 1) == 0 else {
            throw WardenError.corrupt("VDI block size \(blockSize) is not a power of two between 512 and 64 MiB", file: file.path)
        }
        guard extra == 0 else { throw WardenError.unsupported("VDI blocks with \(extra) extra bytes are not supported", file: file.path) }
        guard count <= maxBlocks else { throw WardenError.limit("VDI has \(count) blocks, more than \(maxBlocks)", file: file.path) }
        guard size > 0, size % 512 == 0 else { throw WardenError.corrupt("VDI disk size \(size) is not a positive multiple of 512", file: file.path) }
        let map = try file.read(at: mapOffset, count: Int(count) * 4, what: "VDI block map")
        var blocks: [BlockTableDevice.Block] = []
        blocks.reserveCapacity(Int(count))
        for i in 0..<Int(count) {
            let n: UInt32 = try ByteReader.le(map, at: 4 * i, context: "VDI block map")
            switch n {
            case 0xFFFF_FFFF: blocks.append(.absent)
            case 0xFFFF_FFFE: blocks.append(.zero)
            default:
                guard n < count else { throw WardenError.corrupt("VDI block \(i) points at block \(n), beyond the \(count) of the image", file: file.path) }
                blocks.append(.file(try Checked.add(dataOffset, UInt64(n) * blockSize, "VDI block offset")))
            }
        }
        let dev = try BlockTableDevice(file: file, size: size, blockSize: blockSize, blocks: blocks, what: "VDI")
        let info = ImageInfo(path: file.path, format: .vdi, virtualSize: size, fileSize: file.length, allocatedSize: file.allocatedBytes,
                             details: ["subformat": type == 2 ? "static" : "dynamic", "version": "\(version >> 16).\(version & 0xFFFF)",
                                       "block_size": String(blockSize), "allocated_blocks": String(dev.allocatedBlocks)])
        return OpenedImage(device: dev, chain: [info])
    }
}
