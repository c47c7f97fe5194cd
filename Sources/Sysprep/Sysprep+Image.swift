import Foundation
import WardenCore
import DiskImage
import GuestFS
import Inspection

extension Sysprep {
    /// Opens `path` read-only and assembles its guest (root plus fstab mounts).
    public static func readOnlyGuest(_ path: String, format: ImageFormat? = nil) throws -> (OpenedImage, GuestView) {
        do {
            let img = try ImageOpener.open(path, options: OpenOptions(format: format))
            let layout = try GuestDisk.layout(of: img.device)
            return (img, try GuestView.assemble(disk: img.device, layout: layout))
        } catch let e as WardenError {
            throw e.inFile(path)
        }
    }

    /// What `operations` would change in the image at `path`. Opens it read-only.
    public static func planImage(_ path: String, format: ImageFormat? = nil, operations: [any SysprepOperation],
                                 options: SysprepOptions) throws -> SysprepReport {
        let (_, view) = try readOnlyGuest(path, format: format)
        do {
            return try plan(GuestFiles(view: view), operations: operations, options: options, image: path)
        } catch let e as WardenError {
            throw e.inFile(path)
        }
    }
}
