import DiskImage
import FuzzSupport
import WardenCore

/// The input as a LUKS volume (a guest's encrypted partition). A LUKS2 header area gets its
/// checksum recomputed first, so mutations of the JSON metadata reach the parser instead of
/// stopping at the checksum; every input is parsed (binary header, JSON and its limits), and
/// one in eight is also opened with the seeds' passphrase "fuzz" — key slots (PBKDF2 or argon2,
/// AES-XTS of the key material, AF merge, digests), or the LUKS1 header — and a sample of the
/// volume read through the data cipher. argon2's costs are capped low so an input stays well
/// inside libFuzzer's time and memory limits.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLUKSVolume(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let bytes = LUKS2Header.withChecksumFixed(Array(UnsafeBufferPointer(start: data, count: size)))
    var limits = LUKS2Header.Limits()
    limits.maxArgon2MemoryKiB = 1024
    limits.maxArgon2Time = 16
    limits.maxArgon2Work = 4096
    limits.maxIterations = 20_000
    if let headerSize = try? LUKS2Header.headerSize(Array(bytes.prefix(4096)), file: "input"), Int(headerSize) <= bytes.count {
        _ = try? LUKS2Header.parse(Array(bytes.prefix(Int(headerSize))), volumeLength: UInt64(bytes.count), limits: limits, file: "input")
    }
    let seed = FuzzSupport.seed(data, size)
    guard seed % 8 == 0 else { return 0 }
    let device = MemoryDevice(bytes)
    guard let volume = try? LUKSVolume.open(device, passphrase: SecretBytes(copying: Array("fuzz".utf8)), name: "input", limits: limits) else { return 0 }
    FuzzSupport.exercise(volume, seed: seed)
    return 0
}
