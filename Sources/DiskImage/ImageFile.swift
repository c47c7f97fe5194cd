#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WardenCore

/// An open host file read with `pread(2)`; the lowest layer under every image format.
///
/// The file is opened read-only (or, with `writable: true`, read-write) and
/// `O_CLOEXEC`. All errors name the path. A writable file is meant for one
/// writer: ``length`` grows as ``write(_:at:)`` extends the file, without a lock.
public final class ImageFile: @unchecked Sendable {
    public let path: String
    public let fd: Int32
    /// True when opened read-write.
    public let writable: Bool
    /// The file's length in bytes: at open time, grown by writes through this object.
    public private(set) var length: UInt64
    /// Bytes actually allocated on the host (st_blocks * 512).
    public let allocatedBytes: UInt64
    /// Device and inode, used to detect backing-chain cycles through links.
    public let identity: FileIdentity
    /// Where this view starts in the host file: 0 for a whole file, a member's data for a
    /// ``window(at:length:name:)`` (a disk inside an OVA), which shares the descriptor.
    public let base: UInt64
    /// The file a window was cut from (kept open while the window lives); nil for a whole file.
    private let owner: ImageFile?
    /// What this file was when opened: device, inode, size and change time (ns). Any write
    /// changes the change time, which no one but the clock can set, so two equal stamps mean
    /// the same bytes. Nil for a file opened for writing or a block device (whose change time
    /// does not follow writes).
    public let contentStamp: String?

    public struct FileIdentity: Hashable, Sendable {
        public let device: UInt64
        public let inode: UInt64
    }

    public init(path: String, writable: Bool = false) throws {
        self.path = path
        self.writable = writable
        let fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            throw WardenError(e == ENOENT ? .notFound : .io, "cannot open: \(String(cString: strerror(e)))", file: path)
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw WardenError(.io, "cannot stat: \(String(cString: strerror(e)))", file: path)
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            close(fd)
            throw WardenError(.invalidArgument, "is a directory, not a disk image", file: path)
        }
        var length = UInt64(max(0, st.st_size))
        if (st.st_mode & S_IFMT) == S_IFBLK {
            let end = lseek(fd, 0, SEEK_END)
            if end > 0 { length = UInt64(end) }
        }
        self.fd = fd
        self.length = length
        self.allocatedBytes = UInt64(max(0, st.st_blocks)) &* 512
        self.identity = FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        self.base = 0
        self.owner = nil
        if !writable && (st.st_mode & S_IFMT) == S_IFREG {
            contentStamp = "\(st.st_dev):\(st.st_ino):\(st.st_size):\(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec)"
        } else {
            contentStamp = nil
        }
    }

    private init(window owner: ImageFile, base: UInt64, length: UInt64, path: String) {
        self.path = path
        self.fd = owner.fd
        self.writable = false
        self.length = length
        self.allocatedBytes = min(owner.allocatedBytes, length)
        self.identity = owner.identity
        self.base = owner.base + base
        self.owner = owner.owner ?? owner
        let start = owner.base + base
        self.contentStamp = owner.contentStamp.map { "\($0)@\(start)+\(length)" }
    }

    /// A read-only view of `length` bytes at `offset` of this file, named `name` in messages.
    public func window(at offset: UInt64, length: UInt64, name: String) throws -> ImageFile {
        let (end, o) = offset.addingReportingOverflow(length)
        guard !o, end <= self.length else {
            throw WardenError.corrupt("\(name): \(length) bytes at \(hex(offset)) lie beyond the end of the file", file: path)
        }
        return ImageFile(window: self, base: offset, length: length, path: name)
    }

    /// The holes and data of `offset ..< offset+length` of this view (`SEEK_DATA`/`SEEK_HOLE`).
    public func holes(offset: UInt64, length: UInt64) throws -> [BlockExtent] {
        guard base != 0 else { return try SparseMap.holes(fd: fd, offset: offset, length: length) }
        return try SparseMap.holes(fd: fd, offset: base + offset, length: length).map {
            BlockExtent(offset: $0.offset - base, length: $0.length, kind: $0.kind)
        }
    }

    deinit { if owner == nil { close(fd) } }

    /// Reads exactly `buffer.count` bytes at `offset`; throws if the file is shorter.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let (rel, o1) = offset.addingReportingOverflow(UInt64(done))
            let (pos, o2) = rel.addingReportingOverflow(base)
            guard !o1, !o2, pos <= UInt64(Int64.max) else {
                throw WardenError.corrupt("offset \(hex(offset)) is out of range", file: path)
            }
            if base != 0 && rel >= length {
                throw WardenError.corrupt("read of \(buffer.count) bytes at \(hex(offset)) runs past the end of the file (\(length) bytes)", file: path, offset: offset)
            }
            let want = base != 0 ? min(buffer.count - done, Int(length - rel)) : buffer.count - done
            let n = pread(fd, buffer.baseAddress! + done, want, off_t(pos))
            if n < 0 {
                if errno == EINTR { continue }
                throw WardenError(.io, "read failed at \(hex(pos)): \(String(cString: strerror(errno)))", file: path)
            }
            if n == 0 {
                throw WardenError.corrupt("read of \(buffer.count) bytes at \(hex(offset)) runs past the end of the file (\(length) bytes)", file: path, offset: offset)
            }
            done += n
            IOStatistics.shared.add(n)
        }
    }

    /// Reads `count` bytes at `offset`. `what` names the structure for the error message.
    public func read(at offset: UInt64, count: Int, what: String = "data") throws -> [UInt8] {
        guard count >= 0 else { throw WardenError(.internal, "negative read length") }
        let (end, o) = offset.addingReportingOverflow(UInt64(count))
        guard !o, end <= length else {
            throw WardenError.corrupt("\(what) at offset \(hex(offset)) lies beyond the end of the file", file: path, offset: offset)
        }
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(at: offset, into: $0) }
        return out
    }

    /// Writes all of `bytes` at `offset` (the file must be open writable), growing ``length``.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard writable else { throw WardenError(.internal, "write to a file opened read-only", file: path) }
        try FileDescriptorIO.pwriteAll(fd, bytes, at: offset, name: path)
        let end = offset + UInt64(bytes.count)
        if end > length { length = end }
    }

    /// Writes `bytes` at `offset`.
    public func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    /// Sets the file's length (extending with zeros).
    public func truncate(to newLength: UInt64) throws {
        guard writable else { throw WardenError(.internal, "truncate of a file opened read-only", file: path) }
        guard newLength <= UInt64(Int64.max) else { throw WardenError(.io, "length out of range", file: path) }
        while ftruncate(fd, off_t(newLength)) != 0 {
            if errno == EINTR { continue }
            throw WardenError(.io, "cannot extend: \(String(cString: strerror(errno)))", file: path)
        }
        length = newLength
    }

    /// Throws `.conflict` when another process holds a QEMU image lock on this file
    /// (a running VM, or qemu-img/qemu-io with the image open): QEMU takes open file
    /// description locks on bytes 100-299 while it uses an image. Warden only probes
    /// (`F_OFD_GETLK`) and takes no lock itself, so oracles like `qemu-img check` can
    /// run while a writer is open.
    public func refuseIfInUse() throws {
        #if os(Linux)
        var fl = flock()
        fl.l_type = Int16(F_WRLCK)
        fl.l_whence = Int16(SEEK_SET)
        fl.l_start = 100
        fl.l_len = 200
        fl.l_pid = 0
        let F_OFD_GETLK: Int32 = 36
        guard fcntl(fd, F_OFD_GETLK, &fl) == 0 else { return }   // locks unsupported here: nothing to learn
        if fl.l_type != Int16(F_UNLCK) {
            throw WardenError(.conflict, "the image is in use by another process (QEMU holds a lock on it); refusing to write", file: path)
        }
        #endif
    }

    /// `fdatasync(2)`: a write barrier for crash ordering.
    public func sync() throws {
        guard writable else { return }
        #if canImport(Glibc)
        let r = fdatasync(fd)
        #else
        let r = fsync(fd)
        #endif
        if r != 0 { throw WardenError(.io, "cannot sync: \(String(cString: strerror(errno)))", file: path) }
    }

    /// Reads up to `count` bytes at `offset`, returning fewer at end of file.
    public func readPrefix(at offset: UInt64, count: Int) throws -> [UInt8] {
        guard offset < length else { return [] }
        let n = Int(min(UInt64(count), length - offset))
        return try read(at: offset, count: n)
    }
}

/// A disk that is the file itself: the raw format.
///
/// Writable when its ``ImageFile`` was opened writable; a write never changes
/// the size, and a write to a read-only file throws.
public final class RawDevice: WritableBlockDevice, @unchecked Sendable {
    public let file: ImageFile
    public let size: UInt64

    public init(file: ImageFile) {
        self.file = file
        self.size = file.length
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        try file.read(at: offset, into: buffer)
    }

    public func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
        try file.holes(offset: offset, length: length)
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard file.writable else {
            throw WardenError(.invalidArgument, "the image is open read-only", file: file.path)
        }
        try checkRange(offset, bytes.count)
        try file.write(bytes, at: offset)
    }

    public func flush() throws { try file.sync() }
}

/// A window `[start, start+size)` onto another device: a partition or a volume.
///
/// Writable when the base device is: writes are checked against the window.
public final class SliceDevice: WritableBlockDevice, @unchecked Sendable {
    public let base: any BlockDevice
    public let start: UInt64
    public let size: UInt64

    public init(base: any BlockDevice, start: UInt64, size: UInt64) throws {
        let (end, o) = start.addingReportingOverflow(size)
        guard !o, end <= base.size else {
            throw WardenError.corrupt("slice \(hex(start))+\(size) lies beyond the end of the \(base.size)-byte disk")
        }
        self.base = base
        self.start = start
        self.size = size
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        try base.read(at: start + offset, into: buffer)
    }

    public func mapping(at offset: UInt64, length: UInt64) throws -> [BlockExtent] {
        try base.mapping(at: start + offset, length: length).map {
            BlockExtent(offset: $0.offset - start, length: $0.length, kind: $0.kind)
        }
    }

    /// True when writes reach the base device.
    public var isWritable: Bool { base is any WritableBlockDevice }

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard let w = base as? any WritableBlockDevice else {
            throw WardenError(.invalidArgument, "the volume is open read-only")
        }
        try checkRange(offset, bytes.count)
        try w.write(bytes, at: start + offset)
    }

    public func flush() throws {
        if let w = base as? any WritableBlockDevice { try w.flush() }
    }
}

/// Finds holes in a host file with `SEEK_DATA`/`SEEK_HOLE`.
enum SparseMap {
    static func holes(fd: Int32, offset: UInt64, length: UInt64) throws -> [BlockExtent] {
        var out: [BlockExtent] = []
        let end = offset + length
        var pos = offset
        while pos < end {
            let data = lseek(fd, off_t(pos), 3 /* SEEK_DATA */)
            if data < 0 {
                if errno == ENXIO { // no more data: rest is a hole
                    out.append(BlockExtent(offset: pos, length: end - pos, kind: .zero))
                    break
                }
                // Filesystem without SEEK_DATA support: all data.
                out.append(BlockExtent(offset: pos, length: end - pos, kind: .data))
                break
            }
            let dataStart = min(UInt64(data), end)
            if dataStart > pos {
                out.append(BlockExtent(offset: pos, length: dataStart - pos, kind: .zero))
                pos = dataStart
                if pos >= end { break }
            }
            let hole = lseek(fd, off_t(pos), 4 /* SEEK_HOLE */)
            let dataEnd = hole < 0 ? end : min(UInt64(hole), end)
            out.append(BlockExtent(offset: pos, length: dataEnd - pos, kind: .data))
            pos = dataEnd
        }
        return out
    }
}

/// Bytes read from image files by this process (all `ImageFile`s), for `--io-stats`.
public final class IOStatistics: @unchecked Sendable {
    public static let shared = IOStatistics()
    private var lock = pthread_mutex_t()
    private var bytes: UInt64 = 0
    private var calls: UInt64 = 0

    init() { pthread_mutex_init(&lock, nil) }

    func add(_ n: Int) {
        pthread_mutex_lock(&lock)
        bytes &+= UInt64(n)
        calls &+= 1
        pthread_mutex_unlock(&lock)
    }

    /// (bytes read, read calls) so far.
    public var snapshot: (bytes: UInt64, reads: UInt64) {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return (bytes, calls)
    }

    private var phaseTotals: [(name: String, bytes: UInt64, reads: UInt64)] = []

    /// Runs `body` and adds what it read to the phase `name` (phases run one after another;
    /// `--io-stats` prints them: which part of inspection read what).
    public func measure<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        let before = snapshot
        defer {
            let after = snapshot
            pthread_mutex_lock(&lock)
            if let i = phaseTotals.firstIndex(where: { $0.name == name }) {
                phaseTotals[i].bytes &+= after.bytes &- before.bytes
                phaseTotals[i].reads &+= after.reads &- before.reads
            } else {
                phaseTotals.append((name, after.bytes &- before.bytes, after.reads &- before.reads))
            }
            pthread_mutex_unlock(&lock)
        }
        return try body()
    }

    /// The phases measured since the last call, in the order they first ran; then forgets them.
    public func takePhases() -> [(name: String, bytes: UInt64, reads: UInt64)] {
        pthread_mutex_lock(&lock)
        defer { phaseTotals = []; pthread_mutex_unlock(&lock) }
        return phaseTotals
    }
}
