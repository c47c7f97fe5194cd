import ArgumentParser
import Foundation
import Hypervisor
import Ledger
import Vault
import WardenServices
import Storage
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// `warden vm encrypt VM`: the VM's disks as qcow2 with LUKS, each with its own data key.
struct VMEncrypt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encrypt",
        abstract: "Encrypt a stopped VM's disks (qcow2 with LUKS, one data key per disk, wrapped by the vault's KEK).",
        discussion: """
        Each disk is converted by qemu-img to an encrypted qcow2 beside it, which then replaces it. \
        The keys stay in the vault (beside the database, or $WARDEN_VAULT); the ledger records their \
        ids. From then on every `warden vm start` decides `unlock` through policy before a key is \
        released (docs/vault.md).
        
        Example:
          warden vm encrypt web
        """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM.") var vm: String
    @Flag(help: "JSON output.") var json = false

    func run() throws {
        let store = try database.open(create: false)
        let record = try store.resolveVM(vm)
        let done = try VMRun.runner(store).encrypt(record, vault: VMRun.vault(store))
        struct Doc: Encodable { var schema = "warden.vm-encrypt/v1"; var vm: String; var disks: [VMRunner.EncryptedDisk] }
        try Output.render(Doc(vm: record.id.description, disks: done), json: json) {
            for d in done { Output.stdout.line("encrypted disk \(d.index) of \(record.name) (key \(d.key)): \(d.path)") }
        }
    }
}

/// `warden vault`: the keys of encrypted VMs.
struct VaultCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vault",
        abstract: "The keys of encrypted VMs: status, rekeying, KEK rotation, break-glass approvals and crypto-shredding (docs/vault.md).",
        subcommands: [Status.self, Shred.self, RotateKEK.self, Rekey.self, Approve.self, BenchUnlock.self])

    struct Rekey: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rekey",
            abstract: "Rotate a stopped VM's data keys: new LUKS key slots, the old ones erased (docs/vault.md).",
            discussion: """
                Decides `unlock` first (recorded; exit 3 when denied). The old keys open nothing afterwards; the ledger records the new key ids. The data is not rewritten: the LUKS master key stays.
                
                Example:
                  warden vault rekey web
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var policyOptions: PolicyOptions
        @Argument(help: "The VM.") var vm: String
        @Flag(help: "JSON output.") var json = false
        func run() throws {
            let store = try database.open(create: false)
            let record = try store.resolveVM(vm)
            let release = try KeyRelease(service: VMService(store: store, policy: policyOptions.source, note: { Output.note($0) }), vault: VMRun.vault(store))
            let done = try VMRun.runner(store, policy: policyOptions.source).rekey(record, vault: release.vault) { try release.release($0, disks: $1) }
            struct Doc: Encodable { var schema = "warden.vault-rekey/v1"; var vm: String; var disks: [VMRunner.RekeyedDisk] }
            try Output.render(Doc(vm: record.id.description, disks: done), json: json) {
                for d in done { Output.stdout.line("disk \(d.index) of \(record.name): key \(d.previous) replaced by \(d.key)") }
            }
        }
    }

    struct Approve: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "approve",
            abstract: "Approve a break-glass release of a VM's keys, as a second vault admin (recorded; docs/vault.md).",
            discussion: """
                When vault.yaml asks for approvals, a `--break-glass` start succeeds only after that many other admins approved within the window. The approver is the local user (from the real uid).
                
                Example:
                  warden vault approve web --reason "incident 4711"
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var policyOptions: PolicyOptions
        @Argument(help: "The VM.") var vm: String
        @Option(help: "Why (recorded).") var reason: String
        func validate() throws {
            guard (1...500).contains(reason.count) else { throw ValidationError("--reason is 1 to 500 characters") }
        }
        func run() throws {
            let store = try database.open(create: false)
            let record = try store.resolveVM(vm)
            let release = try KeyRelease(service: VMService(store: store, policy: policyOptions.source, note: { Output.note($0) }), vault: VMRun.vault(store))
            let e = try release.approve(record, reason: reason)
            Output.stdout.line("approved a break-glass release of \(record.name)'s keys as \(e.actor) (event \(e.seq))")
        }
    }

    /// `warden vault bench-unlock VM`: what a start pays to release keys (scripts/bench-vault).
    struct BenchUnlock: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench-unlock",
            abstract: "Time the unlock decision (recorded) and the key unwrap of an encrypted VM, as a start does them.",
            discussion: """
                Example:
                  warden vault bench-unlock web --rounds 100
                """,
            shouldDisplay: false)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var policyOptions: PolicyOptions
        @Argument(help: "The VM.") var vm: String
        @Option(help: "Rounds.") var rounds = 200

        func run() throws {
            let store = try database.open(create: false)
            let record = try store.resolveVM(vm)
            let release = try KeyRelease(service: VMService(store: store, policy: policyOptions.source), vault: VMRun.vault(store))
            let disks = try release.encryptedDisks(of: record)
            guard !disks.isEmpty else { throw WardenError(.invalidArgument, "VM \(record.name) has no encrypted disks") }
            var decide: [UInt64] = [], unwrap: [UInt64] = [], total: [UInt64] = []
            for _ in 0..<max(1, rounds) {
                let t0 = DispatchTime.now().uptimeNanoseconds
                try release.decideForBenchmark(record, layers: disks.sorted().map(Vault.diskLayer))
                let t1 = DispatchTime.now().uptimeNanoseconds
                for i in disks { _ = try release.vault.key(for: KeyContext(vm: record.id, layer: Vault.diskLayer(i))) }
                let t2 = DispatchTime.now().uptimeNanoseconds
                decide.append(t1 - t0); unwrap.append(t2 - t1); total.append(t2 - t0)
            }
            func line(_ name: String, _ xs: [UInt64]) -> String {
                let s = xs.sorted()
                return String(format: "%@ p50 %.2f ms, p90 %.2f ms", name, Double(s[s.count / 2]) / 1e6, Double(s[s.count * 9 / 10]) / 1e6)
            }
            Output.stdout.line("\(rounds) releases of \(disks.count) key(s): " + [line("decision (recorded)", decide), line("unwrap", unwrap), line("total", total)].joined(separator: "; "))
        }
    }

    struct RotateKEK: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-kek",
            abstract: "Replace the vault's key-encryption key: every data key re-wrapped, the old KEK destroyed; no disk is touched.",
            discussion: """
                Example:
                  warden vault rotate-kek
                """)
        @OptionGroup var database: DatabaseOptions
        @Flag(help: "JSON output.") var json = false
        func run() throws {
            let store = try database.open(create: false)
            let r = try VMRun.vault(store).rotateKEK()
            struct Doc: Encodable { var schema = "warden.vault-rotate/v1"; var oldKek: String; var newKek: String; var keys: Int }
            try Output.render(Doc(oldKek: r.old, newKek: r.new, keys: r.keys), json: json) {
                Output.stdout.line("KEK \(r.old) replaced by \(r.new); \(r.keys) keys re-wrapped")
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Keys by VM and layer, with their age and last release.",
            discussion: """
                Example:
                  warden vault status
                """)
        @OptionGroup var database: DatabaseOptions
        @Flag(help: "JSON output.") var json = false

        struct Row: Encodable {
            var vm: String
            var name: String
            var layer: String
            var key: String
            var provider: String
            var kek: String
            var createdAt: Date
            /// The last `unlock` decision that allowed a release (nil: never released).
            var lastRelease: Date?
            /// If the key provider vanished now: `locks`, or `grace until …` (a copy kept on this host).
            var withoutProvider: String
        }

        func run() throws {
            let store = try database.open(create: false)
            let vault = VMRun.vault(store)
            var rows: [Row] = []
            var cache: [VMID: (String, Date?)] = [:]
            for (vm, layer, key) in vault.keys.list() {
                if cache[vm] == nil {
                    let name = (try? store.vm(vm))?.name ?? "(not in the ledger)"
                    let release = (try? store.events(of: vm))?.last(where: \.isKeyRelease)?.time
                    cache[vm] = (name, release)
                }
                let grace = Vault.diskIndex(layer) == nil ? nil : GraceCache(vault: vault).until(KeyContext(vm: vm, layer: layer)).flatMap { $0 > Date() ? $0 : nil }
                rows.append(Row(vm: vm.description, name: cache[vm]!.0, layer: layer, key: key.id, provider: key.provider, kek: key.kek,
                                createdAt: key.createdAt, lastRelease: cache[vm]!.1,
                                withoutProvider: grace.map { "grace until " + ISO8601DateFormatter().string(from: $0) } ?? "locks"))
            }
            struct Doc: Encodable { var schema = "warden.vault-status/v1"; var keys: [Row] }
            try Output.render(Doc(keys: rows), json: json) {
                if rows.isEmpty { Output.stdout.line("no keys"); return }
                let f = ISO8601DateFormatter()
                for r in rows {
                    Output.stdout.line("\(r.name)  \(r.layer)  \(r.key)  \(r.provider):\(r.kek)  created \(f.string(from: r.createdAt))  last released \(r.lastRelease.map { f.string(from: $0) } ?? "never")  without provider: \(r.withoutProvider)")
                }
            }
        }
    }

    struct Shred: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "shred",
            abstract: "Destroy a VM's keys: its encrypted disks and snapshots become unreadable, for good.",
            discussion: """
                Each wrapped key file is overwritten and removed; the ledger records the key ids destroyed. There is no undo.
                
                Example:
                  warden vault shred web-old --yes
                """)
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The VM.") var vm: String
        @Flag(help: "Confirm: the data cannot be recovered afterwards.") var yes = false
        @Flag(help: "JSON output.") var json = false

        func run() throws {
            guard yes else { throw ValidationError("shredding destroys the VM's data for good: add --yes") }
            let store = try database.open(create: false)
            let record = try store.resolveVM(vm)
            guard VMRun.runner(store).status(record).state != "running" else {
                throw WardenError(.conflict, "VM \(record.name) is running: stop it before shredding its keys")
            }
            let destroyed = try VMRun.vault(store).shred(vm: record, store: store)
            struct Doc: Encodable { var schema = "warden.vault-shred/v1"; var vm: String; var keys: [String] }
            try Output.render(Doc(vm: record.id.description, keys: destroyed.map(\.1)), json: json) {
                for (layer, id) in destroyed { Output.stdout.line("shredded key \(id) (\(layer)) of \(record.name)") }
            }
        }
    }
}

/// `--key-from file:PATH`: the passphrase of an encrypted image (qcow2 with LUKS), read from a
/// file (one trailing newline dropped; at most 1 KiB), never from the command line. Where the
/// command has a ledger (`scan`), `--key-from vault`: the key of the ledger VM that owns the
/// disk, released by an `unlock` decision (recorded).
struct KeyFromOption: ParsableArguments {
    @Option(name: .customLong("key-from"), help: ArgumentHelp("The key of an encrypted image or LUKS volume: file:PATH (a file holding its passphrase), or vault (the key of the ledger VM that owns the disk, released by an unlock decision).", valueName: "file:path|vault"))
    var keyFrom: String?

    func validate() throws {
        if let keyFrom, keyFrom != "vault", !keyFrom.hasPrefix("file:") || keyFrom.count <= 5 {
            throw ValidationError("--key-from takes file:PATH or vault")
        }
    }

    /// The key for `path`: from the file, or from the vault through an `unlock` decision for
    /// the VM that owns the disk. Nil without --key-from, or for a disk that is not encrypted.
    func passphrase(forImage path: String, ledger: SQLiteLedger) throws -> SecretBytes? {
        guard keyFrom == "vault" else { return try fileKey() }
        let abs = URL(fileURLWithPath: path).standardizedFileURL.path
        var st = stat()
        let file: DiskRecord.FileID? = stat(abs, &st) == 0 ? .init(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) : nil
        guard let vm = try ledger.vms(withDisk: abs, file: file).first(where: { $0.state != .retired }),
              let disk = try ledger.disks(of: vm.id).first(where: { $0.path == abs || (file != nil && $0.file == file) }) else {
            throw WardenError(.notFound, "no VM in the ledger has this disk, so the vault has no key for it", file: path)
        }
        let release = try KeyRelease(service: VMService(store: ledger, note: { Output.note($0) }), vault: VMRun.vault(ledger))
        guard try release.vault.keys.get(KeyContext(vm: vm.id, layer: Vault.diskLayer(disk.index))) != nil else { return nil }   // not encrypted by Warden
        return try release.release(vm, disks: [disk.index])[disk.index].map(Vault.passphrase)
    }

    /// The key for `path` in commands without a ledger option: `vault` takes the ledger at the
    /// usual place (`$WARDEN_DB`, `$WARDEN_HOME`…), which must exist, and its vault.
    func passphrase(forImage path: String) throws -> SecretBytes? {
        guard keyFrom == "vault" else { return try fileKey() }
        let ledger = try SQLiteLedger.open(WardenDatabase.defaultPath(explicit: nil), .existing)
        return try passphrase(forImage: path, ledger: ledger)
    }

    func fileKey() throws -> SecretBytes? {
        guard let keyFrom, keyFrom != "vault" else { return nil }
        let path = String(keyFrom.dropFirst(5))
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw WardenError(.notFound, "cannot open the key file: \(String(cString: strerror(errno)))", file: path) }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 1025)
        defer { explicit_bzero(&buf, buf.count) }
        let n = read(fd, &buf, buf.count)
        guard n > 0, n <= 1024 else { throw WardenError(.invalidArgument, "the key file is empty or over 1 KiB", file: path) }
        var end = n
        if buf[end - 1] == 0x0a { end -= 1 }
        guard end > 0 else { throw WardenError(.invalidArgument, "the key file holds only a newline", file: path) }
        return SecretBytes(copying: buf[0..<end])
    }
}
