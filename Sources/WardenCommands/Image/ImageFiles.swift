import ArgumentParser
import Foundation
import WardenConfig
import WardenCore
import DiskImage
import GuestFS

/// `warden image ls [-l] IMAGE [PATH]`
struct ImageLs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List a directory inside the guest filesystem (no mounting, no booting).",
        discussion: """
            Examples:
              warden image ls -l disk.qcow2 /etc
              warden image ls --snapshots fedora.qcow2
            """
    )

    @OptionGroup var image: ImageOptions
    @Argument(help: "Guest path (symlinks resolve inside the guest root).")
    var path: String = "/"
    @OptionGroup var volume: VolumeOptions
    @Flag(name: .shortAndLong, help: "Long listing: type and mode, links, uid, gid, size, mtime, name.")
    var long = false
    @Flag(help: "List the btrfs subvolumes and snapshots of the volume instead of a directory (JSON schema: docs/json-schemas/image-snapshots.v1.json).")
    var snapshots = false
    @Flag(help: "Print JSON (schema: docs/json-schemas/image-ls.v1.json).")
    var json = false

    struct SnapshotReport: Encodable {
        var schema = "warden.image.snapshots/v1"
        /// The subvolume a plain `image ls` reads (the default, or --subvol's).
        var viewed: UInt64
        var subvolumes: [Btrfs.Subvolume]
    }

    struct Entry: Encodable {
        var name: String
        var type: String
        var mode: String
        var uid: UInt32
        var gid: UInt32
        var size: UInt64
        var links: UInt32
        var mtime: Int64
        var inode: UInt64
        var target: String?
    }

    struct Report: Encodable {
        var schema = "warden.image.ls/v1"
        var path: String
        var entries: [Entry]
    }

    func run() throws {
        let guest = try OpenedVolume.open(image, volume)
        if snapshots {
            try listSnapshots(guest)
            return
        }
        do {
            let resolver = GuestPathResolver(guest.fs)
            let target = try resolver.resolve(path, followFinal: true)
            var rows: [(name: [UInt8], stat: FileStat)] = []
            if target.stat.type == .directory {
                for e in try guest.fs.readDirectory(target.inode) {
                    rows.append((e.nameBytes, try guest.fs.stat(e.inode)))
                }
                rows.sort { $0.name.lexicographicallyPrecedes($1.name) }
            } else {
                rows = [(Array(path.utf8), target.stat)]
            }
            let entries = try rows.map { r -> Entry in
                Entry(name: ManifestEscaping.escape(r.name), type: r.stat.type.rawValue,
                      mode: octal(r.stat.permissions), uid: r.stat.uid, gid: r.stat.gid,
                      size: r.stat.size, links: r.stat.links, mtime: r.stat.mtime, inode: r.stat.inode,
                      target: r.stat.type == .symlink ? ManifestEscaping.escape(try guest.fs.readLink(r.stat.inode)) : nil)
            }
            try Output.render(Report(path: path, entries: entries), json: json) {
                if long {
                    Output.stdout.line(table(entries.map { e in
                        [modeString(e), "\(e.links)", "\(e.uid)", "\(e.gid)", "\(e.size)", formatDate(UInt64(max(0, e.mtime))),
                         e.name + (e.target.map { " -> \($0)" } ?? "")]
                    }))
                } else {
                    for e in entries { Output.stdout.line(e.name) }
                }
            }
            Output.stdout.flush()
            guest.reportWarnings(image.image)
        } catch let e as WardenError {
            throw e.inFile(image.image)
        }
    }

    private func listSnapshots(_ guest: OpenedVolume) throws {
        do {
            guard let b = guest.fs as? BtrfsVolume else {
                throw WardenError(.invalidArgument, "--snapshots lists btrfs subvolumes; \(guest.volume.displayName) holds \(guest.fs.typeName), which has none (qcow2 snapshots: `warden image info`)")
            }
            let list = try b.subvolumes()
            try Output.render(SnapshotReport(viewed: b.subvolumeID, subvolumes: list), json: json) {
                let byUUID = Dictionary(list.compactMap { s in s.uuid.map { ($0, s.path) } }, uniquingKeysWith: { a, _ in a })
                var rows = [["ID", "PARENT", "FLAGS", "CREATED", "SNAPSHOT OF", "PATH"]]
                for s in list {
                    let flags = [s.isDefault ? "default" : nil, s.readOnly ? "ro" : nil, s.id == b.subvolumeID ? "viewed" : nil]
                        .compactMap { $0 }.joined(separator: ",")
                    let of = s.parentUUID.map { byUUID[$0] ?? $0 } ?? "-"
                    rows.append(["\(s.id)", "\(s.parentID)", flags.isEmpty ? "-" : flags,
                                 s.created.map { formatDate(UInt64(max(0, $0))) } ?? "-", of, s.path])
                }
                if list.isEmpty {
                    Output.stdout.line("no subvolumes or snapshots: only the top level (5)")
                } else {
                    Output.stdout.line(table(rows))
                }
            }
            Output.stdout.flush()
            guest.reportWarnings(image.image)
        } catch let e as WardenError {
            throw e.inFile(image.image)
        }
    }

    private func modeString(_ e: Entry) -> String {
        let t: Character = e.type == "f" ? "-" : Character(e.type)
        let perm = UInt32(e.mode, radix: 8) ?? 0
        var s = String(t)
        let chars: [Character] = ["r", "w", "x"]
        for i in 0..<9 {
            let bit = UInt32(1) << UInt32(8 - i)
            s.append(perm & bit != 0 ? chars[i % 3] : "-")
        }
        var a = Array(s)
        if perm & 0o4000 != 0 { a[3] = a[3] == "x" ? "s" : "S" }
        if perm & 0o2000 != 0 { a[6] = a[6] == "x" ? "s" : "S" }
        if perm & 0o1000 != 0 { a[9] = a[9] == "x" ? "t" : "T" }
        return String(a)
    }
}

func octal(_ perm: UInt32) -> String {
    let s = String(perm, radix: 8)
    return s.count < 4 ? String(repeating: "0", count: 4 - s.count) + s : s
}

/// `warden image cat IMAGE PATH`
struct ImageCat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cat",
        abstract: "Print a file from inside the guest filesystem.",
        discussion: """
            Examples:
              warden image cat disk.qcow2 /etc/os-release
              warden image cat --snapshot installed disk.qcow2 /etc/hostname
            """
    )

    @OptionGroup var image: ImageOptions
    @Argument(help: "Guest path of a regular file (symlinks resolve inside the guest root).")
    var path: String
    @OptionGroup var volume: VolumeOptions

    func run() throws {
        let guest = try OpenedVolume.open(image, volume)
        do {
            let target = try GuestPathResolver(guest.fs).resolve(path, followFinal: true)
            guard target.stat.type == .regular else {
                throw WardenError(.invalidArgument, "\(path) is a \(describe(target.stat.type)), not a regular file")
            }
            try guest.fs.forEachChunk(target.inode, chunkSize: 1 << 20) { try Output.stdout.write($0) }
            Output.stdout.flush()
            guest.reportWarnings(image.image)
        } catch let e as WardenError {
            throw e.inFile(image.image)
        }
    }
}

func describe(_ t: FileType) -> String {
    switch t {
    case .regular: return "regular file"
    case .directory: return "directory"
    case .symlink: return "symbolic link"
    case .characterDevice: return "character device"
    case .blockDevice: return "block device"
    case .fifo: return "fifo"
    case .socket: return "socket"
    }
}

/// `warden image manifest IMAGE`
struct ImageManifest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manifest",
        abstract: "List every filesystem entry with type, mode, owner, size and sha256, sorted by path.",
        discussion: """
        One line per entry: TYPE<TAB>MODE<TAB>UID<TAB>GID<TAB>SIZE<TAB>DIGEST<TAB>PATH
        TYPE is one of f d l c b p s; MODE the permission bits in octal; SIZE the byte size
        for f and l (0 otherwise); DIGEST the sha256 of a file, the target of a symlink, or -.
        Names are escaped: \\\\ \\t \\n \\r and \\xNN for control and non-UTF-8 bytes.
        
        Example:
          warden image manifest disk.qcow2 > before.txt
        """
    )

    @OptionGroup var image: ImageOptions
    @OptionGroup var volume: VolumeOptions
    @Flag(help: "List every unreadable entry on stderr (default: one summary line).")
    var allErrors = false

    func run() throws {
        let guest = try OpenedVolume.open(image, volume, announce: true)
        var builder = ManifestBuilder(guest.fs)
        let meter = ProgressMeter("manifest", unit: .items("entries"))
        do {
            try builder.build { Output.stdout.line($0.line); meter.advance() }
        } catch let e as WardenError {
            meter.finish()
            throw e.inFile(image.image)
        }
        meter.finish()
        Output.stdout.flush()
        let errors = builder.errors
        if let first = errors.first {
            if allErrors {
                for e in errors { Output.error(e.inFile(image.image).description) }
            } else if errors.count == 1 {
                Output.error(first.inFile(image.image).description)
            } else {
                Output.error("\(image.image): \(errors.count) entries could not be read; first: \(first.message) (--all-errors lists them)")
            }
            throw ExitCode(2)
        }
        guest.reportWarnings(image.image)
    }
}
