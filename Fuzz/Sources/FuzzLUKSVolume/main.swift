import DiskImage
import FuzzSupport
import WardenCore

/// Opens the input as a LUKS volume (a guest's encrypted partition) with the seeds' passphrase:
/// the LUKS2 binary header and checksum, the JSON metadata and its limits, every key slot
/// (PBKDF2 or argon2, AES-XTS of the key material, AF merge, digests) — or the LUKS1 header —
/// then reads a sample of the volume through the data cipher. argon2's memory and passes are
/// capped low here so one input stays well inside libFuzzer's time and memory limits.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLUKSVolume(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let device = MemoryDevice(Array(UnsafeBufferPointer(start: data, count: size)))
    var limits = LUKS2Header.Limits()
    limits.maxArgon2MemoryKiB = 1024
    limits.maxArgon2Time = 16
    limits.maxArgon2Work = 4096
    limits.maxIterations = 20_000
    guard let volume = try? LUKSVolume.open(device, passphrase: SecretBytes(copying: Array("fuzz".utf8)), name: "input", limits: limits) else { return 0 }
    FuzzSupport.exercise(volume, seed: FuzzSupport.seed(data, size))
    return 0
}
