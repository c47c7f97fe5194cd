import WardenCore

extension VMDK {
    /// How one extent's bytes are stored.
    enum Backing: Sendable {
        /// `file` bytes starting at `base`.
        case flat(ImageFile, base: UInt64)
        case sparse(SparseExtent)
        case zero
    }

    /// One extent placed in the guest address space (bytes).
    struct Extent: Sendable {
        var start: UInt64
        var length: UInt64
        var backing: Backing
    }

    /// The guest disk: extents laid end to end.
    final class Device: BlockDevice, @unchecked Sendable {
        let extents: [Extent]
        let size: UInt64
        let path: String
        /// A delta disk's parent: what unallocated grains of sparse extents read.
        let parent: (any BlockDevice)?

        init(extents: [Extent], path: String, parent: (any BlockDevice)? = nil) throws {
            self.parent = parent
            var pos: UInt64 = 0
            var placed: [Extent] = []
            for var e in extents where e.length > 0 {
                e.start = pos
                pos = try Checked.add(pos, e.length, "VMDK disk size")
                placed.append(e)
            }
            self.extents = placed
            self.size = pos
            self.path = path
        }

        /// Index of the extent containing `offset` (which must be < size).
        private func extentIndex(_ offset: UInt64) -> Int {
            var lo = 0, hi = extents.count - 1
            while lo < hi {
                let mid = (lo + hi + 1) / 2
                if extents[mid].start <= offset { lo = mid } else { hi = mid - 1 }
            }
            return lo
        }

        func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
            try checkRange(offset, buffer.count)
            guard buffer.count > 0 else { return }
            var i = extentIndex(offset)
            var done = 0
            while done < buffer.count {
                let e = extents[i]
                let pos = offset + UInt64(done)
                let inExtent = pos - e.start
                let n = Int(min(UInt64(buffer.count - done), e.length - inExtent))
                let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n])
                switch e.backing {
                case .zero:
                    dst.initializeMemory(as: UInt8.self, repeating: 0)
                case .flat(let file, let base):
                    try file.read(at: base + inExtent, into: dst)
                case .sparse(let s):
                    try s.read(at: inExtent, into: dst, parent: parent.map { SparseExtent.Parent(device: $0, base: e.start) })
                }
                done += n
                i += 1
            }
        }

        func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
            let (end, o) = offset.addingReportingOverflow(length)
            guard !o, end <= size else {
                throw WardenError(.invalidArgument, "mapping of \(length) bytes at \(hex(offset)) is beyond the end of the \(size)-byte device")
            }
            var out: [BlockExtent] = []
            guard length > 0 else { return out }
            func add(_ x: BlockExtent) { out.appendMerging(x) }
            var i = extentIndex(offset)
            var pos = offset
            while pos < end {
                let e = extents[i]
                let inExtent = pos - e.start
                let n = min(end - pos, e.length - inExtent)
                switch e.backing {
                case .zero:
                    add(BlockExtent(offset: pos, length: n, kind: .zero))
                case .flat(let file, let base):
                    for x in try file.holes(offset: base + inExtent, length: n) {
                        add(BlockExtent(offset: x.offset - base + e.start, length: x.length, kind: x.kind))
                    }
                case .sparse(let s):
                    var part: [BlockExtent] = []
                    try s.mapping(at: inExtent, length: n, base: e.start, into: &part,
                                  parent: parent.map { SparseExtent.Parent(device: $0, base: e.start) })
                    part.forEach(add)
                }
                pos += n
                i += 1
            }
            return out
        }
    }

    /// Opens the files a descriptor names, refusing hostile paths.
    struct ExtentOpener {
        let descriptorPath: String
        var context: ChainContext

        struct Result {
            var extents: [Extent]
            var firstSparse: SparseExtent?
            var totalFileBytes: UInt64
            var totalAllocatedBytes: UInt64
        }

        init(descriptorPath: String, context: ChainContext) {
            self.descriptorPath = descriptorPath
            self.context = context
        }

        /// The directory holding the descriptor ("." if none), with a trailing slash.
        var directory: String {
            guard let slash = descriptorPath.lastIndex(of: "/") else { return "./" }
            return String(descriptorPath[...slash])
        }

        /// Resolves an extent file name against the descriptor's directory, or throws
        /// if it is absolute or climbs out of that directory.
        static func resolve(_ name: String, directory: String, descriptor: String) throws -> String {
            guard !name.isEmpty else {
                throw WardenError.corrupt("VMDK extent has an empty file name", file: descriptor)
            }
            guard !name.hasPrefix("/"), !name.hasPrefix("\\"), !(name.count >= 2 && Array(name)[1] == ":") else {
                throw WardenError.unsupported("VMDK extent file \"\(name.prefix(200))\" is an absolute path; only files beside the descriptor are read", file: descriptor)
            }
            guard !name.utf8.contains(0) else {
                throw WardenError.corrupt("VMDK extent file name contains a NUL byte", file: descriptor)
            }
            let parts = name.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "/" || $0 == "\\" })
            guard !parts.contains(where: { $0 == ".." }) else {
                throw WardenError.unsupported("VMDK extent file \"\(name.prefix(200))\" escapes the descriptor's directory", file: descriptor)
            }
            return directory + parts.joined(separator: "/")
        }

        mutating func open(_ lines: [Descriptor.ExtentLine]) throws -> Result {
            guard lines.count <= VMDK.maxExtents else {
                throw WardenError.limit("VMDK descriptor lists more than \(VMDK.maxExtents) extents", file: descriptorPath)
            }
            var result = Result(extents: [], firstSparse: nil, totalFileBytes: 0, totalAllocatedBytes: 0)
            var flatFiles: [ImageFile.FileIdentity: ImageFile] = [:]
            let dir = directory
            for (n, line) in lines.enumerated() {
                let length = try Checked.mul(line.sectors, 512, "VMDK extent \(n + 1) size")
                if line.access == .noAccess {
                    throw WardenError.unsupported("VMDK extent \(n + 1) is marked NOACCESS", file: descriptorPath)
                }
                switch line.type {
                case .zero:
                    result.extents.append(Extent(start: 0, length: length, backing: .zero))
                case .flat, .vmfs, .sparse:
                    let path = try ExtentOpener.resolve(line.fileName ?? "", directory: dir, descriptor: descriptorPath)
                    var file = try ImageFile(path: path)
                    if let shared = flatFiles[file.identity], line.type != .sparse {
                        file = shared // the same flat file may hold several extents
                    } else {
                        guard !context.visited.contains(file.identity) else {
                            throw WardenError.corrupt("VMDK extent file \"\(line.fileName ?? "")\" is used twice (or is the descriptor itself)", file: descriptorPath)
                        }
                        context.visited.insert(file.identity)
                        result.totalFileBytes &+= file.length
                        result.totalAllocatedBytes &+= file.allocatedBytes
                    }
                    do {
                        if line.type == .sparse {
                            let s = try SparseExtent(file: file)
                            let cap = try Checked.mul(s.header.capacity, 512, "VMDK extent capacity")
                            guard cap >= length else {
                                throw WardenError.corrupt("VMDK sparse extent holds \(s.header.capacity) sectors but the descriptor claims \(line.sectors)", file: path)
                            }
                            if result.firstSparse == nil { result.firstSparse = s }
                            result.extents.append(Extent(start: 0, length: length, backing: .sparse(s)))
                        } else {
                            flatFiles[file.identity] = file
                            let base = try Checked.mul(line.offset, 512, "VMDK flat extent offset")
                            let end = try Checked.add(base, length, "VMDK flat extent end")
                            guard end <= file.length else {
                                throw WardenError.corrupt("VMDK flat extent needs \(end) bytes but the file has \(file.length)", file: path)
                            }
                            result.extents.append(Extent(start: 0, length: length, backing: .flat(file, base: base)))
                        }
                    } catch let e as WardenError {
                        throw e.inFile(path)
                    }
                case .vmfsSparse, .vmfsRDM, .vmfsRaw, .seSparse:
                    throw WardenError.unsupported("VMDK \(line.type.rawValue) extents are not supported", file: descriptorPath)
                }
            }
            return result
        }
    }
}
