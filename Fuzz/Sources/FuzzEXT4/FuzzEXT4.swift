import DiskImage
import GuestFS
import FuzzSupport

/// Opens the input as an ext2/3/4 filesystem and walks it (see `FuzzSupport.walk`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEXT4(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if let fs = try? EXT4.open(MemoryDevice(bytes)) { FuzzSupport.walk(fs) }
    return 0
}
