import DiskImage
import Foundation
import GuestFS

/// Opens the input as an ext2/3/4 filesystem for writing, over memory, and applies a
/// fixed sequence of writes (replace, create, unlink, truncate, a directory that grows,
/// a new UUID). Every step may throw; none may trap, hang or write outside the image
/// (`MutableMemoryDevice` checks every write against its size).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEXT4Write(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    let dev = MutableMemoryDevice(bytes)
    guard let fs = try? EXT4.openWritable(dev) else { return 0 }
    let blob = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
    _ = try? fs.replaceContents(of: "/etc/hostname", with: Array("fuzzed-host\n".utf8))
    _ = try? fs.createFile("/etc/new", contents: blob, mode: 0o600, uid: 1000, gid: 1000)
    _ = try? fs.unlink("/d/f3")
    _ = try? fs.unlink("/link")
    _ = try? fs.truncate("/etc/blob", to: 100)
    _ = try? fs.replaceContents(of: "/etc/blob", with: blob + blob + blob)
    for i in 0..<12 { _ = try? fs.createFile("/d/grow-\(i)-with-a-long-name", contents: [UInt8(i)], mode: 0o644, uid: 0, gid: 0) }
    _ = try? fs.replaceContents(of: "/d/up/hostname", with: [1, 2, 3])
    _ = try? fs.setFilesystemUUID(UUID(uuid: (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)))
    if let root = try? fs.readDirectory(fs.rootInode) { _ = root.count }
    return 0
}
