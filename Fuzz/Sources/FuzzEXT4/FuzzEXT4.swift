import DiskImage
import GuestFS
import WardenCore
import FuzzSupport

/// Opens the input as an ext2/3/4 filesystem and walks it: every directory (bounded),
/// stat of every entry, link targets, and the first MiB of every file; then resolves a few paths.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEXT4(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let fs = try? EXT4.open(MemoryDevice(bytes)) else { return 0 }
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
            default: break
            }
        }
    }
    let resolver = GuestPathResolver(fs)
    for p in ["/etc/hostname", "/a/b/c", "/../..", "/lost+found"] { _ = try? resolver.resolve(p) }
    return 0
}
