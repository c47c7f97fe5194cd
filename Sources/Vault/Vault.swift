import Crypto
import Foundation
import Ledger
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// Per-VM, per-layer data keys, stored only wrapped by a key-encryption key (docs/vault.md).
///
/// A data key is 32 random bytes; QEMU gets it base64-encoded (text) as the LUKS passphrase of the
/// layer's qcow2 (`encrypt.format=luks`). The vault never decides whether a key may be
/// released: callers decide the `unlock` operation through policy first, and record it.
public struct Vault: Sendable {
    public let directory: String
    public let keys: KeyStore
    public let provider: any KeyProvider

    public init(directory: String = Vault.defaultDirectory(), provider: (any KeyProvider)? = nil) {
        self.directory = directory
        self.keys = KeyStore(directory: directory)
        self.provider = provider ?? LocalKEKProvider(directory: directory)
    }

    /// `$WARDEN_HOME/vault`, else `~/.local/share/warden/vault`.
    public static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let h = environment["WARDEN_HOME"], !h.isEmpty { return h + "/vault" }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + "/.local/share/warden/vault"
    }

    /// The vault of the ledger at `database`: `vault/` beside it, or `$WARDEN_VAULT`.
    public static func beside(database: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> Vault {
        if let v = environment["WARDEN_VAULT"], !v.isEmpty { return Vault(directory: v) }
        return Vault(directory: (database as NSString).deletingLastPathComponent + "/vault")
    }

    /// The LUKS passphrase QEMU, libvirt and the offline readers get for a data key: its base64
    /// text.
    public static func passphrase(_ key: SecretBytes) -> SecretBytes { key.base64() }

    /// The layer name of a VM's disk.
    public static func diskLayer(_ index: Int) -> String { "disk\(index)" }

    /// The key layer of a VM's vTPM state (swtpm's AES-256 state key).
    public static let vtpmLayer = "vtpm"

    /// The disk index a layer name stands for (`disk3` → 3), nil for other layers.
    public static func diskIndex(_ layer: String) -> Int? {
        guard layer.hasPrefix("disk"), let n = Int(layer.dropFirst(4)), n >= 0, String(n) == layer.dropFirst(4) else { return nil }
        return n
    }

    /// Makes, wraps and stores a new data key for `context`; returns its id and the key.
    public func newKey(for context: KeyContext) throws -> (id: String, key: SecretBytes) {
        let id = "k-" + (0..<8).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let key = SecretBytes(random: 32)
        try keys.put(try provider.wrap(key, id: id, context: context), for: context)
        return (id, key)
    }

    /// The data key of `context`, unwrapped; nil when it has none. Callers decide `unlock` first.
    public func key(for context: KeyContext) throws -> (id: String, key: SecretBytes)? {
        guard let wrapped = try keys.get(context) else { return nil }
        return (wrapped.id, try provider.unwrap(wrapped, context: context))
    }

    /// Destroys every key of `vm` and records a `keys-shredded` event with their ids (the ledger
    /// gets ids and layers, never keys). Returns (layer, key id) for each; throws `.notFound`
    /// when the VM has no keys here.
    @discardableResult
    public func shred(vm: VMRecord, store: any LedgerStore, actor: String = NewEvent.defaultActor) throws -> [(layer: String, key: String)] {
        var destroyed: [(layer: String, key: String)] = []
        for layer in layers(of: vm.id).keys.sorted() {
            if let id = try keys.shred(KeyContext(vm: vm.id, layer: layer)) { destroyed.append((layer, id)) }
        }
        GraceCache(vault: self).shred(vm: vm.id)
        guard !destroyed.isEmpty else { throw WardenError(.notFound, "VM \(vm.name) has no keys in this vault") }
        _ = try store.append(NewEvent(kind: .keysShredded, vm: vm.id, actor: actor, payload: [
            "keys": .array(destroyed.map { .object(["layer": .string($0.layer), "key": .string($0.key)]) }),
        ]))
        return destroyed
    }

    /// Rotates the local KEK without touching any disk: a new KEK (`kek.next`) re-wraps every
    /// data key, then the old KEK is overwritten in place and the new one takes its name. An
    /// interrupted rotation is finished by running it again (keys name the KEK that wrapped
    /// them, and both are consulted meanwhile).
    public func rotateKEK() throws -> (old: String, new: String, keys: Int) {
        guard let local = provider as? LocalKEKProvider else { throw WardenError(.unsupported, "only the local KEK rotates here") }
        let old = try local.kek(create: false)
        if !FileManager.default.fileExists(atPath: local.nextKEKPath) {
            try SecretBytes(random: 32).withBytes { try FileDescriptorIO.replaceFile(local.nextKEKPath, with: Array(Data($0))) }
        }
        let next = try LocalKEKProvider.readKEK(local.nextKEKPath)
        var count = 0
        for (vm, layer, wrapped) in keys.list() where wrapped.kek != next.id {
            let context = KeyContext(vm: vm, layer: layer)
            let plain = try local.unwrap(wrapped, context: context)
            var again = try LocalKEKProvider.seal(plain, id: wrapped.id, context: context, kek: next.key, kekID: next.id, provider: local.name)
            again.createdAt = wrapped.createdAt
            try keys.replace(again, for: context)
            count += 1
        }
        // Every key now names the next KEK: destroy the old one where it lies, then promote.
        let fd = open(local.kekPath, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
        if fd >= 0 {
            let zeros = [UInt8](repeating: 0, count: 32)
            _ = pwrite(fd, zeros, zeros.count, 0)
            _ = fsync(fd)
            close(fd)
        }
        guard rename(local.nextKEKPath, local.kekPath) == 0 else {
            throw WardenError(.io, "cannot promote the new KEK (run the rotation again): \(String(cString: strerror(errno)))", file: local.nextKEKPath)
        }
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
        return (old.id, next.id, count)
    }

    /// Destroys the keys of a VM that never came to be (a copy that failed): no ledger event.
    public func discard(vm: VMID) {
        for layer in layers(of: vm).keys { _ = try? keys.shred(KeyContext(vm: vm, layer: layer)) }
        GraceCache(vault: self).shred(vm: vm)
        rmdir(keys.vmDirectory(vm))
    }

    /// The layers of `vm` that have keys, with their wrapped keys.
    public func layers(of vm: VMID) -> [String: WrappedKey] {
        Dictionary(keys.list().filter { $0.vm == vm }.map { ($0.layer, $0.key) }) { a, _ in a }
    }
}

/// A secret handed to QEMU as a file: 0600 in the VM's 0700 run directory, read by QEMU at
/// start (`-object secret,file=…,format=raw`), then overwritten and removed — never on a
/// command line.
public enum SecretFile {
    public static func write(_ secret: SecretBytes, to path: String) throws {
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw WardenError(.io, "cannot create the secret file: \(String(cString: strerror(errno)))", file: path) }
        let ok = secret.withBytes { Glibc.write(fd, $0.baseAddress, $0.count) == $0.count }
        close(fd)
        guard ok else { destroy(path); throw WardenError(.io, "cannot write the secret file", file: path) }
    }

    /// Overwrites the file with zeros and removes it (quietly: it may be gone).
    public static func destroy(_ path: String) {
        do { try FileShred.overwriteAndRemove(path) } catch { unlink(path) }
    }
}

/// What one `unlock` released for a QEMU start: the encrypted disks' keys (by disk index) and,
/// when the VM has a vTPM and its data is under the vault, the vTPM state key.
public struct ReleasedKeys: Sendable {
    public var disks: [Int: SecretBytes]
    public var vtpm: SecretBytes?
    public init(disks: [Int: SecretBytes] = [:], vtpm: SecretBytes? = nil) { self.disks = disks; self.vtpm = vtpm }
}
