import Crypto
import _CryptoExtras
import Foundation
import WardenCore

/// What a host's TPM said: the three outputs of TPM2_Quote as tpm2-tools writes them.
public struct QuoteEvidence: Sendable, Equatable {
    /// TPMS_ATTEST, marshalled (`tpm2_quote -m`).
    public var quote: [UInt8]
    /// TPMT_SIGNATURE, marshalled (`tpm2_quote -s`).
    public var signature: [UInt8]
    /// The selected PCRs' values, concatenated bank by bank in ascending PCR order (`tpm2_quote -o … -F values`).
    public var pcrValues: [UInt8]

    public init(quote: [UInt8], signature: [UInt8], pcrValues: [UInt8]) {
        self.quote = quote; self.signature = signature; self.pcrValues = pcrValues
    }
}

/// A host's TPM as enrolled: its endorsement key and the attestation key made under it.
public struct TPMEnrolment: Sendable, Equatable {
    public var endorsementKey: TPMTPublic
    public var attestationKey: TPMTPublic
    public init(endorsementKey: TPMTPublic, attestationKey: TPMTPublic) {
        self.endorsementKey = endorsementKey; self.attestationKey = attestationKey
    }

    /// The qualified name the TPM gives the attestation key when it is a child of this
    /// endorsement key in the endorsement hierarchy: a quote names its signer this way.
    public var expectedSigner: [UInt8] {
        let ekQN = endorsementKey.qualifiedName(parentQualifiedName: TPMTPublic.endorsementHierarchy)
        return attestationKey.qualifiedName(parentQualifiedName: ekQN)
    }
}

/// The answer to "is this quote fresh, from this TPM, and are its PCRs known-good?".
public struct AttestationVerdict: Sendable, Equatable, Codable {
    public var trusted: Bool
    /// Why it is not trusted (empty when it is); each names the check or the PCR.
    public var reasons: [String]
    /// The baseline whose every PCR matched.
    public var baseline: String?
    /// PCRs that differ from the closest baseline, as `sha256:7`.
    public var mismatchedPCRs: [String]
    /// The quoted PCR values, `sha256:7` → hex (only when the values match the signed digest).
    public var pcrs: [String: String]
    public var resetCount: UInt32?
    public var restartCount: UInt32?
    public var clock: UInt64?
    public var attestationKey: String
    /// How long a trusted verdict counts: the trust policy's maxAge (nil when not trusted).
    public var validForSeconds: Int64?

    public init(trusted: Bool, reasons: [String], baseline: String? = nil, mismatchedPCRs: [String] = [], pcrs: [String: String] = [:],
                resetCount: UInt32? = nil, restartCount: UInt32? = nil, clock: UInt64? = nil, attestationKey: String = "") {
        self.trusted = trusted; self.reasons = reasons; self.baseline = baseline; self.mismatchedPCRs = mismatchedPCRs; self.pcrs = pcrs
        self.resetCount = resetCount; self.restartCount = restartCount; self.clock = clock; self.attestationKey = attestationKey
    }
}

/// Verifies TPM quotes against an enrolment, a nonce and a host trust policy.
///
/// The checks, each of which must pass: the signature verifies with the enrolled attestation
/// key (swift-crypto: ECDSA P-256/P-384, RSASSA, RSAPSS); the TPM names that key as a child of
/// the enrolled endorsement key; the quote carries the verifier's nonce; it covers the PCRs the
/// policy needs; the reported PCR values hash to the signed digest; and they equal every PCR of
/// one baseline. Malformed structures throw (`WardenError.corrupt`); a well-formed quote that
/// fails a check is an untrusted verdict with the reason.
public struct QuoteVerifier: Sendable {
    public init() {}

    public func verify(_ evidence: QuoteEvidence, enrolment: TPMEnrolment, nonce: [UInt8],
                       policy: HostTrustPolicy?) throws -> AttestationVerdict {
        let attest = try TPMSAttest(evidence.quote)
        let signature = try TPMTSignature(evidence.signature)
        var verdict = AttestationVerdict(trusted: false, reasons: [], baseline: nil, mismatchedPCRs: [], pcrs: [:],
                                         resetCount: attest.resetCount, restartCount: attest.restartCount, clock: attest.clock,
                                         attestationKey: enrolment.attestationKey.fingerprint)
        guard Self.signatureValid(signature, over: evidence.quote, key: enrolment.attestationKey) else {
            verdict.reasons.append("the quote's signature does not verify with the enrolled attestation key: it was made by another TPM or altered")
            return verdict
        }
        if attest.qualifiedSigner != enrolment.expectedSigner {
            verdict.reasons.append("the quote names a signer that is not the enrolled attestation key under the enrolled endorsement key")
        }
        if attest.extraData != nonce {
            verdict.reasons.append("the quote's nonce is not the one asked for: a replayed or stale quote")
        }
        guard let policy else {
            verdict.reasons.append("there is no host trust policy (hosts/trust.yaml in the policy directory): no PCR value is known-good")
            return verdict
        }
        let wanted = policy.selection
        if attest.pcrSelection != wanted {
            verdict.reasons.append("the quote covers \(Self.describe(attest.pcrSelection)), not the policy's \(Self.describe(wanted))")
            return verdict
        }
        // Split the reported values by the signed selection, then check them against the digest.
        var values: [String: [UInt8]] = [:]
        var offset = 0
        var concatenated: [UInt8] = []
        for bank in attest.pcrSelection {
            guard let size = TPMAlg.digestSize(bank.hash) else {
                verdict.reasons.append("the quote selects PCRs in an unknown bank \(TPMAlg.hashName(bank.hash))")
                return verdict
            }
            for pcr in bank.pcrs {
                guard offset + size <= evidence.pcrValues.count else {
                    throw WardenError.corrupt("PCR values: \(evidence.pcrValues.count) bytes, too few for the quoted selection")
                }
                let v = Array(evidence.pcrValues[offset..<offset + size])
                values["\(TPMAlg.hashName(bank.hash)):\(pcr)"] = v
                concatenated += v
                offset += size
            }
        }
        guard offset == evidence.pcrValues.count else {
            throw WardenError.corrupt("PCR values: \(evidence.pcrValues.count) bytes, not the \(offset) the quoted selection needs")
        }
        guard let digest = TPMAlg.digest(signature.hash, concatenated), Array(digest) == attest.pcrDigest else {
            verdict.reasons.append("the reported PCR values do not hash to the quoted PCR digest: they were altered")
            return verdict
        }
        verdict.pcrs = values.mapValues(\.hexEncoded)
        // The closest baseline names the PCRs that differ.
        var best: (name: String, mismatches: [String], lines: [String])?
        for b in policy.baselines {
            var mismatches: [String] = [], lines: [String] = []
            for (pcr, expected) in b.pcrs.sorted(by: { $0.key < $1.key }) {
                let key = "\(TPMAlg.hashName(b.bank)):\(pcr)"
                let got = values[key] ?? []
                if got != expected {
                    mismatches.append(key)
                    lines.append("PCR \(pcr) (\(TPMAlg.hashName(b.bank))) is \(got.hexEncoded.prefix(16))…, baseline \(b.name) expects \(expected.hexEncoded.prefix(16))…")
                }
            }
            if mismatches.isEmpty, verdict.reasons.isEmpty {
                verdict.baseline = b.name
                verdict.trusted = true
                verdict.validForSeconds = policy.maxAge.seconds
                return verdict
            }
            if best == nil || mismatches.count < best!.mismatches.count { best = (b.name, mismatches, lines) }
        }
        if let best, !best.mismatches.isEmpty {
            verdict.mismatchedPCRs = best.mismatches
            verdict.reasons += best.lines
        }
        if verdict.reasons.isEmpty { verdict.reasons.append("no baseline matched") }
        return verdict
    }

    static func describe(_ s: [PCRSelection]) -> String {
        s.isEmpty ? "no PCRs" : s.map { "\(TPMAlg.hashName($0.hash)) PCRs \($0.pcrs.map(String.init).joined(separator: ","))" }.joined(separator: "; ")
    }

    /// Whether `signature` over `message` verifies with `key` (false for any mismatch of scheme and key).
    static func signatureValid(_ signature: TPMTSignature, over message: [UInt8], key: TPMTPublic) -> Bool {
        switch (signature, key.key) {
        case (.ecdsa(let hash, let r, let s), .ecc(let curve, let x, let y)):
            func padded(_ v: [UInt8], _ n: Int) -> [UInt8]? {
                let trimmed = Array(v.drop { $0 == 0 })
                return trimmed.count <= n ? [UInt8](repeating: 0, count: n - trimmed.count) + trimmed : nil
            }
            switch curve {
            case TPMTPublic.curveP256:
                guard let px = padded(x, 32), let py = padded(y, 32), let pr = padded(r, 32), let ps = padded(s, 32),
                      let pk = try? P256.Signing.PublicKey(rawRepresentation: px + py),
                      let sig = try? P256.Signing.ECDSASignature(rawRepresentation: pr + ps) else { return false }
                switch hash {
                case TPMAlg.sha256: return pk.isValidSignature(sig, for: SHA256.hash(data: message))
                case TPMAlg.sha384: return pk.isValidSignature(sig, for: SHA384.hash(data: message))
                default: return false
                }
            case TPMTPublic.curveP384:
                guard let px = padded(x, 48), let py = padded(y, 48), let pr = padded(r, 48), let ps = padded(s, 48),
                      let pk = try? P384.Signing.PublicKey(rawRepresentation: px + py),
                      let sig = try? P384.Signing.ECDSASignature(rawRepresentation: pr + ps) else { return false }
                switch hash {
                case TPMAlg.sha256: return pk.isValidSignature(sig, for: SHA256.hash(data: message))
                case TPMAlg.sha384: return pk.isValidSignature(sig, for: SHA384.hash(data: message))
                default: return false
                }
            default:
                return false
            }
        case (.rsassa(let hash, let sig), .rsa(_, let exponent, let modulus)),
             (.rsapss(let hash, let sig), .rsa(_, let exponent, let modulus)):
            var isPSS = false
            if case .rsapss = signature { isPSS = true }
            let e: [UInt8] = [UInt8(exponent >> 24), UInt8((exponent >> 16) & 0xff), UInt8((exponent >> 8) & 0xff), UInt8(exponent & 0xff)]
            guard let pk = try? _RSA.Signing.PublicKey(n: modulus, e: Array(e.drop { $0 == 0 })) else { return false }
            let s = _RSA.Signing.RSASignature(rawRepresentation: sig)
            let padding: _RSA.Signing.Padding = isPSS ? .PSS : .insecurePKCS1v1_5
            switch hash {
            case TPMAlg.sha256: return pk.isValidSignature(s, for: SHA256.hash(data: message), padding: padding)
            case TPMAlg.sha384: return pk.isValidSignature(s, for: SHA384.hash(data: message), padding: padding)
            default: return false
            }
        default:
            return false
        }
    }
}
