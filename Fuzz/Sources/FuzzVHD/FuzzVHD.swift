import DiskImage
import FuzzSupport

/// Opens the input as a VHD image (its headers, tables and block map) and reads a sample.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVHD(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let path = FuzzSupport.scratchFile(data, size, name: "input.vhd")
    guard let img = try? ImageOpener.open(path, options: OpenOptions(format: .vhd)) else { return 0 }
    FuzzSupport.exercise(img.device, seed: FuzzSupport.seed(data, size))
    return 0
}
