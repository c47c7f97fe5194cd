#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import WardenCore

extension QCOW2 {
    /// The guest-visible disk of a qcow2 image (active layer or one internal snapshot).
    ///
    /// Thread-safe: the only mutable state (L2 table cache, decompressor pool,
    /// last decompressed cluster) sits behind locks, and no lock is held
    /// during file I/O.
    public final class Device: BlockDevice, @unchecked Sendable {
        public let file: ImageFile
        public let size: UInt64
        public let header: Header
        /// The backing device, if the image has a backing file.
        public let backing: (any BlockDevice)?

        let clusterBits: Int
        let clusterSize: Int
        let l2Bits: Int
        /// log2 of the allocation unit: the cluster, or the subcluster with extended L2.
        let unitBits: Int
        let extendedL2: Bool
        /// The active L1 entries (host-endian). Only ``QCOW2Overlay`` changes them, as it writes them.
        var l1: [UInt64]
        /// Bit position of the sector count in a compressed descriptor.
        let compressedShift: Int

        let l2Cache: Locked<L2Cache>
        private let decompressors: Locked<[Decompressor]>
        let lastCompressed: Locked<(entry: UInt64, data: [UInt8])?>

        /// The data cipher of an encrypted image (LUKS's master key): sectors are decrypted with
        /// their host sector number (offset in the file / 512) as the IV, as QEMU does for LUKS.
        let cipher: XTSCipher?
        /// This layer's identity for ``ProvenanceDevice`` (nil: the file has no content stamp).
        let layerID: String?

        init(file: ImageFile, header: Header, l1: [UInt64], size: UInt64, backing: (any BlockDevice)?, cipher: XTSCipher? = nil) {
            self.cipher = cipher
            self.file = file
            self.header = header
            self.size = size
            self.backing = backing
            self.l1 = l1
            layerID = file.contentStamp.map { "qcow2:" + $0 }
            clusterBits = header.clusterBits
            clusterSize = header.clusterSize
            l2Bits = header.l2Entries.trailingZeroBitCount
            extendedL2 = header.extendedL2
            unitBits = header.clusterBits - (header.extendedL2 ? 5 : 0)
            compressedShift = 62 - (header.clusterBits - 8)
            l2Cache = Locked(L2Cache(capacity: max(8, QCOW2.l2CacheBytes / header.clusterSize)))
            decompressors = Locked([])
            lastCompressed = Locked(nil)
        }

        // MARK: Guest address resolution

        /// How a run of guest bytes is stored.
        enum Run: Equatable {
            /// Reads as zeros (zero cluster/subcluster).
            case zero
            /// Not allocated here: backing file, or zeros without one.
            case unallocated
            /// Stored uncompressed at this host offset (contiguous for the whole run).
            case data(host: UInt64)
            /// Inside a compressed cluster: its L2 entry and the offset into the cluster.
            case compressed(entry: UInt64, offsetInCluster: Int)
        }

        /// Returns the storage of the guest bytes at `offset`, for the longest run
        /// of at most `limit` bytes (limit > 0) that is stored the same way.
        /// `work` grows by the number of L1 entries and allocation units examined.
        func resolve(_ offset: UInt64, limit: UInt64, work: inout UInt64) throws -> (Run, UInt64) {
            work += 1
            let clusterIndex = offset >> UInt64(clusterBits)
            let l1Index64 = clusterIndex >> UInt64(l2Bits)
            let l2Span = UInt64(1) << UInt64(clusterBits + l2Bits)
            guard l1Index64 < UInt64(l1.count) else {
                // Past a (snapshot's) short L1 table: unallocated.
                return (.unallocated, limit)
            }
            let l1Index = Int(l1Index64)
            let l2Offset = l1[l1Index] & QCOW2.offsetMask
            if l2Offset == 0 {
                // Unallocated L2 table: extend across following empty L1 entries.
                var end = (UInt64(l1Index) + 1) * l2Span
                var next = l1Index + 1
                // (Past the end of the table everything is unallocated too.)
                while end - offset < limit {
                    if next >= l1.count { return (.unallocated, limit) }
                    if l1[next] & QCOW2.offsetMask != 0 { break }
                    end += l2Span
                    next += 1
                    work += 1
                }
                return (.unallocated, min(limit, end - offset))
            }
            let table = try l2Table(at: l2Offset, l1Index: l1Index)
            let l2Start = UInt64(l1Index) * l2Span
            let unitSize = UInt64(1) << UInt64(unitBits)
            let unitsPerTable = l2Span >> UInt64(unitBits)
            var unit = (offset - l2Start) >> UInt64(unitBits)
            let first = try classify(table: table, unit: Int(unit), l2Offset: l2Offset)
            if case .compressed(let entry, _) = first {
                let inCluster = Int(offset & UInt64(clusterSize - 1))
                return (.compressed(entry: entry, offsetInCluster: inCluster), min(limit, UInt64(clusterSize - inCluster)))
            }
            let inUnit = offset & (unitSize - 1)
            var length = unitSize - inUnit
            var expectedHost: UInt64 = 0
            if case .data(let host) = first { expectedHost = host + unitSize }
            unit += 1
            while length < limit && unit < unitsPerTable {
                work += 1
                let next = try classify(table: table, unit: Int(unit), l2Offset: l2Offset)
                switch (first, next) {
                case (.zero, .zero), (.unallocated, .unallocated): break
                case (.data, .data(let host)) where host == expectedHost: expectedHost = host + unitSize
                default: return (runStart(first, inUnit), min(limit, length))
                }
                length += unitSize
                unit += 1
            }
            return (runStart(first, inUnit), min(limit, length))
        }

        private func runStart(_ run: Run, _ inUnit: UInt64) -> Run {
            if case .data(let host) = run { return .data(host: host + inUnit) }
            return run
        }

        /// Classifies one allocation unit (cluster, or subcluster with extended L2)
        /// of an L2 table. Data runs name the unit's first host byte.
        @inline(__always)
        private func classify(table: [UInt64], unit: Int, l2Offset: UInt64) throws -> Run {
            let clusterInTable = extendedL2 ? unit >> 5 : unit
            let wordIndex = extendedL2 ? clusterInTable * 2 : clusterInTable
            guard wordIndex + (extendedL2 ? 1 : 0) < table.count else {
                throw WardenError(.internal, "L2 index \(clusterInTable) out of range")
            }
            let entry = table[wordIndex]
            if entry & (1 << 62) != 0 {
                return .compressed(entry: entry, offsetInCluster: 0)
            }
            let host = entry & QCOW2.offsetMask
            if !extendedL2 {
                // Bit 0 "reads as zeros" is defined for v3; like QEMU, it is honoured
                // in v2 images too (where the spec says it is always 0).
                if entry & 1 != 0 { return .zero }
                if host == 0 { return .unallocated }
                try checkAligned(host, entryIndex: clusterInTable, l2Offset: l2Offset)
                return .data(host: host)
            }
            let bitmap = table[wordIndex + 1]
            let sub = unit & 31
            let allocated = (bitmap >> UInt64(sub)) & 1 != 0
            let zero = (bitmap >> UInt64(32 + sub)) & 1 != 0
            if allocated && zero {
                throw WardenError.corrupt("L2 table at offset \(hex(l2Offset)) entry \(clusterInTable): subcluster \(sub) is marked both allocated and zero", file: file.path, offset: l2Offset)
            }
            if zero { return .zero }
            if !allocated { return .unallocated }
            guard host != 0 else {
                throw WardenError.corrupt("L2 table at offset \(hex(l2Offset)) entry \(clusterInTable): subcluster \(sub) is allocated but the cluster has no host offset", file: file.path, offset: l2Offset)
            }
            try checkAligned(host, entryIndex: clusterInTable, l2Offset: l2Offset)
            return .data(host: host + (UInt64(sub) << UInt64(unitBits)))
        }

        @inline(__always)
        private func checkAligned(_ host: UInt64, entryIndex: Int, l2Offset: UInt64) throws {
            if host & UInt64(clusterSize - 1) != 0 {
                throw WardenError.corrupt("L2 table at offset \(hex(l2Offset)) entry \(entryIndex) points at unaligned offset \(hex(host))", file: file.path, offset: l2Offset)
            }
        }

        // MARK: Updates from the writer

        /// Records an L1 entry the writer has just written to the file.
        func noteL1(_ index: Int, _ entry: UInt64) { l1[index] = entry }

        /// Records an L2 table the writer has just written (or changed) in the file.
        func noteL2(_ offset: UInt64, _ table: [UInt64]) { l2Cache.withLock { $0.put(offset, table) } }

        // MARK: L2 cache

        struct L2Cache {
            var tables: [UInt64: (table: [UInt64], stamp: UInt64)] = [:]
            var clock: UInt64 = 0
            let capacity: Int

            init(capacity: Int) { self.capacity = capacity }

            mutating func get(_ key: UInt64) -> [UInt64]? {
                guard let hit = tables[key] else { return nil }
                clock += 1
                tables[key] = (hit.table, clock)
                return hit.table
            }

            mutating func put(_ key: UInt64, _ table: [UInt64]) {
                clock += 1
                tables[key] = (table, clock)
                if tables.count > capacity {
                    // Evict the least recently used half in one pass (amortised O(log n) per miss).
                    let stamps = tables.values.map(\.stamp).sorted()
                    let cutoff = stamps[stamps.count / 2]
                    tables = tables.filter { $0.value.stamp >= cutoff }
                }
            }
        }

        /// Returns the L2 table at `offset` (host-endian words), from the cache or the file.
        func l2Table(at offset: UInt64, l1Index: Int) throws -> [UInt64] {
            if let t = l2Cache.withLock({ $0.get(offset) }) { return t }
            let (end, o) = offset.addingReportingOverflow(UInt64(clusterSize))
            guard !o, end <= file.length else {
                throw WardenError.corrupt("L2 table at offset \(hex(offset)) (L1 entry \(l1Index)) lies beyond the end of the file", file: file.path, offset: offset)
            }
            let words = clusterSize / 8
            var table = [UInt64](repeating: 0, count: words)
            try table.withUnsafeMutableBytes { try file.read(at: offset, into: $0) }
            table.withUnsafeMutableBufferPointer { p in
                for i in p.indices { p[i] = UInt64(bigEndian: p[i]) }
            }
            l2Cache.withLock { $0.put(offset, table) }
            return table
        }

        // MARK: Compressed clusters

        private func takeDecompressor() throws -> Decompressor {
            if let d = decompressors.withLock({ $0.popLast() }) { return d }
            return try Decompressor(type: header.compressionType, clusterSize: clusterSize)
        }

        private func giveBack(_ d: Decompressor) {
            decompressors.withLock { if $0.count < 8 { $0.append(d) } }
        }

        /// Decompresses the cluster described by `entry` into `out` (one cluster).
        func decompressCluster(entry: UInt64, into out: UnsafeMutableRawPointer) throws {
            let offsetBits = UInt64(compressedShift)
            let coffset = entry & ((1 << offsetBits) - 1)
            guard coffset & ~QCOW2.offsetMask & ~0x1ff == 0 else {
                throw WardenError.corrupt("compressed cluster descriptor \(hex(entry)) has an offset beyond 56 bits", file: file.path)
            }
            let sectorField = (entry >> offsetBits) & ((1 << UInt64(clusterBits - 8)) - 1)
            let claimed = (sectorField + 1) * 512 - (coffset & 511)
            guard coffset < file.length else {
                throw WardenError.corrupt("compressed cluster at offset \(hex(coffset)) lies beyond the end of the file", file: file.path, offset: coffset)
            }
            // The last sectors may run past the end of the file: read what is there.
            let d = try takeDecompressor()
            defer { giveBack(d) }
            let count = Int(min(claimed, file.length - coffset, UInt64(d.inputCapacity)))
            try file.read(at: coffset, into: UnsafeMutableRawBufferPointer(start: d.input, count: count))
            guard d.decompress(inputCount: count, into: out) else {
                throw WardenError.corrupt("compressed cluster at offset \(hex(coffset)) does not decompress to a \(clusterSize)-byte cluster (\(header.compressionType))", file: file.path, offset: coffset)
            }
        }

        /// Copies part of a compressed cluster, keeping the last cluster decompressed
        /// for small sequential reads.
        private func readCompressed(entry: UInt64, offsetInCluster: Int, into dst: UnsafeMutableRawBufferPointer) throws {
            if offsetInCluster == 0 && dst.count == clusterSize, let base = dst.baseAddress {
                try decompressCluster(entry: entry, into: base)
                return
            }
            let cached: [UInt8]? = lastCompressed.withLock { c in
                if let c, c.entry == entry { return c.data }
                return nil
            }
            let data: [UInt8]
            if let cached {
                data = cached
            } else {
                var buf = [UInt8](repeating: 0, count: clusterSize)
                try buf.withUnsafeMutableBytes { try decompressCluster(entry: entry, into: $0.baseAddress!) }
                lastCompressed.withLock { $0 = (entry, buf) }
                data = buf
            }
            data.withUnsafeBytes { src in
                dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[offsetInCluster..<offsetInCluster + dst.count]))
            }
        }

        // MARK: BlockDevice

        public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
            try checkRange(offset, buffer.count)
            guard let base = buffer.baseAddress, buffer.count > 0 else { return }
            var done = 0
            // Whole compressed clusters found along the way are decompressed
            // afterwards, in parallel when there are several.
            var pending: [(entry: UInt64, at: Int)] = []
            var work: UInt64 = 0
            while done < buffer.count {
                let pos = offset + UInt64(done)
                let (run, len64) = try resolve(pos, limit: UInt64(buffer.count - done), work: &work)
                let len = Int(len64)
                let dst = UnsafeMutableRawBufferPointer(start: base + done, count: len)
                switch run {
                case .zero:
                    memset(base + done, 0, len)
                case .unallocated:
                    try readBacking(at: pos, into: dst)
                case .data(let host):
                    let (end, o) = host.addingReportingOverflow(len64)
                    guard !o, end <= file.length else {
                        throw WardenError.corrupt("data cluster at offset \(hex(host & ~UInt64(clusterSize - 1))) lies beyond the end of the file", file: file.path, offset: host)
                    }
                    if let cipher {
                        try readEncrypted(host: host, guest: pos, into: dst, cipher: cipher)
                    } else {
                        try file.read(at: host, into: dst)
                    }
                case .compressed(let entry, let inCluster):
                    if cipher != nil {
                        throw WardenError.corrupt("an encrypted image has a compressed cluster (QEMU never writes one)", file: file.path, offset: pos)
                    }
                    if inCluster == 0 && len == clusterSize {
                        pending.append((entry, done))
                    } else {
                        try readCompressed(entry: entry, offsetInCluster: inCluster, into: dst)
                    }
                }
                done += len
            }
            try decompressAll(pending, base: base)
        }

        /// Reads and decrypts the whole 512-byte sectors around `dst` (a run within allocated
        /// clusters, contiguous in the file), then copies out the bytes asked for.
        private func readEncrypted(host: UInt64, guest: UInt64, into dst: UnsafeMutableRawBufferPointer, cipher: XTSCipher) throws {
            let lead = Int(guest & 511)
            if lead == 0 && dst.count & 511 == 0 {
                // Whole sectors: straight into the caller's buffer, decrypted in place.
                try file.read(at: host, into: dst)
                try cipher.decrypt(dst, firstSector: host / 512)
                return
            }
            let total = (lead + dst.count + 511) & ~511
            let start = host - UInt64(lead)
            guard start + UInt64(total) <= file.length else {
                throw WardenError.corrupt("encrypted data at offset \(hex(start)) lies beyond the end of the file", file: file.path, offset: start)
            }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 16)
            defer { if let b = buffer.baseAddress { explicit_bzero(b, total) }; buffer.deallocate() }
            try file.read(at: start, into: buffer)
            // QEMU's LUKS-in-qcow2 takes the sector's *host* offset as its IV (crypt_physical_offset).
            try cipher.decrypt(buffer, firstSector: start / 512)
            dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[lead..<(lead + dst.count)]))
        }

        private func decompressAll(_ pending: [(entry: UInt64, at: Int)], base: UnsafeMutableRawPointer) throws {
            if pending.isEmpty { return }
            if pending.count < 4 {
                for p in pending { try decompressCluster(entry: p.entry, into: base + p.at) }
                return
            }
            let workers = min(pending.count, Device.decompressionWorkers)
            let firstError = Locked<WardenError?>(nil)
            let sendableBase = UInt(bitPattern: base)
            DispatchQueue.concurrentPerform(iterations: workers) { w in
                let out = UnsafeMutableRawPointer(bitPattern: sendableBase)!
                var i = w
                while i < pending.count {
                    if firstError.withLock({ $0 != nil }) { return }
                    do {
                        try decompressCluster(entry: pending[i].entry, into: out + pending[i].at)
                    } catch {
                        let e = (error as? WardenError) ?? WardenError(.internal, "\(error)")
                        firstError.withLock { if $0 == nil { $0 = e } }
                        return
                    }
                    i += workers
                }
            }
            if let e = firstError.withLock({ $0 }) { throw e }
        }

        /// Reads unallocated guest bytes: from the backing device where it
        /// reaches, zeros elsewhere.
        private func readBacking(at pos: UInt64, into dst: UnsafeMutableRawBufferPointer) throws {
            var covered = 0
            if let backing, pos < backing.size {
                covered = Int(min(UInt64(dst.count), backing.size - pos))
                try backing.read(at: pos, into: UnsafeMutableRawBufferPointer(rebasing: dst[0..<covered]))
            }
            if covered < dst.count, let b = dst.baseAddress {
                memset(b + covered, 0, dst.count - covered)
            }
        }

        /// Threads decompressing the whole clusters of one large read.
        static let decompressionWorkers = max(2, min(8, sysconf(Int32(_SC_NPROCESSORS_ONLN))))

        /// Allocation units examined per `mapping` call before giving up on detail.
        static let mappingWorkLimit: UInt64 = 1 << 27
        /// Extents returned per `mapping` call at most (plus one final `.data`).
        static let mappingExtentLimit = 1 << 20

        /// Describes the range as `.zero` (zero clusters/subclusters, and
        /// unallocated ranges without a backing file or past its end) and `.data`
        /// runs; unallocated ranges take the backing device's mapping. Adjacent
        /// runs of one kind are merged. Very large or very fragmented ranges may
        /// end in one conservative `.data` extent (see `mappingWorkLimit`).
        public func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
            let (end, o) = offset.addingReportingOverflow(length)
            guard !o, end <= size else {
                throw WardenError(.invalidArgument, "mapping of \(length) bytes at \(hex(offset)) is beyond the end of the \(size)-byte device")
            }
            var out: [BlockExtent] = []
            func add(_ pos: UInt64, _ len: UInt64, _ kind: BlockExtent.Kind) { out.appendMerging(BlockExtent(offset: pos, length: len, kind: kind)) }
            var pos = offset
            var work: UInt64 = 0
            while pos < end {
                // Hostile images can point many L1 entries at one L2 table, so a
                // small file can describe a huge, finely fragmented map. Bound the
                // work and the output; past either bound, report the rest as
                // `.data`, which is always correct (it is simply read).
                if work > Device.mappingWorkLimit || out.count >= Device.mappingExtentLimit {
                    add(pos, end - pos, .data)
                    break
                }
                let (run, len) = try resolve(pos, limit: end - pos, work: &work)
                switch run {
                case .zero:
                    add(pos, len, .zero)
                case .data, .compressed:
                    add(pos, len, .data)
                case .unallocated:
                    var covered: UInt64 = 0
                    if let backing, pos < backing.size {
                        covered = min(len, backing.size - pos)
                        for e in try backing.mapping(at: pos, length: covered) {
                            // Clip defensively to the asked range.
                            let s = max(e.offset, pos), t = min(e.offset + e.length, pos + covered)
                            if t > s { add(s, t - s, e.kind) }
                        }
                    }
                    add(pos + covered, len - covered, .zero)
                }
                pos += len
            }
            return out
        }
    }
}
