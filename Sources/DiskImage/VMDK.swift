import WardenCore

// VMware VMDK, read-only.
//
// A VMDK disk is a text *descriptor* plus one or more *extents* laid end to
// end in guest address order. An extent is FLAT (a byte range of a plain
// file), ZERO (reads as zeros, no file), or SPARSE (a "KDMV" hosted sparse
// extent file, laid out as below). A monolithicSparse / streamOptimized disk
// is a single sparse extent whose descriptor is embedded inside it.
//
//   Hosted sparse extent file (all offsets/sizes in 512-byte sectors)
//
//   sector 0            +--------------------------------------------+
//                       | SparseExtentHeader  "KDMV", version, flags, |
//                       | capacity, grainSize, descriptorOffset/Size, |
//                       | numGTEsPerGT, rgdOffset, gdOffset, overHead |
//   descriptorOffset -> +--------------------------------------------+
//                       | embedded text descriptor (optional)        |
//   rgdOffset ------->  +--------------------------------------------+
//                       | redundant GD + GTs        (ignored here)   |
//   gdOffset -------->  +--------------------------------------------+
//                       | grain directory: u32 GDE[ceil(capacity /   |
//                       |   (grainSize*numGTEsPerGT))]  -> GT sector |
//                       | grain tables:   u32 GTE[numGTEsPerGT]      |
//                       |   0 = unallocated, 1 = zero grain,         |
//                       |   n = grain data starts at sector n        |
//   overHead -------->  +--------------------------------------------+
//                       | grains (grainSize sectors each)            |
//                       |   streamOptimized: each grain is           |
//                       |   [u64 lba][u32 size][deflate bytes...]    |
//                       |   padded to a sector, with metadata        |
//                       |   markers [u64 n][u32 0][u32 type] between |
//                       +--------------------------------------------+
//   streamOptimized with gdOffset == 0xFFFF_FFFF_FFFF_FFFF ("GD at end"):
//   the last three sectors are   [footer marker][header copy][EOS marker]
//   and the header copy carries the real gdOffset.
//
//   guest offset  o  ->  grain g = o / grainBytes
//                        GDE  = GD[g / numGTEsPerGT]
//                        GTE  = GT(GDE)[g % numGTEsPerGT]

/// VMware VMDK images: monolithicSparse, streamOptimized, and descriptor
/// files with FLAT / SPARSE / ZERO extents (twoGbMaxExtentSparse,
/// twoGbMaxExtentFlat, monolithicFlat, vmfs).
public enum VMDK {
    /// Maximum number of extents accepted in one descriptor.
    public static let maxExtents = 4096
    /// Maximum size of a descriptor (text file or embedded).
    public static let maxDescriptorBytes = 1 << 20

    static func open(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        let head = try file.readPrefix(at: 0, count: 4)
        if head == Array("KDMV".utf8) {
            return try openSparseFile(file: file, context: context)
        }
        return try openDescriptorFile(file: file, context: context)
    }

    /// A KDMV file opened directly: one sparse extent covering the whole disk.
    private static func openSparseFile(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        let sparse = try SparseExtent(file: file)
        var descriptor: Descriptor?
        if let text = try sparse.embeddedDescriptor() {
            descriptor = try Descriptor(parsing: text, file: file.path)
        }
        let parent = try descriptor.flatMap { try openParent($0, file: file, context: context) }
        let size = try Checked.mul(sparse.header.capacity, 512, "VMDK capacity")
        let device = try Device(extents: [Extent(start: 0, length: size, backing: .sparse(sparse))], path: file.path, parent: parent?.device)
        var details: [String: String] = [
            "subformat": descriptor?.createType ?? (sparse.header.isStreamOptimized ? "streamOptimized" : "monolithicSparse"),
            "version": String(sparse.header.version),
            "grain_size": String(sparse.header.grainBytes),
            "extents": "1",
            "compressed": sparse.header.compressed ? "true" : "false",
        ]
        if let cid = descriptor?.cid { details["cid"] = cid }
        let info = ImageInfo(path: file.path, format: .vmdk, virtualSize: size, fileSize: file.length,
                             allocatedSize: file.allocatedBytes, details: details,
                             backingFile: parent == nil ? nil : descriptor?.parentFileNameHint, backingFormat: parent == nil ? nil : "vmdk")
        return OpenedImage(device: device, chain: [info] + (parent?.chain ?? []))
    }

    /// A text descriptor file naming its extents.
    private static func openDescriptorFile(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        guard file.length <= UInt64(maxDescriptorBytes) else {
            throw WardenError.limit("VMDK descriptor is larger than \(maxDescriptorBytes) bytes", file: file.path)
        }
        let bytes = try file.read(at: 0, count: Int(file.length), what: "VMDK descriptor")
        let descriptor = try Descriptor(parsing: bytes, file: file.path)
        let parent = try openParent(descriptor, file: file, context: context)
        guard !descriptor.extents.isEmpty else {
            throw WardenError.corrupt("VMDK descriptor lists no extents", file: file.path)
        }
        var opener = ExtentOpener(descriptorPath: file.path, context: context)
        let opened = try opener.open(descriptor.extents)
        let device = try Device(extents: opened.extents, path: file.path, parent: parent?.device)
        var details: [String: String] = [
            "subformat": descriptor.createType ?? "unknown",
            "version": descriptor.version ?? "1",
            "extents": String(descriptor.extents.count),
        ]
        if let cid = descriptor.cid { details["cid"] = cid }
        if let sparse = opened.firstSparse {
            details["grain_size"] = String(sparse.header.grainBytes)
            details["sparse_version"] = String(sparse.header.version)
            details["compressed"] = sparse.header.compressed ? "true" : "false"
        }
        let info = ImageInfo(path: file.path, format: .vmdk, virtualSize: device.size,
                             fileSize: opened.totalFileBytes, allocatedSize: opened.totalAllocatedBytes,
                             details: details, backingFile: parent == nil ? nil : descriptor.parentFileNameHint,
                             backingFormat: parent == nil ? nil : "vmdk")
        return OpenedImage(device: device, chain: [info] + (parent?.chain ?? []))
    }

    /// A delta disk's parent (a snapshot's base), opened as the next link of the chain: named by
    /// `parentFileNameHint` (relative to this file's directory), a VMDK whose content id must be
    /// the delta's `parentCID` (else the delta was made over other content). Nil for a base disk.
    private static func openParent(_ d: Descriptor, file: ImageFile, context: ChainContext) throws -> OpenedImage? {
        guard let cid = d.parentCID, cid.lowercased() != "ffffffff" else { return nil }
        guard let hint = d.parentFileNameHint, !hint.isEmpty else {
            throw WardenError.corrupt("VMDK delta disk (parentCID \(QCOW2.printable(cid))) names no parent file", file: file.path)
        }
        let path = QCOW2.resolveBackingPath(hint, relativeTo: file.path)
        let parent = try context.openBacking(path: path, declaredFormat: .vmdk, from: file.path)
        guard let parentCID = parent.info.details["cid"], parentCID.lowercased() == cid.lowercased() else {
            throw WardenError.corrupt("VMDK delta disk expects a parent with content id \(QCOW2.printable(cid)); \(QCOW2.printable(hint)) has \(QCOW2.printable(parent.info.details["cid"] ?? "none"))", file: file.path)
        }
        return parent
    }
}


#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
