import WardenCore

// qcow2 on-disk layout (all integers big-endian):
//
//   host file
//   +-------------------------------------------------------------+ 0x0
//   | header (72 bytes v2, header_length >= 104 bytes v3)         |
//   | header extensions: {type u32, length u32, data, pad to 8}*  |
//   |   0xe2792aca backing format   0x6803f857 feature names     |
//   |   0x44415441 external data    0x00000000 end               |
//   | backing file name (backing_file_offset, backing_file_size)  |
//   +-------------------------------------------------------------+ cluster 1..
//   | refcount table / refcount blocks   (not needed to read)     |
//   | L1 table: l1_size x u64, contiguous, cluster aligned        |
//   | L2 tables: one cluster each                                 |
//   | data clusters, compressed cluster runs                      |
//   | snapshot table: variable-length entries, 8-byte aligned     |
//   +-------------------------------------------------------------+
//
//   guest offset -> host offset
//
//     guest offset = [ l1 index | l2 index | offset in cluster ]
//                                            `-- cluster_bits --'
//                               `- log2(l2_entries) -'
//
//     L1[l1 index] --(bits 9..55)--> L2 table (one cluster)
//     L2[l2 index] ---------------->  standard: bits 9..55 host cluster, bit 0 "reads as zeros" (v3)
//                                     compressed (bit 62): host byte offset + extra 512-byte sectors
//                                     0: unallocated -> backing file, or zeros without one
//     extended L2 (incompat bit 4): 128-bit entries, second word = 32 alloc bits | 32 zero bits
//                                   (one pair per subcluster of cluster_size / 32 bytes)
//
//     internal snapshot: its own L1 table; the snapshot table lists them.

/// qcow2 (QEMU copy-on-write, versions 2 and 3), read-only.
///
/// ``QCOW2/open(file:context:)`` parses and validates the header
/// (`QCOW2+Header.swift`), the snapshot table (`QCOW2+Snapshots.swift`) and
/// the active (or selected snapshot's) L1 table, opens the backing chain
/// through ``ChainContext``, and returns a ``QCOW2/Device``
/// (`QCOW2+Device.swift`) that maps guest reads onto the file.
public enum QCOW2 {
    /// The largest L1 table accepted (the same limit QEMU uses): 32 MiB.
    static let maxL1Bytes: UInt64 = 32 << 20
    /// Budget for cached L2 tables per device.
    static let l2CacheBytes = 32 << 20

    static func open(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        let header = try Header.parse(file)
        let snapshots = try Snapshot.readTable(file: file, header: header)

        // Pick the L1 table: the active one, or the requested snapshot's.
        var l1Offset = header.l1TableOffset
        var l1Size = header.l1Size
        var virtualSize = header.size
        var details = header.details
        if let wanted = context.options.snapshot {
            guard let snap = snapshots.first(where: { $0.info.name == wanted })
                ?? snapshots.first(where: { $0.info.id == wanted }) else {
                throw WardenError.notFound("no internal snapshot with name or id '\(printable(wanted))'", file: file.path)
            }
            l1Offset = snap.l1TableOffset
            l1Size = snap.l1Size
            virtualSize = snap.info.virtualSize
            details["snapshot_id"] = snap.info.id
            details["snapshot_name"] = snap.info.name
            details["current_virtual_size"] = String(header.size)
        }
        let l1 = try readL1(file: file, header: header, offset: l1Offset, entries: l1Size, virtualSize: virtualSize,
                            allowShort: context.options.snapshot != nil)

        // Backing chain: resolve relative names against this image's directory.
        var backing: OpenedImage?
        if let name = header.backingFile {
            let path = resolveBackingPath(name, relativeTo: file.path)
            backing = try context.openBacking(path: path, declaredFormat: header.backingFormat, from: file.path)
        }

        var cipher: XTSCipher?
        if let enc = header.encryption {
            guard context.depth == 0, let passphrase = context.options.passphrase else {
                throw WardenError.unsupported(context.depth == 0 ? "the image is encrypted (qcow2 with LUKS): give its key (--key-from)"
                                                                 : "an encrypted backing file is not supported", file: file.path)
            }
            let luks = try LUKS1Header.parse(try file.read(at: enc.offset, count: LUKS1Header.size, what: "LUKS header"), file: file.path)
            let master = try luks.unlock(passphrase: passphrase, volumeLength: enc.length, file: file.path) { offset, count in
                guard offset + UInt64(count) <= enc.length else {
                    throw WardenError.corrupt("LUKS key material lies beyond the LUKS header area", file: file.path)
                }
                return try file.read(at: enc.offset + offset, count: count, what: "LUKS key material")
            }
            cipher = try XTSCipher(key: master)
            details["encryption"] = "luks \(luks.cipherName)-\(luks.cipherMode) \(luks.keyBytes * 4)-bit"
        }
        let device = Device(file: file, header: header, l1: l1, size: virtualSize, backing: backing?.device, cipher: cipher)
        let info = ImageInfo(
            path: file.path, format: .qcow2, virtualSize: virtualSize, fileSize: file.length,
            allocatedSize: file.allocatedBytes, details: details, backingFile: header.backingFile,
            backingFormat: header.backingFormatName, snapshots: snapshots.map(\.info))
        return OpenedImage(device: device, chain: [info] + (backing?.chain ?? []))
    }

    /// Number of L1 entries needed to map `size` guest bytes.
    static func l1EntriesNeeded(size: UInt64, header: Header) -> UInt64 {
        let bytesPerL1 = UInt64(header.l2Entries) << UInt64(header.clusterBits) // <= 2^(21+18)
        return size / bytesPerL1 + (size % bytesPerL1 == 0 ? 0 : 1)
    }

    /// Reads and validates an L1 table, returning host-endian entries.
    ///
    /// The active L1 table must cover the virtual size. A snapshot's table may
    /// be shorter (QEMU reads guest clusters past it as unallocated), so
    /// `allowShort` accepts that; ``Device`` treats missing entries as unallocated.
    static func readL1(file: ImageFile, header: Header, offset: UInt64, entries: UInt32, virtualSize: UInt64,
                       allowShort: Bool = false) throws -> [UInt64] {
        let needed = l1EntriesNeeded(size: virtualSize, header: header)
        let bytes = UInt64(entries) * 8
        guard bytes <= maxL1Bytes else {
            throw WardenError.limit("L1 table of \(entries) entries is larger than the \(maxL1Bytes >> 20) MiB limit", file: file.path)
        }
        guard needed <= UInt64(entries) || allowShort else {
            throw WardenError.corrupt("L1 table has \(entries) entries, too few for a virtual size of \(virtualSize) bytes (needs \(needed))", file: file.path)
        }
        // Only the entries that map the virtual disk matter; the rest (VM state) is never read.
        let count = Int(min(needed, UInt64(entries))) // <= entries <= 4Mi
        if count == 0 { return [] }
        guard offset & UInt64(header.clusterSize - 1) == 0 else {
            throw WardenError.corrupt("L1 table offset \(hex(offset)) is not aligned to a cluster", file: file.path, offset: offset)
        }
        let (end, o) = offset.addingReportingOverflow(UInt64(count) * 8)
        guard offset != 0, !o, end <= file.length else {
            throw WardenError.corrupt("L1 table at offset \(hex(offset)) lies beyond the end of the file", file: file.path, offset: offset)
        }
        var table = [UInt64](repeating: 0, count: count)
        try table.withUnsafeMutableBytes { try file.read(at: offset, into: $0) }
        for i in 0..<count {
            let e = UInt64(bigEndian: table[i])
            table[i] = e
            if e & l1ReservedMask != 0 {
                throw WardenError.corrupt("L1 table entry \(i) has reserved bits set (\(hex(e)))", file: file.path, offset: offset + UInt64(i) * 8)
            }
            let l2 = e & 0x00ff_ffff_ffff_ffff
            if l2 & UInt64(header.clusterSize - 1) != 0 {
                throw WardenError.corrupt("L1 table entry \(i) points at unaligned offset \(hex(l2))", file: file.path, offset: offset + UInt64(i) * 8)
            }
        }
        return table
    }

    /// Bits 9..55: an L1 entry's L2 offset, a standard L2 entry's host cluster offset.
    static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    /// Bits 56..62 of an L1 entry must be zero (bits 0..8 are checked as misalignment).
    static let l1ReservedMask: UInt64 = 0x7f00_0000_0000_0000

    /// A relative backing name is relative to the directory of the image naming it.
    static func resolveBackingPath(_ name: String, relativeTo imagePath: String) -> String {
        if name.hasPrefix("/") { return name }
        guard let slash = imagePath.lastIndex(of: "/") else { return name }
        return String(imagePath[...slash]) + name
    }
}

extension QCOW2 {
    /// Makes text from an image safe for a one-line message: control
    /// characters become `?`, and long text is cut.
    static func printable(_ s: String, limit: Int = 64) -> String {
        var out = ""
        for ch in s.unicodeScalars.prefix(limit) {
            out.unicodeScalars.append(ch.value < 0x20 || ch.value == 0x7f ? "?" : ch)
        }
        return s.unicodeScalars.count > limit ? out + "…" : out
    }
}
