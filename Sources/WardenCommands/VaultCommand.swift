import ArgumentParser
import Foundation
import Hypervisor
import Ledger
import Vault
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
        abstract: "The keys of encrypted VMs: status and crypto-shredding (docs/vault.md).",
        subcommands: [Status.self, Shred.self])

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Keys by VM and layer, with their age and last release.")
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
        }

        func run() throws {
            let store = try database.open(create: false)
            let vault = VMRun.vault(store)
            var rows: [Row] = []
            var cache: [VMID: (String, Date?)] = [:]
            for (vm, layer, key) in vault.keys.list() {
                if cache[vm] == nil {
                    let name = (try? store.vm(vm))?.name ?? "(not in the ledger)"
                    let release = (try? store.events(of: vm))?.last {
                        $0.kind == .policyDecision && $0.payload["op"] == .string("unlock") && $0.payload["effect"] != .string("deny")
                    }?.time
                    cache[vm] = (name, release)
                }
                rows.append(Row(vm: vm.description, name: cache[vm]!.0, layer: layer, key: key.id, provider: key.provider, kek: key.kek,
                                createdAt: key.createdAt, lastRelease: cache[vm]!.1))
            }
            struct Doc: Encodable { var schema = "warden.vault-status/v1"; var keys: [Row] }
            try Output.render(Doc(keys: rows), json: json) {
                if rows.isEmpty { Output.stdout.line("no keys"); return }
                let f = ISO8601DateFormatter()
                for r in rows {
                    Output.stdout.line("\(r.name)  \(r.layer)  \(r.key)  \(r.provider):\(r.kek)  created \(f.string(from: r.createdAt))  last released \(r.lastRelease.map { f.string(from: $0) } ?? "never")")
                }
            }
        }
    }

    struct Shred: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Destroy a VM's keys: its encrypted disks and snapshots become unreadable, for good.",
            discussion: "Each wrapped key file is overwritten and removed; the ledger records the key ids destroyed. There is no undo.")
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
/// file (one trailing newline dropped; at most 1 KiB), never from the command line.
struct KeyFromOption: ParsableArguments {
    @Option(name: .customLong("key-from"), help: ArgumentHelp("The key of an encrypted image: file:PATH (a file holding its passphrase).", valueName: "file:path"))
    var keyFrom: String?

    func validate() throws {
        if let keyFrom, !keyFrom.hasPrefix("file:") || keyFrom.count <= 5 {
            throw ValidationError("--key-from takes file:PATH")
        }
    }

    func passphrase() throws -> SecretBytes? {
        guard let keyFrom else { return nil }
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
