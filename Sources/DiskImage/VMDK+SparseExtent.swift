import WardenCore
import CZlib

extension VMDK {
    /// The 512-byte header at sector 0 of a hosted sparse extent (little-endian).
    public struct SparseHeader: Sendable, Equatable {
        public static let gdAtEnd: UInt64 = 0xFFFF_FFFF_FFFF_FFFF
        public var version: UInt32
        public var flags: UInt32
        /// Capacity in sectors.
        public var capacity: UInt64
        /// Grain size in sectors.
        public var grainSize: UInt64
        public var descriptorOffset: UInt64
        public var descriptorSize: UInt64
        public var numGTEsPerGT: UInt32
        public var rgdOffset: UInt64
        public var gdOffset: UInt64
        public var overHead: UInt64
        public var compressAlgorithm: UInt16

        public var compressed: Bool { flags & (1 << 16) != 0 }
        public var hasMarkers: Bool { flags & (1 << 17) != 0 }
        public var isStreamOptimized: Bool { compressed && hasMarkers }
        public var grainBytes: UInt64 { grainSize &* 512 }

        public init(_ b: [UInt8], file: String? = nil) throws {
            var r = ByteReader(b, context: "VMDK sparse header")
            guard try r.readBytes(4) == Array("KDMV".utf8) else {
                throw WardenError.corrupt("not a VMDK sparse extent (no KDMV magic)", file: file)
            }
            version = try r.readLE()
            flags = try r.readLE()
            capacity = try r.readLE()
            grainSize = try r.readLE()
            descriptorOffset = try r.readLE()
            descriptorSize = try r.readLE()
            numGTEsPerGT = try r.readLE()
            rgdOffset = try r.readLE()
            gdOffset = try r.readLE()
            overHead = try r.readLE()
            try r.skip(1 + 4) // uncleanShutdown, newline-detection characters
            compressAlgorithm = try r.readLE()
        }

        /// Throws unless the geometry is sane enough to read safely.
        func validate(file: String?) throws {
            guard version >= 1 && version <= 3 else {
                throw WardenError.unsupported("VMDK sparse extent version \(version) is not supported", file: file)
            }
            guard grainSize >= 1, grainSize <= 1 << 17, grainSize & (grainSize - 1) == 0 else {
                throw WardenError.corrupt("VMDK grain size of \(grainSize) sectors is invalid", file: file)
            }
            guard numGTEsPerGT >= 1, numGTEsPerGT <= 1 << 16 else {
                throw WardenError.corrupt("VMDK grain table size of \(numGTEsPerGT) entries is invalid", file: file)
            }
            guard capacity <= UInt64.max / 512 else {
                throw WardenError.corrupt("VMDK capacity of \(capacity) sectors overflows", file: file)
            }
            if compressed && compressAlgorithm != 1 {
                throw WardenError.unsupported("VMDK compression algorithm \(compressAlgorithm) is not supported", file: file)
            }
        }
    }

    /// A hosted sparse extent ("KDMV" file): grain directory, grain tables and grains.
    final class SparseExtent: @unchecked Sendable {
        let file: ImageFile
        let header: SparseHeader
        /// Grain directory: sector of each grain table (0 = none).
        let gd: [UInt32]
        let grainBytes: UInt64
        let gtEntries: Int

        // Caches, guarded by `lock`.
        private let lock = Locked<Void>()
        private var gtCache: [Int: [UInt32]] = [:]
        private var gtOrder: [Int] = []
        private var grainCache: [UInt64: [UInt8]] = [:]
        private var grainOrder: [UInt64] = []
        static let maxCachedGTs = 256
        static let maxCachedGrains = 8
        /// Largest grain directory accepted (16M entries cover petabytes with default geometry).
        static let maxGDBytes = 64 << 20

        init(file: ImageFile) throws {
            self.file = file
            var header = try SparseHeader(try file.read(at: 0, count: 512, what: "VMDK sparse header"), file: file.path)
            if header.gdOffset == SparseHeader.gdAtEnd {
                header = try SparseExtent.readFooter(file: file, primary: header)
            }
            try header.validate(file: file.path)
            self.header = header
            self.grainBytes = header.grainBytes
            self.gtEntries = Int(header.numGTEsPerGT)

            let grains = header.capacity / header.grainSize + (header.capacity % header.grainSize == 0 ? 0 : 1)
            let perGT = UInt64(header.numGTEsPerGT)
            let gdCount = grains / perGT + (grains % perGT == 0 ? 0 : 1)
            guard gdCount <= UInt64(SparseExtent.maxGDBytes / 4) else {
                throw WardenError.limit("VMDK grain directory would have \(gdCount) entries (capacity \(header.capacity) sectors)", file: file.path)
            }
            let gdStart = try Checked.mul(header.gdOffset, 512, "VMDK grain directory offset")
            let raw = try file.read(at: gdStart, count: Int(gdCount) * 4, what: "VMDK grain directory")
            var gd = [UInt32](repeating: 0, count: Int(gdCount))
            for i in 0..<gd.count {
                gd[i] = UInt32(raw[4 * i]) | UInt32(raw[4 * i + 1]) << 8 | UInt32(raw[4 * i + 2]) << 16 | UInt32(raw[4 * i + 3]) << 24
            }
            self.gd = gd
        }

        /// streamOptimized with "GD at end": the real header is in the footer.
        static func readFooter(file: ImageFile, primary: SparseHeader) throws -> SparseHeader {
            guard file.length >= 1536 + 512 else {
                throw WardenError.corrupt("VMDK stream is too short to hold a footer", file: file.path)
            }
            let tail = try file.read(at: file.length - 1536, count: 1536, what: "VMDK footer")
            let markerSize: UInt32 = try tail.le(8)
            let markerType: UInt32 = try tail.le(12)
            guard markerSize == 0, markerType == 3 else {
                throw WardenError.corrupt("VMDK footer marker is missing (grain directory is declared at the end of the stream)", file: file.path)
            }
            let footer = try SparseHeader(Array(tail[512..<1024]), file: file.path)
            guard footer.gdOffset != SparseHeader.gdAtEnd else {
                throw WardenError.corrupt("VMDK footer does not locate the grain directory", file: file.path)
            }
            return footer
        }

        /// The embedded descriptor text, if the extent has one.
        func embeddedDescriptor() throws -> [UInt8]? {
            guard header.descriptorOffset != 0, header.descriptorSize != 0 else { return nil }
            guard header.descriptorSize <= UInt64(VMDK.maxDescriptorBytes / 512) else {
                throw WardenError.limit("VMDK embedded descriptor is larger than \(VMDK.maxDescriptorBytes) bytes", file: file.path)
            }
            let off = try Checked.mul(header.descriptorOffset, 512, "VMDK descriptor offset")
            return try file.read(at: off, count: Int(header.descriptorSize) * 512, what: "VMDK embedded descriptor")
        }

        /// A delta disk's parent, seen from one extent: `base` is the extent's start on the disk.
        /// Bytes past the parent's end read as zeros (a parent may be smaller).
        struct Parent {
            var device: any BlockDevice
            var base: UInt64
            func read(at offset: UInt64, into dst: UnsafeMutableRawBufferPointer) throws {
                try device.readZeroExtended(at: offset, into: dst)
            }
            func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
                let inside = offset >= device.size ? 0 : min(length, device.size - offset)
                var out = inside > 0 ? try device.mapping(at: offset, length: inside) : []
                if inside < length { out.append(BlockExtent(offset: offset + inside, length: length - inside, kind: .zero)) }
                return out
            }
        }

        /// The grain table for grain-directory slot `gdIndex` (nil when unallocated).
        func grainTable(_ gdIndex: Int) throws -> [UInt32]? {
            guard gdIndex < gd.count else { return nil }
            let sector = gd[gdIndex]
            if sector == 0 { return nil }
            if let t = lock.withLock({ gtCache[gdIndex] }) { return t }
            let raw = try file.read(at: UInt64(sector) * 512, count: gtEntries * 4, what: "VMDK grain table \(gdIndex)")
            var t = [UInt32](repeating: 0, count: gtEntries)
            for i in 0..<gtEntries {
                t[i] = UInt32(raw[4 * i]) | UInt32(raw[4 * i + 1]) << 8 | UInt32(raw[4 * i + 2]) << 16 | UInt32(raw[4 * i + 3]) << 24
            }
            lock.withLock {
                if gtCache[gdIndex] == nil {
                    if gtOrder.count >= SparseExtent.maxCachedGTs {
                        gtCache[gtOrder.removeFirst()] = nil
                    }
                    gtCache[gdIndex] = t
                    gtOrder.append(gdIndex)
                }
            }
            return t
        }

        /// The grain-table entry for grain `g`: 0 unallocated, 1 zero, else a sector.
        func entry(_ g: UInt64) throws -> UInt32 {
            let gdIndex = g / UInt64(gtEntries)
            guard gdIndex < UInt64(gd.count) else { return 0 }
            guard let t = try grainTable(Int(gdIndex)) else { return 0 }
            return t[Int(g % UInt64(gtEntries))]
        }

        /// Reads `buffer.count` bytes at `offset` inside this extent (caller has bounds-checked
        /// against the extent length; bytes beyond the capacity read as zeros).
        func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer, parent: Parent? = nil) throws {
            var done = 0
            while done < buffer.count {
                let pos = offset + UInt64(done)
                let g = pos / grainBytes
                let inGrain = Int(pos % grainBytes)
                let e = try entry(g)
                var n = min(buffer.count - done, Int(grainBytes) - inGrain)
                let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n])
                if e == 0, let parent {
                    // A delta disk's unallocated grain is its parent's.
                    try parent.read(at: parent.base + pos, into: dst)
                } else if e <= 1 {
                    dst.initializeMemory(as: UInt8.self, repeating: 0)
                } else if header.compressed {
                    let grain = try compressedGrain(g, sector: e)
                    grain.withUnsafeBytes { src in
                        dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[inGrain..<inGrain + n]))
                    }
                } else {
                    // Extend over following grains stored contiguously in the file: one pread.
                    var last = e
                    var nextG = g + 1
                    while done + n < buffer.count {
                        let ne = try entry(nextG)
                        guard ne > 1, UInt64(ne) == UInt64(last) + header.grainSize else { break }
                        n = min(buffer.count - done, n + Int(grainBytes))
                        last = ne
                        nextG += 1
                    }
                    let fileOff = UInt64(e) * 512 + UInt64(inGrain)
                    guard fileOff + UInt64(n) <= file.length else {
                        throw WardenError.corrupt("VMDK grain \(g) at sector \(e) lies beyond the end of the file", file: file.path, offset: fileOff)
                    }
                    try file.read(at: fileOff, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n]))
                }
                done += n
            }
        }

        /// Which parts of `offset ..< offset+length` (inside this extent) hold data.
        func mapping(at offset: UInt64, length: UInt64, base: UInt64, into out: inout [BlockExtent], parent: Parent? = nil) throws {
            var pos = offset
            let end = offset + length
            func add(_ o: UInt64, _ l: UInt64, _ kind: BlockExtent.Kind) { out.appendMerging(BlockExtent(offset: o, length: l, kind: kind)) }
            while pos < end {
                let g = pos / grainBytes
                let gdIndex = Int(g / UInt64(gtEntries))
                var runEnd: UInt64
                let e: UInt32
                if gdIndex >= gd.count || gd[gdIndex] == 0 {
                    // Whole grain table absent: skip it in one step.
                    let (next, o) = (UInt64(gdIndex) + 1).multipliedReportingOverflow(by: UInt64(gtEntries) * grainBytes)
                    runEnd = o ? end : next
                    e = 0
                } else {
                    runEnd = (g + 1) * grainBytes
                    e = try entry(g)
                }
                runEnd = min(runEnd, end)
                if e == 0, let parent {
                    for x in try parent.mapping(at: parent.base + pos, length: runEnd - pos) {
                        add(base + (x.offset - parent.base), x.length, x.kind)
                    }
                } else {
                    add(base + pos, runEnd - pos, e <= 1 ? .zero : .data)
                }
                pos = runEnd
            }
        }

        /// Decompresses grain `g` stored at `sector` (cached).
        private func compressedGrain(_ g: UInt64, sector: UInt32) throws -> [UInt8] {
            if let c = lock.withLock({ grainCache[g] }) { return c }
            let start = UInt64(sector) * 512
            var dataStart = start
            var length: Int
            let maxCompressed = Int(grainBytes) * 2 + 4096
            if header.hasMarkers {
                let m = try file.read(at: start, count: 12, what: "VMDK grain marker for grain \(g)")
                let size: UInt32 = try m.le(8)
                guard size > 0, Int(size) <= maxCompressed else {
                    throw WardenError.corrupt("VMDK grain \(g) has an invalid compressed size \(size)", file: file.path, offset: start)
                }
                dataStart = start + 12
                length = Int(size)
            } else {
                guard start < file.length else {
                    throw WardenError.corrupt("VMDK grain \(g) at sector \(sector) lies beyond the end of the file", file: file.path, offset: start)
                }
                length = Int(min(UInt64(maxCompressed), file.length - start))
            }
            let compressed = try file.read(at: dataStart, count: length, what: "VMDK compressed grain \(g)")
            let grain = try VMDK.inflate(compressed, outputSize: Int(grainBytes), what: "grain \(g)", file: file.path)
            lock.withLock {
                if grainCache[g] == nil {
                    if grainOrder.count >= SparseExtent.maxCachedGrains {
                        grainCache[grainOrder.removeFirst()] = nil
                    }
                    grainCache[g] = grain
                    grainOrder.append(g)
                }
            }
            return grain
        }
    }

    /// Inflates zlib-wrapped (or raw) deflate data into exactly `outputSize` bytes
    /// (a short stream is zero-padded; a longer one is corrupt).
    static func inflate(_ input: [UInt8], outputSize: Int, what: String, file: String?) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: outputSize)
        guard !input.isEmpty else { throw WardenError.corrupt("VMDK \(what) is empty", file: file) }
        let zlibWrapped = input.count >= 2 && input[0] & 0x0F == 8 && (UInt16(input[0]) << 8 | UInt16(input[1])) % 31 == 0
        var strm = z_stream()
        let initResult = inflateInit2_(&strm, zlibWrapped ? 15 : -15, zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        guard initResult == Z_OK else { throw WardenError(.internal, "zlib inflateInit failed (\(initResult))", file: file) }
        defer { inflateEnd(&strm) }
        var spare: UInt8 = 0
        let status: Int32 = input.withUnsafeBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { outp in
                strm.next_in = UnsafeMutablePointer(mutating: inp.baseAddress!)
                strm.avail_in = uInt(inp.count)
                strm.next_out = outp.baseAddress
                strm.avail_out = uInt(outp.count)
                var r = CZlib.inflate(&strm, Z_FINISH)
                if r == Z_BUF_ERROR && strm.avail_out == 0 {
                    // Output is full: check whether the stream wants to produce more.
                    withUnsafeMutablePointer(to: &spare) { sp in
                        strm.next_out = sp
                        strm.avail_out = 1
                        r = CZlib.inflate(&strm, Z_FINISH)
                        if strm.avail_out == 0 { r = Z_DATA_ERROR - 100 } // overflow marker
                    }
                }
                return r
            }
        }
        if status == Z_DATA_ERROR - 100 {
            throw WardenError.corrupt("VMDK \(what) decompresses to more than \(outputSize) bytes", file: file)
        }
        guard status == Z_STREAM_END else {
            throw WardenError.corrupt("VMDK \(what) has invalid compressed data (zlib \(status))", file: file)
        }
        return out
    }
}
