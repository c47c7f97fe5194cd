import Foundation
import Ledger
import Vault
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

extension VMRunner {
    /// LUKS's PBKDF2 time per unlock, in milliseconds (QEMU's default is 2,000). Stretching
    /// protects weak passphrases; Warden's are 256 random bits, so it would only add two
    /// seconds to every start and every offline read (docs/decisions.md).
    public static let luksIterTimeMs = 10

    /// One encrypted disk: its index, the key id recorded, and the format it had.
    public struct EncryptedDisk: Codable, Sendable {
        public var index: Int
        public var key: String
        public var formatBefore: String
        public var path: String
    }

    /// Encrypts every disk of a stopped VM: each gets its own data key (made and wrapped by the
    /// vault), and `qemu-img convert` writes it as qcow2 with LUKS (`encrypt.format=luks`) next
    /// to the original, which it then replaces (rename, after fsync). A backing chain is folded
    /// into the new image. The ledger gets the new disk records and an `encrypted` event with the
    /// key ids — never a key. If anything fails, the new images and keys are removed and the
    /// plaintext disks stay as they were.
    ///
    /// The plaintext's blocks are freed, not wiped: on a filesystem or SSD they may survive
    /// until reused (docs/vault.md).
    public func encrypt(_ vm: VMRecord, vault: Vault) throws -> [EncryptedDisk] {
        let run = runDirectory(vm.id)
        let lock = try run.lock()
        defer { withExtendedLifetime(lock) {} }
        guard run.livePid == nil else { throw WardenError(.conflict, "VM \(vm.name) is running: stop it before encrypting its disks") }
        guard vm.state != .retired else { throw WardenError(.conflict, "VM \(vm.name) is retired") }
        let disks = try store.disks(of: vm.id).sorted { $0.index < $1.index }
        guard !disks.isEmpty else { throw WardenError(.invalidArgument, "VM \(vm.name) has no disks") }
        for d in disks {
            guard ["raw", "qcow2"].contains(d.format) else {
                throw WardenError(.unsupported, "warden vm encrypt takes raw and qcow2 disks, not \(d.format)", file: d.path)
            }
            if try vault.keys.get(KeyContext(vm: vm.id, layer: Vault.diskLayer(d.index))) != nil || (try QEMUImg.isEncrypted(d.path)) {
                throw WardenError(.conflict, "disk \(d.index) of \(vm.name) is already encrypted", file: d.path)
            }
            if d.format == "qcow2", !(try QEMUImg.snapshots(d.path)).isEmpty {
                throw WardenError(.conflict, "disk \(d.index) of \(vm.name) has internal snapshots, which encrypting would drop (and leave readable in the old file): delete them first", file: d.path)
            }
        }
        var done: [(EncryptedDisk, String)] = []   // with the temporary output path
        var made: [KeyContext] = []
        func undo() {
            for (_, tmp) in done { unlink(tmp) }
            for c in made { _ = try? vault.keys.shred(c) }
        }
        let secretPath = run.path + "/encrypt-secret"
        defer { SecretFile.destroy(secretPath) }
        do {
            for d in disks {
                let context = KeyContext(vm: vm.id, layer: Vault.diskLayer(d.index))
                let (id, key) = try vault.newKey(for: context)
                made.append(context)
                try SecretFile.write(Vault.passphrase(key), to: secretPath)
                let tmp = d.path + ".warden-encrypt"
                unlink(tmp)
                done.append((EncryptedDisk(index: d.index, key: id, formatBefore: d.format, path: d.path), tmp))
                let args = ["convert", "-q", "--object", "secret,id=k0,file=\(QEMULauncher.escapeOption(secretPath)),format=raw",
                            "-f", d.format, "-O", "qcow2", "-o", QEMUImg.luksCreateOptions(secret: "k0"), d.path, tmp]
                try QEMUImg.convertEncrypting(args, output: tmp)
                SecretFile.destroy(secretPath)
                try QEMUImg.sync(tmp)
            }
        } catch {
            undo()
            throw error
        }
        // Every image is written: swap them in, then record.
        var records: [DiskRecord] = []
        for (e, tmp) in done {
            guard rename(tmp, e.path) == 0 else {
                throw WardenError(.io, "cannot replace the disk with its encrypted image (\(String(cString: strerror(errno)))); the encrypted image is \(tmp)", file: e.path)
            }
            var st = stat()
            let file: DiskRecord.FileID? = stat(e.path, &st) == 0 ? .init(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) : nil
            let old = disks.first { $0.index == e.index }
            records.append(DiskRecord(vm: vm.id, index: e.index, path: e.path, format: "qcow2", backingChain: [],
                                      fingerprint: old?.fingerprint, file: file))
        }
        let result = done.map(\.0)
        try store.atomically(family: vm.id) {
            try store.replaceDisks(of: vm.id, with: records)
            _ = try store.append(NewEvent(kind: .encrypted, vm: vm.id, host: host, payload: [
                "disks": .array(result.map { .object(["index": .number(Double($0.index)), "key": .string($0.key),
                                                       "format_before": .string($0.formatBefore), "cipher": .string("luks aes-256-xts-plain64")]) }),
            ]))
        }
        return result
    }
}

extension VMRunner {
    /// One disk's key rotation: the new key's id and the one it replaced.
    public struct RekeyedDisk: Codable, Sendable {
        public var index: Int
        public var key: String
        public var previous: String
    }

    /// Rotates the data keys of a stopped encrypted VM (`warden vault rekey`): for each disk,
    /// a new key is made (held under a `diskN-next` layer meanwhile), `qemu-img amend` adds a
    /// LUKS key slot for it, the new key replaces the old in the vault, and every other key slot
    /// is erased, so the old key opens nothing any more. `release` decides `unlock` (recorded)
    /// and returns the current keys. The ledger gets a `rekeyed` event with the key ids.
    ///
    /// Interrupted, it is finished by running it again: a leftover `-next` key is destroyed,
    /// and the slots of any key but the newest are erased then. The LUKS master key stays (the
    /// data is not rewritten): a full re-encryption is `vm copy` and `vm retire --shred`.
    public func rekey(_ vm: VMRecord, vault: Vault, release: (VMRecord, Set<Int>) throws -> [Int: SecretBytes]) throws -> [RekeyedDisk] {
        let run = runDirectory(vm.id)
        let lock = try run.lock()
        defer { withExtendedLifetime(lock) {} }
        guard run.livePid == nil else { throw WardenError(.conflict, "VM \(vm.name) is running: stop it before changing its keys") }
        guard vm.state != .retired else { throw WardenError(.conflict, "VM \(vm.name) is retired") }
        let indexes = Set(vault.layers(of: vm.id).keys.compactMap(Vault.diskIndex))
        guard !indexes.isEmpty else { throw WardenError(.notFound, "VM \(vm.name) has no keys in this vault") }
        let disks = try store.disks(of: vm.id).filter { indexes.contains($0.index) }.sorted { $0.index < $1.index }
        for i in indexes { _ = try? vault.keys.shred(KeyContext(vm: vm.id, layer: Vault.diskLayer(i) + "-next")) }
        let current = try release(vm, indexes)
        let oldFile = run.path + "/rekey-old", newFile = run.path + "/rekey-new"
        defer { SecretFile.destroy(oldFile); SecretFile.destroy(newFile) }
        var done: [RekeyedDisk] = []
        for d in disks {
            let context = KeyContext(vm: vm.id, layer: Vault.diskLayer(d.index))
            guard let old = current[d.index], let oldID = try vault.keys.get(context)?.id else {
                throw WardenError(.notFound, "disk \(d.index) of \(vm.name) has no key in this vault", file: d.path)
            }
            let pending = KeyContext(vm: vm.id, layer: context.layer + "-next")
            let (newID, key) = try vault.newKey(for: pending)
            try SecretFile.write(Vault.passphrase(old), to: oldFile)
            try SecretFile.write(Vault.passphrase(key), to: newFile)
            let before = try QEMUImg.activeKeySlots(d.path)
            let image = "driver=qcow2,file.filename=\(QEMULauncher.escapeOption(d.path)),encrypt.key-secret="
            try QEMUImg.runTimingPBKDF([
                "amend", "--object", "secret,id=old,file=\(QEMULauncher.escapeOption(oldFile)),format=raw",
                "--object", "secret,id=new,file=\(QEMULauncher.escapeOption(newFile)),format=raw",
                "--image-opts", image + "old",
                "-o", "encrypt.state=active,encrypt.new-secret=new,encrypt.iter-time=\(Self.luksIterTimeMs)",
            ])
            let added = try QEMUImg.activeKeySlots(d.path).subtracting(before)
            guard added.count == 1, let slot = added.first else {
                throw WardenError(.internal, "qemu-img amend did not add exactly one key slot", file: d.path)
            }
            // From here the new key is the disk's key; then every other slot goes.
            try vault.keys.replace(try vault.provider.wrap(key, id: newID, context: context), for: context)
            _ = try vault.keys.shred(pending)
            GraceCache(vault: vault).shred(vm: vm.id, layer: context.layer)
            SecretFile.destroy(oldFile)
            for s in try QEMUImg.activeKeySlots(d.path).sorted() where s != slot {
                _ = try QEMUImg.run(["amend", "--object", "secret,id=new,file=\(QEMULauncher.escapeOption(newFile)),format=raw",
                                     "--image-opts", image + "new", "-o", "encrypt.state=inactive,encrypt.keyslot=\(s)"])
            }
            SecretFile.destroy(newFile)
            done.append(RekeyedDisk(index: d.index, key: newID, previous: oldID))
        }
        _ = try store.append(NewEvent(kind: .rekeyed, vm: vm.id, host: host, payload: [
            "disks": .array(done.map { .object(["index": .number(Double($0.index)), "key": .string($0.key), "previous": .string($0.previous)]) }),
        ]))
        return done
    }
}

/// ``DiskCrypto`` over the vault and qemu-img: full copies and clones of encrypted VMs get keys
/// of their own. Keys reach qemu-img as 0600 files in the vault's 0700 directory, overwritten
/// and removed afterwards, never on a command line.
public struct VaultDiskCrypto: DiskCrypto {
    public let vault: Vault
    /// Decides `unlock` (recorded) and returns the data keys (``WardenServices/KeyRelease``).
    public let release: @Sendable (VMRecord, Set<Int>) throws -> [Int: SecretBytes]

    public init(vault: Vault, release: @escaping @Sendable (VMRecord, Set<Int>) throws -> [Int: SecretBytes]) {
        self.vault = vault; self.release = release
    }

    public func passphrases(_ vm: VMRecord, disks: Set<Int>) throws -> [Int: SecretBytes] {
        try release(vm, disks).mapValues(Vault.passphrase)
    }

    public func reencrypt(source: VMRecord, disk: DiskRecord, copy: VMID, output: String) throws -> (key: String, passphrase: SecretBytes) {
        guard let old = try release(source, [disk.index])[disk.index] else {
            throw WardenError(.notFound, "disk \(disk.index) of \(source.name) is encrypted and this vault has no key for it", file: disk.path)
        }
        try FileDescriptorIO.ensurePrivateDirectory(vault.directory, what: "the vault directory")
        let srcSecret = vault.directory + "/reencrypt-src-\(getpid())"
        defer { SecretFile.destroy(srcSecret) }
        try SecretFile.write(Vault.passphrase(old), to: srcSecret)
        return try withNewKey(vm: copy, index: disk.index, output: output) { dstSecret in
            ["--object", "secret,id=src,file=\(QEMULauncher.escapeOption(srcSecret)),format=raw",
             "--image-opts", "driver=qcow2,file.filename=\(QEMULauncher.escapeOption(disk.path)),encrypt.format=luks,encrypt.key-secret=src"]
        }
    }

    public func encrypt(plain: String, format: String, vm: VMID, index: Int, output: String) throws -> (key: String, passphrase: SecretBytes) {
        try FileDescriptorIO.ensurePrivateDirectory(vault.directory, what: "the vault directory")
        return try withNewKey(vm: vm, index: index, output: output) { _ in ["-f", format, plain] }
    }

    public func discard(_ vm: VMID) { vault.discard(vm: vm) }

    /// Makes a key for (`vm`, `index`) and runs `qemu-img convert` with `input` arguments to
    /// `output`, encrypted under it; on failure the key is destroyed and the output removed.
    func withNewKey(vm: VMID, index: Int, output: String, input: (_ secretFile: String) -> [String]) throws -> (key: String, passphrase: SecretBytes) {
        let context = KeyContext(vm: vm, layer: Vault.diskLayer(index))
        let (id, key) = try vault.newKey(for: context)
        let dstSecret = vault.directory + "/encrypt-dst-\(getpid())"
        defer { SecretFile.destroy(dstSecret) }
        let passphrase = Vault.passphrase(key)
        do {
            try SecretFile.write(passphrase, to: dstSecret)
            unlink(output)
            try QEMUImg.convertEncrypting(["convert", "-q", "--object", "secret,id=dst,file=\(QEMULauncher.escapeOption(dstSecret)),format=raw"]
                                          + input(dstSecret) + ["-O", "qcow2", "-o", QEMUImg.luksCreateOptions(secret: "dst"), output], output: output)
            try QEMUImg.sync(output)
        } catch {
            unlink(output)
            _ = try? vault.keys.shred(context)
            throw error
        }
        return (id, passphrase)
    }
}

extension QEMUImg {
    /// qemu-img's `-o` for a new LUKS-encrypted qcow2 whose passphrase is secret object `secret`.
    public static func luksCreateOptions(secret: String) -> String {
        "encrypt.format=luks,encrypt.key-secret=\(secret),encrypt.iter-time=\(VMRunner.luksIterTimeMs)"
    }

    /// fsync of a finished image.
    public static func sync(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0, fsync(fd) == 0 else {
            if fd >= 0 { close(fd) }
            throw WardenError(.io, "cannot sync the encrypted image", file: path)
        }
        close(fd)
    }

    /// `qemu-img convert` to a LUKS-encrypted output. QEMU times PBKDF2 with the thread's CPU
    /// clock to size LUKS's iterations, and when its first probe measures 0 ms (a coarse clock)
    /// it gives up: that one failure is retried, up to 8 attempts.
    public static func convertEncrypting(_ args: [String], output: String) throws {
        try runTimingPBKDF(args) { unlink(output) }
    }

    /// Runs a qemu-img command that sizes LUKS's PBKDF2 (convert, create, amend), retrying
    /// QEMU's coarse-clock failure up to 8 attempts, `beforeRetry` cleaning up in between.
    public static func runTimingPBKDF(_ args: [String], beforeRetry: () -> Void = {}) throws {
        for attempt in 1... {
            do { _ = try run(args); return } catch let e as WardenError where e.message.contains("Unable to get accurate CPU usage") && attempt < 8 {
                beforeRetry()
            }
        }
    }

    /// The indexes of the active LUKS key slots of an encrypted qcow2 (`qemu-img info`).
    public static func activeKeySlots(_ path: String) throws -> Set<Int> {
        let out = try run(["info", "-U", "--output=json", path])
        guard let doc = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any],
              let specific = doc["format-specific"] as? [String: Any], let data = specific["data"] as? [String: Any],
              let encrypt = data["encrypt"] as? [String: Any], let slots = encrypt["slots"] as? [[String: Any]] else {
            throw WardenError(.corrupt, "qemu-img info shows no LUKS key slots", file: path)
        }
        return Set(slots.enumerated().compactMap { ($0.element["active"] as? Bool) == true ? $0.offset : nil })
    }

    /// Whether `qemu-img info` says the image is encrypted.
    public static func isEncrypted(_ path: String) throws -> Bool {
        let out = try run(["info", "-U", "--output=json", path])
        guard let doc = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] else { return false }
        return doc["encrypted"] as? Bool ?? false
    }
}
