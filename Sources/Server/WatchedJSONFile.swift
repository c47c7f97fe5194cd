import Foundation
import WardenCore

/// A small JSON file the server reads on every request and an administrator changes with the
/// CLI while it runs (the token list, the issued host certificates): re-read whenever its size,
/// modification time or inode changes, and changed only whole, under a lock, by an atomic
/// replace (0600 in a 0700 folder).
final class WatchedJSONFile<Content: Codable & Sendable>: Sendable {
    let path: String
    /// What the file is, in error messages ("the token file").
    let what: String
    let empty: Content

    private struct Cache: Sendable {
        var stamp: (size: Int64, mtime: Int64, ino: UInt64)?
        var content: Content?
    }
    private let cache = Locked(Cache())

    init(path: String, what: String, empty: Content) {
        self.path = path; self.what = what; self.empty = empty
    }

    /// The file as it is now; `empty` when it is missing, unreadable or garbled (fail closed:
    /// a garbled token list grants nothing).
    func current() -> Content {
        var st = stat()
        let now: (Int64, Int64, UInt64)? = stat(path, &st) == 0
            ? (Int64(st.st_size), Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec), UInt64(st.st_ino)) : nil
        return cache.withLock { c in
            if let a = c.stamp, let b = now, a == b, let content = c.content { return content }
            if c.stamp == nil, now == nil, let content = c.content { return content }
            c.stamp = now
            c.content = now == nil ? empty : ((try? read()) ?? empty)
            return c.content!
        }
    }

    /// The file, or `empty` when it does not exist; a garbled file is an error naming it.
    func read() throws -> Content {
        guard FileManager.default.fileExists(atPath: path) else { return empty }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw WardenError(.unavailable, "cannot read \(what)", file: path)
        }
        guard data.count <= 16 << 20 else { throw WardenError(.invalidArgument, "\(what) is larger than 16 MiB", file: path) }
        do { return try Self.decoder.decode(Content.self, from: data) } catch {
            throw WardenError(.corrupt, "\(what) is garbled (not what Warden wrote)", file: path)
        }
    }

    /// Reads, changes and atomically replaces the file, under an exclusive lock; returns what
    /// `change` returned. Nothing is written when `change` throws.
    @discardableResult
    func update<R>(_ change: (inout Content) throws -> R) throws -> R {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let lockFD = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else { throw WardenError(.io, "cannot lock \(what)", file: path) }
        defer { close(lockFD) }
        while flock(lockFD, LOCK_EX) != 0 { if errno != EINTR { throw WardenError(.io, "cannot lock \(what)", file: path) } }
        var content = try read()
        let result = try change(&content)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.dateEncodingStrategy = .iso8601
        try FileDescriptorIO.replaceFile(path, with: Array(try enc.encode(content)))
        return result
    }

    static var decoder: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}
