import Foundation
import WardenCore
import DiskImage
import GuestFS
import Inspection

extension Sysprep {
    /// Refreshes the image at `path` in place: a qcow2 through a writable overlay open
    /// (new clusters at the end of the file; backing files are opened read-only and never
    /// written), a raw image directly. Every ext2/3/4 filesystem the guest mounts opens writable.
    public static func applyImage(_ path: String, format: ImageFormat? = nil, operations: [any SysprepOperation],
                                  options: SysprepOptions,
                                  durability: QCOW2Overlay.Durability = .barriers) throws -> SysprepReport {
        let options = options.forgingKeys(for: operations)
        // All or nothing: every operation first runs against a throwaway overlay of the image.
        // Only when all of them succeed there is the image itself written (the same code, the
        // same keys); a guest that makes any step fail (a dangling link, a link to a file the
        // operation did not mean to change, a full filesystem) is left exactly as it was.
        try trialRun(path, format: format, operations: operations, options: options)
        do {
            let img = try ImageOpener.openWritable(path, options: OpenOptions(format: format), durability: durability)
            let guest = try WritableGuestView.assemble(disk: img.device)
            PhaseTimer.shared.lap("open-writable-guest")
            let writer = GuestWriter(writable: guest)
            let report = try apply(writer, operations: operations, options: options, image: path)
            try guest.commit()
            PhaseTimer.shared.lap("fs-commit")
            try img.device.flush()
            PhaseTimer.shared.lap("image-flush")
            return report
        } catch let e as WardenError {
            throw e.inFile(path)
        }
    }
}

extension Sysprep {
    /// Applies `operations` to a temporary qcow2 overlay backed by `path` (beside it, or in the
    /// temporary folder when that folder is not writable), then deletes the overlay.
    static func trialRun(_ path: String, format: ImageFormat?, operations: [any SysprepOperation], options: SysprepOptions) throws {
        // The format of the file itself, by content: an overlay's backing chain is not opened here.
        let detected = try format ?? ImageOpener.detect(try ImageFile(path: path))
        let abs = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        let prefix = "." + (abs as NSString).lastPathComponent + ".warden-trial-"
        var dir = (abs as NSString).deletingLastPathComponent
        if access(dir, W_OK) != 0 { dir = NSTemporaryDirectory() }
        removeStaleTrials(in: dir, prefix: prefix)
        let trial = dir + "/" + prefix + UUID().uuidString.lowercased()
        var lockFD: Int32 = -1
        defer {
            unlink(trial)
            QCOW2Overlay.removeWriterTemps(of: trial)
            if lockFD >= 0 { close(lockFD) }
        }
        do {
            try QCOW2Overlay.create(at: trial, backing: abs, backingFormat: detected.rawValue, durable: false)
            // Held while the trial runs, so another run's clean-up never removes it.
            lockFD = open(trial, O_RDONLY | O_CLOEXEC)
            if lockFD >= 0 { _ = flock(lockFD, LOCK_EX) }
            let img = try ImageOpener.openWritable(trial, options: OpenOptions(format: .qcow2), durability: .processCrashOnly)
            let guest = try WritableGuestView.assemble(disk: img.device)
            _ = try apply(GuestWriter(writable: guest), operations: operations, options: options, image: path)
        } catch let e as WardenError {
            var e = e
            e.file = path
            e.message = "nothing was changed: " + e.message
            throw e
        }
    }
}

extension Sysprep {
    /// Removes trial overlays (and their writer temporaries) that a killed run left in `dir`;
    /// one still locked by a running trial is kept.
    static func removeStaleTrials(in dir: String, prefix: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix(prefix) {
            let p = dir + "/" + name
            if name.contains(".warden-tmp-") { continue }
            let fd = open(p, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { continue }
            unlink(p)
            QCOW2Overlay.removeWriterTemps(of: p)
        }
    }
}

extension GuestWriter {
    /// A writer over a guest opened writable: reads and writes go through the same
    /// (writable) filesystem objects, so later operations see earlier writes.
    public convenience init(writable: WritableGuestView) {
        var map: [String: any FileSystem] = [:]
        for m in writable.view.mounts {
            if let fs = writable.filesystem(at: m.path) { map[m.path] = fs }
        }
        self.init(view: writable.view.replacingFilesystems(map))
    }
}
