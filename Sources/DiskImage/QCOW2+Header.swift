import WardenCore

extension QCOW2 {
    /// Incompatible feature bits (header byte 72, v3 only).
    enum Incompatible {
        static let dirty: UInt64 = 1 << 0
        static let corrupt: UInt64 = 1 << 1
        static let externalDataFile: UInt64 = 1 << 2
        static let compressionType: UInt64 = 1 << 3
        static let extendedL2: UInt64 = 1 << 4
        static let known: UInt64 = 0x1f
    }

    /// Header extension types.
    enum Extension {
        static let end: UInt32 = 0
        static let backingFormat: UInt32 = 0xe279_2aca
        static let featureNameTable: UInt32 = 0x6803_f857
        static let bitmaps: UInt32 = 0x2385_2875
        static let fullDiskEncryption: UInt32 = 0x0537_be77
        static let externalDataFile: UInt32 = 0x4441_5441
    }

    public enum CompressionType: UInt8, Sendable {
        case zlib = 0
        case zstd = 1
    }

    /// A parsed and validated qcow2 header, including the extensions Warden uses.
    ///
    /// Feature policy:
    /// - `dirty` is accepted: it only means refcounts may be stale, which a
    ///   reader never consults.
    /// - `corrupt` is accepted for reading and reported in `details`: QEMU
    ///   also allows read-only access to such images, and every structure is
    ///   bounds-checked here anyway, so the flag adds no risk; refusing it would
    ///   stop recovering data from exactly the images that need it.
    /// - `external data file` is refused (`.unsupported`): it pulls in another host file.
    /// - `compression type` and `extended L2` are supported.
    /// - any other incompatible bit is refused, naming the bit (and its name
    ///   from the feature name table, when present).
    /// - LUKS encryption (`crypt_method` 2 with its full-disk-encryption extension) is read
    ///   when the caller gives the key (``OpenOptions/passphrase``); the legacy AES method (1) is
    ///   refused.
    public struct Header: Sendable {
        public var version: UInt32
        public var clusterBits: Int
        public var size: UInt64
        public var l1Size: UInt32
        public var l1TableOffset: UInt64
        public var snapshotCount: UInt32
        public var snapshotsOffset: UInt64
        public var incompatibleFeatures: UInt64 = 0
        public var compatibleFeatures: UInt64 = 0
        public var autoclearFeatures: UInt64 = 0
        public var refcountOrder: UInt32 = 4
        public var headerLength: UInt32 = 72
        public var compressionType: CompressionType = .zlib
        /// The backing file name exactly as written (not resolved).
        public var backingFile: String?
        /// The backing format named by the header extension, as written.
        public var backingFormatName: String?
        /// Where the LUKS header of an encrypted image lies in the file (`crypt_method` 2).
        public var encryption: Encryption?
        public struct Encryption: Sendable, Equatable { public var offset: UInt64; public var length: UInt64 }

        public var clusterSize: Int { 1 << clusterBits }
        public var extendedL2: Bool { incompatibleFeatures & Incompatible.extendedL2 != 0 }
        /// Entries per L2 table (64-bit, or 128-bit with extended L2).
        public var l2Entries: Int { clusterSize >> (extendedL2 ? 4 : 3) }
        /// The backing format as a Warden format, once validated.
        var backingFormat: ImageFormat? {
            backingFormatName.flatMap { ImageFormat(qemuName: $0) }
        }

        var details: [String: String] {
            [
                "version": String(version),
                "cluster_size": String(clusterSize),
                "compression_type": compressionType == .zlib ? "zlib" : "zstd",
                "extended_l2": String(extendedL2),
                "dirty": String(incompatibleFeatures & Incompatible.dirty != 0),
                "corrupt": String(incompatibleFeatures & Incompatible.corrupt != 0),
                "refcount_bits": String(1 << refcountOrder),
                "lazy_refcounts": String(compatibleFeatures & 1 != 0),
                "l1_size": String(l1Size),
            ]
        }

        /// Reads and validates the header and its extensions from `file`.
        static func parse(_ file: ImageFile) throws -> Header {
            let path = file.path
            guard file.length >= 72 else {
                throw WardenError.corrupt("qcow2 header is truncated: the file is only \(file.length) bytes", file: path)
            }
            let head = try file.read(at: 0, count: Int(min(file.length, 112)), what: "qcow2 header")
            var r = ByteReader(head, context: "qcow2 header")
            let magic: UInt32 = try r.readBE()
            guard magic == 0x5146_49fb else {
                throw WardenError.corrupt("bad qcow2 magic \(hex(magic))", file: path)
            }
            let version: UInt32 = try r.readBE()
            guard version == 2 || version == 3 else {
                throw WardenError.unsupported("qcow2 version \(version) is not supported (only 2 and 3)", file: path)
            }
            let backingOffset: UInt64 = try r.readBE()
            let backingSize: UInt32 = try r.readBE()
            let clusterBits: UInt32 = try r.readBE()
            let size: UInt64 = try r.readBE()
            let cryptMethod: UInt32 = try r.readBE()
            let l1Size: UInt32 = try r.readBE()
            let l1Offset: UInt64 = try r.readBE()
            _ = try r.readBE(UInt64.self) // refcount_table_offset
            _ = try r.readBE(UInt32.self) // refcount_table_clusters
            let nbSnapshots: UInt32 = try r.readBE()
            let snapshotsOffset: UInt64 = try r.readBE()

            guard clusterBits >= 9 else {
                throw WardenError.corrupt("cluster_bits \(clusterBits) is out of range (9...21)", file: path)
            }
            guard clusterBits <= 21 else {
                throw WardenError.unsupported("cluster_bits \(clusterBits) is out of range (9...21)", file: path)
            }
            guard cryptMethod == 0 || cryptMethod == 2 else {
                throw WardenError.unsupported("qcow2's legacy AES encryption (crypt_method \(cryptMethod)) is not supported (LUKS is)", file: path)
            }
            var h = Header(version: version, clusterBits: Int(clusterBits), size: size, l1Size: l1Size,
                           l1TableOffset: l1Offset, snapshotCount: nbSnapshots, snapshotsOffset: snapshotsOffset)
            let clusterSize = UInt64(h.clusterSize)

            if version == 3 {
                guard head.count >= 104 else {
                    throw WardenError.corrupt("qcow2 v3 header is truncated: the file is only \(file.length) bytes", file: path)
                }
                h.incompatibleFeatures = try r.readBE()
                h.compatibleFeatures = try r.readBE()
                h.autoclearFeatures = try r.readBE()
                h.refcountOrder = try r.readBE()
                h.headerLength = try r.readBE()
                guard h.headerLength >= 104 else {
                    throw WardenError.corrupt("qcow2 v3 header_length \(h.headerLength) is shorter than 104 bytes", file: path)
                }
                guard UInt64(h.headerLength) <= clusterSize else {
                    throw WardenError.corrupt("qcow2 header_length \(h.headerLength) is larger than the \(clusterSize)-byte cluster", file: path)
                }
                guard h.refcountOrder <= 6 else {
                    throw WardenError.corrupt("refcount_order \(h.refcountOrder) is out of range (0...6)", file: path)
                }
                if h.headerLength > 104 {
                    let raw = try file.read(at: 104, count: 1, what: "qcow2 compression_type field")[0]
                    guard let ct = CompressionType(rawValue: raw) else {
                        throw WardenError.unsupported("qcow2 compression_type \(raw) is not supported (only zlib and zstd)", file: path)
                    }
                    h.compressionType = ct
                }
                let hasCTBit = h.incompatibleFeatures & Incompatible.compressionType != 0
                if h.compressionType != .zlib && !hasCTBit {
                    throw WardenError.corrupt("compression_type is \(h.compressionType) but the compression type feature bit is clear", file: path)
                }
            }

            // Header extensions live between the header and the end of the first
            // cluster (or the backing file name, if it starts earlier).
            var extEnd = min(clusterSize, file.length)
            if backingOffset > UInt64(h.headerLength) && backingOffset < extEnd { extEnd = backingOffset }
            var featureNames: [UInt8: [UInt8: String]] = [:]
            var sawExternalData = false
            var sawEncryption = false
            if extEnd > UInt64(h.headerLength) {
                let area = try file.read(at: UInt64(h.headerLength), count: Int(extEnd - UInt64(h.headerLength)),
                                         what: "qcow2 header extensions")
                var pos = 0
                var seen = 0
                while area.count - pos >= 8 {
                    let extOffset = UInt64(h.headerLength) + UInt64(pos)
                    let type: UInt32 = try ByteReader.be(area, at: pos, context: "qcow2 header extension")
                    let len: UInt32 = try ByteReader.be(area, at: pos + 4, context: "qcow2 header extension")
                    if type == Extension.end { break }
                    seen += 1
                    guard seen <= 1024 else {
                        throw WardenError.limit("more than 1024 qcow2 header extensions", file: path)
                    }
                    let dataStart = pos + 8
                    guard UInt64(len) <= UInt64(area.count - dataStart) else {
                        throw WardenError.corrupt("header extension \(hex(type)) at offset \(hex(extOffset)) claims \(len) bytes, beyond the end of the header area", file: path, offset: extOffset)
                    }
                    let data = area[dataStart..<dataStart + Int(len)]
                    switch type {
                    case Extension.backingFormat:
                        guard len <= 64 else {
                            throw WardenError.corrupt("backing format extension at offset \(hex(extOffset)) is \(len) bytes long", file: path, offset: extOffset)
                        }
                        guard let name = String(validating: Array(data), as: UTF8.self),
                              !name.contains("\0") else {
                            throw WardenError.corrupt("backing format name at offset \(hex(extOffset)) is not valid text", file: path, offset: extOffset)
                        }
                        h.backingFormatName = name
                    case Extension.featureNameTable:
                        var e = data.startIndex
                        while data.endIndex - e >= 48 {
                            let kind = data[e], bit = data[e + 1]
                            let nameBytes = data[(e + 2)..<(e + 48)].prefix { $0 != 0 }
                            featureNames[kind, default: [:]][bit] = String(decoding: nameBytes, as: UTF8.self)
                            e += 48
                        }
                    case Extension.externalDataFile:
                        sawExternalData = true
                    case Extension.fullDiskEncryption:
                        guard len == 16, !sawEncryption else {
                            throw WardenError.corrupt("full-disk-encryption extension at offset \(hex(extOffset)) is \(len) bytes long, or repeated", file: path, offset: extOffset)
                        }
                        sawEncryption = true
                        let offset: UInt64 = try ByteReader.be(area, at: dataStart, context: "qcow2 encryption extension")
                        let length: UInt64 = try ByteReader.be(area, at: dataStart + 8, context: "qcow2 encryption extension")
                        let (end, o) = offset.addingReportingOverflow(length)
                        guard !o, end <= file.length, length >= UInt64(LUKS1Header.size), length <= 64 << 20 else {
                            throw WardenError.corrupt("the LUKS header area (offset \(hex(offset)), \(length) bytes) is out of range", file: path, offset: extOffset)
                        }
                        h.encryption = Encryption(offset: offset, length: length)
                    default:
                        break // unknown or irrelevant for reading (bitmaps): skip
                    }
                    // Data is padded to a multiple of 8 bytes.
                    let padded = (Int(len) + 7) & ~7
                    guard padded <= area.count - dataStart else { break }
                    pos = dataStart + padded
                }
            }

            // Feature policy (see the type's documentation).
            let unknown = h.incompatibleFeatures & ~Incompatible.known
            if unknown != 0 {
                let bit = UInt8(unknown.trailingZeroBitCount)
                let name = featureNames[0]?[bit].map { " (\"\(printable($0))\")" } ?? ""
                throw WardenError.unsupported("qcow2 image uses unknown incompatible feature bit \(bit)\(name)", file: path)
            }
            if h.incompatibleFeatures & Incompatible.externalDataFile != 0 || sawExternalData {
                throw WardenError.unsupported("qcow2 images with an external data file are not supported (the data lives in another file)", file: path)
            }
            if sawEncryption != (cryptMethod == 2) {
                throw WardenError.corrupt("crypt_method \(cryptMethod) and the full-disk-encryption extension disagree", file: path)
            }

            // Backing file name.
            if backingOffset != 0 {
                guard backingSize <= 1023 else {
                    throw WardenError.corrupt("backing file name is \(backingSize) bytes long (limit 1023)", file: path)
                }
                let bytes = try file.read(at: backingOffset, count: Int(backingSize), what: "backing file name")
                guard !bytes.isEmpty, let name = String(validating: bytes, as: UTF8.self), !name.contains("\0") else {
                    throw WardenError.corrupt("backing file name at offset \(hex(backingOffset)) is empty or not valid text", file: path, offset: backingOffset)
                }
                h.backingFile = name
            }
            if let fmt = h.backingFormatName {
                guard h.backingFile != nil else {
                    // A format without a file is harmless; report it but do not use it.
                    return h
                }
                guard ImageFormat(qemuName: fmt) != nil else {
                    throw WardenError.unsupported("backing format '\(printable(fmt))' is not supported (raw, qcow2, vmdk, vpc, vhdx, vdi are)", file: path)
                }
            }
            return h
        }
    }
}
