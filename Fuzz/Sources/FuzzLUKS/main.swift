import DiskImage
import FuzzSupport
import WardenCore

/// Opens the input as an encrypted qcow2 with the seeds' passphrase: the qcow2 header and its
/// encryption extension, the LUKS1 header, every key slot (PBKDF2, AES-XTS, AF merge, digest),
/// then reads a sample of the disk through the data cipher. Seeds made by qemu-img with
/// passphrase "fuzz" and a 10 ms iteration time.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLUKS(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let path = FuzzSupport.scratchFile(data, size, name: "input.qcow2")
    let seed = FuzzSupport.seed(data, size)
    let options = OpenOptions(format: .qcow2, maxBackingDepth: 0, passphrase: SecretBytes(copying: Array("fuzz".utf8)))
    guard let img = try? ImageOpener.open(path, options: options) else { return 0 }
    FuzzSupport.exercise(img.device, seed: seed)
    return 0
}
