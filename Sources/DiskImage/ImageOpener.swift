import WardenCore

/// The container formats Warden reads.
public enum ImageFormat: String, CaseIterable, Sendable, Codable {
    case raw, qcow2, vmdk, vhd, vhdx, vdi, ova

    /// The format qemu names `name` (`vpc` is VHD), as a backing format or `-f`.
    public init?(qemuName name: String) {
        self.init(rawValue: name == "vpc" ? "vhd" : name)
    }

    /// qemu's name for the format (what a qcow2 overlay records as its backing format).
    public var qemuName: String { self == .vhd ? "vpc" : rawValue }
}

/// An internal snapshot recorded in an image (qcow2).
public struct SnapshotInfo: Sendable, Equatable, Codable {
    public var id: String
    public var name: String
    /// Guest disk size at the time of the snapshot.
    public var virtualSize: UInt64
    /// Seconds since the epoch when the snapshot was taken.
    public var dateSeconds: UInt64
    public var dateNanoseconds: UInt32
    /// Guest clock at the snapshot, in nanoseconds.
    public var vmClockNanoseconds: UInt64
    /// Size of the saved VM state (0 for disk-only snapshots).
    public var vmStateSize: UInt64

    public init(id: String, name: String, virtualSize: UInt64, dateSeconds: UInt64, dateNanoseconds: UInt32,
                vmClockNanoseconds: UInt64, vmStateSize: UInt64) {
        self.id = id
        self.name = name
        self.virtualSize = virtualSize
        self.dateSeconds = dateSeconds
        self.dateNanoseconds = dateNanoseconds
        self.vmClockNanoseconds = vmClockNanoseconds
        self.vmStateSize = vmStateSize
    }
}

/// What `warden image info` reports about one file of an image (the top or a backing file).
public struct ImageInfo: Sendable, Codable {
    public var path: String
    public var format: ImageFormat
    /// Guest-visible size in bytes.
    public var virtualSize: UInt64
    /// Length of the host file.
    public var fileSize: UInt64
    /// Bytes the host file occupies on disk.
    public var allocatedSize: UInt64
    /// Format-specific facts: "cluster_size", "compression_type", "subformat", "version", ...
    public var details: [String: String]
    /// The backing file as written in the image, if any.
    public var backingFile: String?
    /// The backing format as declared in the image, if any.
    public var backingFormat: String?
    /// Internal snapshots (qcow2).
    public var snapshots: [SnapshotInfo]

    public init(path: String, format: ImageFormat, virtualSize: UInt64, fileSize: UInt64, allocatedSize: UInt64,
                details: [String: String] = [:], backingFile: String? = nil, backingFormat: String? = nil,
                snapshots: [SnapshotInfo] = []) {
        self.path = path
        self.format = format
        self.virtualSize = virtualSize
        self.fileSize = fileSize
        self.allocatedSize = allocatedSize
        self.details = details
        self.backingFile = backingFile
        self.backingFormat = backingFormat
        self.snapshots = snapshots
    }
}

/// How to open an image.
public struct OpenOptions: Sendable {
    /// Force a format. `nil` detects it from content (never from the name).
    public var format: ImageFormat?
    /// Read the disk as it was at this internal snapshot (name, or id).
    public var snapshot: String?
    /// The deepest backing chain accepted (the top image is depth 0).
    public var maxBackingDepth: Int
    /// Probe the format of backing files whose format the image does not declare.
    /// Off by default: an undeclared backing file is read as raw (format probing is a CVE class).
    public var probeBacking: Bool
    /// The passphrase of the image the user named, when it is an encrypted qcow2 (LUKS).
    public var passphrase: SecretBytes?

    public init(format: ImageFormat? = nil, snapshot: String? = nil, maxBackingDepth: Int = 16, probeBacking: Bool = false,
                passphrase: SecretBytes? = nil) {
        self.format = format
        self.snapshot = snapshot
        self.maxBackingDepth = maxBackingDepth
        self.probeBacking = probeBacking
        self.passphrase = passphrase
    }
}

/// An opened image: the guest-visible device plus what was learnt opening it.
public final class OpenedImage: @unchecked Sendable {
    public let device: any BlockDevice
    /// The image itself first, then each backing file in order.
    public let chain: [ImageInfo]
    public var info: ImageInfo { chain[0] }

    public init(device: any BlockDevice, chain: [ImageInfo]) {
        self.device = device
        self.chain = chain
    }
}

/// State threaded through a backing chain while it is opened.
public struct ChainContext: Sendable {
    public var options: OpenOptions
    /// 0 for the image the user named, 1 for its backing file, ...
    public var depth: Int
    /// Files already in the chain, to refuse cycles (also through links).
    public var visited: Set<ImageFile.FileIdentity>
    /// The path of the image the user named, for messages.
    public var topPath: String

    /// Opens a backing (or extent) file as the next link in the chain.
    ///
    /// `declaredFormat` is the format the parent image names, if any.
    public func openBacking(path: String, declaredFormat: ImageFormat?, from parent: String) throws -> OpenedImage {
        guard depth + 1 <= options.maxBackingDepth else {
            throw WardenError.limit("backing chain is deeper than \(options.maxBackingDepth) files", file: parent)
        }
        var next = self
        next.depth += 1
        next.options.snapshot = nil
        if let declaredFormat {
            next.options.format = declaredFormat
        } else if !options.probeBacking {
            next.options.format = .raw
        } else {
            next.options.format = nil
        }
        return try ImageOpener.open(path: path, context: next)
    }
}

/// Opens disk images, detecting their format by content.
public enum ImageOpener {
    /// Opens the image at `path`.
    public static func open(_ path: String, options: OpenOptions = OpenOptions()) throws -> OpenedImage {
        let ctx = ChainContext(options: options, depth: 0, visited: [], topPath: path)
        return try open(path: path, context: ctx)
    }

    static func open(path: String, context: ChainContext) throws -> OpenedImage {
        try open(file: try ImageFile(path: path), context: context)
    }

    /// Opens an already open file (or a window of one: a disk inside an OVA).
    static func open(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        let path = file.path
        guard !context.visited.contains(file.identity) || file.base != 0 else {
            throw WardenError.corrupt("backing chain has a cycle: \(path) appears twice", file: context.topPath)
        }
        var ctx = context
        ctx.visited.insert(file.identity)
        do {
            let format: ImageFormat
            if let forced = ctx.options.format {
                format = forced
            } else {
                format = try detect(file)
            }
            switch format {
            case .raw:
                if ctx.options.snapshot != nil {
                    throw WardenError(.invalidArgument, "raw images have no internal snapshots", file: path)
                }
                let dev = RawDevice(file: file)
                return OpenedImage(device: dev, chain: [ImageInfo(
                    path: path, format: .raw, virtualSize: dev.size, fileSize: file.length,
                    allocatedSize: file.allocatedBytes)])
            case .qcow2:
                return try QCOW2.open(file: file, context: ctx)
            case .vmdk:
                if ctx.options.snapshot != nil {
                    throw WardenError(.invalidArgument, "VMDK images have no internal snapshots", file: path)
                }
                return try VMDK.open(file: file, context: ctx)
            case .vhd:
                return try VHD.open(file: file, context: ctx)
            case .vdi:
                return try VDI.open(file: file, context: ctx)
            case .vhdx:
                return try VHDX.open(file: file, context: ctx)
            case .ova:
                return try OVA.open(file: file, context: ctx)
            }
        } catch let e as WardenError {
            throw e.inFile(path)
        }
    }

    /// Detects the container format from the file's first bytes.
    ///
    /// Formats Warden cannot read (QED, VMDK3) are refused rather than silently read as raw;
    /// force `--format raw` to read them as bytes. A fixed VHD is recognised by its footer.
    public static func detect(_ file: ImageFile) throws -> ImageFormat {
        let head = try file.readPrefix(at: 0, count: 512)
        func starts(_ magic: [UInt8], at off: Int = 0) -> Bool {
            head.count >= off + magic.count && Array(head[off..<off + magic.count]) == magic
        }
        if starts([0x51, 0x46, 0x49, 0xFB]) { return .qcow2 }          // "QFI\xfb"
        if starts(Array("KDMV".utf8)) { return .vmdk }                 // sparse extent
        if starts(Array("COWD".utf8)) {
            throw WardenError.unsupported("VMDK3 (COWD) sparse images are not supported", file: file.path)
        }
        if starts(Array("# Disk DescriptorFile".utf8)) { return .vmdk }
        if starts(Array("conectix".utf8)) { return .vhd }              // dynamic VHD (footer copy)
        if starts(Array("vhdxfile".utf8)) { return .vhdx }
        if starts([0x7F, 0x10, 0xDA, 0xBE], at: 64) { return .vdi }
        if OVA.isOVA(head) { return .ova }                             // a tar whose first member is an .ovf
        if starts([0x51, 0x45, 0x44, 0x00]) {
            throw WardenError.unsupported("QED images are not supported (convert with qemu-img, or force --format raw)", file: file.path)
        }
        // A fixed VHD is its guest bytes followed by a footer: recognised by the footer.
        if VHD.hasFixedFooter(file) { return .vhd }
        return .raw
    }
}
