import DiskImage
import FuzzSupport

/// Opens the input as a VMDK (sparse extent or text descriptor) and reads a sample.
/// Extent files named by a descriptor resolve inside the scratch directory only.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVMDK(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let path = FuzzSupport.scratchFile(data, size, name: "input.vmdk")
    guard let img = try? ImageOpener.open(path, options: OpenOptions(format: .vmdk, maxBackingDepth: 2)) else { return 0 }
    FuzzSupport.exercise(img.device, seed: FuzzSupport.seed(data, size))
    return 0
}
