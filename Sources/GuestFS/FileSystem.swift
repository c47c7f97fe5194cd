import WardenCore
import DiskImage

/// The type of a filesystem object, with the one-letter code the manifest uses.
public enum FileType: String, Sendable, Codable {
    case regular = "f"
    case directory = "d"
    case symlink = "l"
    case characterDevice = "c"
    case blockDevice = "b"
    case fifo = "p"
    case socket = "s"

    /// From the file type code that ext2/3/4 and XFS store in directory entries
    /// (1 regular, 2 directory, 3 char, 4 block, 5 fifo, 6 socket, 7 symlink).
    public init?(direntCode: UInt8) {
        switch direntCode {
        case 1: self = .regular
        case 2: self = .directory
        case 3: self = .characterDevice
        case 4: self = .blockDevice
        case 5: self = .fifo
        case 6: self = .socket
        case 7: self = .symlink
        default: return nil
        }
    }

    /// From the `S_IFMT` bits of a POSIX mode.
    public init?(mode: UInt32) {
        switch mode & 0o170000 {
        case 0o100000: self = .regular
        case 0o040000: self = .directory
        case 0o120000: self = .symlink
        case 0o020000: self = .characterDevice
        case 0o060000: self = .blockDevice
        case 0o010000: self = .fifo
        case 0o140000: self = .socket
        default: return nil
        }
    }
}

/// Metadata of one inode.
public struct FileStat: Sendable, Equatable {
    public var inode: UInt64
    public var type: FileType
    /// Full POSIX mode, including the type bits.
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    public var links: UInt32
    /// Modification time, seconds since the epoch.
    public var mtime: Int64

    /// The permission bits (including setuid/setgid/sticky): `mode & 0o7777`.
    public var permissions: UInt32 { mode & 0o7777 }

    public init(inode: UInt64, type: FileType, mode: UInt32, uid: UInt32, gid: UInt32, size: UInt64, links: UInt32, mtime: Int64) {
        self.inode = inode
        self.type = type
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.links = links
        self.mtime = mtime
    }
}

/// One directory entry. `.` and `..` are never returned.
public struct DirectoryEntry: Sendable, Equatable {
    /// The name exactly as stored (Linux names are bytes, not necessarily UTF-8).
    public var nameBytes: [UInt8]
    public var inode: UInt64
    /// The type recorded in the entry, if the filesystem records one.
    public var type: FileType?

    public var name: String { String(decoding: nameBytes, as: UTF8.self) }

    public init(nameBytes: [UInt8], inode: UInt64, type: FileType?) {
        self.nameBytes = nameBytes
        self.inode = inode
        self.type = type
    }
}

/// A read-only filesystem inside a guest volume.
///
/// Implementations treat every byte of the volume as hostile: they throw
/// ``WardenError`` on any inconsistency and cap every allocation.
public protocol FileSystem: AnyObject, Sendable {
    /// "ext2", "ext3", "ext4", ...
    var typeName: String { get }
    var label: String? { get }
    var uuid: String? { get }
    var rootInode: UInt64 { get }
    /// Non-fatal problems seen so far (e.g. metadata checksum mismatches).
    var warnings: [String] { get }

    func stat(_ inode: UInt64) throws -> FileStat
    /// Lists a directory, without `.` and `..`.
    func readDirectory(_ inode: UInt64) throws -> [DirectoryEntry]
    /// Reads up to `count` bytes of a regular file at `offset`; holes read as zeros.
    /// Returns fewer bytes only at end of file.
    func read(_ inode: UInt64, at offset: UInt64, count: Int) throws -> [UInt8]
    /// The target of a symbolic link, as stored.
    func readLink(_ inode: UInt64) throws -> [UInt8]
    /// Streams a whole regular file in chunks of at most `chunkSize` bytes (default
    /// implementation below; filesystems override it with a faster path).
    func forEachChunk(_ inode: UInt64, chunkSize: Int, _ body: ([UInt8]) throws -> Void) throws
}

extension FileSystem {
    /// Streams a whole regular file in 1 MiB chunks (dispatches to the filesystem's implementation).
    public func forEachChunk(_ inode: UInt64, _ body: ([UInt8]) throws -> Void) throws {
        try forEachChunk(inode, chunkSize: 1 << 20, body)
    }

    /// Default implementation: `stat` plus repeated `read` calls.
    public func forEachChunk(_ inode: UInt64, chunkSize: Int, _ body: ([UInt8]) throws -> Void) throws {
        let st = try stat(inode)
        var off: UInt64 = 0
        while off < st.size {
            let n = Int(min(UInt64(chunkSize), st.size - off))
            let chunk = try read(inode, at: off, count: n)
            if chunk.isEmpty { break }
            try body(chunk)
            off += UInt64(chunk.count)
        }
    }
}

/// Where a file's bytes lie on its filesystem's device.
public struct FileDataRun: Sendable, Equatable {
    /// Byte offset in the file.
    public var logical: UInt64
    /// Byte offset on the device; nil when the run reads as zeros (a hole, an unwritten extent).
    public var physical: UInt64?
    public var length: UInt64
    public init(logical: UInt64, physical: UInt64?, length: UInt64) { self.logical = logical; self.physical = physical; self.length = length }
}

/// A filesystem that can map a file's bytes to its device, so a reader can tell where they
/// come from without reading them (``DiskImage/ProvenanceDevice``).
public protocol FileDataMapping {
    /// The device the runs refer to.
    var dataDevice: any BlockDevice { get }
    /// The runs of a regular file covering `0 ..< size`, in order; nil when its bytes do not
    /// simply lie on the device (inline data, encryption, compression).
    func dataRuns(_ inode: UInt64) throws -> [FileDataRun]?
}
