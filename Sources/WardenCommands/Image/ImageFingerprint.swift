import ArgumentParser
import DiskImage
import WardenCore

/// `warden image fingerprint IMAGE…`: the content identity of each image's guest-visible disk.
struct ImageFingerprint: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fingerprint",
        abstract: "Print the content fingerprint of each image (equal for equal guest-visible bytes, whatever the format).",
        discussion: """
            Example:
              warden image fingerprint a.qcow2 b.vmdk
            """
    )

    @Argument(help: "Disk images (raw, qcow2, VMDK, VHD, VHDX, VDI or OVA; detected by content).")
    var images: [String]

    @Option(help: "Force the image format instead of detecting it: raw, qcow2, vmdk, vhd, vhdx, vdi or ova.")
    var format: ImageFormat?

    @Flag(help: "Print JSON: [{\"image\": PATH, \"fingerprint\": \"sha256:…\", \"virtual_size\": N}].")
    var json = false

    struct Entry: Encodable {
        var image: String
        var fingerprint: WardenCore.Digest
        var virtualSize: UInt64
    }

    func run() throws {
        var entries: [Entry] = []
        for path in images {
            let img = try ImageOpener.open(path, options: OpenOptions(format: format))
            let digest: WardenCore.Digest
            do { digest = try ContentFingerprint.of(img.device) } catch let e as WardenError { throw e.inFile(path) }
            entries.append(Entry(image: path, fingerprint: digest, virtualSize: img.device.size))
            if !json { Output.stdout.line("\(digest)  \(path)") }
        }
        if json { Output.stdout.line(try Output.json(entries)) }
    }
}
