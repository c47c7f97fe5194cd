import DiskImage
import Partitions
import FuzzSupport

/// Reads the input as a thin pool's metadata LV (superblock, the device tree, each device's
/// mapping tree), then reads every thin device it names over a small zero-filled data LV.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLVMThin(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let metadata = try? LVM2Thin.Metadata(device: MemoryDevice(bytes), name: "fuzz") else { return 0 }
    let pool = MemoryDevice([UInt8](repeating: 0, count: 1 << 22))
    for id in UInt64(0)..<4 {
        guard let root = try? metadata.deviceRoot(id) else { continue }
        let thin = LVM2ThinDevice(size: 1 << 26, metadata: metadata, root: root, data: pool, name: "fuzz")
        _ = try? thin.mapping(at: 0, length: 1 << 26)
        FuzzSupport.exercise(thin, seed: FuzzSupport.seed(data, size))
    }
    return 0
}
