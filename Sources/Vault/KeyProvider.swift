import Crypto
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// What a wrapped key is bound to: unwrapping it for another VM or layer fails (the context is
/// the AEAD's associated data).
public struct KeyContext: Sendable, Hashable {
    public var vm: VMID
    /// The layer: `disk0`, `disk1`, … (a snapshot layer later).
    public var layer: String
    public init(vm: VMID, layer: String) { self.vm = vm; self.layer = layer }
    var associatedData: Data { Data("warden-vault/v1\u{0}\(vm)\u{0}\(layer)".utf8) }
}

/// A data key as stored: sealed by a key-encryption key, with what is needed to find that KEK.
public struct WrappedKey: Codable, Sendable, Equatable {
    public var version = 1
    /// The key's id (what the ledger records; never the key).
    public var id: String
    /// The provider that wrapped it (`local`).
    public var provider: String
    /// The KEK's id within that provider.
    public var kek: String
    /// AES-256-GCM nonce, ciphertext and tag, base64.
    public var sealed: String
    public var createdAt: Date

    public init(id: String, provider: String, kek: String, sealed: String, createdAt: Date) {
        self.id = id; self.provider = provider; self.kek = kek; self.sealed = sealed; self.createdAt = createdAt
    }
}

/// Where key-encryption keys live (docs/vault.md): data keys are stored only wrapped by one.
/// Now a local KEK file; designed for the fleet server as key service and a TPM-sealed KEK.
public protocol KeyProvider: Sendable {
    /// `local`, later `server`, `tpm`.
    var name: String { get }
    func wrap(_ key: SecretBytes, id: String, context: KeyContext) throws -> WrappedKey
    func unwrap(_ wrapped: WrappedKey, context: KeyContext) throws -> SecretBytes
}

/// A KEK in a file: 32 random bytes, 0600, in a 0700 directory (`$WARDEN_HOME/vault`), made on
/// first use. Its id is the first 16 hex digits of its SHA-256, so a wrapped key names the KEK
/// that can open it without revealing anything of it.
public struct LocalKEKProvider: KeyProvider {
    public let name = "local"
    public let directory: String
    public var kekPath: String { directory + "/kek" }
    /// The next KEK while a rotation runs (``VaultRotation``): keys already re-wrapped name it.
    public var nextKEKPath: String { directory + "/kek.next" }

    public init(directory: String) { self.directory = directory }

    /// The KEK and its id, made when missing. Refuses a KEK file others can read or write.
    func kek(create: Bool) throws -> (key: SymmetricKey, id: String) {
        try FileDescriptorIO.ensurePrivateDirectory(directory, what: "the vault directory")
        if !FileManager.default.fileExists(atPath: kekPath) {
            guard create else { throw WardenError(.notFound, "there is no vault key-encryption key here", file: kekPath) }
            let fresh = SecretBytes(random: 32)
            try fresh.withBytes { try FileDescriptorIO.replaceFile(kekPath, with: Array(Data($0))) }
        }
        return try Self.readKEK(kekPath)
    }

    /// The KEK that wrapped a key: the current one, or the next one of an unfinished rotation.
    func kek(id: String) throws -> SymmetricKey? {
        for path in [kekPath, nextKEKPath] where FileManager.default.fileExists(atPath: path) {
            let k = try Self.readKEK(path)
            if k.id == id { return k.key }
        }
        return nil
    }

    static func readKEK(_ kekPath: String) throws -> (key: SymmetricKey, id: String) {
        var st = stat()
        guard lstat(kekPath, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw WardenError(.invalidArgument, "the vault KEK is not a regular file", file: kekPath)
        }
        guard st.st_mode & 0o077 == 0, st.st_uid == getuid() else {
            throw WardenError(.denied, "the vault KEK is readable or writable by others (it must be 0600 and yours)", file: kekPath)
        }
        let fd = open(kekPath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw WardenError(.io, "cannot open the vault KEK: \(String(cString: strerror(errno)))", file: kekPath) }
        defer { close(fd) }
        var raw = [UInt8](repeating: 0, count: 33)
        let n = read(fd, &raw, 33)
        defer { explicit_bzero(&raw, raw.count) }
        guard n == 32 else { throw WardenError(.invalidArgument, "the vault KEK is not 32 bytes", file: kekPath) }
        let key = SymmetricKey(data: raw[0..<32])
        let id = SHA256.hash(data: raw[0..<32]).prefix(8).hexString
        return (key, id)
    }

    public func wrap(_ key: SecretBytes, id: String, context: KeyContext) throws -> WrappedKey {
        // During a rotation, new keys are wrapped by the next KEK straight away.
        let (kek, kekID) = FileManager.default.fileExists(atPath: nextKEKPath) ? try Self.readKEK(nextKEKPath) : try kek(create: true)
        return try Self.seal(key, id: id, context: context, kek: kek, kekID: kekID, provider: name)
    }

    static func seal(_ key: SecretBytes, id: String, context: KeyContext, kek: SymmetricKey, kekID: String, provider: String) throws -> WrappedKey {
        let box = try key.withBytes { try AES.GCM.seal($0, using: kek, authenticating: context.associatedData) }
        guard let combined = box.combined else { throw WardenError(.internal, "AES-GCM gave no combined form") }
        return WrappedKey(id: id, provider: provider, kek: kekID, sealed: combined.base64EncodedString(), createdAt: Date())
    }

    public func unwrap(_ wrapped: WrappedKey, context: KeyContext) throws -> SecretBytes {
        guard wrapped.provider == name else { throw WardenError(.unsupported, "key \(wrapped.id) is held by provider \(wrapped.provider), not \(name)") }
        guard let kek = try kek(id: wrapped.kek) else {
            let current = (try? kek(create: false).id) ?? "none"
            throw WardenError(.denied, "key \(wrapped.id) was wrapped by KEK \(wrapped.kek); this host's KEK is \(current)")
        }
        guard let data = Data(base64Encoded: wrapped.sealed), data.count == 12 + 32 + 16 else {
            throw WardenError(.invalidArgument, "key \(wrapped.id) is damaged (not a sealed 32-byte key)")
        }
        do {
            var plain = try AES.GCM.open(try AES.GCM.SealedBox(combined: data), using: kek, authenticating: context.associatedData)
            defer { plain.resetBytes(in: 0..<plain.count) }
            return SecretBytes(copying: plain)
        } catch {
            throw WardenError(.denied, "key \(wrapped.id) does not open with this KEK for \(context.vm) \(context.layer) (tampered, or another VM's)")
        }
    }
}
