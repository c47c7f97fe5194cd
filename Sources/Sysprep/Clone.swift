import Foundation
import WardenCore
import DiskImage
import GuestFS
import Inspection
#if canImport(Glibc)
import Glibc
#endif

/// Offline clones: an overlay (or a full flattened copy) per disk, the identity refreshed in
/// the boot disk, and the result verified against the source before it is put in place.
///
/// Order (the commit point is the rename; see docs/sysprep.md):
/// 1. each disk is created under a hidden temporary name in the destination folder
///    (the caller's; `vm clone` uses `.NAME.qcow2.warden-VMID`, WardenServices.Staging): a qcow2 overlay backed by the source disk, or a sparse
///    raw copy of the guest-visible disk with `full`;
/// 2. the operations run on the boot disk (index 0) through the write path; the source is
///    opened read-only and never written. The temporary files are written without write
///    barriers (``QCOW2Overlay/Durability/processCrashOnly``): no name points at them yet,
///    so ordering their writes against power loss would protect nothing; each is synced
///    once, whole, before step 4;
/// 3. both guests are re-inspected and compared (``IdentityCheck``);
/// 4. only when that passes is each file linked to its final name (never replacing an
///    existing file), the temporary name removed and the directory synced. A kill before
///    step 4 leaves only a hidden temporary file; a kill during it leaves complete, verified
///    images.
public enum Clone {
    public struct Source: Sendable {
        public var path: String
        public var format: String
        /// The LUKS passphrase of an encrypted qcow2 source (full clones only: the copy is
        /// plaintext until the caller encrypts it again).
        public var passphrase: SecretBytes?
        public init(path: String, format: String, passphrase: SecretBytes? = nil) {
            self.path = path; self.format = format; self.passphrase = passphrase
        }
    }

    public struct Result: Sendable {
        /// Final paths, one per source disk.
        public var paths: [String]
        public var formats: [String]
        public var report: SysprepReport
        public var collisions: [IdentityCollision]
    }

    /// The final file name of disk `index` of a clone named `name`.
    public static func fileName(name: String, index: Int, count: Int, full: Bool) -> String {
        let ext = full ? "raw" : "qcow2"
        return count == 1 ? "\(name).\(ext)" : "\(name)-disk\(index).\(ext)"
    }

    /// Creates, refreshes and verifies the clone; links the files into place only when the
    /// verification passes. On any failure the temporary files are removed. When the
    /// verification finds a shared identity field, nothing is linked and the result carries
    /// the collisions (the caller records them and fails).
    /// Checks that `name` can be a file name of a clone.
    public static func checkName(_ name: String) throws {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != "..", !name.hasPrefix("."),
              name.utf8.count <= 200 else {
            throw WardenError(.invalidArgument, "clone name \(name) cannot be a file name (one path component, not starting with '.')")
        }
    }

    /// `finals[i]` is where disk `i` ends up, `temps[i]` the hidden name it is written under.
    /// `commit` is the commit point: it links the temporary files into place (and records the
    /// clone); it is called only when verification passed. Without `commit` the files are
    /// linked here, never replacing one.
    public static func make(sources: [Source], finals: [String], temps: [String], full: Bool,
                            operations: [any SysprepOperation], options: SysprepOptions,
                            checkFilesystemUUIDs: Bool,
                            beforeCommit: (() throws -> Void)? = nil,
                            commit: (() throws -> Void)? = nil) throws -> Result {
        guard !sources.isEmpty else { throw WardenError(.invalidArgument, "the VM has no disks") }
        guard finals.count == sources.count, temps.count == sources.count else {
            throw WardenError(.internal, "clone: one final and one temporary name per disk")
        }
        let options = options.forgingKeys(for: operations)
        let dir = ((finals[0] as NSString).deletingLastPathComponent)
        for f in finals where FileManager.default.fileExists(atPath: f) {
            throw WardenError(.conflict, "already exists; not overwritten", file: f)
        }
        if !full, let s = sources.first(where: { $0.passphrase != nil }) {
            throw WardenError(.unsupported, "an encrypted disk is cloned only as a full copy", file: s.path)
        }
        var made: [String] = []
        let timer = PhaseTimer.shared
        timer.lap("clone-prepare")
        do {
            for (s, t) in zip(sources, temps) {
                unlink(t)
                if full {
                    try fullCopy(s, to: t)
                } else {
                    try QCOW2Overlay.create(at: t, backing: s.path, backingFormat: s.format, durable: false)
                }
                made.append(t)
            }
            timer.lap("overlay-create")
            // Refresh the boot disk.
            let img = try ImageOpener.openWritable(temps[0], options: OpenOptions(format: full ? .raw : .qcow2),
                                                   durability: .processCrashOnly)
            let guest = try WritableGuestView.assemble(disk: img.device)
            timer.lap("open-writable-guest")
            let report: SysprepReport
            do {
                report = try Sysprep.apply(GuestWriter(writable: guest), operations: operations, options: options, image: finals[0])
                try guest.commit()
                timer.lap("fs-commit")
                try img.device.flush()
                timer.lap("image-flush")
            } catch let e as WardenError {
                throw e.inFile(finals[0])
            }
            // Verify against the source, both opened read-only.
            let (_, srcView) = try Sysprep.readOnlyGuest(sources[0].path, format: ImageFormat(rawValue: sources[0].format), passphrase: sources[0].passphrase)
            let (_, cloneView) = try Sysprep.readOnlyGuest(temps[0], format: full ? .raw : .qcow2)
            timer.lap("verify-open")
            let collisions = IdentityCheck.compare(source: GuestFiles(view: srcView), clone: GuestFiles(view: cloneView),
                                                   expectedHostname: options.hostname,
                                                   checkFilesystemUUIDs: checkFilesystemUUIDs)
            timer.lap("verify-compare")
            if !collisions.isEmpty {
                for t in made { unlink(t) }
                return Result(paths: [], formats: [], report: report, collisions: collisions)
            }
            // The boot disk was synced after its writes; the others (untouched overlays) now.
            for t in temps.dropFirst() { try syncFile(t) }
            try beforeCommit?()
            if let commit {
                try commit()
            } else {
                // Commit point: link each file to its final name (never replacing one), then drop the temporary name.
                var linked: [String] = []
                for (t, f) in zip(temps, finals) {
                    guard link(t, f) == 0 else {
                        let err = String(cString: strerror(errno))
                        for l in linked { unlink(l) }
                        throw WardenError(errno == EEXIST ? .conflict : .io, "cannot create: \(err)", file: f)
                    }
                    linked.append(f)
                }
                for t in temps { unlink(t) }
                FileDescriptorIO.syncDirectory(dir)
            }
            timer.lap("link-commit")
            return Result(paths: finals, formats: Array(repeating: full ? "raw" : "qcow2", count: finals.count),
                          report: report, collisions: [])
        } catch {
            for t in made { unlink(t) }
            throw error
        }
    }

    /// A sparse raw copy of the guest-visible disk (the whole backing chain flattened).
    static func fullCopy(_ s: Source, to path: String) throws {
        let img = try ImageOpener.open(s.path, options: OpenOptions(format: ImageFormat(rawValue: s.format), passphrase: s.passphrase))
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw WardenError(.io, "cannot create: \(String(cString: strerror(errno)))", file: path) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(img.device.size)) == 0 else {
            throw WardenError(.io, "cannot size: \(String(cString: strerror(errno)))", file: path)
        }
        try RawExport.toFile(img.device, fd: fd, outSize: img.device.size, name: path)
        guard fsync(fd) == 0 else { throw WardenError(.io, "cannot sync: \(String(cString: strerror(errno)))", file: path) }
    }

    static func syncFile(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw WardenError(.io, "cannot open: \(String(cString: strerror(errno)))", file: path) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw WardenError(.io, "cannot sync: \(String(cString: strerror(errno)))", file: path) }
    }
}
