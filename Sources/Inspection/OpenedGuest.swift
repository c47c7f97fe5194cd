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

    /// A disk with NTFS and no Linux root: a Windows guest. `filesystem` is its system volume
    /// (the NTFS volume with a `\Windows` folder, else the largest), opened, for
    /// ``Inspection/inspectWindows(fs:volume:)``; nil when no NTFS volume opens.
    public struct WindowsGuest: Error, Sendable {
        public var volume: String
        public var filesystem: (any FileSystem)?

        /// What Warden reads of the guest (nil without an opened volume).
        public func inspect() -> (os: OSInfo, windows: WindowsInfo)? {
            filesystem.map { Inspection.inspectWindows(fs: $0, volume: volume) }
        }
    }

    /// Lays out `image` and assembles its guest from `/etc/fstab`. Throws ``WindowsGuest``
    /// when no Linux root exists but an NTFS volume does; other errors name `path`.
    public init(image: OpenedImage, path: String, passphrase: SecretBytes? = nil) throws {
        do {
            let layout = try GuestDisk.layout(of: image.device, passphrase: passphrase)
            do {
                view = try GuestView.assemble(disk: image.device, layout: layout)
            } catch let e as WardenError where e.code == .notFound {
                let ntfs = layout.volumes.filter { $0.filesystem?.type == "ntfs" }
                if !ntfs.isEmpty {
                    var opened: [(GuestVolume, any FileSystem)] = []
                    for v in ntfs {
                        if let fs = try? GuestDisk.openFileSystem(try GuestDisk.device(for: v, in: layout, on: image.device)) { opened.append((v, fs)) }
                    }
                    let system = opened.first { (try? GuestPathResolver($0.1).resolve(Array("/Windows".utf8)))?.stat.type == .directory }
                        ?? opened.max { $0.0.size < $1.0.size }
                    throw WindowsGuest(volume: (system?.0 ?? ntfs[0]).displayName, filesystem: system?.1)
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
