import Crypto
import Foundation
import WardenCore

/// Signatures in cosign's tag layout (docs/oci.md): the signature of manifest `sha256:<hex>`
/// is an OCI manifest tagged `sha256-<hex>.sig` in the same repository, whose one layer is a
/// simple-signing payload (`application/vnd.dev.cosign.simplesigning.v1+json`) naming the
/// manifest digest, with the Ed25519 signature of the payload's bytes in the layer annotation
/// `dev.cosignproject.cosign/signature` (base64). Chosen over the OCI 1.1 referrers API because
/// Distribution 2.8 (Debian's docker-registry) and many deployed registries lack that API, and
/// because `skopeo copy`/`cosign copy` already move these tags.
public enum ManifestSignature {
    public static let annotation = "dev.cosignproject.cosign/signature"
    /// The signing key's id (hex SHA-256 of its raw public key): which trusted key to try.
    public static let keyAnnotation = "dev.warden.signing-key"

    public static func tag(for digest: String) -> String { digest.replacingOccurrences(of: ":", with: "-") + ".sig" }

    /// The simple-signing payload for `digest` pushed as `name` (`host/repository[:tag]`).
    public static func payload(digest: String, name: String) throws -> [UInt8] {
        struct Critical: Encodable {
            struct Identity: Encodable { var dockerReference: String; enum CodingKeys: String, CodingKey { case dockerReference = "docker-reference" } }
            struct Image: Encodable { var digest: String; enum CodingKeys: String, CodingKey { case digest = "docker-manifest-digest" } }
            var identity: Identity; var image: Image; var type = "cosign container image signature"
        }
        struct Payload: Encodable { var critical: Critical; var optional: [String: String]? }
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(Payload(critical: Critical(identity: .init(dockerReference: name), image: .init(digest: digest)),
                                          optional: ["creator": "warden"])))
    }

    /// The signature manifest and its blobs (config, payload), ready to upload. Signature layers
    /// of `existing` (the manifest already under the tag) are kept, as cosign does: one manifest
    /// pushed under two tags carries a signature for each.
    public static func make(digest: String, name: String, publicKey: Data, existing: [UInt8]? = nil,
                            sign: (Data) throws -> Data) throws -> (manifest: [UInt8], blobs: [(Descriptor, [UInt8])]) {
        let body = try payload(digest: digest, name: name)
        let signature = try sign(Data(body))
        let layer = Descriptor.of(body, mediaType: MediaType.simpleSigning, annotations: [
            annotation: signature.base64EncodedString(), keyAnnotation: keyID(publicKey),
        ])
        var layers = [layer]
        if let existing, let old = try? BoundedJSON.decode(Manifest.self, from: existing, limit: RegistryLimits.manifestBytes, what: "signature") {
            layers = old.layers.filter { $0.mediaType == MediaType.simpleSigning && $0.digest != layer.digest }.suffix(15) + [layer]
        }
        let diffIDs = layers.map { "\"\($0.digest)\"" }.joined(separator: ",")
        let configText = #"{"architecture":"","config":{},"os":"","rootfs":{"diff_ids":[\#(diffIDs)],"type":"layers"}}"#
        let config = Descriptor.of(Array(configText.utf8), mediaType: MediaType.imageConfig)
        let manifest = try Manifest(artifactType: nil, config: config, layers: layers).encoded()
        return (manifest, [(config, Array(configText.utf8)), (layer, body)])
    }

    public static func keyID(_ publicKey: Data) -> String { SHA256.hash(data: publicKey).hexString }

    /// What a pull found.
    public enum Verdict: Sendable, Equatable {
        /// Signed by this trusted key (its file name).
        case trusted(key: String)
        /// No signature tag.
        case unsigned
        /// A signature that does not verify with any trusted key, or names another manifest.
        case invalid(String)

        public var isTrusted: Bool { if case .trusted = self { return true }; return false }
        public var label: String {
            switch self {
            case .trusted: "trusted"
            case .unsigned: "unsigned"
            case .invalid: "invalid"
            }
        }
    }

    /// Checks the signature artefact of `digest` (its manifest bytes and payload already fetched).
    /// When the pull names a tag, the signed reference must carry the same tag: a tag moved to
    /// another signed manifest (another VM's) is refused. The registry host and repository are
    /// not compared, so copies between registries (skopeo copy) still verify.
    public static func verify(digest: String, signatureManifest: [UInt8], payload: (Descriptor) async throws -> [UInt8],
                              trusted: [TrustedKey], tag: String? = nil) async throws -> Verdict {
        let m = try BoundedJSON.decode(Manifest.self, from: signatureManifest, limit: RegistryLimits.manifestBytes, what: "the signature manifest")
        var reasons: [String] = []
        for layer in m.layers.prefix(16) where layer.mediaType == MediaType.simpleSigning {
            guard let sigText = layer.annotations?[annotation], let sig = Data(base64Encoded: sigText), sig.count == 64 else {
                reasons.append("a signature layer without an Ed25519 signature"); continue
            }
            guard layer.size > 0, layer.size <= 64 << 10 else { reasons.append("a signature payload of \(layer.size) bytes"); continue }
            let body = try await payload(layer)
            struct P: Decodable {
                struct C: Decodable {
                    struct I: Decodable { var d: String; enum CodingKeys: String, CodingKey { case d = "docker-manifest-digest" } }
                    struct Id: Decodable { var r: String?; enum CodingKeys: String, CodingKey { case r = "docker-reference" } }
                    var image: I; var identity: Id?
                }
                var critical: C
            }
            let p = try BoundedJSON.decode(P.self, from: body, limit: 64 << 10, what: "the signature payload")
            var verified = false
            for key in trusted where key.verify(sig, over: Data(body)) {
                verified = true
                guard p.critical.image.d == digest else { reasons.append("the signature by \(key.name) is for \(p.critical.image.d), not \(digest)"); break }
                if let tag {
                    let signed = (p.critical.identity?.r).flatMap { try? ImageReference(parsing: $0) }
                    guard let signedTag = signed?.tag, signedTag == tag else {
                        reasons.append("the signature by \(key.name) was made for \(p.critical.identity?.r?.prefix(200) ?? "no tag"), not tag \(tag)")
                        break
                    }
                }
                return .trusted(key: key.name)
            }
            if verified { continue }
            reasons.append("a signature by key \(layer.annotations?[keyAnnotation]?.prefix(16) ?? "?") that no trusted key verifies")
        }
        return .invalid(reasons.first ?? "no simple-signing layer")
    }
}

/// An Ed25519 public key trusted to sign pushed VMs: `<policy dir>/trusted-keys/<name>.pub`,
/// holding the base64 of the 32-byte raw key (what `warden registry key` prints).
public struct TrustedKey: Sendable {
    public var name: String
    public var raw: Data

    public init(name: String, raw: Data) throws {
        guard raw.count == 32, (try? Curve25519.Signing.PublicKey(rawRepresentation: raw)) != nil else {
            throw WardenError(.corrupt, "trusted key \(name) is not a 32-byte Ed25519 public key")
        }
        self.name = name; self.raw = raw
    }

    func verify(_ signature: Data, over message: Data) -> Bool {
        guard let k = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else { return false }
        return k.isValidSignature(signature, for: message)
    }

    /// The keys in `directory` (`*.pub`); none when the folder does not exist.
    public static func load(directory: String) throws -> [TrustedKey] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        var out: [TrustedKey] = []
        for n in names.sorted() where n.hasSuffix(".pub") {
            let path = directory + "/" + n
            guard let data = FileManager.default.contents(atPath: path), data.count < 4096 else {
                throw WardenError(.corrupt, "cannot read the trusted key", file: path)
            }
            let text = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isWhitespace).first.map(String.init) ?? ""
            guard let raw = Data(base64Encoded: text) else { throw WardenError(.corrupt, "not a base64 Ed25519 public key", file: path) }
            do { out.append(try TrustedKey(name: String(n.dropLast(4)), raw: raw)) } catch let e as WardenError { throw e.inFile(path) }
        }
        return out
    }
}
