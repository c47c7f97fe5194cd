import Attestation
import Foundation
import Policy
import Testing
import WardenCore
import WardenTestSupport

/// Quotes made by a real TPM 2.0 (swtpm, driven by tpm2-tools through ``HostTPM``) checked by
/// ``QuoteVerifier``: the good case, each way a quote can fail, and hostile bytes.
@Suite(.serialized) struct QuoteVerifierTests {
    /// One enrolled TPM with a baseline of its PCRs 0 and 7, and a fresh quote.
    struct Lab {
        let swtpm: SoftwareTPM
        let tpm: HostTPM
        let enrolment: TPMEnrolment
        let policy: HostTrustPolicy

        init() throws {
            swtpm = try SoftwareTPM()
            tpm = HostTPM(tcti: swtpm.tcti)
            enrolment = try tpm.enrol()
            let values = try tpm.readPCRs(bank: TPMAlg.sha256, pcrs: [0, 7])
            policy = HostTrustPolicy(baselines: [.init(name: "lab", pcrs: values)])
        }

        func quote(_ nonce: [UInt8]) throws -> QuoteEvidence { try tpm.quote(selection: policy.selection, nonce: nonce) }
    }

    static func nonce(_ seed: UInt8) -> [UInt8] { (0..<32).map { UInt8(truncatingIfNeeded: Int($0) &* 7 &+ Int(seed)) } }

    @Test func goodQuoteIsTrustedAndEveryFailureNamesItsCause() throws {
        let lab = try Lab()
        defer { lab.swtpm.stop() }
        #expect(lab.enrolment.attestationKey.isRestrictedSigningKey)
        let n = Self.nonce(1)
        let e = try lab.quote(n)
        let v = try QuoteVerifier().verify(e, enrolment: lab.enrolment, nonce: n, policy: lab.policy)
        #expect(v.trusted, "\(v.reasons)")
        #expect(v.baseline == "lab")
        #expect(v.validForSeconds == lab.policy.maxAge.seconds)
        #expect(v.pcrs.keys.sorted() == ["sha256:0", "sha256:7"])

        // Replay: the same quote against the verifier's next nonce.
        let replay = try QuoteVerifier().verify(e, enrolment: lab.enrolment, nonce: Self.nonce(2), policy: lab.policy)
        #expect(!replay.trusted)
        #expect(replay.reasons.contains { $0.contains("nonce") })
        #expect(replay.validForSeconds == nil)

        // PCR values rewritten after the fact: the signed digest catches it.
        var forged = e
        forged.pcrValues = [UInt8](repeating: 0x11, count: e.pcrValues.count)
        let f = try QuoteVerifier().verify(forged, enrolment: lab.enrolment, nonce: n, policy: lab.policy)
        #expect(!f.trusted && f.reasons.contains { $0.contains("do not hash to the quoted PCR digest") })

        // No trust policy: nothing is known-good.
        let none = try QuoteVerifier().verify(e, enrolment: lab.enrolment, nonce: n, policy: nil)
        #expect(!none.trusted && none.reasons.contains { $0.contains("no host trust policy") })

        // A policy asking for other PCRs than the quote covers.
        let other = HostTrustPolicy(baselines: [.init(name: "x", pcrs: [1: [UInt8](repeating: 0, count: 32)])])
        let o = try QuoteVerifier().verify(e, enrolment: lab.enrolment, nonce: n, policy: other)
        #expect(!o.trusted && o.reasons.contains { $0.contains("not the policy's") })

        // A measured component changes: PCR 7 no longer matches, and the reason names it.
        try lab.swtpm.extend(pcr: 7, with: "an unsigned boot loader")
        let n3 = Self.nonce(3)
        let changed = try QuoteVerifier().verify(try lab.quote(n3), enrolment: lab.enrolment, nonce: n3, policy: lab.policy)
        #expect(!changed.trusted)
        #expect(changed.mismatchedPCRs == ["sha256:7"])
        #expect(changed.reasons.contains { $0.hasPrefix("PCR 7 (sha256) is ") && $0.contains("baseline lab expects") })
    }

    @Test func quoteFromAnotherTPMIsRefused() throws {
        let a = try Lab()
        defer { a.swtpm.stop() }
        let b = try Lab()
        defer { b.swtpm.stop() }
        #expect(a.enrolment.endorsementKey != b.enrolment.endorsementKey)
        let n = Self.nonce(9)
        // B's quote over the same (initial, identical) PCR values, with A's nonce, checked against A's enrolment.
        let v = try QuoteVerifier().verify(try b.quote(n), enrolment: a.enrolment, nonce: n, policy: a.policy)
        #expect(!v.trusted)
        #expect(v.reasons.contains { $0.contains("another TPM") })
        // B's enrolment with A's endorsement key (an attestation key claimed under the wrong EK).
        let mixed = TPMEnrolment(endorsementKey: a.enrolment.endorsementKey, attestationKey: b.enrolment.attestationKey)
        let m = try QuoteVerifier().verify(try b.quote(n), enrolment: mixed, nonce: n, policy: b.policy)
        #expect(!m.trusted && m.reasons.contains { $0.contains("not the enrolled attestation key under the enrolled endorsement key") })
    }

    /// Every truncation and 3,000 seeded corruptions of real evidence: a typed error or an
    /// untrusted verdict, never a trap and never trust.
    @Test func hostileBytesNeverTrapOrTrust() throws {
        let lab = try Lab()
        defer { lab.swtpm.stop() }
        let n = Self.nonce(4)
        let e = try lab.quote(n)
        func check(_ ev: QuoteEvidence, enrolment: TPMEnrolment? = nil) {
            do {
                let v = try QuoteVerifier().verify(ev, enrolment: enrolment ?? lab.enrolment, nonce: n, policy: lab.policy)
                #expect(!v.trusted || ev == e)
            } catch let err as WardenError {
                #expect(err.code == .corrupt)
            } catch {
                Issue.record("untyped error \(error)")
            }
        }
        for i in 0..<e.quote.count { check(QuoteEvidence(quote: Array(e.quote.prefix(i)), signature: e.signature, pcrValues: e.pcrValues)) }
        for i in 0..<e.signature.count { check(QuoteEvidence(quote: e.quote, signature: Array(e.signature.prefix(i)), pcrValues: e.pcrValues)) }
        for i in 0..<e.pcrValues.count { check(QuoteEvidence(quote: e.quote, signature: e.signature, pcrValues: Array(e.pcrValues.prefix(i)))) }
        var rng = SeededRandom(seed: 0x7470_6d71)
        for round in 0..<3000 {
            var q = e.quote, s = e.signature, p = e.pcrValues
            let which = round % 3
            let flips = 1 + Int(rng.next() % 4)
            for _ in 0..<flips {
                switch which {
                case 0: q[Int(rng.next() % UInt64(q.count))] ^= UInt8(1 + rng.next() % 255)
                case 1: s[Int(rng.next() % UInt64(s.count))] ^= UInt8(1 + rng.next() % 255)
                default: p[Int(rng.next() % UInt64(p.count))] ^= UInt8(1 + rng.next() % 255)
                }
            }
            check(QuoteEvidence(quote: q, signature: s, pcrValues: p))
        }
        // Garbled public keys never parse into something that verifies.
        let ak = lab.enrolment.attestationKey.raw
        for i in 0..<ak.count {
            var bad = ak
            bad[i] ^= 0x5a
            if let k = try? TPMTPublic(tpmt: bad) {
                let v = try? QuoteVerifier().verify(e, enrolment: TPMEnrolment(endorsementKey: lab.enrolment.endorsementKey, attestationKey: k),
                                                    nonce: n, policy: lab.policy)
                #expect(v?.trusted != true)
            }
            #expect(throws: WardenError.self) { try TPMTPublic(tpmt: Array(ak.prefix(i))) }
        }
    }

    /// A persistent key of another program at Warden's handle is never evicted: enrolment
    /// refuses, and succeeds at another handle.
    @Test func enrolmentNeverEvictsAnotherKey() throws {
        try SoftwareTPM.with { swtpm in
            let ctx = swtpm.directory + "/primary.ctx"
            try swtpm.tool(["tpm2_createprimary", "-C", "o", "-c", ctx])
            try swtpm.tool(["tpm2_evictcontrol", "-C", "o", "-c", ctx, "0x81010020"])
            _ = try? swtpm.tool(["tpm2_flushcontext", "-t"])
            do {
                _ = try HostTPM(tcti: swtpm.tcti).enrol()
                Issue.record("enrolment took an occupied handle")
            } catch let e as WardenError {
                #expect(e.code == .conflict && e.message.contains("--ak-handle"), "\(e)")
            }
            #expect(try swtpm.tool(["tpm2_readpublic", "-c", "0x81010020"]).status == 0)
            let e = try HostTPM(tcti: swtpm.tcti, akHandle: 0x8101_0021).enrol()
            #expect(e.attestationKey.isRestrictedSigningKey)
        }
    }

    @Test func pcrSelectionParser() throws {
        // count 1, sha256, 3 bytes, PCRs 0, 7 and 23.
        #expect(try PCRSelection.parseList([0, 0, 0, 1, 0x00, 0x0B, 3, 0x81, 0x00, 0x80]) == [PCRSelection(hash: TPMAlg.sha256, pcrs: [0, 7, 23])])
        #expect(throws: WardenError.self) { try PCRSelection.parseList([0, 0, 0, 17]) }            // too many banks
        #expect(throws: WardenError.self) { try PCRSelection.parseList([0, 0, 0, 1, 0, 0x0B, 9]) } // select too wide
        #expect(throws: WardenError.self) { try PCRSelection.parseList([0, 0, 0, 1, 0, 0x0B, 3, 1]) }
        #expect(throws: WardenError.self) { try PCRSelection.parseList([0, 0, 0, 0, 7]) }          // trailing byte
        #expect(throws: WardenError.self) { try PCRSelection.parseList([0xff, 0xff, 0xff, 0xff]) }
        // The tpm2-tools form, both ways.
        #expect(PCRSelection(toolSpec: "sha256:7,0") == PCRSelection(hash: TPMAlg.sha256, pcrs: [0, 7]))
        #expect(PCRSelection(toolSpec: "sha256:0,7")?.toolSpec == "sha256:0,7")
        for bad in ["sha256:", "sha256:24", "md5:0", "sha256:0,,7", "sha256", ":0", "sha256:x"] { #expect(PCRSelection(toolSpec: bad) == nil, "\(bad)") }
    }

    @Test func trustPolicyIsParsedStrictly() throws {
        let d = String(repeating: "ab", count: 32)
        let good = try HostTrustPolicy.parse("""
            apiVersion: warden/v1
            kind: HostTrust
            maxAge: 2h
            baselines:
              - name: a
                pcrs: { 0: \(d), 7: \(d) }
              - name: b
                bank: sha1
                pcrs: { 4: \(String(repeating: "cd", count: 20)) }
            """, file: "t.yaml")
        #expect(good.maxAge.seconds == 7200)
        #expect(good.selection == [PCRSelection(hash: TPMAlg.sha1, pcrs: [4]), PCRSelection(hash: TPMAlg.sha256, pcrs: [0, 7])])
        let bad: [(String, String)] = [
            ("kind: HostTrust\nbaselines: [{name: a, pcrs: {24: \(d)}}]", "not a PCR number"),
            ("kind: HostTrust\nbaselines: [{name: a, pcrs: {0: abcd}}]", "32-byte sha256 digest"),
            ("kind: HostTrust\nbaselines: [{name: a, pcrs: {0: \(d)}}, {name: a, pcrs: {1: \(d)}}]", "two baselines are named a"),
            ("kind: HostTrust\nbaselines: [{name: a, pcrs: {0: \(d)}, extra: 1}]", "unknown key extra"),
            ("kind: HostTrust\nbaselines: []", "baselines is a list"),
            ("baselines: [{name: a, pcrs: {0: \(d)}}]", "kind: HostTrust is missing"),
            ("kind: HostTrust\nmaxAge: forever\nbaselines: [{name: a, pcrs: {0: \(d)}}]", "maxAge is a duration"),
            ("kind: HostTrust\nbaselines: [{name: a, bank: md5, pcrs: {0: \(d)}}]", "bank is sha1"),
            ("[1, 2", "not YAML"),
            // Found by Fuzz/run tpmpcr: libyaml recursed until the stack overflowed.
            (String(repeating: "[", count: 100_000), "nests deeper than 64 levels"),
        ]
        for (text, message) in bad {
            do {
                _ = try HostTrustPolicy.parse(text, file: "t.yaml")
                Issue.record("accepted: \(text)")
            } catch let e as WardenError {
                #expect(e.code == .invalidArgument)
                #expect(e.description.hasPrefix("t.yaml: ") && e.message.contains(message), "\(e.description)")
            }
        }
    }
}
