import DiskImage
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// Helpers shared by the fuzz targets.
public enum FuzzSupport {
    /// Writes the input to a per-process file on tmpfs and returns its path.
    public static func scratchFile(_ data: UnsafePointer<UInt8>?, _ size: Int, name: String) -> String {
        let dir = "/dev/shm/warden-fuzz-\(getpid())"
        mkdir(dir, 0o700)
        let path = "\(dir)/\(name)"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        if fd >= 0 {
            if let data, size > 0 { _ = write(fd, data, size) }
            close(fd)
        }
        return path
    }

    /// Reads a bounded sample of the device: the first, last and a few input-chosen blocks,
    /// and asks for its mapping. Errors are expected; traps are the bugs.
    public static func exercise(_ dev: any BlockDevice, seed: UInt64) {
        let size = dev.size
        guard size > 0 else { return }
        var offsets: [UInt64] = [0, size > 65536 ? size - 65536 : 0]
        var x = seed | 1
        for _ in 0..<6 {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            offsets.append(x % size)
        }
        for off in offsets {
            let n = Int(min(UInt64(65536), size - off))
            _ = try? dev.read(at: off, count: n)
        }
        _ = try? dev.mapping(at: 0, length: min(size, 1 << 30))
    }

    /// A seed from the input's first bytes.
    public static func seed(_ data: UnsafePointer<UInt8>?, _ size: Int) -> UInt64 {
        var s: UInt64 = 0xcbf29ce484222325
        if let data { for i in 0..<min(size, 64) { s = (s ^ UInt64(data[i])) &* 0x100000001b3 } }
        return s
    }
}

/// The input bytes followed by zeros up to `virtualSize`: lets a fuzzer mutate the
/// metadata at the front of a filesystem whose real image would be far too large.
public final class PaddedDevice: BlockDevice, @unchecked Sendable {
    let bytes: [UInt8]
    public let size: UInt64

    public init(_ bytes: [UInt8], virtualSize: UInt64) {
        self.bytes = bytes
        self.size = max(UInt64(bytes.count), virtualSize)
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        guard offset < UInt64(bytes.count) else { return }
        let start = Int(offset)
        let n = min(buffer.count, bytes.count - start)
        bytes.withUnsafeBytes { src in
            UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]).copyMemory(from: UnsafeRawBufferPointer(rebasing: src[start..<start + n]))
        }
    }
}
