import Foundation
import WardenCore
import Ledger
import Policy
import Vault
#if canImport(Glibc)
import Glibc
import Storage
#endif

/// Runs ledger VMs on QEMU on this host: start, stop, status, snapshot and rollback.
///
/// Every operation takes the VM's run-directory lock, so two warden processes never start,
/// stop or roll back the same VM at once. A pid file naming a dead process (QEMU killed with
/// `kill -9`, a host crash) is *stale*: the next operation closes the ledger's residency,
/// records a `stopped` event with reason `stale`, and cleans the run directory.
public struct VMRunner {
    public let store: any LedgerStore
    public let counters: CounterStore?
    public let home: String
    public let host: HostName
    /// Called with the operation and VM before anything changes; throws to refuse (the policy gate).
    public var gate: (_ operation: VMOperation, _ vm: VMRecord, _ detail: [String: String]) throws -> Void
    /// How to start the state server: argv of a `warden vm state-server` process (nil = no state server).
    public var stateServerCommand: ((_ vm: VMID, _ announce: Bool) -> [String])?
    /// Puts the VM's network state (quarantine after a `quarantine` decision, a recorded state)
    /// on its taps before QEMU starts; throws when it cannot, and the VM does not start. Nil
    /// refuses to start VMs with network interfaces (fail closed).
    public var enforceNetwork: ((_ vm: VMRecord, _ interfaces: [String]) throws -> Void)?
    /// Releases the data keys of the VM's encrypted disks (index → key) for one QEMU start,
    /// after deciding `unlock` through policy; throws to refuse. Nil: no disk is unlocked.
    /// With `vtpm` true the VM starts with a vTPM, whose state key is released too when the VM's
    /// data is under the vault (the same decision).
    public var unlock: ((_ vm: VMRecord, _ disks: [LaunchDisk], _ vtpm: Bool) throws -> ReleasedKeys)?
    /// A QEMU started: its pid, and what its confinement got (its uid, its cgroup or why none;
    /// empty when unconfined), for the started event.
    struct Launched {
        var pid: pid_t
        var confinement: [String: JSONValue]
    }

    public init(store: any LedgerStore, counters: CounterStore?, home: String = RunDirectory.home(), host: HostName = .current,
                gate: @escaping (_ operation: VMOperation, _ vm: VMRecord, _ detail: [String: String]) throws -> Void,
                stateServerCommand: ((_ vm: VMID, _ announce: Bool) -> [String])? = nil) {
        self.store = store; self.counters = counters; self.home = home; self.host = host
        self.gate = gate; self.stateServerCommand = stateServerCommand
    }

    public func runDirectory(_ vm: VMID) -> RunDirectory { RunDirectory(vm: vm, home: home) }

    // MARK: Status

    /// What `vm status` reports.
    public struct Status: Codable, Sendable {
        public var vm: String
        public var name: String
        /// `running`, `stopped`, or `stale` (a pid file whose process is gone).
        public var state: String
        public var pid: Int32?
        public var generation: String
        public var ledgerState: String
        public var stateServerPid: Int32?
        public var runDirectory: String
        public var serialLog: String
        public var accel: String?
        public var qemuStatus: String?
    }

    public func status(_ vm: VMRecord) -> Status {
        let run = runDirectory(vm.id)
        let pid = run.livePid
        var qemuStatus: String?
        if pid != nil, let qmp = try? QMPClient(path: run.qmpSocket, timeout: 3),
           let r = try? qmp.execute("query-status") as? [String: Any] {
            qemuStatus = r["status"] as? String
        }
        // The accelerator QEMU really runs with (launch.json keeps what was asked, e.g. `auto`).
        var accel: String?
        if let pid, let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") {
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if let i = args.firstIndex(of: "-accel"), i + 1 < args.count { accel = args[i + 1] }
        }
        return Status(vm: vm.id.description, name: vm.name,
                      state: pid != nil ? "running" : (run.isStale ? "stale" : "stopped"),
                      pid: pid, generation: vm.generation.uuidString.lowercased(), ledgerState: vm.state.rawValue,
                      stateServerPid: pid != nil ? run.stateServerPid : nil, runDirectory: run.path, serialLog: run.serialLog,
                      accel: accel, qemuStatus: qemuStatus)
    }

    // MARK: Start

    public struct StartResult: Sendable {
        public var pid: pid_t
        public var accel: String
        public var recoveredStale: Bool
    }

    /// Starts QEMU for `vm` in the background. Records residency (ran on this host) and `started`.
    public func start(_ vm: VMRecord, options: LaunchOptions) throws -> StartResult {
        let run = runDirectory(vm.id)
        let lock = try run.lock()
        defer { withExtendedLifetime(lock) {} }
        if let pid = run.livePid {
            throw WardenError(.conflict, "VM \(vm.name) is already running (pid \(pid))")
        }
        let recovered = try recoverStaleIfNeeded(vm, run: run)
        let disks = try launchDisks(vm)
        let accel = try QEMULauncher.accelerator(options.accel)
        let nics = try (options.nics ?? []).map { try $0.validated() }
        guard nics.isEmpty || enforceNetwork != nil else {
            throw WardenError(.unavailable, "this runner cannot enforce network states, so it starts no VM with a network interface")
        }
        try gate(.start, vm, ["accel": accel])
        var saved = options
        saved.accel = options.accel
        try saveLaunch(saved, run)
        let vtpmExisted = VTPM(vm: vm.id, home: home).exists
        let nvram = NVRAM(vm: vm.id, home: home)
        let nvramMade = options.uefi == true ? try nvram.prepare() : false
        // The taps exist and carry the VM's network state before QEMU opens them: the guest's
        // first packet already meets its rules. Anything failing here stops the start.
        let launched: Launched
        do {
            run.removeCreatedTaps()
            var created: [String] = []
            for nic in nics where try Taps.prepare(nic) {
                created.append(nic.tap)
                try (created.joined(separator: "\n") + "\n").write(toFile: run.tapsFile, atomically: true, encoding: .utf8)
            }
            if !nics.isEmpty, let enforceNetwork { try enforceNetwork(vm, nics.map(\.tap)) }
            launched = try launchQEMU(vm, generation: vm.generation, disks: disks, options: options, accel: accel, run: run,
                                      loadSnapshot: nil, announce: false)
        } catch {
            run.removeCreatedTaps()
            throw error
        }
        let pid = launched.pid
        let now = Date()
        var payload: [String: JSONValue] = ["pid": .number(Double(pid)), "accel": .string(accel)]
        payload["confinement"] = options.confines ? .object(launched.confinement) : .string("none")
        if options.tpm == true { payload["vtpm"] = .string(vtpmExisted ? "existing" : "fresh") }
        if options.uefi == true {
            payload["uefi_vars"] = .object(["path": .string(nvram.varsFile), "sha256": .string(nvram.kept.sha256() ?? ""),
                                            "fresh": .bool(nvramMade)])
        }
        _ = try store.updateVM(vm.id, event: NewEvent(kind: .started, vm: vm.id, host: host, time: now, payload: payload)) {
            $0.state = .running
            $0.updatedAt = now
        }
        try store.openResidency(vm: vm.id, host: host, kind: .ran, at: now)
        return StartResult(pid: pid, accel: accel, recoveredStale: recovered)
    }

    func launchDisks(_ vm: VMRecord) throws -> [LaunchDisk] {
        let disks = try store.disks(of: vm.id).sorted { $0.index < $1.index }
        return try disks.map { d in
            guard FileManager.default.fileExists(atPath: d.path) else {
                throw WardenError(.notFound, "disk \(d.index) of VM \(vm.name) does not exist", file: d.path)
            }
            guard ["raw", "qcow2"].contains(d.format) else {
                throw WardenError(.unsupported, "warden vm start runs raw and qcow2 disks, not \(d.format)", file: d.path)
            }
            return LaunchDisk(path: d.path, format: d.format)
        }
    }

    func launchQEMU(_ vm: VMRecord, generation: UUID, disks: [LaunchDisk], options: LaunchOptions, accel: String,
                    run: RunDirectory, loadSnapshot: String?, announce: Bool) throws -> Launched {
        try withUnlockedDisks(vm, disks, run: run, vtpm: options.tpm == true) { disks, vtpmKey in
            try launchUnlocked(vm, generation: generation, disks: disks, options: options, accel: accel, run: run,
                               loadSnapshot: loadSnapshot, announce: announce, vtpmKey: vtpmKey)
        }
    }

    /// Runs `body` with the VM's encrypted disks unlocked: the `unlock` closure decides and
    /// releases their keys, which reach QEMU or qemu-img as 0600 files in the run directory
    /// (`LaunchDisk.secretFile`), overwritten and removed as soon as `body` returns or throws.
    func withUnlockedDisks<T>(_ vm: VMRecord, _ disks: [LaunchDisk], run: RunDirectory, vtpm: Bool = false,
                              _ body: ([LaunchDisk], SecretBytes?) throws -> T) throws -> T {
        var disks = disks
        var secretFiles: [String] = []
        defer { secretFiles.forEach(SecretFile.destroy) }
        var vtpmKey: SecretBytes?
        if let unlock {
            let released = try unlock(vm, disks, vtpm)
            vtpmKey = released.vtpm
            for (i, key) in released.disks.sorted(by: { $0.key < $1.key }) where disks.indices.contains(i) {
                let path = run.path + "/secret-\(i)"
                secretFiles.append(path)
                try SecretFile.write(Vault.passphrase(key), to: path)
                disks[i].secretFile = path
            }
        }
        return try body(disks, vtpmKey)
    }

    func launchUnlocked(_ vm: VMRecord, generation: UUID, disks: [LaunchDisk], options: LaunchOptions, accel: String,
                        run: RunDirectory, loadSnapshot: String?, announce: Bool, vtpmKey: SecretBytes? = nil) throws -> Launched {
        let args = QEMULauncher.arguments(vm: vm.id, name: vm.name, generation: generation, disks: disks, options: options,
                                          accel: accel, run: run, loadSnapshot: loadSnapshot)
        unlink(run.qmpSocket); unlink(run.stateSocket)
        if options.confines {
            guard Confinement.available else {
                throw WardenError(.unavailable, "a confined QEMU needs root and util-linux's unshare (or start with confinement off)")
            }
            try Confinement.prepareChroot(run)
        }
        if options.tpm == true {
            _ = try VTPM(vm: vm.id, home: home).launch(run: run, runAs: options.confines ? Confinement.uid(for: vm.id) : nil, key: vtpmKey)
        }
        let pid: pid_t
        do {
            pid = try QEMULauncher.launch(binary: options.qemuBinary, arguments: args, run: run,
                                          wrapper: options.confines ? Confinement.wrapper : [])
        } catch {
            if options.tpm == true { VTPM(vm: vm.id, home: home).stop(run: run) }
            throw error
        }
        var confinement: [String: JSONValue] = [:]
        if options.confines {
            // Resource limits: without a usable cgroup the VM still runs confined otherwise,
            // and the started event records what is missing.
            confinement["uid"] = .number(Double(Confinement.uid(for: vm.id)))
            switch Confinement.limit(pid: pid, vm: vm.id, options: options) {
            case .success(let path): confinement["cgroup"] = .string(path)
            case .failure(let e): confinement["cgroup_unavailable"] = .string(e.message)
            }
        }
        if let cmd = stateServerCommand?(vm.id, announce) {
            do {
                try Self.spawnDetached(cmd, log: run.stateServerLog)
            } catch {
                // Without its state server the VM would run with a dead state port: stop it.
                _ = kill(pid, SIGKILL)
                run.cleanRuntimeFiles()
                throw error
            }
        }
        return Launched(pid: pid, confinement: confinement)
    }

    /// Runs `argv` in a new session (setsid), stdin from /dev/null, stdout and stderr to `log`,
    /// without waiting for it.
    public static func spawnDetached(_ argv: [String], log: String) throws {
        let pid = try Spawn.spawn(argv, log: log, newSession: true)
        // Reap it if it exits while we still run; after we exit, init adopts it.
        Thread.detachNewThread { var st: Int32 = 0; waitpid(pid, &st, 0) }
    }

    /// When the pid file is stale: record the VM as stopped (reason `stale`), close its residency,
    /// clean the run directory. Returns whether it did.
    @discardableResult
    func recoverStaleIfNeeded(_ vm: VMRecord, run: RunDirectory) throws -> Bool {
        let stale = run.isStale || (vm.state == .running && run.livePid == nil)
        guard stale else { return false }
        let oldPid = RunDirectory.readPid(run.pidFile)
        if let sp = run.stateServerPid { kill(sp, SIGTERM) }
        VTPM(vm: vm.id, home: home).stop(run: run)
        run.cleanRuntimeFiles()
        run.removeCreatedTaps()
        let now = Date()
        var payload: [String: JSONValue] = ["reason": .string("stale")]
        if let oldPid { payload["pid"] = .number(Double(oldPid)) }
        _ = try store.updateVM(vm.id, event: NewEvent(kind: .stopped, vm: vm.id, host: host, time: now, payload: payload)) {
            $0.state = .stopped
            $0.updatedAt = now
        }
        try store.closeResidency(vm: vm.id, host: host, kind: .ran, at: now)
        return true
    }

    // MARK: Stop

    public struct StopResult: Sendable {
        /// `powerdown` (the guest shut down), `quit` (QMP quit), `killed` (SIGKILL), or `stale`.
        public var how: String
    }

    /// ACPI powerdown, wait up to `timeout`, then QMP `quit`, then SIGKILL. Records `stopped`.
    public func stop(_ vm: VMRecord, timeout: TimeInterval) throws -> StopResult {
        let run = runDirectory(vm.id)
        let lock = try run.lock()
        defer { withExtendedLifetime(lock) {} }
        guard let pid = run.livePid else {
            if try recoverStaleIfNeeded(vm, run: run) { return StopResult(how: "stale") }
            throw WardenError(.conflict, "VM \(vm.name) is not running")
        }
        try gate(.stop, vm, [:])
        let how = terminate(pid: pid, run: run, powerdownTimeout: timeout)
        VTPM(vm: vm.id, home: home).stop(run: run)
        Confinement.removeCgroups(vm: vm.id)
        run.cleanRuntimeFiles()
        run.removeCreatedTaps()
        let now = Date()
        _ = try store.updateVM(vm.id, event: NewEvent(kind: .stopped, vm: vm.id, host: host, time: now,
                                                      payload: ["how": .string(how)])) {
            $0.state = .stopped
            $0.updatedAt = now
        }
        try store.closeResidency(vm: vm.id, host: host, kind: .ran, at: now)
        return StopResult(how: how)
    }

    /// Ends QEMU: powerdown (when `powerdownTimeout` > 0), then quit, then SIGKILL.
    func terminate(pid: pid_t, run: RunDirectory, powerdownTimeout: TimeInterval) -> String {
        let qmp = try? QMPClient(path: run.qmpSocket, timeout: 5)
        if powerdownTimeout > 0, let qmp, (try? qmp.execute("system_powerdown")) != nil {
            if QEMULauncher.waitForExit(pid, qmpSocket: run.qmpSocket, timeout: powerdownTimeout) { return "powerdown" }
        }
        if let qmp, (try? qmp.execute("quit", timeout: 5)) != nil || !RunDirectory.processMentions(pid, run.qmpSocket) {
            if QEMULauncher.waitForExit(pid, qmpSocket: run.qmpSocket, timeout: 10) { return "quit" }
        }
        kill(pid, SIGKILL)
        _ = QEMULauncher.waitForExit(pid, qmpSocket: run.qmpSocket, timeout: 10)
        return "killed"
    }

    // MARK: Snapshots

    /// Whether `name` can be a snapshot name: 1–64 of `A–Z a–z 0–9 . _ -`, not all digits
    /// (QEMU would take a number for a snapshot id).
    public static func isValidSnapshotName(_ name: String) -> Bool {
        CounterStore.isValidName(name) && !name.allSatisfy(\.isNumber)
    }

    /// Takes an internal snapshot of every disk: QMP `snapshot-save` (with the VM state) while
    /// running, `qemu-img snapshot -c` while stopped. Records it with the current generation.
    public func snapshot(_ vm: VMRecord, name: String) throws -> SnapshotRecord {
        guard Self.isValidSnapshotName(name) else {
            throw WardenError(.invalidArgument, "snapshot names are 1-64 characters of A-Z a-z 0-9 . _ - and not all digits")
        }
        let run = runDirectory(vm.id)
        let lock = try run.lock()
        defer { withExtendedLifetime(lock) {} }
        let disks = try launchDisks(vm)
        guard !disks.isEmpty, disks.allSatisfy({ $0.format == "qcow2" }) else {
            throw WardenError(.unsupported, "internal snapshots need qcow2 disks (VM \(vm.name) has \(disks.map(\.format).joined(separator: ", ")))")
        }
        if try store.snapshots(of: vm.id).contains(where: { $0.name == name }) {
            throw WardenError(.conflict, "VM \(vm.name) already has a snapshot named \(name)")
        }
        try gate(.snapshot, vm, ["snapshot": name])
        let live = run.livePid != nil
        if live, try disks.contains(where: { try QEMUImg.isEncrypted($0.path) }) {
            // QEMU 7.2 aborts (block/qcow2-threads.c: QEMU_IS_ALIGNED(len, sector_size)) when
            // it saves a running VM's memory into an encrypted qcow2: the VM would die.
            throw WardenError(.unsupported, "VM \(vm.name) has encrypted disks: QEMU cannot save a running VM's memory into them; stop it and take the snapshot stopped (disks only)")
        }
        if live {
            let qmp = try QMPClient(path: run.qmpSocket, timeout: 10)
            let nodes = disks.indices.map { LaunchDisk.nodeName($0) }
            let job = "warden-snap-\(UInt32.random(in: 0...UInt32.max))"
            do {
                try qmp.runJob("snapshot-save", ["job-id": job, "tag": name, "vmstate": nodes[0], "devices": nodes],
                               jobID: job, timeout: 600)
            } catch let e as QMPClient.CommandError {
                throw WardenError(.unavailable, e.description)
            }
        } else {
            try recoverStaleIfNeeded(vm, run: run)
            try withUnlockedDisks(vm, disks, run: run) { disks, _ in
                for d in disks { try QEMUImg.snapshot("-c", name, d) }
            }
        }
        // The vTPM's state and the UEFI variables go with the disks: a rollback restores them together.
        let vtpm = try VTPM(vm: vm.id, home: home).snapshot(name)
        let nvram = NVRAM(vm: vm.id, home: home)
        let uefi = nvram.exists ? try nvram.kept.snapshot(name) : false
        let rec = SnapshotRecord(vm: vm.id, name: name, generation: vm.generation)
        try store.addSnapshot(rec)
        _ = try store.append(NewEvent(kind: .snapshotted, vm: vm.id, host: host, generationBefore: vm.generation,
                                      generationAfter: vm.generation,
                                      payload: ["snapshot": .string(name), "live": .bool(live), "vtpm": .bool(vtpm), "uefi_vars": .bool(uefi)]))
        return rec
    }

    // MARK: Rollback

    public struct RollbackResult: Sendable {
        public var oldGeneration: UUID
        public var newGeneration: UUID
        public var restarted: Bool
        public var event: EventRecord
    }

    /// Rolls `vm` back to snapshot `name`: the gate, then a new generation and a `rolled-back`
    /// event with the branch in one ledger transaction, then the disks go back (a running VM's
    /// QEMU restarts with `-loadvm` and the new vmgenid GUID; a stopped VM's disks are reverted
    /// with `qemu-img snapshot -a`).
    public func rollback(_ vm: VMRecord, name: String, detail: [String: String] = [:]) throws -> RollbackResult {
        let run = runDirectory(vm.id)
        let lock = try run.lock()
        defer { withExtendedLifetime(lock) {} }
        let disks = try launchDisks(vm)
        let infos = try disks.map { try QEMUImg.snapshots($0.path) }
        guard let target = infos.first?.first(where: { $0.name == name }), infos.allSatisfy({ $0.contains { $0.name == name } }) else {
            throw WardenError(.notFound, "VM \(vm.name) has no snapshot named \(name) on every disk")
        }
        let recorded = try store.snapshots(of: vm.id).last { $0.name == name }
        try gate(.rollback, vm, detail.merging(["snapshot": name]) { a, _ in a })
        let pid = run.livePid
        if pid == nil { try recoverStaleIfNeeded(vm, run: run) }
        let newGen = UUID()
        var payload: [String: JSONValue] = [
            "snapshot": .string(name),
            "from_generation": .string(vm.generation.uuidString.lowercased()),
            "to_generation": .string(newGen.uuidString.lowercased()),
            "running": .bool(pid != nil),
        ]
        if let recorded { payload["snapshot_generation"] = .string(recorded.generation.uuidString.lowercased()) }
        let vtpm = VTPM(vm: vm.id, home: home)
        let vtpmPlan = vtpm.restorePlan(name)
        if vtpmPlan != .unchanged { payload["vtpm"] = .string(vtpmPlan.rawValue) }
        let nvram = NVRAM(vm: vm.id, home: home).kept
        let nvramPlan = nvram.restorePlan(name)
        if nvramPlan != .unchanged { payload["uefi_vars"] = .string(nvramPlan.rawValue) }
        let (_, event) = try store.updateVM(vm.id, event: NewEvent(kind: .rolledBack, vm: vm.id, host: host,
                                                                    generationBefore: vm.generation, generationAfter: newGen,
                                                                    payload: payload)) {
            $0.generation = newGen
            $0.updatedAt = Date()
        }
        if let pid {
            // The current state is being discarded: no powerdown, just quit.
            _ = terminate(pid: pid, run: run, powerdownTimeout: 0)
            if let sp = run.stateServerPid { kill(sp, SIGTERM) }
            VTPM(vm: vm.id, home: home).stop(run: run)
            run.cleanRuntimeFiles()
            try vtpm.restore(name)
            try nvram.restore(name)
            let options = (try? loadLaunch(run)) ?? LaunchOptions()
            let accel = try QEMULauncher.accelerator(options.accel)
            let withState = target.vmStateSize > 0
            if !withState { try withUnlockedDisks(vm, disks, run: run) { disks, _ in for d in disks { try QEMUImg.snapshot("-a", name, d) } } }
            do {
                _ = try launchQEMU(vm, generation: newGen, disks: disks, options: options, accel: accel, run: run,
                                   loadSnapshot: withState ? name : nil, announce: true)
            } catch {
                let now = Date()
                _ = try? store.updateVM(vm.id, event: NewEvent(kind: .stopped, vm: vm.id, host: host, time: now,
                                                               payload: ["reason": .string("restart after rollback failed")])) {
                    $0.state = .stopped; $0.updatedAt = now
                }
                try? store.closeResidency(vm: vm.id, host: host, kind: .ran, at: now)
                run.removeCreatedTaps()
                throw error
            }
        } else {
            try withUnlockedDisks(vm, disks, run: run) { disks, _ in for d in disks { try QEMUImg.snapshot("-a", name, d) } }
            try vtpm.restore(name)
            try nvram.restore(name)
        }
        return RollbackResult(oldGeneration: vm.generation, newGeneration: newGen, restarted: pid != nil, event: event)
    }

    // MARK: launch.json

    func saveLaunch(_ o: LaunchOptions, _ run: RunDirectory) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted]
        enc.keyEncodingStrategy = .convertToSnakeCase
        try enc.encode(o).write(to: URL(fileURLWithPath: run.launchFile), options: .atomic)
        chmod(run.launchFile, 0o600)
    }

    func loadLaunch(_ run: RunDirectory) throws -> LaunchOptions {
        let dec = JSONDecoder()
        dec.keyDecodingStrategy = .convertFromSnakeCase
        return try dec.decode(LaunchOptions.self, from: Data(contentsOf: URL(fileURLWithPath: run.launchFile)))
    }
}

/// `qemu-img`, for what must happen while QEMU is not running.
public enum QEMUImg {
    public struct Snapshot: Sendable { public var name: String; public var vmStateSize: UInt64 }

    /// Runs `qemu-img ARGS`; a failure throws with qemu-img's first error line.
    @discardableResult
    public static func run(_ args: [String]) throws -> String {
        // Snapshots of large disks take time; the deadline only guards against a hung tool.
        let r = try ToolProcess.run(try QEMULauncher.resolve("qemu-img"), args, timeout: 6 * 3600, outputLimit: 16 << 20)
        guard r.status == 0 else {
            let line = String(decoding: r.stderr, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "exit \(r.status)"
            throw WardenError(.unavailable, "qemu-img \(args.first ?? "") failed: \(line)", file: args.last)
        }
        return String(decoding: r.stdout, as: UTF8.self)
    }

    /// `qemu-img snapshot OP NAME` on a disk; an encrypted one is opened with its key
    /// (`--object secret` from the disk's secret file, `--image-opts`).
    public static func snapshot(_ op: String, _ name: String, _ disk: LaunchDisk) throws {
        if let secret = disk.secretFile {
            try run(["snapshot", "--object", "secret,id=k0,file=\(QEMULauncher.escapeOption(secret)),format=raw", "--image-opts", op, name,
                     "driver=qcow2,file.filename=\(QEMULauncher.escapeOption(disk.path)),encrypt.format=luks,encrypt.key-secret=k0"])
        } else {
            try run(["snapshot", op, name, disk.path])
        }
    }

    /// The internal snapshots of a qcow2 image (`qemu-img info --output=json`, `-U` so a running VM's image can be read).
    public static func snapshots(_ path: String) throws -> [Snapshot] {
        let text = try run(["info", "-U", "--output=json", "-f", "qcow2", path])
        guard let obj = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return [] }
        return (obj["snapshots"] as? [[String: Any]] ?? []).map {
            Snapshot(name: $0["name"] as? String ?? "", vmStateSize: ($0["vm-state-size"] as? NSNumber)?.uint64Value ?? 0)
        }
    }
}
