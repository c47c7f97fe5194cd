import DiskImage
import GuestFS
import FuzzSupport

/// Opens the input, zero-padded to 320 MiB (mkfs.xfs needs 300 MiB), as XFS and walks it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzXFS(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if let fs = try? XFS.open(PaddedDevice(bytes, virtualSize: 320 << 20)) { FuzzSupport.walk(fs) }
    return 0
}
