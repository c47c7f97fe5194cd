import ArgumentParser
import Foundation
import Hypervisor
import HypervisorHook
import WardenServices
import Ledger
import Policy
import WardenCore
#if canImport(Glibc)
import Glibc
import Storage
#endif

/// Opens the ledger for the watcher: the database must already exist.
func openExistingLedger(_ path: String) throws -> SQLiteLedger {
    try SQLiteLedger.open(path, .existing)
}

/// `warden libvirt-hook DOMAIN OPERATION SUB-OPERATION EXTRA`: libvirt's qemu hook, the same
/// code as the lean `warden-hook` executable (``LibvirtHookProcess``), which is what
/// `warden libvirt install-hook` installs.
struct LibvirtHookCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "libvirt-hook",
        abstract: "libvirt's qemu hook: decide on prepare/start/restore/migrate, record residency (docs/libvirt.md).",
        discussion: """
            `warden libvirt install-hook` installs the lean `warden-hook` executable, which runs the same code; libvirtd passes the domain XML on standard input.
            
            Example:
              warden libvirt-hook --db /var/lib/warden/warden.db -- web prepare begin - < web.xml
            """
    )
    @Option(help: "The ledger database (must exist).") var db: String?
    @Option(help: "The policy directory.") var policy: String?
    @Argument(parsing: .captureForPassthrough, help: "DOMAIN OPERATION SUB-OPERATION EXTRA, as libvirt passes them.")
    var hookArguments: [String] = []

    func run() throws {
        var args: [String] = []
        if let db { args += ["--db", db] }
        if let policy { args += ["--policy", policy] }
        // `warden libvirt-hook --db D -- DOMAIN …`: the parser keeps the `--` in the capture.
        var hookArguments = hookArguments
        if hookArguments.first == "--" { hookArguments.removeFirst() }
        let status = LibvirtHookProcess.main(args + ["--"] + hookArguments)
        if status != 0 { throw ExitCode(status) }
    }
}

/// `warden libvirt install-hook|watch`.
struct LibvirtCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "libvirt",
        abstract: "Enforce policy in libvirt, follow its domain events, start encrypted domains (docs/libvirt.md).",
        subcommands: [InstallHook.self, Watch.self, Start.self]
    )

    struct InstallHook: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "install-hook",
            abstract: "Install the lean `warden-hook` as libvirt's qemu hook (idempotent).",
            discussion: """
            Writes DIR/qemu.d/NAME (libvirt ≥ 6.5 runs every executable in qemu.d/), or DIR/qemu with \
            --single-file (never over a hook Warden did not write). libvirtd looks for hooks when it \
            starts: restart it after the first installation.
            
            Example:
              warden libvirt install-hook --db /var/lib/warden/warden.db --policy /etc/warden/policy
            """
        )
        @Option(help: "libvirt's hooks directory.") var dir = "/etc/libvirt/hooks"
        @Flag(help: "Install as DIR/qemu instead of DIR/qemu.d/NAME.") var singleFile = false
        @Option(help: "The file name in qemu.d/.") var name = "50-warden"
        @Option(help: "The ledger database the hook uses (default: the usual path resolution, made absolute).") var db: String?
        @Option(help: "The policy directory the hook uses (default: $WARDEN_POLICY, $WARDEN_HOME/policy…).") var policy: String?
        @Option(help: "The lean hook executable (default: warden-hook beside this warden).") var hook: String?

        func validate() throws {
            guard !name.isEmpty, !name.contains("/"), !name.hasPrefix(".") else { throw ValidationError("--name must be a plain file name") }
        }

        func run() throws {
            let cwd = FileManager.default.currentDirectoryPath
            func absolute(_ p: String) -> String { p.hasPrefix("/") ? p : cwd + "/" + p }
            let exe = CurrentProcess.executable
            // The lean hook: --hook, else `warden-hook` beside this warden.
            let lean = hook.map(absolute) ?? (absolute(exe) as NSString).deletingLastPathComponent + "/warden-hook"
            let useLean = FileManager.default.isExecutableFile(atPath: lean)
            if hook != nil && !useLean {
                throw WardenError(.notFound, "not an executable file", file: lean)
            }
            if !useLean {
                Output.note("\(lean) not found; installing `warden libvirt-hook`, which starts several times slower")
            }
            let r = try LibvirtHookInstaller.install(hooksDirectory: absolute(dir), form: singleFile ? .file : .directory,
                                                     warden: useLean ? lean : absolute(exe), database: absolute(WardenDatabase.defaultPath(explicit: db)),
                                                     policy: absolute(PolicySet.defaultDirectory(explicit: policy)), name: name, lean: useLean)
            Output.stdout.line(r.changed ? "installed \(r.path) (restart libvirtd if this hook is new)" : "\(r.path) is up to date")
        }
    }

    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "start",
            abstract: "Start a libvirt domain, releasing the keys of its encrypted disks by policy (docs/vault.md).",
            discussion: """
            Decides `unlock` for the domain's Warden-encrypted disks (recorded; exit 3 when denied, and \
            nothing reaches libvirt), defines each disk's LUKS secret in libvirt as ephemeral and \
            private, starts the domain, and undefines the secrets once the start returns. Each \
            encrypted disk's <source> must name its secret: <encryption format='luks'><secret \
            type='passphrase' uuid='…'/></encryption> (the error for a disk without one suggests a UUID). \
            A domain without encrypted disks is simply started.
            
            Example:
              warden libvirt start web
            """
        )
        @Argument(help: "The domain's name or UUID.") var domain: String
        @Option(help: "libvirt connection URI.") var uri = "qemu:///system"
        @Option(help: "The ledger database (must exist).") var db: String?
        @Option(help: ArgumentHelp("The policy directory (default: $WARDEN_POLICY, $WARDEN_HOME/policy…).", valueName: "dir"))
        var policy: String?
        @Option(name: .customLong("break-glass"), help: ArgumentHelp("When policy denies the unlock: release anyway, as a vault admin, with this reason (recorded; docs/vault.md).", valueName: "reason"))
        var breakGlass: String?
        @Flag(help: "Print the result as JSON.") var json = false

        func run() throws {
            let store = try openExistingLedger(WardenDatabase.defaultPath(explicit: db))
            let service = VMService(store: store, policy: policy.map { .explicit($0) } ?? .defaultDirectory, note: { Output.note($0) })
            let release = try KeyRelease(service: service, vault: VMRun.vault(store), breakGlass: breakGlass)
            let r = try LibvirtStart.start(uri: uri, domain: domain, store: store, findVM: LibvirtHook.vmByDiskPath,
                                           encryptedDisks: release.encryptedDisks(of:), release: release.release(_:disks:))
            struct Started: Encodable { var domain: String; var vm: String; var unlocked: [String] }
            try Output.render(Started(domain: r.domain, vm: r.vm.id.description, unlocked: r.unlocked), json: json) {
                Output.stdout.line("started \(r.domain)" + (r.unlocked.isEmpty ? "" : " (\(r.unlocked.count) encrypted disk\(r.unlocked.count == 1 ? "" : "s") unlocked)"))
            }
        }
    }

    struct Watch: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "watch",
            abstract: "Follow libvirt domain events; record snapshot reverts, save/restore and define/undefine.",
            discussion: """
                Prints one line per recorded event. Runs until killed; every event is committed as it arrives.
                
                Example:
                  warden libvirt watch --uri qemu:///system
                """
        )
        @Option(help: "libvirt connection URI.") var uri = "qemu:///system"
        @Option(help: "The ledger database (must exist).") var db: String?
        @Option(help: ArgumentHelp("The policy directory, for the network configuration (default: $WARDEN_POLICY, $WARDEN_HOME/policy…).", valueName: "dir"))
        var policy: String?

        func run() throws {
            // A parent may have spawned us with signals blocked; SIGTERM and SIGINT must stop the watch.
            var unblock = sigset_t()
            sigemptyset(&unblock)
            sigaddset(&unblock, SIGTERM)
            sigaddset(&unblock, SIGINT)
            pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
            let store = try openExistingLedger(WardenDatabase.defaultPath(explicit: db))
            let host = HostName.current
            let watcher = LibvirtEventWatcher()
            var reverts = LibvirtWatch.RevertDeduplicator()
            // Each event is handled on the event-loop thread; failures are reported and the watch goes on.
            let policyDirectory = PolicySet.defaultDirectory(explicit: policy)
            try watcher.run(uri: uri, ready: {
                Output.stdout.line("watching \(uri)")
                Output.stdout.flush()
            }, deviceAdded: { event in
                // A hot-plugged NIC of a quarantined or shielded VM gets its state, or the domain is paused.
                defer { Output.stdout.flush() }
                do {
                    if let line = try LibvirtWatch.enforceOnHotplug(event, store: store, policyDirectory: policyDirectory, host: host) {
                        Output.stdout.line(line)
                    }
                    return true
                } catch {
                    Output.error("\(event.domain): \(event.name): network state cannot be enforced, domain paused: \((error as? WardenError)?.message ?? "\(error)")")
                    return false
                }
            }, handler: { event in
                let now = Date()
                guard reverts.isNewRevert(event, at: now) else { return }
                do {
                    if let line = try LibvirtWatch.record(event, domainXML: event.xml, store: store, host: host, time: now, findVM: LibvirtHook.vmByDiskPath) {
                        Output.stdout.line(line)
                    }
                } catch {
                    Output.error("\(event.domain): \(event.name): \((error as? WardenError)?.description ?? "\(error)")")
                }
                Output.stdout.flush()
            })
        }
    }
}
