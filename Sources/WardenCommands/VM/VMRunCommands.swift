import ArgumentParser
import Foundation
import Advisories
import DiskImage
import Hypervisor
import Ledger
import WardenServices
import Policy
import WardenCore
import WardenNetwork
import Vault
#if canImport(Glibc)
import Glibc
import Storage
import AdvisoryStorage
#endif

// `warden vm start|stop|status|console|snapshot|rollback|state-server`: running ledger VMs on
// QEMU on this host. The work is in `Hypervisor.VMRunner`; these are thin wrappers.

/// Builds the runner for commands: the ledger, the counters, the policy gate, the state server.
enum VMRun {
    static func runner(_ store: SQLiteLedger, policy: PolicyGate.Source = .defaultDirectory,
                       reexposure: [RollbackImpact.Vulnerability]? = nil, forceStop: Bool = false, breakGlass: String? = nil) -> VMRunner {
        let service = VMService(store: store, policy: policy, note: { Output.note($0) })
        let findings = reexposure?.map { ReexposedFinding(id: $0.id, severity: $0.severity, package: $0.package) }
        var runner = VMRunner(store: store, counters: CounterStore(database: store.database),
                              gate: service.lifecycleGate(reexposure: findings, forceStop: forceStop),
                              stateServerCommand: { vm, announce in
                                  var argv = [selfExecutable, "vm", "state-server", vm.description, "--db", store.database.path]
                                  if announce { argv.append("--announce") }
                                  return argv
                              })
        let vault = Self.vault(store)
        runner.unlock = { vm, disks, vtpm in
            // Each start that needs a key decides `unlock` through policy, recorded, before any
            // key is unwrapped (KeyRelease); a malformed vault configuration fails closed.
            let release = try KeyRelease(service: service, vault: vault, breakGlass: breakGlass)
            return try release.release(vm, disks: try release.encryptedDisks(of: vm).filter { disks.indices.contains($0) }, vtpm: vtpm)
        }
        let net = NetworkService(ledger: store, policyDirectory: policy.directory)
        runner.enforceNetwork = { vm, interfaces in
            if let n = try net.enforceAtStart(vm, interfaces: interfaces) {
                Output.note("\(vm.name): network \(n.state.rawValue) on \(n.interfaces.joined(separator: ", ")) (\(n.reason))")
            }
        }
        return runner
    }

    static func vulnerabilityLookup(_ store: SQLiteLedger) -> RollbackImpact.VulnerabilityLookup? {
        RollbackImpact.advisoryLookup(SQLiteAdvisoryStore(store.database))
    }

    /// The vault beside the database (`$WARDEN_VAULT` overrides): docs/vault.md.
    static func vault(_ store: SQLiteLedger) -> Vault { Vault.beside(database: store.database.path) }

    /// The VM workflows with this ledger's vault behind them: copies and clones of encrypted
    /// VMs release the source's keys by policy and get keys of their own (docs/vault.md).
    static func service(_ store: SQLiteLedger, policy: PolicyGate.Source = .defaultDirectory) -> VMService {
        var service = VMService(store: store, policy: policy, note: { Output.note($0) })
        service.keyPool = KeysCommand.pool(database: store.database.path)
        let dbPath = store.database.path
        service.keyPoolUsed = {
            // Refill in the background, detached: this clone does not wait for it.
            try? VMRunner.spawnDetached([selfExecutable, "keys", "refill", "--quiet", "--db", dbPath], log: "/dev/null")
        }
        let vault = vault(store), deciding = service
        service.crypto = VaultDiskCrypto(vault: vault, release: { try KeyRelease(service: deciding, vault: vault).release($0, disks: $1) })
        return service
    }

    /// This warden binary (the state server runs as `warden vm state-server`).
    static var selfExecutable: String {
        CurrentProcess.executable
    }
}

struct VMStart: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start",
        abstract: "Start a VM on QEMU in the background (vmgenid = the ledger's generation, virtio-rng, state port, -sandbox on).",
        discussion: """
            Examples:
              warden vm start web --memory 1024
              warden vm start web --kernel vmlinuz --initrd initrd.gz --accel tcg --bridge br0
            """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var policyOptions: PolicyOptions
    @Argument(help: "The VM (id, unique id prefix, or name).") var vm: String
    @Option(help: "Memory in MiB.") var memory: Int = 512
    @Option(help: "Virtual CPUs.") var cpus: Int = 1
    @Option(help: "Direct kernel boot: the kernel image.") var kernel: String?
    @Option(help: "Direct kernel boot: the initrd.") var initrd: String?
    @Option(help: "Direct kernel boot: the kernel command line.") var append: String?
    @Option(help: "Accelerator: auto (KVM when /dev/kvm works, else TCG), kvm, tcg.") var accel: String = "auto"
    @Option(help: "Give the guest a NIC on a tap joined to this bridge (the tap is made when missing, removed at stop).") var bridge: String?
    @Flag(name: .customLong("no-confine"), help: "Run QEMU as root, without its own uid, chroot, namespaces and cgroup (docs/vmm-hardening.md; default: confined when run as root).")
    var noConfine = false
    @Flag(help: "Give the guest its own TPM 2.0 (swtpm, confined like QEMU; state kept per VM, fresh for clones, restored by rollbacks).") var tpm = false
    @Flag(help: "Boot UEFI firmware (OVMF) with the VM's own variable store (kept per VM, copied by clones, restored by rollbacks).") var uefi = false
    @Option(name: .customLong("break-glass"), help: ArgumentHelp("An encrypted VM whose unlock policy denies: release its keys anyway, as a vault admin, with this reason (recorded; docs/vault.md).", valueName: "reason"))
    var breakGlass: String?
    @Option(help: "The NIC's host tap device (default wv<8 hex digits of the VM id> when --bridge is given).") var tap: String?
    @Option(help: "The NIC's MAC address (default 52:54:00 and bytes of the VM id).") var mac: String?

    func validate() throws {
        if mac != nil && bridge == nil && tap == nil { throw ValidationError("--mac needs --bridge or --tap") }
        guard (16...1 << 20).contains(memory) else { throw ValidationError("--memory must be 16 to 1048576 MiB") }
        guard (1...64).contains(cpus) else { throw ValidationError("--cpus must be 1 to 64") }
        if append != nil && kernel == nil { throw ValidationError("--append needs --kernel") }
        if initrd != nil && kernel == nil { throw ValidationError("--initrd needs --kernel") }
    }

    func run() throws {
        let store = try database.open(create: false)
        let record = try store.resolveVM(vm)
        var o = LaunchOptions()
        o.memoryMiB = memory; o.cpus = cpus; o.accel = accel
        if noConfine { o.confined = false }
        if tpm { o.tpm = true }
        if uefi { o.uefi = true }
        for (path, what) in [(kernel, "kernel"), (initrd, "initrd")] {
            if let path, !FileManager.default.isReadableFile(atPath: path) {
                throw WardenError(.notFound, "the \(what) cannot be read", file: path)
            }
        }
        o.kernel = kernel.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        o.initrd = initrd.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        o.append = append
        if bridge != nil || tap != nil {
            o.nics = [try NIC(tap: tap ?? NIC.defaultTap(for: record.id), bridge: bridge, mac: mac ?? NIC.mac(for: record.id)).validated()]
        }
        let r = try VMRun.runner(store, policy: policyOptions.source, breakGlass: breakGlass).start(record, options: o)
        if r.recoveredStale { Output.note("\(record.name): recovered a stale run (its QEMU had died); recorded it as stopped") }
        Output.stdout.line("started \(record.name) (pid \(r.pid), \(r.accel), generation \(record.generation.uuidString.lowercased()))")
    }
}

struct VMStop: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Stop a VM (policy-checked): ACPI powerdown, wait, then QMP quit, then SIGKILL.",
            discussion: """
                Example:
                  warden vm stop web --timeout 30
                """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var policyOptions: PolicyOptions
    @Argument(help: "The VM.") var vm: String
    @Option(help: "Seconds to wait for the guest to power down before quitting QEMU.") var timeout: Double = 30
    @Flag(help: "Stop even when policy denies it; the override is recorded in the ledger (docs/policy.md).") var force = false
    func validate() throws { guard timeout >= 0 && timeout <= 3600 else { throw ValidationError("--timeout must be 0 to 3600") } }
    func run() throws {
        let store = try database.open(create: false)
        let record = try store.resolveVM(vm)
        let r = try VMRun.runner(store, policy: policyOptions.source, forceStop: force).stop(record, timeout: timeout)
        Output.stdout.line(r.how == "stale" ? "\(record.name) was not running (stale run recovered)" : "stopped \(record.name) (\(r.how))")
    }
}

struct VMStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Whether a VM runs here, its pid and generation.",
        discussion: """
            Example:
              warden vm status web
            """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM.") var vm: String
    @Flag(help: "JSON output (schema: docs/vm-lifecycle.md).") var json = false
    func run() throws {
        let store = try database.open(create: false)
        let record = try store.resolveVM(vm)
        let s = VMRun.runner(store).status(record)
        struct Doc: Encodable { var schema = "warden.vm-status/v1"; var status: VMRunner.Status }
        try Output.render(Doc(status: s), json: json) {
            Output.stdout.line("vm:          \(s.name) (\(s.vm))")
            Output.stdout.line("state:       \(s.state)" + (s.pid.map { " (pid \($0))" } ?? "") + (s.qemuStatus.map { ", QEMU \($0)" } ?? ""))
            Output.stdout.line("generation:  \(s.generation)")
            if let a = s.accel { Output.stdout.line("accel:       \(a)") }
            if let p = s.stateServerPid { Output.stdout.line("state port:  served (pid \(p))") }
            Output.stdout.line("console log: \(s.serialLog)")
        }
    }
}

struct VMConsole: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "console", abstract: "Print the VM's serial console log.",
        discussion: """
            Example:
              warden vm console web --follow
            """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM.") var vm: String
    @Flag(name: .shortAndLong, help: "Keep printing new output while the VM runs.") var follow = false
    func run() throws {
        let store = try database.open(create: false)
        let record = try store.resolveVM(vm)
        let run = RunDirectory(vm: record.id)
        guard let fh = FileHandle(forReadingAtPath: run.serialLog) else {
            throw WardenError(.notFound, "no console log (the VM was never started here)", file: run.serialLog)
        }
        while true {
            let data = fh.readData(ofLength: 1 << 16)
            if !data.isEmpty {
                // Guest output is hostile: escape control characters except newline and tab.
                let text = String(decoding: data, as: UTF8.self).unicodeScalars.map { u -> String in
                    if u.value == 0x0A || u.value == 0x09 { return String(u) }
                    if u.value < 0x20 || u.value == 0x7F { return u.value == 0x0D ? "" : String(format: "\\x%02x", u.value) }
                    return String(u)
                }.joined()
                try Output.stdout.write(Array(text.utf8))
                Output.stdout.flush()
                continue
            }
            if !follow || run.livePid == nil { break }
            usleep(200_000)
        }
    }
}

struct VMSnapshot: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Take an internal qcow2 snapshot (live through QMP, or with qemu-img while stopped).",
            discussion: """
                Example:
                  warden vm snapshot web before-upgrade
                """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var policyOptions: PolicyOptions
    @Argument(help: "The VM.") var vm: String
    @Argument(help: "The snapshot name.") var name: String
    func run() throws {
        let store = try database.open(create: false)
        let record = try store.resolveVM(vm)
        let s = try VMRun.runner(store, policy: policyOptions.source).snapshot(record, name: name)
        Output.stdout.line("snapshot \(s.name) of \(record.name) taken (generation \(s.generation.uuidString.lowercased()))")
    }
}

/// `warden vm state-server VM`: the host end of the state port (started by `vm start`; not for users).
struct VMStateServer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "state-server", abstract: "Serve a running VM's state port (started by vm start).",
            discussion: """
                Example:
                  warden vm state-server web --announce
                """, shouldDisplay: false)
    @OptionGroup var database: DatabaseOptions
    @Argument var vm: String
    @Flag var announce = false
    func run() throws {
        let store = try database.open(create: false)
        let record = try store.resolveVM(vm)
        let run = RunDirectory(vm: record.id)
        try "\(getpid())\n".write(toFile: run.stateServerPidFile, atomically: true, encoding: .utf8)
        let id = record.id
        let server = StateServer(vm: id, socketPath: run.stateSocket,
                                 generation: { guard let v = try store.vm(id) else { throw WardenError(.notFound, "VM gone") }; return v.generation },
                                 counters: CounterStore(database: store.database), announceAtStart: announce,
                                 log: { FileHandle.standardError.write(Data("\(Date()) \($0)\n".utf8)) })
        try server.run()
    }
}

struct VMRollback: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Roll a VM back to a snapshot: impact report, policy, new generation, restart with the new vmgenid.",
        discussion: """
            Examples:
              warden vm rollback web before-upgrade --dry-run
              warden vm rollback web before-upgrade
            """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var policyOptions: PolicyOptions
    @Argument(help: "The VM.") var vm: String
    @Argument(help: "The snapshot name.") var name: String
    @Flag(help: "Only print the impact report.") var dryRun = false
    @Flag(help: "JSON output (the impact report; schema in docs/vm-lifecycle.md).") var json = false

    func run() throws {
        let store = try database.open(create: false)
        let record = try store.resolveVM(vm)
        guard let boot = try store.disks(of: record.id).min(by: { $0.index < $1.index }) else {
            throw WardenError(.invalidArgument, "VM \(record.name) has no disks")
        }
        var impact: RollbackImpact?
        do {
            impact = try RollbackImpact.compute(disk: boot.path, format: ImageFormat(rawValue: boot.format), snapshot: name,
                                                vulnerabilities: VMRun.vulnerabilityLookup(store))
        } catch let e as WardenError {
            if dryRun { throw e }
            // Fail closed in policy: without a report, a `reexposes` rule sees "unknown".
            Output.note("no rollback impact report: \(e.description)")
        }
        if let impact {
            if json { Output.stdout.line(try Output.json(impact)) } else { impact.lines.forEach { Output.stdout.line($0) } }
            Output.stdout.flush()
        }
        if dryRun { return }
        // Without advisory data the re-exposure is unknown (nil), never "none".
        let reexposure = impact.flatMap { $0.advisoriesChecked ? $0.reexposedVulnerabilities : nil }
        let r = try VMRun.runner(store, policy: policyOptions.source, reexposure: reexposure).rollback(record, name: name)
        let line = "rolled back \(record.name) to \(name): generation \(r.oldGeneration.uuidString.lowercased()) -> \(r.newGeneration.uuidString.lowercased())"
            + (r.restarted ? " (QEMU restarted with the new vmgenid)" : "")
        if json { Output.note(line) } else { Output.stdout.line(line) }
    }
}

/// `warden vm tpm VM`: the VM's vTPM as the host sees it.
struct VMTPM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tpm", abstract: "Show a VM's vTPM: whether it has one, its endorsement key, and the snapshots that carry its state.",
            discussion: """
                Example:
                  warden vm tpm web
                """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var policyOptions: PolicyOptions
    @Argument(help: "The VM.") var vm: String
    @Flag(help: "JSON output.") var json = false

    func run() throws {
        let store = try database.open(create: false)
        let record = try store.resolveVM(vm)
        let v = VTPM(vm: record.id)
        let snapshots = try store.snapshots(of: record.id).map(\.name).filter {
            FileManager.default.fileExists(atPath: v.directory + "/snapshots/" + $0 + "/" + VTPM.stateFileName)
        }
        // A vTPM under the vault is read with its key, released by an `unlock` decision (recorded).
        let release = try KeyRelease(service: VMService(store: store, policy: policyOptions.source, note: { Output.note($0) }), vault: VMRun.vault(store))
        let encrypted = try v.exists && release.vtpmEncrypted(record)
        let key = encrypted ? try release.release(record, disks: [], vtpm: true).vtpm : nil
        let ek = try v.endorsementKey(key: key)
        struct Out: Encodable { var vm: String; var name: String; var vtpm: Bool; var state: String?; var endorsementKeySha256: String?; var snapshots: [String] }
        let out = Out(vm: record.id.description, name: record.name, vtpm: v.exists, state: v.exists ? v.stateFile : nil,
                      endorsementKeySha256: ek?.fingerprint, snapshots: snapshots)
        try Output.render(out, json: json) {
            guard v.exists else { Output.stdout.line("\(oneLine(record.name)): no vTPM (one is made on the first `vm start --tpm`)"); return }
            Output.stdout.line("\(oneLine(record.name)): vTPM state \(v.stateFile)")
            if let ek { Output.stdout.line("endorsement key: sha256 \(ek.fingerprint)") }
            Output.stdout.line("snapshots with vTPM state: \(snapshots.isEmpty ? "none" : snapshots.joined(separator: ", "))")
        }
    }
}
