import CZstd
import Foundation
import WardenCore

/// The config blob of a pushed VM (`application/vnd.warden.vm.config.v1+json`): who the VM is,
/// where it came from, and each disk as a map of fixed-size chunks (docs/oci.md). Chunks that
/// read as zeros are left out: the pulled disk has holes there.
public struct VMArtifactConfig: Codable, Sendable, Equatable {
    public static let schemaName = "warden.vm.config/v1"
    public var schema = VMArtifactConfig.schemaName
    public var vm: VMInfo
    public var origin: Origin
    /// Bytes per chunk (a power of two); the last chunk of a disk may be shorter.
    public var chunkSize: Int
    public var disks: [DiskMap]
    /// The VM's open findings when it was pushed (nil: never scanned).
    public var findings: Findings?

    public struct VMInfo: Codable, Sendable, Equatable {
        public var id: String
        public var name: String
        public var owner: String
        public var labels: [String: String]
        public var generation: String
        public var parent: String?
        public init(id: String, name: String, owner: String, labels: [String: String], generation: String, parent: String?) {
            self.id = id; self.name = name; self.owner = owner; self.labels = labels; self.generation = generation; self.parent = parent
        }
    }

    public struct Origin: Codable, Sendable, Equatable {
        public var host: String
        public var pushedAt: String
        /// The origin ledger's size and root when pushed (its Merkle log), when it has one.
        public var ledgerSize: Int64?
        public var ledgerRoot: String?
        enum CodingKeys: String, CodingKey { case host, pushedAt = "pushed_at", ledgerSize = "ledger_size", ledgerRoot = "ledger_root" }
        public init(host: String, pushedAt: String, ledgerSize: Int64? = nil, ledgerRoot: String? = nil) {
            self.host = host; self.pushedAt = pushedAt; self.ledgerSize = ledgerSize; self.ledgerRoot = ledgerRoot
        }
    }

    public struct DiskMap: Codable, Sendable, Equatable {
        public var index: Int
        /// The format the disk had (`qcow2` or `raw`); pull writes the same format, as one flat image.
        public var format: String
        public var virtualSize: UInt64
        public var chunks: [Chunk]
        /// The disk's content fingerprint (docs/ledger.md), as the pusher computed it from the
        /// bytes it pushed. A pull takes it only from a trusted signer's image; else it computes it.
        public var fingerprint: String?
        enum CodingKeys: String, CodingKey { case index, format, virtualSize = "virtual_size", chunks, fingerprint }
        public init(index: Int, format: String, virtualSize: UInt64, chunks: [Chunk], fingerprint: String? = nil) {
            self.index = index; self.format = format; self.virtualSize = virtualSize; self.chunks = chunks; self.fingerprint = fingerprint
        }
    }

    public struct Chunk: Codable, Sendable, Equatable {
        public var offset: UInt64
        /// Guest bytes it holds (chunkSize, or less at the end of the disk).
        public var length: Int
        /// The blob: sha256 of the compressed bytes.
        public var digest: String
        /// The blob's size in bytes.
        public var size: Int64
        public init(offset: UInt64, length: Int, digest: String, size: Int64) {
            self.offset = offset; self.length = length; self.digest = digest; self.size = size
        }
    }

    public struct Findings: Codable, Sendable, Equatable {
        public var scannedAt: String?
        /// Open findings per severity (`critical`, `high`, …).
        public var counts: [String: Int]
        enum CodingKeys: String, CodingKey { case scannedAt = "scanned_at", counts }
        public init(scannedAt: String?, counts: [String: Int]) { self.scannedAt = scannedAt; self.counts = counts }
    }

    enum CodingKeys: String, CodingKey { case schema, vm, origin, chunkSize = "chunk_size", disks, findings }

    public init(vm: VMInfo, origin: Origin, chunkSize: Int, disks: [DiskMap], findings: Findings?) {
        self.vm = vm; self.origin = origin; self.chunkSize = chunkSize; self.disks = disks; self.findings = findings
    }

    public func encoded() throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(self))
    }

    /// The chunk sizes Warden writes and accepts: 64 KiB to 64 MiB, powers of two.
    public static let chunkSizes = (16...26).map { 1 << $0 }
    /// The largest disk accepted (16 TiB).
    public static let maxVirtualSize: UInt64 = 1 << 44

    /// Checks everything a hostile config could get wrong, against the manifest's layers.
    public func validate(layers: [Descriptor]) throws {
        func bad(_ why: String) -> WardenError { WardenError(.corrupt, "the VM config \(why)") }
        guard schema == Self.schemaName else { throw bad("has schema \(schema.prefix(64).debugDescription), not \(Self.schemaName)") }
        guard Self.chunkSizes.contains(chunkSize) else {
            throw bad("has a chunk size of \(chunkSize); Warden accepts powers of two from 64 KiB to 64 MiB")
        }
        guard (1...16).contains(disks.count) else { throw bad("has \(disks.count) disks (1 to 16 accepted)") }
        guard Set(disks.map(\.index)) == Set(0..<disks.count) else { throw bad("has disk indexes that are not 0…\(disks.count - 1)") }
        guard UUID(uuidString: vm.id) != nil, UUID(uuidString: vm.generation) != nil else { throw bad("has a VM id or generation that is not a UUID") }
        guard !vm.name.isEmpty, vm.name.utf8.count <= 255, vm.labels.count <= 256 else { throw bad("has an empty or oversized name or labels") }
        var sizes: [String: Int64] = [:]
        for l in layers where l.mediaType == MediaType.chunk || l.mediaType == MediaType.sealedChunk { sizes[l.digest] = l.size }
        let bound = Int64(ZSTD_compressBound(chunkSize)) + 28
        for d in disks {
            guard d.format == "qcow2" || d.format == "raw" else { throw bad("gives disk \(d.index) the format \(d.format.prefix(32).debugDescription)") }
            guard d.virtualSize > 0, d.virtualSize <= Self.maxVirtualSize, d.format == "raw" || d.virtualSize % 512 == 0 else {
                throw bad("gives disk \(d.index) a size of \(d.virtualSize) bytes")
            }
            if let f = d.fingerprint { try BlobDigest.check(f, what: "the VM config's fingerprint of disk \(d.index)") }
            var next: UInt64 = 0
            for c in d.chunks {
                guard c.offset >= next, c.offset % UInt64(chunkSize) == 0, c.offset < d.virtualSize else {
                    throw bad("has chunk at \(c.offset) of disk \(d.index) out of order, unaligned or past the end")
                }
                let expected = Int(min(UInt64(chunkSize), d.virtualSize - c.offset))
                guard c.length == expected else { throw bad("has chunk at \(c.offset) of disk \(d.index) with length \(c.length), not \(expected)") }
                guard c.size > 0, c.size <= bound else { throw bad("has chunk at \(c.offset) of disk \(d.index) with a blob size of \(c.size)") }
                try BlobDigest.check(c.digest, what: "the VM config")
                guard let s = sizes[c.digest], s == c.size else {
                    throw bad("names chunk \(c.digest) that the manifest does not list with that size")
                }
                next = c.offset + UInt64(chunkSize)
            }
        }
    }
}

/// zstd for chunks: level 3, one frame per chunk with its content size, deterministic for a
/// given libzstd (so equal chunks make equal blobs and dedupe by digest).
public enum ChunkCodec {
    public static let level: Int32 = 3

    public static func compress(_ input: UnsafeRawBufferPointer) throws -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = out.withUnsafeMutableBytes { o in ZSTD_compress(o.baseAddress, bound, input.baseAddress, input.count, level) }
        guard ZSTD_isError(n) == 0 else { throw WardenError(.internal, "zstd could not compress a chunk") }
        out.removeSubrange(n...)
        return out
    }

    /// Decompresses a chunk that must hold exactly `length` bytes.
    public static func decompress(_ input: [UInt8], length: Int, into out: UnsafeMutableRawBufferPointer, what: String) throws {
        guard out.count >= length else { throw WardenError(.internal, "chunk buffer too small") }
        let declared = input.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }
        guard declared == UInt64(length) else {
            throw WardenError(.corrupt, "\(what): the compressed chunk declares \(declared > UInt64(Int64.max) ? "no" : String(declared)) bytes, not \(length)")
        }
        let n = input.withUnsafeBytes { i in ZSTD_decompress(out.baseAddress, length, i.baseAddress, i.count) }
        guard ZSTD_isError(n) == 0, n == length else { throw WardenError(.corrupt, "\(what): the chunk is not a valid zstd frame of \(length) bytes") }
    }
}
