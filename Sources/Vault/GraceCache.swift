import Crypto
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// Released keys kept usable on this host for a bounded time, for when the key provider is
/// unreachable (docs/vault.md): `vault/grace/<vm>/<layer>.json`, each the data key sealed
/// (AES-256-GCM) under a key derived from this host's `vault/host.key` (32 random bytes, 0600)
/// and its `/etc/machine-id`, with the expiry bound into the associated data. Written only
/// when policy allowed a release and the vault configuration sets a grace; destroyed with the
/// VM's keys (shred) and replaced on rekey. A TPM-sealed host key is the designed successor.
public struct GraceCache: Sendable {
    public let vault: Vault
    public init(vault: Vault) { self.vault = vault }

    struct Entry: Codable {
        var version = 1
        var id: String
        var until: Date
        var sealed: String
    }

    var directory: String { vault.directory + "/grace" }
    var hostKeyPath: String { vault.directory + "/host.key" }
    func path(_ c: KeyContext) -> String { directory + "/" + c.vm.description + "/" + c.layer + ".json" }

    func associatedData(_ c: KeyContext, id: String, until: Date) -> Data {
        Data("warden-grace/v1\u{0}\(c.vm)\u{0}\(c.layer)\u{0}\(id)\u{0}\(Int64(until.timeIntervalSince1970))".utf8)
    }

    /// The sealing key: HKDF-SHA256 of the host key, salted with the machine id.
    func sealingKey(create: Bool) throws -> SymmetricKey? {
        if !FileManager.default.fileExists(atPath: hostKeyPath) {
            guard create else { return nil }
            try FileDescriptorIO.ensurePrivateDirectory(vault.directory, what: "the vault directory")
            try SecretBytes(random: 32).withBytes { try FileDescriptorIO.replaceFile(hostKeyPath, with: Array(Data($0))) }
        }
        let (raw, _) = try LocalKEKProvider.readKEK(hostKeyPath)
        let machine = (try? String(contentsOfFile: "/etc/machine-id", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return HKDF<SHA256>.deriveKey(inputKeyMaterial: raw, salt: Data(machine.utf8), info: Data("warden grace v1".utf8), outputByteCount: 32)
    }

    /// Keeps `key` (id `id`) for `context` until `until`, replacing an older copy.
    public func store(_ key: SecretBytes, id: String, context: KeyContext, until: Date) throws {
        guard let sealing = try sealingKey(create: true) else { return }
        let until = Date(timeIntervalSince1970: until.timeIntervalSince1970.rounded(.down))
        let box = try key.withBytes { try AES.GCM.seal($0, using: sealing, authenticating: associatedData(context, id: id, until: until)) }
        guard let combined = box.combined else { throw WardenError(.internal, "AES-GCM gave no combined form") }
        try FileDescriptorIO.ensurePrivateDirectory(directory, what: "the vault directory")
        try FileDescriptorIO.ensurePrivateDirectory(directory + "/" + context.vm.description, what: "the vault directory")
        let enc = JSONEncoder()
        enc.dateEncodingStrategy = .secondsSince1970
        try FileDescriptorIO.replaceFile(path(context), with: Array(try enc.encode(Entry(id: id, until: until, sealed: combined.base64EncodedString()))))
    }

    /// Until when a copy for `context` is kept (nil: none), as the file says (checked on use).
    public func until(_ context: KeyContext) -> Date? {
        guard let data = FileManager.default.contents(atPath: path(context)), data.count <= 4096 else { return nil }
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .secondsSince1970
        return (try? dec.decode(Entry.self, from: data))?.until
    }

    /// The kept key for `context` at `now`; nil when there is none or it expired (an expired
    /// copy is destroyed). A copy that does not open (another host, tampered expiry) throws.
    public func key(for context: KeyContext, at now: Date = Date()) throws -> (id: String, key: SecretBytes, until: Date)? {
        guard let data = FileManager.default.contents(atPath: path(context)) else { return nil }
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .secondsSince1970
        guard data.count <= 4096, let entry = try? dec.decode(Entry.self, from: data), let sealed = Data(base64Encoded: entry.sealed) else {
            throw WardenError(.corrupt, "the grace copy is damaged", file: path(context))
        }
        guard entry.until > now else { try? FileShred.overwriteAndRemove(path(context)); return nil }
        guard let sealing = try sealingKey(create: false) else { throw WardenError(.notFound, "this host has no grace key", file: hostKeyPath) }
        do {
            let plain = try AES.GCM.open(try AES.GCM.SealedBox(combined: sealed), using: sealing,
                                         authenticating: associatedData(context, id: entry.id, until: entry.until))
            return (entry.id, plain.withUnsafeBytes { SecretBytes(copying: $0) }, entry.until)
        } catch {
            throw WardenError(.denied, "the grace copy does not open on this host (another host's, or altered)", file: path(context))
        }
    }

    /// Destroys the copies of `vm` (every layer), or of one layer.
    public func shred(vm: VMID, layer: String? = nil) {
        let dir = directory + "/" + vm.description
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        for n in names where layer == nil || n == layer! + ".json" { try? FileShred.overwriteAndRemove(dir + "/" + n) }
        if layer == nil { rmdir(dir) }
    }
}
