import DiskImage
import FuzzSupport

/// Opens the input as a qcow2 image (backing files refused: depth 0), lists snapshots,
/// reads a sample of the disk and of each snapshot view.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQCOW2(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let path = FuzzSupport.scratchFile(data, size, name: "input.qcow2")
    let seed = FuzzSupport.seed(data, size)
    guard let img = try? ImageOpener.open(path, options: OpenOptions(format: .qcow2, maxBackingDepth: 0)) else { return 0 }
    FuzzSupport.exercise(img.device, seed: seed)
    for snap in img.info.snapshots.prefix(4) {
        if let s = try? ImageOpener.open(path, options: OpenOptions(format: .qcow2, snapshot: snap.id, maxBackingDepth: 0)) {
            FuzzSupport.exercise(s.device, seed: seed)
        }
    }
    return 0
}
