import Attestation
import WardenCore

/// The PCR parsers: the input as a TPML_PCR_SELECTION, as a TPM2B_PUBLIC and a TPMT_SIGNATURE,
/// and as the text of a host trust policy (hosts/trust.yaml). Seeds are the selections,
/// public keys and signatures swtpm produced, and trust policies from `warden host baseline`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTPMPCR(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let list = try? PCRSelection.parseList(bytes) { _ = list.map(\.toolSpec) }
    if let k = try? TPMTPublic(tpm2b: bytes) { _ = k.name; _ = k.qualifiedName(parentQualifiedName: TPMTPublic.endorsementHierarchy) }
    _ = try? TPMTSignature(bytes)
    if size <= 1 << 16, let text = String(validating: bytes, as: UTF8.self) {
        if let p = try? HostTrustPolicy.parse(text, file: "trust.yaml") { _ = p.selection }
    }
    return 0
}
