import DiskImage
import Foundation
import Ledger
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// Byte copies of disk files for `vm copy`.
public enum DiskCopy {
    /// Copies `src` to `dst` (created exclusively, 0600), leaving holes where the source reads
    /// as zeros, and syncs it.
    public static func sparseCopy(_ src: String, to dst: String) throws {
        let inFD = open(src, O_RDONLY | O_CLOEXEC)
        guard inFD >= 0 else { throw WardenError(.io, "cannot open: \(String(cString: strerror(errno)))", file: src) }
        defer { close(inFD) }
        let outFD = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard outFD >= 0 else { throw WardenError(.io, "cannot create: \(String(cString: strerror(errno)))", file: dst) }
        var ok = false
        defer { close(outFD); if !ok { unlink(dst) } }
        let chunk = 1 << 20
        var buf = [UInt8](repeating: 0, count: chunk)
        var offset: UInt64 = 0
        while true {
            let n = buf.withUnsafeMutableBytes { pread(inFD, $0.baseAddress, chunk, off_t(offset)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw WardenError(.io, "read failed: \(String(cString: strerror(errno)))", file: src)
            }
            if n == 0 { break }
            if buf[0..<n].contains(where: { $0 != 0 }) {
                try buf.withUnsafeBytes { try FileDescriptorIO.pwriteAll(outFD, UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: offset, name: dst) }
            }
            offset += UInt64(n)
        }
        guard ftruncate(outFD, off_t(offset)) == 0, fsync(outFD) == 0 else {
            throw WardenError(.io, "cannot finish the copy: \(String(cString: strerror(errno)))", file: dst)
        }
        ok = true
    }

    /// A byte copy keeps the backing reference as written; a relative one is made absolute
    /// (`qemu-img rebase -u`) so the copy still finds the same backing file from its new folder.
    public static func fixRelativeBacking(of d: DiskRecord, copy: String) throws {
        guard d.format == "qcow2", let backing = d.backingChain.first else { return }
        // The name as written is read from the source, where it still resolves (the copy's
        // relative name points into the new folder, where there is no backing file).
        let img = try ImageOpener.open(d.path)
        guard let written = img.info.backingFile, !written.hasPrefix("/") else { return }
        let qemuImg = try ToolProcess.find("qemu-img", package: "qemu-utils")
        let r = try ToolProcess.run(qemuImg, ["rebase", "-u", "-b", backing, "-F", img.info.backingFormat ?? "raw", copy])
        guard r.status == 0 else { throw WardenError(.io, "qemu-img rebase failed: \(r.firstErrorLine)", file: copy) }
    }
}
