import Dispatch
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// Writes a device's guest-visible bytes as a raw image: the same bytes
/// `qemu-img convert -O raw` produces.
///
/// To a seekable file, the disk is cut into 4 MiB chunks; chunks the device maps
/// as zero are skipped (left as holes), the rest are read and their non-zero
/// 64 KiB blocks written with `pwrite`, by several workers at once (reads of
/// every `BlockDevice` are thread-safe). To a stream, chunks go out in order.
public enum RawExport {
    public static let chunkSize = 4 << 20
    static let blockSize = 64 << 10

    /// Writes `device` to the seekable file `fd`, which must already be `outSize` bytes
    /// long and read as zeros (fresh `ftruncate`). Bytes past the device read as zeros.
    /// `progress` is told each amount of the disk handled (data written or zeros skipped).
    public static func toFile(_ device: any BlockDevice, fd: Int32, outSize: UInt64, name: String,
                              workers: Int = max(2, min(8, System.activeProcessorCount)),
                              progress: (@Sendable (UInt64) -> Void)? = nil) throws {
        let size = min(device.size, outSize)
        let window: UInt64 = 1 << 30
        var pos: UInt64 = 0
        while pos < size {
            let len = min(window, size - pos)
            let chunks = try dataChunks(device, from: pos, length: len)
            try parallel(chunks.count, workers: workers) { buf, i in
                let (off, n) = chunks[i]
                let slice = UnsafeMutableRawBufferPointer(rebasing: buf[0..<n])
                try device.read(at: off, into: slice)
                try writeNonZero(UnsafeRawBufferPointer(slice), fd: fd, at: off, name: name)
                progress?(UInt64(n))
            }
            progress?(len - chunks.reduce(0) { $0 + UInt64($1.1) })
            pos += len
        }
    }

    /// Writes `device` to a stream (`fd` not seekable), zero-padded to `outSize`.
    public static func toStream(_ device: any BlockDevice, fd: Int32, outSize: UInt64, name: String,
                                progress: ((UInt64) -> Void)? = nil) throws {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buf.deallocate() }
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        defer { zeros.deallocate() }
        let size = min(device.size, outSize)
        let window: UInt64 = 1 << 30
        var pos: UInt64 = 0
        while pos < size {
            let len = min(window, size - pos)
            for ext in try device.mapping(at: pos, length: len) {
                var off = ext.offset
                let end = ext.offset + ext.length
                while off < end {
                    let n = Int(min(UInt64(chunkSize), end - off))
                    if ext.kind == .zero {
                        try FileDescriptorIO.writeAll(fd, UnsafeRawBufferPointer(rebasing: zeros[0..<n]), name: name)
                    } else {
                        let slice = UnsafeMutableRawBufferPointer(rebasing: buf[0..<n])
                        try device.read(at: off, into: slice)
                        try FileDescriptorIO.writeAll(fd, UnsafeRawBufferPointer(slice), name: name)
                    }
                    progress?(UInt64(n))
                    off += UInt64(n)
                }
            }
            pos += len
        }
        while pos < outSize {
            let n = Int(min(UInt64(chunkSize), outSize - pos))
            try FileDescriptorIO.writeAll(fd, UnsafeRawBufferPointer(rebasing: zeros[0..<n]), name: name)
            progress?(UInt64(n))
            pos += UInt64(n)
        }
    }

    /// The chunk-aligned ranges in `[from, from+length)` that hold any `.data` extent.
    static func dataChunks(_ device: any BlockDevice, from: UInt64, length: UInt64) throws -> [(UInt64, Int)] {
        var out: [(UInt64, Int)] = []
        let chunk = UInt64(chunkSize)
        let end = from + length
        for ext in try device.mapping(at: from, length: length) where ext.kind == .data && ext.length > 0 {
            let first = ext.offset / chunk
            let last = (ext.offset + ext.length - 1) / chunk
            var c = first
            while c <= last {
                let start = c * chunk
                if out.last?.0 != start {
                    out.append((start, Int(min(chunk, end - start))))
                }
                c += 1
            }
        }
        return out
    }

    /// Runs `body(buffer, index)` for every index in `0..<count` on `workers` threads,
    /// each with its own chunk buffer. The first error stops the rest and is rethrown.
    static func parallel(_ count: Int, workers: Int,
                         _ body: @Sendable (UnsafeMutableRawBufferPointer, Int) throws -> Void) throws {
        guard count > 0 else { return }
        let state = WorkState()
        DispatchQueue.concurrentPerform(iterations: min(workers, count)) { _ in
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
            defer { buf.deallocate() }
            while let i = state.next(limit: count) {
                do { try body(buf, i) } catch { state.fail(error) }
            }
        }
        if let e = state.error { throw e }
    }

    /// Writes the non-zero 64 KiB blocks of `buf` at `offset`, coalescing neighbours.
    public static func writeNonZero(_ buf: UnsafeRawBufferPointer, fd: Int32, at offset: UInt64, name: String) throws {
        try forEachNonZeroRun(buf) { run in
            try FileDescriptorIO.pwriteAll(fd, UnsafeRawBufferPointer(rebasing: buf[run]), at: offset + UInt64(run.lowerBound), name: name)
        }
    }

    /// Calls `body` with each run of consecutive non-zero 64 KiB blocks of `buf` (the last
    /// block may be shorter): what sparse writers write, leaving the zero blocks as holes.
    public static func forEachNonZeroRun(_ buf: UnsafeRawBufferPointer, _ body: (Range<Int>) throws -> Void) rethrows {
        var runStart = -1
        var i = 0
        while i < buf.count {
            let n = min(blockSize, buf.count - i)
            let zero = isZero(UnsafeRawBufferPointer(rebasing: buf[i..<i + n]))
            if !zero && runStart < 0 { runStart = i }
            if zero && runStart >= 0 {
                try body(runStart..<i)
                runStart = -1
            }
            i += n
        }
        if runStart >= 0 { try body(runStart..<buf.count) }
    }

    /// Whether every byte is zero (eight bytes at a time).
    public static func isZero(_ b: UnsafeRawBufferPointer) -> Bool {
        guard let base = b.baseAddress else { return true }
        let words = b.count / 8
        var i = 0
        while i < words {
            if base.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) != 0 { return false }
            i += 1
        }
        for j in (words * 8)..<b.count where b[j] != 0 { return false }
        return true
    }
}

/// A work counter and the first error, shared by export workers.
final class WorkState: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var nextIndex = 0
    private(set) var error: Error?

    init() { pthread_mutex_init(&lock, nil) }
    deinit { pthread_mutex_destroy(&lock) }

    func next(limit: Int) -> Int? {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        guard error == nil, nextIndex < limit else { return nil }
        nextIndex += 1
        return nextIndex - 1
    }

    func fail(_ e: Error) {
        pthread_mutex_lock(&lock)
        if error == nil { error = e }
        pthread_mutex_unlock(&lock)
    }
}

/// The number of CPUs available to this process.
public enum System {
    public static var activeProcessorCount: Int {
        let n = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return n > 0 ? n : 1
    }
}
