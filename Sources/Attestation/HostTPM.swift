import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// The host's TPM 2.0, driven through Debian's tpm2-tools (docs/attestation.md).
///
/// Which TPM: the `--tcti` given, else `$TPM2TOOLS_TCTI`, else the kernel's resource manager
/// `/dev/tpmrm0`. Without any, the host has no TPM and is never attested. The TCTI reaches the
/// tools through their environment; every transient object and session a step loads is
/// flushed after it (a TPM without a resource manager, such as swtpm's socket, has room for
/// only three).
public struct HostTPM: Sendable {
    public let tcti: String
    /// The persistent handle of Warden's attestation key (owner hierarchy, 0x81010020 unless told).
    public let akHandle: UInt32

    public static let defaultAKHandle: UInt32 = 0x8101_0020

    public init(tcti: String, akHandle: UInt32 = HostTPM.defaultAKHandle) { self.tcti = tcti; self.akHandle = akHandle }

    /// The host's TPM, or nil when it has none.
    public static func find(tcti: String?, akHandle: UInt32 = defaultAKHandle,
                            environment: [String: String] = ProcessInfo.processInfo.environment) -> HostTPM? {
        if let t = tcti, !t.isEmpty { return HostTPM(tcti: t, akHandle: akHandle) }
        if let t = environment["TPM2TOOLS_TCTI"], !t.isEmpty { return HostTPM(tcti: t, akHandle: akHandle) }
        if FileManager.default.fileExists(atPath: "/dev/tpmrm0") { return HostTPM(tcti: "device:/dev/tpmrm0", akHandle: akHandle) }
        return nil
    }

    var handleText: String { String(format: "0x%08x", akHandle) }

    @discardableResult
    private func tool(_ name: String, _ args: [String], in dir: String, what: String) throws -> Data {
        let binary = try ToolProcess.find(name, package: "tpm2-tools")
        return try ToolProcess.check(binary, args, environment: ["TPM2TOOLS_TCTI": tcti, "TSS2_LOG": "all+none"],
                                     timeout: 60, what: "\(what) (\(name))")
    }

    private func flush(in dir: String) {
        for f in ["-t", "-s"] { _ = try? tool("tpm2_flushcontext", [f], in: dir, what: "flushing the TPM's transient objects") }
    }

    /// A fresh private folder for one conversation with the TPM (removed afterwards).
    public static func withScratch<T>(_ body: (String) throws -> T) throws -> T {
        var template = Array((NSTemporaryDirectory() + "/warden-tpm-XXXXXX").utf8CString)
        guard let p = mkdtemp(&template) else { throw WardenError(.io, "cannot make a scratch folder for the TPM tools") }
        let dir = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        return try body(dir)
    }

    private func read(_ path: String, max: Int = 1 << 16) throws -> [UInt8] {
        guard let d = FileManager.default.contents(atPath: path), d.count <= max else {
            throw WardenError(.unavailable, "the TPM tools wrote no usable \((path as NSString).lastPathComponent)")
        }
        return Array(d)
    }

    /// Makes (or finds) the attestation key under the endorsement key and proves, by credential
    /// activation, that the key lives in the same TPM as that endorsement key.
    ///
    /// The endorsement key is the TCG default RSA-2048 template (tpm2_createek), recreated from
    /// the TPM's seed each time. The attestation key is a restricted ECDSA P-256 signing key,
    /// persisted at ``akHandle``; an existing one there is kept when it is such a key.
    public func enrol() throws -> TPMEnrolment {
        try Self.withScratch { dir in
            defer { flush(in: dir) }
            try tool("tpm2_createek", ["-c", "\(dir)/ek.ctx", "-G", "rsa", "-u", "\(dir)/ek.pub"], in: dir, what: "making the endorsement key")
            flush(in: dir)
            let ek = try TPMTPublic(tpm2b: try read("\(dir)/ek.pub"))
            var ak: TPMTPublic?
            if (try? tool("tpm2_readpublic", ["-c", handleText, "-o", "\(dir)/old.pub"], in: dir, what: "reading the attestation key")) != nil {
                // Something is persisted there: kept when it is an attestation key, never evicted
                // when it is not (it may be another program's key).
                guard let old = try? TPMTPublic(tpm2b: try read("\(dir)/old.pub")), old.isRestrictedSigningKey else {
                    throw WardenError(.conflict, "the TPM's persistent handle \(handleText) holds another kind of key; choose a free one with --ak-handle")
                }
                ak = old
            } else {
                try tool("tpm2_createak", ["-C", "\(dir)/ek.ctx", "-c", "\(dir)/ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa",
                                           "-u", "\(dir)/ak.pub", "-f", "tss"], in: dir, what: "making the attestation key")
                flush(in: dir)
                try tool("tpm2_evictcontrol", ["-C", "o", "-c", "\(dir)/ak.ctx", handleText], in: dir, what: "persisting the attestation key")
                flush(in: dir)
                ak = try TPMTPublic(tpm2b: try read("\(dir)/ak.pub"))
            }
            guard let ak, ak.isRestrictedSigningKey else {
                throw WardenError(.unavailable, "the key at \(handleText) is not a restricted signing key made in the TPM")
            }
            // Credential activation: only the TPM holding this endorsement key can recover a
            // secret sealed to it for a key of this name, and only if that key is loaded in it.
            let challenge = try HostTrustService.nonce()
            let secretPath = "\(dir)/challenge"
            guard FileManager.default.createFile(atPath: secretPath, contents: Data(challenge), attributes: [.posixPermissions: 0o600]) else {
                throw WardenError(.io, "cannot write the enrolment challenge")
            }
            try tool("tpm2_makecredential", ["-T", "none", "-u", "\(dir)/ek.pub", "-s", secretPath, "-n", ak.name.hexEncoded,
                                             "-o", "\(dir)/cred"], in: dir, what: "sealing the enrolment challenge to the endorsement key")
            try tool("tpm2_createek", ["-c", "\(dir)/ek2.ctx", "-G", "rsa"], in: dir, what: "loading the endorsement key")
            try tool("tpm2_startauthsession", ["--policy-session", "-S", "\(dir)/s.ctx"], in: dir, what: "starting a policy session")
            try tool("tpm2_policysecret", ["-S", "\(dir)/s.ctx", "-c", "e"], in: dir, what: "authorising the endorsement key")
            try tool("tpm2_activatecredential", ["-c", handleText, "-C", "\(dir)/ek2.ctx", "-i", "\(dir)/cred", "-o", "\(dir)/answer",
                                                 "-P", "session:\(dir)/s.ctx"], in: dir, what: "answering the enrolment challenge")
            guard try read("\(dir)/answer") == challenge else {
                throw WardenError(.denied, "the TPM did not answer the enrolment challenge: the attestation key is not in the TPM of this endorsement key")
            }
            return TPMEnrolment(endorsementKey: ek, attestationKey: ak)
        }
    }

    /// The endorsement key's public part (the TCG default RSA-2048 template).
    public func endorsementKey() throws -> TPMTPublic {
        try Self.withScratch { dir in
            defer { flush(in: dir) }
            try tool("tpm2_createek", ["-c", "\(dir)/ek.ctx", "-G", "rsa", "-u", "\(dir)/ek.pub"], in: dir, what: "reading the endorsement key")
            return try TPMTPublic(tpm2b: try read("\(dir)/ek.pub"))
        }
    }

    /// A quote over `selection` with `nonce` as its qualifying data, signed by the attestation key.
    public func quote(selection: [PCRSelection], nonce: [UInt8]) throws -> QuoteEvidence {
        guard !selection.isEmpty, !nonce.isEmpty, nonce.count <= 64 else { throw WardenError(.invalidArgument, "a quote needs PCRs and a nonce of 1-64 bytes") }
        return try Self.withScratch { dir in
            defer { flush(in: dir) }
            try tool("tpm2_quote", ["-c", handleText, "-l", selection.map(\.toolSpec).joined(separator: "+"), "-q", nonce.hexEncoded,
                                    "-g", "sha256", "-m", "\(dir)/quote", "-s", "\(dir)/sig", "-o", "\(dir)/pcrs", "-F", "values"],
                     in: dir, what: "quoting the PCRs")
            return QuoteEvidence(quote: try read("\(dir)/quote", max: TPMSAttest.maxSize), signature: try read("\(dir)/sig", max: 1024),
                                 pcrValues: try read("\(dir)/pcrs", max: 64 * 64))
        }
    }

    /// The current values of `pcrs` in `bank` (for writing a baseline).
    public func readPCRs(bank: UInt16, pcrs: [Int]) throws -> [Int: [UInt8]] {
        let sel = PCRSelection(hash: bank, pcrs: pcrs)
        guard let size = TPMAlg.digestSize(bank), !sel.pcrs.isEmpty, sel.pcrs.allSatisfy({ (0...23).contains($0) }) else {
            throw WardenError(.invalidArgument, "PCRs are numbers 0-23 in a known bank")
        }
        return try Self.withScratch { dir in
            defer { flush(in: dir) }
            try tool("tpm2_pcrread", [sel.toolSpec, "-o", "\(dir)/values"], in: dir, what: "reading the PCRs")
            let bytes = try read("\(dir)/values", max: 64 * 64)
            guard bytes.count == size * sel.pcrs.count else { throw WardenError(.unavailable, "tpm2_pcrread wrote \(bytes.count) bytes for \(sel.pcrs.count) PCRs") }
            var out: [Int: [UInt8]] = [:]
            for (i, pcr) in sel.pcrs.enumerated() { out[pcr] = Array(bytes[i * size..<(i + 1) * size]) }
            return out
        }
    }
}
