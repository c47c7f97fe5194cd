import ArgumentParser
import Foundation
import Hypervisor
import Ledger
import Maintenance
import Policy
import WardenCore
import WardenServices

/// The options every patch command shares: what to upgrade, from which mirror, how to boot.
struct PatchOptions: ParsableArguments {
    @Flag(help: "Upgrade the packages that carry open findings with a fix (the default).") var findings = false
    @Option(help: ArgumentHelp("With --findings: only findings at or above this severity (low, medium, high, critical).", valueName: "level"))
    var severity: String?
    @Option(name: .customLong("packages"), parsing: .upToNextOption,
            help: ArgumentHelp("Upgrade these packages (NAME) or install these versions (NAME=VERSION).", valueName: "name[=version]"))
    var packages: [String] = []
    @Flag(help: "Upgrade every package the mirror has a newer version of (apt-get upgrade).") var all = false
    @Option(help: ArgumentHelp("The patch source: a directory on this host (served for the boot) or an http:// URL.", valueName: "dir|url"))
    var mirror: String
    @Option(help: ArgumentHelp("The apt suite (default: ./ for a flat repository).", valueName: "suite")) var suite: String?
    @Option(name: .customLong("component"), help: ArgumentHelp("An apt component (repeatable; default main when a suite is given).", valueName: "name"))
    var components: [String] = []
    @Option(help: ArgumentHelp("The OpenPGP keyring the mirror is signed with (apt's signed-by).", valueName: "file")) var mirrorKey: String?
    @Flag(help: "Accept an unsigned HTTP mirror (trusted=yes). A directory mirror on this host is trusted without it.") var trustMirror = false
    @Flag(help: "Print the plan: the packages, their versions and the findings; change nothing.") var dryRun = false
    @Option(help: ArgumentHelp("Kill the maintenance boot after this many seconds.", valueName: "seconds")) var timeout: Int = 900
    @Option(help: ArgumentHelp("Memory of the maintenance boot, MiB.", valueName: "mib")) var memory: Int = 1024
    @Option(help: ArgumentHelp("auto (KVM when it works), kvm or tcg.", valueName: "accel")) var accel = "auto"
    @Flag(help: "Print JSON (schema warden.patch/v1, docs/patching.md).") var json = false

    /// Checks the values (a WardenError: one line, exit 2, as every bad input).
    func check() throws {
        let modes = [findings, !packages.isEmpty, all].filter { $0 }.count
        if modes > 1 { throw WardenError(.invalidArgument, "give one of --findings, --packages and --all") }
        if severity != nil && (all || !packages.isEmpty) { throw WardenError(.invalidArgument, "--severity goes with --findings") }
        if let s = severity, Severity(word: s) == nil { throw WardenError(.invalidArgument, "--severity: \(s) is not low, medium, high or critical") }
        for p in packages where !MaintenancePlan.validPackageSpec(p) { throw WardenError(.invalidArgument, "--packages: not a Debian package name (or NAME=VERSION): \(p)") }
        if !(30...86_400).contains(timeout) { throw WardenError(.invalidArgument, "--timeout must be 30 to 86400 seconds") }
        if !(256...65_536).contains(memory) { throw WardenError(.invalidArgument, "--memory must be 256 to 65536 MiB") }
        if !["auto", "kvm", "tcg"].contains(accel) { throw WardenError(.invalidArgument, "--accel must be auto, kvm or tcg") }
    }

    var selection: PatchService.Selection {
        if all { return .all }
        if !packages.isEmpty { return .packages(packages) }
        return .findings(minimum: severity.flatMap { Severity(word: $0) })
    }

    func request() throws -> PatchService.Request {
        try check()
        let m = try Mirror.parse(mirror, suite: suite, components: components, keyring: mirrorKey, defaultSuite: nil, allowUnsigned: trustMirror)
        return PatchService.Request(selection: selection, mirror: m, dryRun: dryRun)
    }

    /// The service over `store`, with the appliance built (or found) for this host.
    func service(_ store: SQLiteLedger, policy: PolicyGate.Source) throws -> PatchService {
        let home = RunDirectory.home()
        var boot = MaintenanceBoot.Options()
        boot.timeout = TimeInterval(timeout)
        boot.memoryMiB = memory
        boot.accel = accel
        boot.pipeExecutable = VMRun.selfExecutable
        boot.kvmStallFile = home + "/appliance/kvm-stalled"
        let appliance = dryRun ? Appliance(kernel: "", kernelVersion: "", initramfs: "", hasLVM: true) : try Appliance.prepare(home: home)
        return PatchService(database: store.database, vms: VMRun.service(store, policy: policy), appliance: appliance,
                            boot: boot, home: home, note: { Output.note($0) })
    }

    static func human(_ r: PatchService.Report) {
        let out = Output.stdout
        let who = r.name.map { "VM \($0)" } ?? r.image
        switch r.status {
        case "planned":
            out.line("\(who): would patch from \(r.mirror):")
        case "nothing-to-do":
            out.line("\(who): nothing to patch (\(r.reason ?? ""))")
        case "patched":
            out.line(String(format: "\(who): patched from \(r.mirror) in %.1f s (boot %.1f s)", r.seconds, r.bootSeconds ?? 0))
        default:
            out.line("\(who): \(r.status)\(r.reason.map { ": " + $0 } ?? "")")
        }
        if r.status == "planned" {
            for t in r.targets {
                out.line(oneLine("  \(t.package) \(t.installed ?? "(not installed)") → \(t.fixedVersion.map { "≥ \($0)" } ?? t.spec)\(t.advisories.isEmpty ? "" : " (" + t.advisories.joined(separator: ", ") + ")")"))
            }
        }
        for p in r.packages { out.line(oneLine("  \(p.name) \(p.before ?? "-") → \(p.after ?? "-")")) }
        if !r.findingsClosed.isEmpty { out.line(oneLine("  closed: " + r.findingsClosed.joined(separator: ", "))) }
        if !r.unfixable.isEmpty { out.line(oneLine("  no fix yet: " + r.unfixable.prefix(10).joined(separator: ", "))) }
        if let l = r.layer { out.line("  new layer \(l.path) (\(l.digest)) over \(l.backing)") }
        if let c = r.console { out.line("  console: \(c)") }
    }
}

/// `warden vm patch VM`.
struct VMPatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "patch",
        abstract: "Patch a dormant VM in a confined maintenance boot that reaches only the mirror, into a new qcow2 layer, proven by re-assessment.",
        discussion: """
        The guest's own apt-get and dpkg run inside a small Warden-built appliance VM (never on this \
        host), with the guest's root, /usr, /var and /boot assembled from its fstab, and a network \
        that reaches the mirror and nothing else. The changes go into a new qcow2 layer over the \
        VM's disk; Warden then re-inspects and rescans that layer offline, and only when the targeted \
        findings are gone and dpkg's database is consistent does the layer become the VM's disk (the \
        old one stays beneath it), recorded as a `patched` event. Policy decides the `patch` \
        operation (rules may name `mirrors`). A running VM is refused. docs/patching.md.
        
        Example:
          warden vm patch web --findings --mirror http://deb.debian.org/debian
        """
    )
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM (id, unique id prefix, or unique name).") var vm: String
    @OptionGroup var options: PatchOptions
    @OptionGroup var policyOptions: PolicyOptions

    func run() throws {
        let request = try options.request()
        let store = try database.open(create: false)
        let service = try options.service(store, policy: policyOptions.source)
        let report = try service.patch(vm: vm, request)
        try Output.render(report, json: options.json) { PatchOptions.human(report) }
    }
}

/// `warden vm unpatch VM`: back to the state below the latest patch.
struct VMUnpatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unpatch",
        abstract: "Return a VM to the disk below its latest patch (decided as a rollback; the findings it re-opens are named).",
        discussion: """
            The patch layer stays on disk; the VM's disk record goes back to its backing file and a `rolled-back` event names both and the findings re-opened. docs/patching.md.
            
            Example:
              warden vm unpatch web
            """
    )
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM (id, unique id prefix, or unique name).") var vm: String
    @OptionGroup var policyOptions: PolicyOptions
    @Flag(help: "Print JSON (schema warden.patch.undo/v1, docs/json-schemas/patch.v1.json).") var json = false

    func run() throws {
        let store = try database.open(create: false)
        let home = RunDirectory.home()
        let service = PatchService(database: store.database, vms: VMRun.service(store, policy: policyOptions.source),
                                   appliance: Appliance(kernel: "", kernelVersion: "", initramfs: "", hasLVM: false),
                                   boot: MaintenanceBoot.Options(), home: home, note: { Output.note($0) })
        let undo = try service.undo(vm: vm)
        try Output.render(undo, json: json) {
            Output.stdout.line("VM \(undo.name): back to \(undo.restored) (the layer \(undo.layer) is kept)")
            if !undo.reopens.isEmpty { Output.stdout.line(oneLine("  re-opens: " + undo.reopens.joined(separator: ", "))) }
        }
    }
}

/// `warden image patch IMAGE --output NEW.qcow2`.
struct ImagePatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "patch",
        abstract: "Patch an unregistered image into a new qcow2 overlay (a maintenance boot; the image itself is only read).",
        discussion: """
            As `warden vm patch`, without the ledger and policy: the result is OUTPUT, an overlay backed by IMAGE. docs/patching.md.
            
            Example:
              warden image patch old.qcow2 --output patched.qcow2 --findings --mirror http://deb.debian.org/debian
            """
    )
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The disk image.") var image: String
    @Option(help: ArgumentHelp("The new overlay (must not exist).", valueName: "path")) var output: String
    @OptionGroup var options: PatchOptions

    func run() throws {
        let request = try options.request()
        let store = try database.open(create: true)
        let service = try options.service(store, policy: .defaultDirectory)
        let report = try service.patch(image: image, output: output, request)
        try Output.render(report, json: options.json) { PatchOptions.human(report) }
    }
}

/// `warden fleet patch`: every dormant VM matching a filter, a maintenance boot per core at a time.
struct FleetPatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "patch",
        abstract: "Patch every dormant VM that matches (by label, name, findings), one maintenance boot at a time per core.",
        discussion: """
        Running VMs are skipped with the reason (patch those in-guest, or stop them first); VMs whose \
        stored findings hold nothing to patch are skipped without a boot. Exit 0 when every VM was \
        patched or had nothing to do, 1 when one failed or was denied. JSON: warden.fleet.patch/v1.
        
        Example:
          warden fleet patch --label env=test --findings --mirror http://deb.debian.org/debian --dry-run
        """
    )
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var options: PatchOptions
    @OptionGroup var policyOptions: PolicyOptions
    @Option(name: .customLong("label"), help: ArgumentHelp("Only VMs with this label (repeatable).", valueName: "key=value")) var labels: [String] = []
    @Option(help: ArgumentHelp("Only VMs whose name matches this shell pattern.", valueName: "pattern")) var name: String?
    @Option(help: ArgumentHelp("Maintenance boots at a time (default: the number of cores).", valueName: "n")) var parallel: Int?

    struct Summary: Encodable {
        var schema = "warden.fleet.patch/v1"
        var results: [PatchService.Report]
        var patched: Int
        var failed: Int
        var skipped: Int
        var nothingToDo: Int
        var seconds: Double
        var imagesPerMinute: Double
    }

    func check() throws {
        for l in labels where !l.contains("=") { throw WardenError(.invalidArgument, "--label takes key=value") }
        if let p = parallel, !(1...64).contains(p) { throw WardenError(.invalidArgument, "--parallel must be 1 to 64") }
    }

    func run() throws {
        let started = Date()
        try check()
        let request = try options.request()
        let store = try database.open(create: false)
        let service = try options.service(store, policy: policyOptions.source)
        var wanted: [String: String] = [:]
        for l in labels { let kv = l.split(separator: "=", maxSplits: 1).map(String.init); wanted[kv[0]] = kv.count > 1 ? kv[1] : "" }
        let vms = try store.listVMs().filter { vm in
            vm.state != .retired && wanted.allSatisfy { vm.labels[$0.key] == $0.value }
                && (name.map { fnmatch($0, vm.name, 0) == 0 } ?? true)
        }.sorted { $0.name < $1.name }
        let facts = LedgerPolicyFacts.wired(store)
        var results = [PatchService.Report?](repeating: nil, count: vms.count)
        var queue: [Int] = []
        for (i, vm) in vms.enumerated() {
            var skip = PatchService.Report(vm: vm.id.description, name: vm.name, image: "", status: "skipped",
                                           mirror: request.mirror.name, selection: service.selectionWord(request.selection))
            if vm.state == .running {
                skip.reason = "running: patch it in-guest, or stop it first"
                results[i] = skip; continue
            }
            if case .findings(let minimum) = request.selection, let open = try? facts.openFindingList(of: vm.id) {
                let patchable = open.filter { f in f.fixedVersion != nil && (minimum.map { f.severity >= $0 } ?? true) }
                if patchable.isEmpty {
                    skip.status = "nothing-to-do"
                    skip.reason = "no open findings with a fix\(minimum.map { " at or above \($0)" } ?? "") in its last scan"
                    results[i] = skip; continue
                }
            }
            queue.append(i)
        }
        let order = queue
        let lanes = max(1, min(parallel ?? ProcessInfo.processInfo.activeProcessorCount, order.count))
        let done = Locked((results, 0))
        let total = order.count
        var service1 = service
        service1.ledgerLock = NSLock()
        let shared = service1
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            var k = lane
            while k < order.count {
                let i = order[k]
                let vm = vms[i]
                var r: PatchService.Report
                do {
                    r = try shared.patch(vm: vm.id.description, request)
                } catch let e as WardenError {
                    r = PatchService.Report(vm: vm.id.description, name: vm.name, image: "", status: e.code == .denied ? "denied" : "failed",
                                            mirror: request.mirror.name, selection: shared.selectionWord(request.selection))
                    r.reason = e.description
                } catch {
                    r = PatchService.Report(vm: vm.id.description, name: vm.name, image: "", status: "failed",
                                            mirror: request.mirror.name, selection: shared.selectionWord(request.selection))
                    r.reason = "\(error)"
                }
                let n = done.withLock { state -> Int in state.0[i] = r; state.1 += 1; return state.1 }
                Output.note(oneLine("[\(n)/\(total)] \(vm.name): \(r.status)\(r.reason.map { " (\($0))" } ?? "")" +
                                    (r.status == "patched" ? String(format: " in %.1f s", r.seconds) : "")))
                k += lanes
            }
        }
        let all = done.withLock { $0.0 }.compactMap { $0 }
        let seconds = Date().timeIntervalSince(started)
        let patched = all.filter { $0.status == "patched" }.count
        let failed = all.filter { $0.status == "failed" || $0.status == "denied" }.count
        let summary = Summary(results: all, patched: patched, failed: failed,
                              skipped: all.filter { $0.status == "skipped" }.count,
                              nothingToDo: all.filter { $0.status == "nothing-to-do" }.count,
                              seconds: seconds, imagesPerMinute: seconds > 0 ? Double(patched) / seconds * 60 : 0)
        try Output.render(summary, json: options.json) {
            for r in all { PatchOptions.human(r) }
            Output.stdout.line(String(format: "%d patched, %d failed, %d skipped, %d with nothing to do, in %.1f s (%.2f images per minute)",
                                      patched, failed, summary.skipped, summary.nothingToDo, seconds, summary.imagesPerMinute))
        }
        if failed > 0 { Output.stdout.flush(); throw ExitCode(1) }
    }
}

/// `warden internal …`: plumbing other processes start; not for people.
struct InternalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "internal", abstract: "Plumbing started by other processes.",
                                                    shouldDisplay: false, subcommands: [MirrorPipeCommand.self])

    /// One mirror connection of a maintenance boot on stdin/stdout (QEMU's guestfwd starts it).
    struct MirrorPipeCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "mirror-pipe", abstract: "Serve or relay one mirror connection on stdin/stdout.",
            discussion: """
                Example:
                  warden internal mirror-pipe --dir /srv/mirror
                """)
        @Option var dir: String?
        @Option var connect: String?

        func run() throws {
            // Standard error is the connection too: nothing may be written to it.
            if let dir {
                MirrorPipe.serve(directory: dir)
            } else if let c = connect, let colon = c.lastIndex(of: ":"), let port = Int(c[c.index(after: colon)...]) {
                var host = String(c[..<colon])
                if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
                if !MirrorPipe.relay(host: host, port: port) { throw ExitCode(1) }
            } else {
                throw ExitCode(2)
            }
        }
    }
}
