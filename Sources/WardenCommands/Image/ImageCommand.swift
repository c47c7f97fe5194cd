import ArgumentParser
import WardenCore
import DiskImage
import Partitions
import GuestFS

/// `warden image …`: read disk images offline.
struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Read VM disk images offline (raw, qcow2 also LUKS-encrypted, VMDK, VHD, VHDX, VDI, OVA; MBR/GPT, LVM, LUKS volumes; ext2/3/4, XFS, btrfs, FAT, NTFS); refresh a guest's identity; patch an image into a new overlay.",
        subcommands: [ImageInfoCommand.self, ImageLs.self, ImageCat.self, ImageExport.self, ImageManifest.self, ImageFingerprint.self,
                      ImageSysprep.self, ImagePatch.self]
    )
}

/// Options shared by every command that opens an image.
struct ImageOptions: ParsableArguments {
    @Argument(help: "The disk image (raw, qcow2, VMDK, VHD, VHDX, VDI or OVA; detected by content).")
    var image: String

    @Option(help: "Force the image format instead of detecting it: raw, qcow2, vmdk, vhd, vhdx, vdi or ova.")
    var format: ImageFormat?

    @Flag(help: "Detect the format of backing files that do not declare one (off: read them as raw).")
    var probeBacking = false

    @Option(help: "Deepest backing chain accepted.")
    var maxBackingDepth = 16

    @OptionGroup var key: KeyFromOption

    func open(snapshot: String? = nil) throws -> OpenedImage {
        try ImageOpener.open(image, options: OpenOptions(format: format, snapshot: snapshot,
                                                         maxBackingDepth: maxBackingDepth,
                                                         probeBacking: probeBacking, passphrase: try key.passphrase(forImage: image)))
    }

    func validate() throws {
        guard maxBackingDepth >= 0 && maxBackingDepth <= 1000 else {
            throw ValidationError("--max-backing-depth must be between 0 and 1000")
        }
    }
}

extension ImageFormat: ExpressibleByArgument {}

/// Options for commands that look inside a filesystem.
struct VolumeOptions: ParsableArguments {
    @Option(name: .long, help: "Partition number to read (Linux numbering; 0 for a disk without a table). Default: the largest Linux filesystem.")
    var partition: Int?

    @Option(name: .long, help: "LVM logical volume to read: VG/LV, VG-LV or /dev/mapper/VG-LV.")
    var lv: String?

    @Option(name: .long, help: "Read the disk as it was at this internal snapshot (name or id).")
    var snapshot: String?

    @Flag(name: .long, help: "Do not replay an ext3/ext4 journal that needs recovery: show the filesystem as it lies on the disk.")
    var noReplay = false

    @Option(name: .long, help: "btrfs: read this subvolume or snapshot (its path from the top level, or its id; `image ls --snapshots` lists them) instead of the default subvolume.")
    var subvol: String?

    func validate() throws {
        if partition != nil && lv != nil { throw ValidationError("give --partition or --lv, not both") }
    }
}

/// One opened guest filesystem (the selected volume), with the image it came from.
struct OpenedVolume {
    var image: OpenedImage
    var volume: GuestVolume
    var fs: any FileSystem

    /// Opens `image` (at `volume.snapshot`) and its selected filesystem.
    /// An automatically chosen volume is named on stderr when `announce` is set, or when
    /// more than one Linux filesystem could have been chosen.
    static func open(_ image: ImageOptions, _ volume: VolumeOptions, announce: Bool = false) throws -> OpenedVolume {
        EXT4.replayJournal.withLock { $0 = !volume.noReplay }
        let img = try image.open(snapshot: volume.snapshot)
        do {
            let layout = try GuestDisk.layout(of: img.device)
            let v = try GuestDisk.select(layout, partition: volume.partition, logicalVolume: volume.lv)
            let candidates = layout.volumes.filter { $0.filesystem?.isLinuxFilesystem == true }.count
            if volume.partition == nil && volume.lv == nil && (announce || candidates > 1) {
                let fs = v.filesystem
                let desc = [fs?.type, fs?.label.map { "label \($0)" }, fs?.uuid.map { "uuid \($0)" }]
                    .compactMap { $0 }.joined(separator: ", ")
                Output.note("using \(v.displayName) (\(desc))")
            }
            var fs = try GuestDisk.openFileSystem(try GuestDisk.device(for: v, in: layout, on: img.device))
            if let sub = volume.subvol {
                guard let b = fs as? BtrfsVolume else {
                    throw WardenError(.invalidArgument, "--subvol applies to btrfs; \(v.displayName) holds \(fs.typeName)")
                }
                fs = try UInt64(sub).map { try b.subvolume(id: $0) } ?? b.subvolume(path: sub)
            }
            return OpenedVolume(image: img, volume: v, fs: fs)
        } catch let e as WardenError {
            throw e.inFile(image.image)
        }
    }

    /// Prints the filesystem's non-fatal findings (e.g. metadata checksum mismatches) on
    /// stderr, as one line naming the image. They do not change the exit code.
    func reportWarnings(_ imagePath: String) {
        let w = fs.warnings
        guard let first = w.first else { return }
        if w.count == 1 {
            Output.note("\(imagePath): warning: \(first)")
        } else {
            Output.note("\(imagePath): warning: \(w.count) problems found; first: \(first)")
        }
    }
}
