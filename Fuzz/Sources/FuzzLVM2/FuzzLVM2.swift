import DiskImage
import Partitions
import FuzzSupport

/// Reads the input as an LVM2 physical volume: label, metadata area, the metadata text
/// parser, and the mapping of every logical volume, then samples each LV.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLVM2(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    let dev = MemoryDevice(bytes)
    guard let pv = try? LVM2.readPhysicalVolume(dev), let vg = try? pv.volumeGroup() else { return 0 }
    for lv in vg.logicalVolumes.prefix(16) {
        if let mapped = try? LVM2.logicalVolume(lv, in: vg, pvs: [pv.uuid: dev]) {
            FuzzSupport.exercise(mapped.device, seed: FuzzSupport.seed(data, size))
        }
    }
    return 0
}
