import Foundation
import Ledger
import Policy
import WardenCore

/// Host enrolment and TPM attestation (docs/attestation.md): the one place the CLI (and later
/// the fleet server) enrols a host's TPM, asks it for a quote, verifies the quote and records
/// the verdict. `attested: true` in policy reads the verdicts this records.
public struct HostTrustService: Sendable {
    public let store: any LedgerStore
    public let host: HostName
    public let policyDirectory: String?

    public init(store: any LedgerStore, host: HostName = .current, policyDirectory: String?) {
        self.store = store; self.host = host; self.policyDirectory = policyDirectory
    }

    /// Enrols this host's TPM: makes (or finds) the attestation key, proves it shares the TPM
    /// with the endorsement key, and records both public keys in a `host-enrolled` event.
    @discardableResult
    public func enrol(_ tpm: HostTPM) throws -> TPMEnrolment {
        let e = try tpm.enrol()
        _ = try store.append(NewEvent(kind: .hostEnrolled, vm: nil, host: host, payload: [
            "endorsement_key": .string(Data(e.endorsementKey.raw).hexEncoded),
            "endorsement_key_sha256": .string(e.endorsementKey.fingerprint),
            "attestation_key": .string(Data(e.attestationKey.raw).hexEncoded),
            "attestation_key_sha256": .string(e.attestationKey.fingerprint),
            "attestation_key_handle": .string(String(format: "0x%08x", tpm.akHandle)),
            "proof": .string("credential activation"),
        ]))
        return e
    }

    /// The host's enrolled TPM keys (its latest `host-enrolled` event); nil when never enrolled.
    public func enrolment(of host: HostName? = nil) throws -> TPMEnrolment? {
        guard let ev = try store.latestHostEvent(kind: .hostEnrolled, host: host ?? self.host) else { return nil }
        guard case .string(let ekHex)? = ev.payload["endorsement_key"], case .string(let akHex)? = ev.payload["attestation_key"],
              let ek = Data(hexEncoded: ekHex), let ak = Data(hexEncoded: akHex) else {
            throw WardenError(.corrupt, "the ledger's enrolment of host \(host ?? self.host) (event \(ev.seq)) has no keys")
        }
        return TPMEnrolment(endorsementKey: try TPMTPublic(tpmt: Array(ek)), attestationKey: try TPMTPublic(tpmt: Array(ak)))
    }

    /// A fresh 32-byte nonce.
    public static func nonce() throws -> [UInt8] {
        var n = [UInt8](repeating: 0, count: 32)
        guard getentropy(&n, 32) == 0 else { throw WardenError(.internal, "no randomness for a nonce") }
        return n
    }

    /// Attests this host: a quote over the trust policy's PCRs with a fresh nonce, verified and
    /// recorded. Without a TPM, an enrolment or a trust policy the verdict is untrusted (and
    /// recorded as such): attestation fails closed.
    public func attest(_ tpm: HostTPM?) throws -> (verdict: AttestationVerdict, evidence: QuoteEvidence?, nonce: [UInt8]) {
        let nonce = try Self.nonce()
        func untrusted(_ why: String) throws -> (verdict: AttestationVerdict, evidence: QuoteEvidence?, nonce: [UInt8]) {
            let v = AttestationVerdict(trusted: false, reasons: [why], baseline: nil, mismatchedPCRs: [], pcrs: [:],
                                       resetCount: nil, restartCount: nil, clock: nil, attestationKey: "")
            try record(v, host: host, validFor: nil, source: "local")
            return (v, nil, nonce)
        }
        let policy = try HostTrustPolicy.load(policyDirectory: policyDirectory)
        guard let tpm else { return try untrusted("host \(host) has no TPM (no --tcti, $TPM2TOOLS_TCTI or /dev/tpmrm0): it is unattested") }
        guard let enrolment = try enrolment() else { return try untrusted("host \(host)'s TPM is not enrolled (warden host init --tpm)") }
        guard let policy else {
            return try untrusted("there is no host trust policy (hosts/trust.yaml in the policy directory): no PCR value is known-good")
        }
        let evidence = try tpm.quote(selection: policy.selection, nonce: nonce)
        let verdict = try QuoteVerifier().verify(evidence, enrolment: enrolment, nonce: nonce, policy: policy)
        try record(verdict, host: host, validFor: policy.maxAge, source: "local")
        return (verdict, evidence, nonce)
    }

    /// Verifies a quote another party collected for `host` against the nonce that party issued,
    /// and records the verdict. Malformed evidence throws `.corrupt` (nothing is recorded).
    public func verify(_ evidence: QuoteEvidence, nonce: [UInt8], for host: HostName) throws -> AttestationVerdict {
        guard let enrolment = try enrolment(of: host) else {
            throw WardenError(.notFound, "host \(host) has no enrolled TPM in the ledger (warden host init --tpm on it)")
        }
        let policy = try HostTrustPolicy.load(policyDirectory: policyDirectory)
        let verdict = try QuoteVerifier().verify(evidence, enrolment: enrolment, nonce: nonce, policy: policy)
        try record(verdict, host: host, validFor: policy?.maxAge, source: "evidence")
        return verdict
    }

    /// Records a verdict another verifier (the fleet server) gave this host, so that local
    /// decisions (`attested: true` in the libvirt hook, `vm start`) see it.
    public func recordRemote(_ v: AttestationVerdict, validFor: PolicyDuration?, source: String) throws {
        try record(v, host: host, validFor: validFor, source: source)
    }

    private func record(_ v: AttestationVerdict, host: HostName, validFor: PolicyDuration?, source: String) throws {
        var p: [String: JSONValue] = [
            "trusted": .bool(v.trusted),
            "reasons": .array(v.reasons.map(JSONValue.string)),
            "valid_for_seconds": .number(Double(validFor?.seconds ?? 0)),
            "source": .string(source),
        ]
        if let b = v.baseline { p["baseline"] = .string(b) }
        if !v.mismatchedPCRs.isEmpty { p["mismatched_pcrs"] = .array(v.mismatchedPCRs.map(JSONValue.string)) }
        if !v.pcrs.isEmpty { p["pcrs"] = .object(v.pcrs.mapValues(JSONValue.string)) }
        if let r = v.resetCount { p["reset_count"] = .number(Double(r)) }
        if let r = v.restartCount { p["restart_count"] = .number(Double(r)) }
        if !v.attestationKey.isEmpty { p["attestation_key_sha256"] = .string(v.attestationKey) }
        _ = try store.append(NewEvent(kind: .hostAttested, vm: nil, host: host, payload: p))
    }

    /// This host's attestation as policy sees it.
    public func status(of host: HostName? = nil) throws -> HostAttestationFact? {
        try LedgerPolicyFacts(store: store).hostAttestation(host ?? self.host)
    }
}
