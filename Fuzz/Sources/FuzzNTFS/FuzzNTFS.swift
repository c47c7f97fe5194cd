import DiskImage
import GuestFS
import FuzzSupport

/// Opens the input, zero-padded to 8 MiB, as NTFS and walks it (directories, stat, link
/// targets, the first MiB of every file, path resolution), then lists every file's streams.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNTFS(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let fs = try? NTFS.open(PaddedDevice(bytes, virtualSize: 8 << 20)) else { return 0 }
    FuzzSupport.walk(fs)
    for record in UInt64(0)..<64 { _ = try? fs.streams(record) }
    _ = try? GuestPathResolver(fs).resolve(Array("/WINDOWS/system32/CONFIG/software".utf8))
    return 0
}
