import DiskImage
import GuestFS
import FuzzSupport
import WardenCore

/// A btrfs image packed as its non-zero 4 KiB blocks: a little-endian u32 count, that many
/// u32 block numbers, then the blocks in the same order (a missing block reads as zeros).
/// Seeds are packed from images written by mkfs.btrfs --rootdir; mutations then reach the
/// superblock, the chunk, root and filesystem trees and the (compressed) file data, wherever
/// btrfs placed them in a 64 MiB device.
final class BlockMapDevice: BlockDevice, @unchecked Sendable {
    let size: UInt64 = 64 << 20
    var blocks: [UInt32: ArraySlice<UInt8>] = [:]

    init(_ b: [UInt8]) {
        guard b.count >= 4 else { return }
        let n = Int(UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24)
        guard n <= 4096, 4 + 4 * n <= b.count else { return }
        var data = 4 + 4 * n
        for i in 0..<n {
            let at = 4 + 4 * i
            let blk = UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
            let end = min(b.count, data + 4096)
            if data < end, UInt64(blk) < size / 4096 { blocks[blk] = b[data..<end] }
            data = end
        }
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard offset <= size, UInt64(buffer.count) <= size - offset else { throw WardenError.corrupt("read past the end") }
        var done = 0
        while done < buffer.count {
            let pos = offset + UInt64(done)
            let blk = UInt32(pos / 4096), within = Int(pos % 4096)
            let n = min(4096 - within, buffer.count - done)
            let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + n)])
            dst.initializeMemory(as: UInt8.self, repeating: 0)
            if let b = blocks[blk], within < b.count {
                let m = min(n, b.count - within)
                b.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[within..<(within + m)])) }
            }
            done += n
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBtrfs(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let fs = try? Btrfs.open(BlockMapDevice(bytes)) else { return 0 }
    FuzzSupport.walk(fs)
    if let subs = try? fs.subvolumes() {
        for s in subs.prefix(4) { if let v = try? fs.subvolume(id: s.id) { FuzzSupport.walk(v) } }
    }
    return 0
}
