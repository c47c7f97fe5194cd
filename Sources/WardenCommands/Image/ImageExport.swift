import ArgumentParser
import Foundation
import WardenConfig
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
        abstract: "Write the guest-visible virtual disk as raw bytes (like qemu-img convert -O raw).",
        discussion: """
            Examples:
              warden image export disk.qcow2 -o disk.raw
              warden image export disk.vmdk -o - | sha256sum
            """
    )

    @OptionGroup var image: ImageOptions
    @Option(help: "Export the disk as it was at this internal snapshot (name or id).")
    var snapshot: String?
    @Option(name: .shortAndLong, help: "Output file, or - for standard output.")
    var output: String
    @Flag(help: "Overwrite an existing output file.")
    var force = false
    @Option(help: "Parallel read/write workers for file output (default: one per CPU, 2 to 8).")
    var jobs: Int?

    func validate() throws {
        if let jobs, !(1...64).contains(jobs) { throw ValidationError("--jobs must be between 1 and 64") }
    }

    func run() throws {
        let img = try image.open(snapshot: snapshot)
        // Like `qemu-img convert -l snapshot.name=S`, a snapshot exports at the image's
        // current virtual size: cut if the snapshot was larger, zero-padded if smaller.
        let outSize = img.info.details["current_virtual_size"].flatMap(UInt64.init) ?? img.device.size
        let meter = ProgressMeter("export", total: outSize)
        defer { meter.finish() }
        if output == "-" {
            try RawExport.toStream(img.device, fd: 1, outSize: outSize, name: "standard output", progress: { meter.advance(by: $0) })
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
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
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
        try RawExport.toFile(img.device, fd: fd, outSize: outSize, name: output,
                             workers: jobs ?? max(2, min(8, System.activeProcessorCount)),
                             progress: { meter.advance(by: $0) })
        // No fsync: like qemu-img convert, durability is left to the page cache; the
        // rename still guarantees that OUTPUT is never seen half-written. An existing
        // OUTPUT (only with --force) is unlinked first: ext4 flushes a file renamed over
        // another one to disk at once (auto_da_alloc), which would triple the export time.
        if force { _ = unlink(output) }
        guard rename(tmp, output) == 0 else {
            throw WardenError(.io, "cannot finish writing: \(String(cString: strerror(errno)))", file: output)
        }
        ok = true
    }

    private func chainIdentities(_ img: OpenedImage) -> Set<ImageFile.FileIdentity> {
        Set(img.chain.compactMap { ImageFile.FileIdentity.of(path: $0.path) })
    }
}
