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
