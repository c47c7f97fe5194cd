import Crypto
import Foundation
import WardenCore

/// The content identity of a guest-visible disk: equal for any two images whose guests
/// see the same bytes, whatever the format, allocation, compression or backing chain.
///
/// ```
/// disk:    | 4 MiB chunk 0 | 4 MiB chunk 1 | ... |      (the guest-visible bytes)
/// chunk:   | 64 KiB block | 64 KiB block | ... |
///
/// chunkDigest(c) = SHA-256( for each block b of c that is not all zeros:
///                             u64be(global block index) ‖ the block's bytes )
/// fingerprint    = SHA-256( "warden-content-v1\0" ‖ u64be(virtual size)
///                           ‖ for each chunk c with a non-zero block: u64be(c) ‖ chunkDigest(c) )
/// ```
///
/// Zero blocks are skipped whether they are holes, zero clusters or written zeros, so a
/// byte copy, a `qemu-img convert` to another format, and an unchanged overlay all give the
/// same fingerprint. Chunks are hashed in parallel; unallocated ranges are not read.
public enum ContentFingerprint {
    static let chunkSize = 4 << 20
    static let blockSize = 64 << 10
    static let tag = Array("warden-content-v1\0".utf8)

    /// Computes the fingerprint of everything `device` shows the guest.
    public static func of(_ device: any BlockDevice,
                          workers: Int = max(2, min(8, System.activeProcessorCount))) throws -> WardenCore.Digest {
        let size = device.size
        // Only chunks that hold allocated data are read; the mapping pass finds them.
        var dataChunks: [UInt64] = []
        for extent in try device.mapping(at: 0, length: size) where extent.kind == .data && extent.length > 0 {
            let first = extent.offset / UInt64(chunkSize)
            let last = (extent.offset + extent.length - 1) / UInt64(chunkSize)
            var c = max(first, dataChunks.last.map { $0 + 1 } ?? 0)
            while c <= last {
                dataChunks.append(c)
                c += 1
                guard dataChunks.count <= 1 << 26 else {
                    throw WardenError.limit("disk too large to fingerprint (\(size) bytes)")
                }
            }
        }
        let chunkCount = dataChunks.count
        let results = DigestSlots(count: chunkCount)
        let state = WorkState()
        let list = dataChunks
        DispatchQueue.concurrentPerform(iterations: max(1, min(workers, chunkCount))) { _ in
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
            defer { buf.deallocate() }
            while let i = state.next(limit: chunkCount) {
                do {
                    results.set(i, try digest(chunk: list[i], of: device, size: size, buffer: buf))
                } catch {
                    state.fail(error)
                }
            }
        }
        if let e = state.error { throw e }
        var h = SHA256()
        h.update(data: tag)
        h.update(data: bigEndian(size))
        for i in 0..<chunkCount {
            guard let d = results.get(i) else { continue }
            h.update(data: bigEndian(list[i]))
            h.update(data: d)
        }
        return WardenCore.Digest(algorithm: "sha256", hex: h.finalize().map { hexByte($0) }.joined())
    }

    /// The fingerprint's chunk size (4 MiB): a writer holding whole chunks in memory (a pull)
    /// computes their digests with ``chunkDigest(index:bytes:)`` and ``combine(size:chunks:)``
    /// instead of reading the disk back.
    public static let chunkBytes = chunkSize

    /// The digest of fingerprint chunk `index` whose guest bytes are `bytes` (the whole chunk,
    /// or the disk's tail); nil when all its blocks are zeros.
    public static func chunkDigest(index c: UInt64, bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        var h = SHA256()
        var any = false
        var off = 0
        let start = c * UInt64(chunkSize)
        while off < bytes.count {
            let n = min(blockSize, bytes.count - off)
            let block = UnsafeRawBufferPointer(rebasing: bytes[off..<off + n])
            if !RawExport.isZero(block) {
                h.update(data: bigEndian((start + UInt64(off)) / UInt64(blockSize)))
                h.update(bufferPointer: block)
                any = true
            }
            off += n
        }
        return any ? Array(h.finalize()) : nil
    }

    /// The fingerprint of a disk of `size` bytes from its non-zero chunks' digests.
    public static func combine(size: UInt64, chunks: [UInt64: [UInt8]]) -> WardenCore.Digest {
        var h = SHA256()
        h.update(data: tag)
        h.update(data: bigEndian(size))
        for c in chunks.keys.sorted() {
            h.update(data: bigEndian(c))
            h.update(data: chunks[c]!)
        }
        return WardenCore.Digest(algorithm: "sha256", hex: h.finalize().map { hexByte($0) }.joined())
    }

    /// The digest of one chunk's non-zero blocks, or nil when it has none.
    static func digest(chunk c: UInt64, of device: any BlockDevice, size: UInt64,
                       buffer: UnsafeMutableRawBufferPointer) throws -> [UInt8]? {
        let start = c * UInt64(chunkSize)
        let length = min(UInt64(chunkSize), size - start)
        var h = SHA256()
        var any = false
        for extent in try device.mapping(at: start, length: length) where extent.kind == .data {
            // Read whole 64 KiB blocks covering the extent (block-aligned within the chunk).
            let relStart = Int(extent.offset - start) / blockSize * blockSize
            let relEnd = min(Int(length), (Int(extent.offset - start + extent.length) + blockSize - 1) / blockSize * blockSize)
            guard relStart < relEnd else { continue }
            let region = UnsafeMutableRawBufferPointer(rebasing: buffer[relStart..<relEnd])
            try device.read(at: start + UInt64(relStart), into: region)
            var off = relStart
            while off < relEnd {
                let n = min(blockSize, relEnd - off)
                let block = UnsafeRawBufferPointer(rebasing: buffer[off..<off + n])
                if !RawExport.isZero(block) {
                    h.update(data: bigEndian((start + UInt64(off)) / UInt64(blockSize)))
                    h.update(bufferPointer: block)
                    any = true
                }
                off += n
            }
        }
        return any ? Array(h.finalize()) : nil
    }

    static func bigEndian(_ v: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) }
    }

    static func hexByte(_ b: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(b >> 4)], digits[Int(b & 0xf)]])
    }
}

/// Per-chunk results written by fingerprint workers.
final class DigestSlots: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var slots: [[UInt8]?]
    init(count: Int) {
        slots = Array(repeating: nil, count: count)
        pthread_mutex_init(&lock, nil)
    }
    deinit { pthread_mutex_destroy(&lock) }
    func set(_ i: Int, _ v: [UInt8]?) {
        pthread_mutex_lock(&lock); slots[i] = v; pthread_mutex_unlock(&lock)
    }
    func get(_ i: Int) -> [UInt8]? {
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        return slots[i]
    }
}
