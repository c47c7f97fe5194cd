import Crypto
import Foundation
import WardenCore

// The TPM 2.0 structures a quote is made of (TPM 2.0 Library, Part 2: Structures), parsed
// as hostile input: every read is bounds-checked by ByteReader, every size field is capped
// before anything is allocated, and trailing bytes are an error. A parse failure throws
// WardenError(.corrupt) naming the structure and the problem; nothing here traps.

/// TPM_ALG_ID values Warden meets.
public enum TPMAlg {
    public static let rsa: UInt16 = 0x0001
    public static let sha1: UInt16 = 0x0004
    public static let sha256: UInt16 = 0x000B
    public static let sha384: UInt16 = 0x000C
    public static let sha512: UInt16 = 0x000D
    public static let null: UInt16 = 0x0010
    public static let rsassa: UInt16 = 0x0014
    public static let rsapss: UInt16 = 0x0016
    public static let ecdsa: UInt16 = 0x0018
    public static let ecc: UInt16 = 0x0023

    /// The digest size of a hash algorithm; nil for one Warden does not know.
    public static func digestSize(_ alg: UInt16) -> Int? {
        switch alg {
        case sha1: return 20
        case sha256: return 32
        case sha384: return 48
        case sha512: return 64
        default: return nil
        }
    }

    public static func hashName(_ alg: UInt16) -> String {
        switch alg {
        case sha1: return "sha1"
        case sha256: return "sha256"
        case sha384: return "sha384"
        case sha512: return "sha512"
        default: return String(format: "0x%04x", alg)
        }
    }

    public static func hash(named name: String) -> UInt16? {
        ["sha1": sha1, "sha256": sha256, "sha384": sha384, "sha512": sha512][name.lowercased()]
    }

    /// The digest of `data` with a hash algorithm (nil for an unknown one).
    public static func digest(_ alg: UInt16, _ data: some DataProtocol) -> Data? {
        switch alg {
        case sha1: return Data(Insecure.SHA1.hash(data: data))
        case sha256: return Data(SHA256.hash(data: data))
        case sha384: return Data(SHA384.hash(data: data))
        case sha512: return Data(SHA512.hash(data: data))
        default: return nil
        }
    }
}

extension ByteReader {
    /// A TPM2B: a big-endian UInt16 size, then that many bytes (at most `max`).
    mutating func tpm2b(max: Int, _ what: String) throws -> [UInt8] {
        let n = Int(try readBE(UInt16.self))
        guard n <= max else { throw WardenError.corrupt("\(context): \(what) claims \(n) bytes (at most \(max))") }
        return try readBytes(n)
    }

    func requireEnd() throws {
        guard remaining == 0 else { throw WardenError.corrupt("\(context): \(remaining) bytes after the end of the structure") }
    }
}

/// One bank's entry of a TPML_PCR_SELECTION: a hash algorithm and the PCRs selected in it.
public struct PCRSelection: Sendable, Hashable, Codable {
    public var hash: UInt16
    /// PCR indices, ascending.
    public var pcrs: [Int]

    public init(hash: UInt16, pcrs: [Int]) { self.hash = hash; self.pcrs = Array(Set(pcrs)).sorted() }

    /// At most 8 bytes of select bitmap (64 PCRs): real TPMs have 24.
    public static let maxSelectBytes = 8
    /// At most 16 banks in a list (TPMs have a handful).
    public static let maxBanks = 16

    /// Parses a TPML_PCR_SELECTION at the reader's position.
    public static func parseList(_ r: inout ByteReader) throws -> [PCRSelection] {
        let count = try r.readBE(UInt32.self)
        guard count <= UInt32(maxBanks) else { throw WardenError.corrupt("\(r.context): a PCR selection of \(count) banks (at most \(maxBanks))") }
        var out: [PCRSelection] = []
        for _ in 0..<Int(count) {
            let hash = try r.readBE(UInt16.self)
            let size = Int(try r.readU8())
            guard size <= maxSelectBytes else { throw WardenError.corrupt("\(r.context): a PCR select of \(size) bytes (at most \(maxSelectBytes))") }
            let bits = try r.readBytes(size)
            var pcrs: [Int] = []
            for (i, b) in bits.enumerated() { for bit in 0..<8 where b & (1 << bit) != 0 { pcrs.append(i * 8 + bit) } }
            out.append(PCRSelection(hash: hash, pcrs: pcrs))
        }
        return out
    }

    /// Parses a whole TPML_PCR_SELECTION (nothing may follow it).
    public static func parseList(_ bytes: [UInt8]) throws -> [PCRSelection] {
        var r = ByteReader(bytes, context: "PCR selection")
        let list = try parseList(&r)
        try r.requireEnd()
        return list
    }

    /// Parses the tpm2-tools form `sha256:0,1,7` (PCRs 0-23, a known bank); nil otherwise.
    public init?(toolSpec spec: String) {
        let parts = spec.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, let bank = TPMAlg.hash(named: String(parts[0])) else { return nil }
        let pcrs = parts[1].split(separator: ",", omittingEmptySubsequences: false).map { Int($0) }
        guard !pcrs.isEmpty, pcrs.allSatisfy({ $0 != nil && (0...23).contains($0!) }) else { return nil }
        self.init(hash: bank, pcrs: pcrs.compactMap { $0 })
    }

    /// The tpm2-tools form: `sha256:0,1,7`.
    public var toolSpec: String { TPMAlg.hashName(hash) + ":" + pcrs.map(String.init).joined(separator: ",") }
}

/// TPMS_ATTEST with TPMS_QUOTE_INFO: what a TPM signs in TPM2_Quote.
public struct TPMSAttest: Sendable, Equatable {
    public static let generatedValue: UInt32 = 0xFF54_4347   // TPM_GENERATED_VALUE ("\xffTCG")
    public static let typeQuote: UInt16 = 0x8018            // TPM_ST_ATTEST_QUOTE

    public var qualifiedSigner: [UInt8]
    /// The caller's nonce (TPM2B_DATA extraData).
    public var extraData: [UInt8]
    public var clock: UInt64
    public var resetCount: UInt32
    public var restartCount: UInt32
    public var safe: Bool
    public var firmwareVersion: UInt64
    public var pcrSelection: [PCRSelection]
    public var pcrDigest: [UInt8]

    /// A quote is a few hundred bytes; anything over 4 KiB is not one.
    public static let maxSize = 4096

    public init(_ bytes: [UInt8]) throws {
        guard bytes.count <= Self.maxSize else { throw WardenError.corrupt("the quote is \(bytes.count) bytes (at most \(Self.maxSize))") }
        var r = ByteReader(bytes, context: "quote (TPMS_ATTEST)")
        guard try r.readBE(UInt32.self) == Self.generatedValue else {
            throw WardenError.corrupt("quote (TPMS_ATTEST): no TPM_GENERATED_VALUE magic: not made by a TPM")
        }
        let type = try r.readBE(UInt16.self)
        guard type == Self.typeQuote else { throw WardenError.corrupt(String(format: "quote (TPMS_ATTEST): type 0x%04x is not a quote (0x8018)", type)) }
        qualifiedSigner = try r.tpm2b(max: 2 + 64, "qualifiedSigner")
        extraData = try r.tpm2b(max: 64, "extraData")
        clock = try r.readBE(UInt64.self)
        resetCount = try r.readBE(UInt32.self)
        restartCount = try r.readBE(UInt32.self)
        let s = try r.readU8()
        guard s <= 1 else { throw WardenError.corrupt("quote (TPMS_ATTEST): clockInfo.safe is \(s), not 0 or 1") }
        safe = s == 1
        firmwareVersion = try r.readBE(UInt64.self)
        pcrSelection = try PCRSelection.parseList(&r)
        pcrDigest = try r.tpm2b(max: 64, "pcrDigest")
        try r.requireEnd()
    }
}

/// TPMT_SIGNATURE, for the schemes an attestation key uses.
public enum TPMTSignature: Sendable, Equatable {
    case ecdsa(hash: UInt16, r: [UInt8], s: [UInt8])
    case rsassa(hash: UInt16, signature: [UInt8])
    case rsapss(hash: UInt16, signature: [UInt8])

    public init(_ bytes: [UInt8]) throws {
        guard bytes.count <= 1024 else { throw WardenError.corrupt("the signature is \(bytes.count) bytes (at most 1024)") }
        var r = ByteReader(bytes, context: "signature (TPMT_SIGNATURE)")
        let alg = try r.readBE(UInt16.self)
        let hash = try r.readBE(UInt16.self)
        switch alg {
        case TPMAlg.ecdsa:
            let rr = try r.tpm2b(max: 66, "signatureR")
            let ss = try r.tpm2b(max: 66, "signatureS")
            self = .ecdsa(hash: hash, r: rr, s: ss)
        case TPMAlg.rsassa, TPMAlg.rsapss:
            let sig = try r.tpm2b(max: 512, "sig")
            self = alg == TPMAlg.rsassa ? .rsassa(hash: hash, signature: sig) : .rsapss(hash: hash, signature: sig)
        default:
            throw WardenError.corrupt(String(format: "signature (TPMT_SIGNATURE): scheme 0x%04x is not ECDSA, RSASSA or RSAPSS", alg))
        }
        try r.requireEnd()
    }

    public var hash: UInt16 {
        switch self { case .ecdsa(let h, _, _), .rsassa(let h, _), .rsapss(let h, _): return h }
    }
}

/// TPMT_PUBLIC of an ECC or RSA key (an attestation or endorsement key), with its name.
public struct TPMTPublic: Sendable, Equatable {
    public enum Key: Sendable, Equatable {
        /// curve: TPM_ECC_CURVE (0x0003 = NIST P-256, 0x0004 = P-384).
        case ecc(curve: UInt16, x: [UInt8], y: [UInt8])
        case rsa(bits: UInt16, exponent: UInt32, modulus: [UInt8])
    }
    public var type: UInt16
    public var nameAlg: UInt16
    public var attributes: UInt32
    public var key: Key
    /// The marshalled TPMT_PUBLIC (what the name hashes).
    public var raw: [UInt8]

    public static let curveP256: UInt16 = 0x0003
    public static let curveP384: UInt16 = 0x0004
    /// objectAttributes: fixedTPM | fixedParent | sensitiveDataOrigin | restricted | sign.
    public static let attestationKeyAttributes: UInt32 = 0x0000_0002 | 0x0000_0010 | 0x0000_0020 | 0x0001_0000 | 0x0004_0000

    /// Parses a TPM2B_PUBLIC (as `tpm2_createek -u` and `tpm2_createak -u` write it).
    public init(tpm2b bytes: [UInt8]) throws {
        guard bytes.count <= 2048 else { throw WardenError.corrupt("the public key is \(bytes.count) bytes (at most 2048)") }
        var r = ByteReader(bytes, context: "public key (TPM2B_PUBLIC)")
        let inner = try r.tpm2b(max: 2046, "publicArea")
        try r.requireEnd()
        try self.init(tpmt: inner)
    }

    /// Parses a TPMT_PUBLIC.
    public init(tpmt bytes: [UInt8]) throws {
        var r = ByteReader(bytes, context: "public key (TPMT_PUBLIC)")
        type = try r.readBE(UInt16.self)
        nameAlg = try r.readBE(UInt16.self)
        guard TPMAlg.digestSize(nameAlg) != nil else {
            throw WardenError.corrupt(String(format: "public key (TPMT_PUBLIC): name algorithm 0x%04x is unknown", nameAlg))
        }
        attributes = try r.readBE(UInt32.self)
        _ = try r.tpm2b(max: 64, "authPolicy")
        // TPMT_SYM_DEF_OBJECT: an algorithm, then key bits and mode unless it is NULL.
        func symmetric() throws { if try r.readBE(UInt16.self) != TPMAlg.null { try r.skip(4) } }
        // A scheme: an algorithm, then its hash unless it is NULL.
        func scheme() throws { if try r.readBE(UInt16.self) != TPMAlg.null { try r.skip(2) } }
        switch type {
        case TPMAlg.ecc:
            try symmetric()
            try scheme()
            let curve = try r.readBE(UInt16.self)
            try scheme()   // kdf
            let x = try r.tpm2b(max: 66, "x")
            let y = try r.tpm2b(max: 66, "y")
            key = .ecc(curve: curve, x: x, y: y)
        case TPMAlg.rsa:
            try symmetric()
            try scheme()
            let bits = try r.readBE(UInt16.self)
            let exponent = try r.readBE(UInt32.self)
            let modulus = try r.tpm2b(max: 512, "modulus")
            guard bits >= 1024, Int(bits) == modulus.count * 8 else {
                throw WardenError.corrupt("public key (TPMT_PUBLIC): an RSA key of \(bits) bits with a \(modulus.count)-byte modulus")
            }
            key = .rsa(bits: bits, exponent: exponent == 0 ? 65537 : exponent, modulus: modulus)
        default:
            throw WardenError.corrupt(String(format: "public key (TPMT_PUBLIC): type 0x%04x is neither RSA nor ECC", type))
        }
        try r.requireEnd()
        raw = bytes
    }

    /// The object's name: nameAlg, then the nameAlg digest of the TPMT_PUBLIC.
    public var name: [UInt8] {
        [UInt8(nameAlg >> 8), UInt8(nameAlg & 0xff)] + Array(TPMAlg.digest(nameAlg, raw) ?? Data())
    }

    /// The qualified name of this object when it is a child of `parentQualifiedName`:
    /// nameAlg ‖ H(parent's qualified name ‖ name) (Part 1, §16).
    public func qualifiedName(parentQualifiedName: [UInt8]) -> [UInt8] {
        [UInt8(nameAlg >> 8), UInt8(nameAlg & 0xff)] + Array(TPMAlg.digest(nameAlg, parentQualifiedName + name) ?? Data())
    }

    /// The qualified name of a hierarchy is its handle (TPM_RH_ENDORSEMENT = 0x4000000B).
    public static let endorsementHierarchy: [UInt8] = [0x40, 0x00, 0x00, 0x0B]

    /// Whether this is a signing key fit to attest: restricted, fixed to its TPM, made in it.
    public var isRestrictedSigningKey: Bool { attributes & Self.attestationKeyAttributes == Self.attestationKeyAttributes }

    /// A SHA-256 fingerprint of the TPMT_PUBLIC (shown and recorded; never a secret).
    public var fingerprint: String { Data(SHA256.hash(data: raw)).hexEncoded }
}
