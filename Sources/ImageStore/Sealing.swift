import Crypto
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// The key of a lineage family's pushed images (docs/oci.md, "Encryption"): one per family, so
/// that a clone's chunks dedupe against its base's, and shredding it makes every image of the
/// family unreadable. Chunks are sealed deterministically (AES-256-GCM with a nonce derived from
/// the chunk's bytes, as SIV does): equal chunks give equal blobs within the family, and nothing
/// else about a chunk is learnt from its blob but its size.
public struct FamilyKey: Sendable {
    /// The family's root VM (its id names the family).
    public let family: String
    /// The vault's id for the key (never the key).
    public let keyID: String
    let secret: SecretBytes

    public init(family: String, keyID: String, key: SecretBytes) throws {
        guard key.count == 32 else { throw WardenError(.corrupt, "a family key is 32 bytes") }
        self.family = family; self.keyID = keyID; secret = key
    }

    var raw: SymmetricKey { secret.withBytes { SymmetricKey(data: $0) } }
    func derive(_ label: String) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: raw, salt: Data("warden-oci/v1".utf8), info: Data(label.utf8), outputByteCount: 32)
    }
    var chunkKey: SymmetricKey { derive("chunk") }
    var nonceKey: SymmetricKey { derive("chunk-nonce") }
    var metaKey: SymmetricKey { derive("metadata") }

    var chunkAAD: Data { Data("warden-chunk/v1\u{0}\(family)".utf8) }

    /// nonce ‖ ciphertext ‖ tag; the nonce is HMAC(nonceKey, plaintext)'s first 12 bytes.
    public func sealChunk(_ plain: [UInt8]) throws -> [UInt8] {
        let (ck, nk) = (chunkKey, nonceKey)
        let mac = HMAC<SHA256>.authenticationCode(for: plain, using: nk)
        let nonce = try AES.GCM.Nonce(data: Data(mac).prefix(12))
        let box = try AES.GCM.seal(plain, using: ck, nonce: nonce, authenticating: chunkAAD)
        guard let combined = box.combined else { throw WardenError(.internal, "cannot seal a chunk") }
        return Array(combined)
    }

    public func openChunk(_ blob: [UInt8], what: String) throws -> [UInt8] {
        do {
            let box = try AES.GCM.SealedBox(combined: blob)
            let plain = Array(try AES.GCM.open(box, using: chunkKey, authenticating: chunkAAD))
            // The nonce must be the one the plaintext derives (a chunk sealed by this family).
            let mac = HMAC<SHA256>.authenticationCode(for: plain, using: nonceKey)
            guard Data(mac).prefix(12) == Data(blob.prefix(12)) else { throw WardenError(.corrupt, "nonce") }
            return plain
        } catch {
            throw WardenError(.corrupt, "\(what) does not open with the family key (tampered, or another family's)")
        }
    }

    /// Config and lineage: random nonces (they are not deduplicated).
    public func sealMetadata(_ plain: [UInt8], label: String) throws -> [UInt8] {
        let box = try AES.GCM.seal(plain, using: metaKey, authenticating: Data("warden-\(label)/v1\u{0}\(family)".utf8))
        guard let combined = box.combined else { throw WardenError(.internal, "cannot seal the \(label)") }
        return Array(combined)
    }

    public func openMetadata(_ blob: [UInt8], label: String) throws -> [UInt8] {
        do {
            return Array(try AES.GCM.open(try AES.GCM.SealedBox(combined: blob), using: metaKey,
                                          authenticating: Data("warden-\(label)/v1\u{0}\(family)".utf8)))
        } catch {
            throw WardenError(.corrupt, "the sealed \(label) does not open with the family key")
        }
    }

    /// The family key wrapped for a recipient's X25519 key with HPKE (RFC 9180, base mode).
    public func wrap(for recipientRaw: Data) throws -> SealedConfig.Recipient {
        let recipient = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: recipientRaw)
        var sender = try HPKE.Sender(recipientKey: recipient, ciphersuite: .Curve25519_SHA256_ChachaPoly, info: Self.hpkeInfo(family))
        let wrapped = try raw.withUnsafeBytes { try sender.seal(Data($0), authenticating: Data(keyID.utf8)) }
        return .init(keyID: RecipientKey.id(recipient.rawRepresentation), encapsulated: sender.encapsulatedKey.base64EncodedString(),
                     wrapped: wrapped.base64EncodedString())
    }

    static func hpkeInfo(_ family: String) -> Data { Data("warden-oci-family-key/v1\u{0}\(family)".utf8) }

    /// Unwraps the entry of `recipients` made for `key`.
    public static func unwrap(_ sealed: SealedConfig, with key: RecipientKey) throws -> SecretBytes? {
        guard let r = sealed.recipients.first(where: { $0.keyID == key.id }) else { return nil }
        guard let enc = Data(base64Encoded: r.encapsulated), let ct = Data(base64Encoded: r.wrapped), ct.count < 256 else {
            throw WardenError(.corrupt, "the sealed config's recipient entry is not base64")
        }
        do {
            var recipient = try HPKE.Recipient(privateKey: try key.privateKey, ciphersuite: .Curve25519_SHA256_ChachaPoly,
                                               info: hpkeInfo(sealed.family), encapsulatedKey: enc)
            let raw = try recipient.open(ct, authenticating: Data(sealed.keyID.utf8))
            guard raw.count == 32 else { throw WardenError(.corrupt, "size") }
            return SecretBytes(copying: raw)
        } catch {
            throw WardenError(.corrupt, "the family key wrapped for this host does not open")
        }
    }
}

/// The config blob of an encrypted push (`application/vnd.warden.vm.config.v1+json+encrypted`):
/// the family and key id in the clear (to find the key), the wrapped keys of the recipients,
/// and the VM config sealed.
public struct SealedConfig: Codable, Sendable {
    public static let schemaName = "warden.vm.sealed/v1"
    public var schema = SealedConfig.schemaName
    public var family: String
    public var keyID: String
    public var recipients: [Recipient]
    /// base64 of the sealed ``VMArtifactConfig`` JSON.
    public var sealed: String

    public struct Recipient: Codable, Sendable {
        public var keyID: String
        public var encapsulated: String
        public var wrapped: String
        enum CodingKeys: String, CodingKey { case keyID = "key_id", encapsulated, wrapped }
    }
    enum CodingKeys: String, CodingKey { case schema, family, keyID = "key_id", recipients, sealed }

    public init(family: String, keyID: String, recipients: [Recipient], sealed: String) {
        self.family = family; self.keyID = keyID; self.recipients = recipients; self.sealed = sealed
    }

    public func validate() throws {
        guard schema == Self.schemaName, UUID(uuidString: family) != nil, keyID.utf8.count <= 64, recipients.count <= 64,
              sealed.utf8.count <= RegistryLimits.configBytes * 2 else {
            throw WardenError(.corrupt, "the sealed config is not a \(Self.schemaName) document")
        }
    }
}

/// A host's X25519 key for receiving family keys (`<keys>/<host>.x25519`, 0600 in a 0700
/// folder, base64 of the raw private key), made on first use.
public struct RecipientKey: Sendable {
    let secret: SecretBytes
    public let publicKey: Data
    init(privateKey: Curve25519.KeyAgreement.PrivateKey) {
        secret = SecretBytes(copying: privateKey.rawRepresentation); publicKey = privateKey.publicKey.rawRepresentation
    }
    var privateKey: Curve25519.KeyAgreement.PrivateKey {
        get throws { try secret.withBytes { try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: $0) } }
    }
    public var id: String { Self.id(publicKey) }

    public static func id(_ raw: Data) -> String { String(SHA256.hash(data: raw).hexString.prefix(32)) }

    public static func loadOrCreate(directory: String, host: String) throws -> RecipientKey {
        let file = directory + "/" + host + ".x25519"
        try FileDescriptorIO.ensurePrivateDirectory(directory, what: "the keys folder")
        if !FileManager.default.fileExists(atPath: file) {
            let key = Curve25519.KeyAgreement.PrivateKey()
            let tmp = file + ".tmp-\(getpid())"
            let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw WardenError(.io, "cannot create the recipient key: \(String(cString: strerror(errno)))", file: file) }
            defer { unlink(tmp) }
            let text = Array((key.rawRepresentation.base64EncodedString() + "\n").utf8)
            do {
                defer { close(fd) }
                try text.withUnsafeBytes { try FileDescriptorIO.writeAll(fd, $0, name: file) }
                guard fsync(fd) == 0 else { throw WardenError(.io, "cannot sync the recipient key", file: file) }
            }
            if link(tmp, file) != 0 && errno != EEXIST {
                throw WardenError(.io, "cannot create the recipient key: \(String(cString: strerror(errno)))", file: file)
            }
        }
        var st = stat()
        guard stat(file, &st) == 0, st.st_mode & 0o077 == 0 else {
            throw WardenError(.denied, "the recipient key is readable by others; chmod 600 it", file: file)
        }
        guard let data = FileManager.default.contents(atPath: file), data.count < 4096,
              let raw = Data(base64Encoded: String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
              let key = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: raw) else {
            throw WardenError(.corrupt, "the recipient key file is not a base64 X25519 key", file: file)
        }
        return RecipientKey(privateKey: key)
    }

    /// A recipient's public key from `--recipient`: base64 of 32 bytes, or a file holding it.
    public static func publicKey(_ text: String) throws -> Data {
        var t = text
        if FileManager.default.fileExists(atPath: text) {
            guard let d = FileManager.default.contents(atPath: text), d.count < 4096 else { throw WardenError(.invalidArgument, "cannot read", file: text) }
            t = String(decoding: d, as: UTF8.self)
        }
        let word = t.split(whereSeparator: \.isWhitespace).first.map(String.init) ?? ""
        guard let raw = Data(base64Encoded: word), (try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: raw)) != nil else {
            throw WardenError(.invalidArgument, "--recipient: not a base64 X25519 public key (what `warden registry key --recipient` prints)")
        }
        return raw
    }
}
