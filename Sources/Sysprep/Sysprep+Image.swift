import Foundation
import WardenCore
import DiskImage
import GuestFS
import Inspection

extension Sysprep {
    /// Opens `path` read-only and assembles its guest (root plus fstab mounts).
    public static func readOnlyGuest(_ path: String, format: ImageFormat? = nil, passphrase: SecretBytes? = nil) throws -> (OpenedImage, GuestView) {
        do {
            let guest = try OpenedGuest.open(path, format: format, passphrase: passphrase)
            return (guest.image, guest.view)
        } catch let e as WardenError {
            throw e.inFile(path)
        } catch is OpenedGuest.WindowsGuest {
            throw WardenError.unsupported("a Windows guest (NTFS only): Warden writes only ext2/3/4", file: path)
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
