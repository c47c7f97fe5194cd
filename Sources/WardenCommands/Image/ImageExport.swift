import ArgumentParser
import Foundation
import WardenCore
import DiskImage
#if canImport(Glibc)
import Glibc
#endif

/// `warden image export IMAGE [--snapshot NAME] -o FILE|-`
///
/// Writes the guest-visible disk as raw bytes, exactly what `qemu-img convert -O raw`
/// produces. A file output is written sparse (holes for zero runs) into a temporary
/// name beside it and renamed into place only when complete.
struct ImageExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write the guest-visible virtual disk as raw bytes (like qemu-img convert -O raw)."
    )

    @OptionGroup var image: ImageOptions
    @Option(help: "Export the disk as it was at this internal snapshot (name or id).")
    var snapshot: String?
    @Option(name: .shortAndLong, help: "Output file, or - for standard output.")
    var output: String
    @Flag(help: "Overwrite an existing output file.")
    var force = false

    static let chunk = 4 << 20

    func run() throws {
        let img = try image.open(snapshot: snapshot)
        // Like `qemu-img convert -l snapshot.name=S`, a snapshot exports at the image's
        // current virtual size: cut if the snapshot was larger, zero-padded if smaller.
        let outSize = img.info.details["current_virtual_size"].flatMap(UInt64.init) ?? img.device.size
        if output == "-" {
            try copy(img.device, to: 1, sparse: false, name: "standard output", outSize: outSize)
            return
        }
        if FileManager.default.fileExists(atPath: output) {
            if let id = ImageFile.FileIdentity.of(path: output), chainIdentities(img).contains(id) {
                throw WardenError(.invalidArgument, "refusing to overwrite an image of the chain being exported", file: output)
            }
            if !force { throw WardenError(.invalidArgument, "exists (use --force to overwrite)", file: output) }
        }
        let dir = (output as NSString).deletingLastPathComponent
        let tmp = (dir.isEmpty ? "." : dir) + "/.\((output as NSString).lastPathComponent).warden-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw WardenError(.io, "cannot create: \(String(cString: strerror(errno)))", file: output)
        }
        var ok = false
        defer {
            close(fd)
            if !ok { unlink(tmp) }
        }
        guard outSize <= UInt64(Int64.max), ftruncate(fd, off_t(outSize)) == 0 else {
            throw WardenError(.io, "cannot size the output: \(String(cString: strerror(errno)))", file: output)
        }
        try copy(img.device, to: fd, sparse: true, name: output, outSize: outSize)
        // No fsync: like qemu-img convert, durability is left to the page cache; the
        // rename still guarantees that OUTPUT is never seen half-written.
        guard rename(tmp, output) == 0 else {
            throw WardenError(.io, "cannot finish writing: \(String(cString: strerror(errno)))", file: output)
        }
        ok = true
    }

    private func chainIdentities(_ img: OpenedImage) -> Set<ImageFile.FileIdentity> {
        Set(img.chain.compactMap { ImageFile.FileIdentity.of(path: $0.path) })
    }

    /// Copies the device to `fd`. With `sparse`, zero extents (and all-zero data chunks) become holes.
    private func copy(_ dev: any BlockDevice, to fd: Int32, sparse: Bool, name: String, outSize: UInt64) throws {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunk, alignment: 4096)
        defer { buf.deallocate() }
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunk, alignment: 4096)
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        defer { zeros.deallocate() }
        var pos: UInt64 = 0
        let size = min(dev.size, outSize)
        // Map in windows so a huge sparse disk never builds a huge extent list.
        let window: UInt64 = 1 << 30
        while pos < size {
            let len = min(window, size - pos)
            for ext in try dev.mapping(at: pos, length: len) {
                var off = ext.offset
                let end = ext.offset + ext.length
                while off < end {
                    let n = Int(min(UInt64(Self.chunk), end - off))
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buf[0..<n])
                    if ext.kind == .zero {
                        if !sparse { try Output.writeAll(fd: fd, UnsafeRawBufferPointer(rebasing: zeros[0..<n]), name: name) }
                    } else {
                        try dev.read(at: off, into: slice)
                        if sparse {
                            if !isZero(UnsafeRawBufferPointer(slice)) {
                                try pwriteAll(fd, UnsafeRawBufferPointer(slice), at: off, name: name)
                            }
                        } else {
                            try Output.writeAll(fd: fd, UnsafeRawBufferPointer(slice), name: name)
                        }
                    }
                    off += UInt64(n)
                }
            }
            pos += len
        }
        // Zero padding up to the output size (sparse files are already sized by ftruncate).
        if !sparse {
            while pos < outSize {
                let n = Int(min(UInt64(Self.chunk), outSize - pos))
                try Output.writeAll(fd: fd, UnsafeRawBufferPointer(rebasing: zeros[0..<n]), name: name)
                pos += UInt64(n)
            }
        }
    }

    private func isZero(_ b: UnsafeRawBufferPointer) -> Bool {
        // Word-wise scan; the buffer is 4096-aligned and chunks are multiples of 8 except the tail.
        let words = b.count / 8
        let w = b.baseAddress!.assumingMemoryBound(to: UInt64.self)
        for i in 0..<words where w[i] != 0 { return false }
        for i in (words * 8)..<b.count where b[i] != 0 { return false }
        return true
    }

    private func pwriteAll(_ fd: Int32, _ buf: UnsafeRawBufferPointer, at offset: UInt64, name: String) throws {
        var done = 0
        while done < buf.count {
            let n = pwrite(fd, buf.baseAddress! + done, buf.count - done, off_t(offset + UInt64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                throw WardenError(.io, "write failed: \(String(cString: strerror(errno)))", file: name)
            }
            done += n
        }
    }
}
