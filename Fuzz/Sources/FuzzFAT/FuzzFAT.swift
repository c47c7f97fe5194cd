import DiskImage
import GuestFS
import FuzzSupport

/// Opens the input, zero-padded to 40 MiB (room for FAT32), as FAT and walks it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFAT(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if let fs = try? FAT.open(PaddedDevice(bytes, virtualSize: 40 << 20)) { FuzzSupport.walk(fs) }
    return 0
}
