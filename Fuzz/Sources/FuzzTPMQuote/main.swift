import Attestation
import WardenCore

/// Verifies the input as attestation evidence. The input is five length-prefixed parts (big-
/// endian UInt16 lengths): the endorsement key's and the attestation key's TPMT_PUBLIC, the
/// quote (TPMS_ATTEST), the signature (TPMT_SIGNATURE) and the nonce; the rest is the PCR
/// values. Seeds are real evidence from swtpm via tpm2-tools. Everything parsed, the
/// signature checked, the PCRs compared with a baseline of zeros for PCRs 0 and 7.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTPMQuote(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var offset = 0
    func part() -> [UInt8]? {
        guard offset + 2 <= bytes.count else { return nil }
        let n = Int(bytes[offset]) << 8 | Int(bytes[offset + 1])
        offset += 2
        guard offset + n <= bytes.count else { return nil }
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }
    guard let ek = part(), let ak = part(), let quote = part(), let sig = part(), let nonce = part() else { return 0 }
    let pcrs = Array(bytes[offset...])
    guard let ekKey = try? TPMTPublic(tpmt: ek), let akKey = try? TPMTPublic(tpmt: ak) else {
        _ = try? TPMSAttest(quote)
        _ = try? TPMTSignature(sig)
        return 0
    }
    let policy = HostTrustPolicy(baselines: [.init(name: "zeros", pcrs: [0: [UInt8](repeating: 0, count: 32), 7: [UInt8](repeating: 0, count: 32)])])
    _ = try? QuoteVerifier().verify(QuoteEvidence(quote: quote, signature: sig, pcrValues: pcrs),
                                    enrolment: TPMEnrolment(endorsementKey: ekKey, attestationKey: akKey), nonce: nonce, policy: policy)
    return 0
}
