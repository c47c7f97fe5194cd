import GuestFS
import WardenCore

extension FuzzSupport {
    /// A bounded walk of a filesystem: every directory (2,000 entries at most), `stat` of
    /// every entry, link targets, the first MiB of every file, and a few guest paths.
    public static func walk(_ fs: any FileSystem) {
        var queue: [UInt64] = [fs.rootInode]
        var seen: Set<UInt64> = []
        var visited = 0
        while let dir = queue.popLast(), visited < 2000 {
            guard seen.insert(dir).inserted else { continue }
            guard let entries = try? fs.readDirectory(dir) else { continue }
            for e in entries.prefix(2000) {
                visited += 1
                guard let st = try? fs.stat(e.inode) else { continue }
                switch st.type {
                case .directory: queue.append(e.inode)
                case .symlink: _ = try? fs.readLink(e.inode)
                case .regular:
                    var total = 0
                    try? fs.forEachChunk(e.inode, chunkSize: 65536) { chunk in
                        total += chunk.count
                        if total > 1 << 20 { throw WardenError.limit("enough") }
                    }
                    _ = try? fs.read(e.inode, at: 4096, count: 8192)
                default: break
                }
            }
        }
        let resolver = GuestPathResolver(fs)
        for p in ["/etc/hostname", "/a/b/c", "/../..", "/lost+found", "/EFI/BOOT"] { _ = try? resolver.resolve(p) }
        _ = fs.warnings
    }
}
