import DiskImage
import FuzzSupport

/// Opens the input as an OVA (tar headers, the OVF descriptor's XML, the disk member) and reads a sample.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOVA(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let path = FuzzSupport.scratchFile(data, size, name: "input.ova")
    guard let img = try? ImageOpener.open(path, options: OpenOptions(format: .ova)) else { return 0 }
    FuzzSupport.exercise(img.device, seed: FuzzSupport.seed(data, size))
    return 0
}
