import DiskImage
import Partitions
import GuestFS
import FuzzSupport

/// Reads the input as a disk: partition table (MBR/GPT), then a signature probe per volume.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPartitions(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    let disk = MemoryDevice(bytes)
    _ = try? GuestDisk.layout(of: disk)
    return 0
}
