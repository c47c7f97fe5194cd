import DiskImage
import GuestFS
import WardenCore

/// A guest opened for reading: the one "open image → layout → guest view" pipeline that
/// inspection, scanning, registration, rollback reports and sysprep share.
public struct OpenedGuest {
    public let image: OpenedImage
    public let layout: GuestDiskLayout
    public let view: GuestView
    /// The image path as given (named in errors and in the inventory).
    public let path: String

    /// A disk whose only filesystems are NTFS: a Windows guest, recognised but not read.
    public struct WindowsGuest: Error, Sendable {
        public var volume: String
    }

    /// Lays out `image` and assembles its guest from `/etc/fstab`. Throws ``WindowsGuest``
    /// when no Linux root exists but an NTFS volume does; other errors name `path`.
    public init(image: OpenedImage, path: String, passphrase: SecretBytes? = nil) throws {
        do {
            let layout = try GuestDisk.layout(of: image.device, passphrase: passphrase)
            do {
                view = try GuestView.assemble(disk: image.device, layout: layout)
            } catch let e as WardenError where e.code == .notFound {
                if let ntfs = layout.volumes.first(where: { $0.filesystem?.type == "ntfs" }) {
                    throw WindowsGuest(volume: ntfs.displayName)
                }
                // No root outside an encrypted volume that stayed closed: say why.
                if let luks = layout.warnings.first(where: { $0.contains("LUKS-encrypted") }) {
                    throw WardenError(luks.contains("--key-from") || luks.contains("does not open") ? .invalidArgument : .corrupt,
                                      "no readable root filesystem: \(luks)")
                }
                throw e
            }
            self.layout = layout
        } catch let e as WardenError {
            throw e.inFile(path)
        }
        self.image = image
        self.path = path
    }

    /// Opens the image at `path` (format by content unless given; a snapshot if named).
    public static func open(_ path: String, format: ImageFormat? = nil, snapshot: String? = nil, passphrase: SecretBytes? = nil) throws -> OpenedGuest {
        let image: OpenedImage
        do { image = try ImageOpener.open(path, options: OpenOptions(format: format, snapshot: snapshot, passphrase: passphrase)) } catch let e as WardenError {
            throw e.inFile(path)
        }
        return try OpenedGuest(image: image, path: path, passphrase: passphrase)
    }

    /// What the guest says about itself.
    public func inventory() -> Inventory {
        var inv = Inspection.inspect(view: view, image: path)
        inv.unscanned = Inspection.unscanned(layout)
        return inv
    }
}
