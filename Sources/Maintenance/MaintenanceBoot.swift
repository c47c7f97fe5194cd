import Foundation
import Hypervisor
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// One maintenance boot: QEMU with the appliance, the guest's disks, and a user network that
/// reaches the mirror and nothing else (`restrict=on`: no routing to the host or beyond;
/// `guestfwd` to the mirror's address runs ``MirrorPipe`` for each connection). QEMU is
/// sandboxed (seccomp), runs as a uid of its own in namespaces of its own when Warden is root,
/// and is killed at the timeout or when its console passes the size cap.
public struct MaintenanceBoot: Sendable {
    public struct Disk: Sendable, Equatable {
        public var path: String
        /// QEMU's driver name (`qcow2`, `raw`).
        public var format: String
        public init(path: String, format: String) { self.path = path; self.format = format }
    }

    public struct Options: Sendable {
        public var timeout: TimeInterval = 900
        public var memoryMiB = 1024
        public var cpus = 1
        /// `auto`, `kvm` or `tcg`. With `auto`, a KVM boot whose appliance has not said `ready`
        /// within ``kvmReadySeconds`` is killed and started again under TCG (a nested host's
        /// /dev/kvm may open and then never run a vCPU).
        public var accel = "auto"
        public var kvmReadySeconds: TimeInterval = 20
        /// Where a KVM stall is remembered (with the host's boot id), so later `auto` boots on
        /// this host go straight to TCG until it reboots; nil: not remembered.
        public var kvmStallFile: String?
        public var qemuBinary = "qemu-system-x86_64"
        /// Run QEMU as a uid of its own in namespaces of its own (root only).
        public var confine = Confinement.available
        /// The VM being patched (its cgroup is `warden/vm-<id>` while the boot runs); a fresh id
        /// for an image.
        public var vm = VMID()
        /// The uid QEMU runs as when confined.
        public var uid: UInt32 = Confinement.uid(for: VMID())
        /// The console log is cut off (and the boot killed) beyond this many bytes.
        public var consoleLimit: Int64 = 32 << 20
        /// The executable QEMU starts for each mirror connection (`warden`).
        public var pipeExecutable: String = CurrentProcess.executable
        public init() {}
    }

    public struct Result: Sendable, Codable {
        /// The appliance's own lines (`<step> …`), token stripped, in order.
        public var steps: [String]
        /// `ok` or `fail` from the final `done` line; nil when the appliance never said.
        public var outcome: String?
        /// The step that failed (`update`, `install-rc-100`, `assemble`, `audit`, …).
        public var failedStep: String?
        public var timedOut: Bool
        public var consoleTruncated: Bool
        public var seconds: Double
        /// The console log (kept by the caller).
        public var console: String
        /// What the appliance said about each probe URL (`ok` / `fail`).
        public var probes: [String: String]
    }

    /// The uid QEMU runs as for `vm`: the VM's own (``Confinement/uid(for:)``), as when it runs.
    public static func uid(for vm: VMID) -> UInt32 { Confinement.uid(for: vm) }


    public let appliance: Appliance
    public let options: Options
    public init(appliance: Appliance, options: Options = Options()) { self.appliance = appliance; self.options = options }

    /// Boots the appliance with `plan` over `disks` (written in place: pass overlays), in the
    /// private folder `work` (which receives `initramfs.cpio`, `console.log` and `qemu.log`).
    public func run(plan: MaintenancePlan, disks: [Disk], work: String) throws -> Result {
        try FileDescriptorIO.ensurePrivateDirectory(work, what: "the maintenance folder")
        // The boot's initramfs: the appliance, then a small archive with the plan (and key).
        var extra = CPIOArchive()
        try extra.file("plan", contents: Data(try plan.text().utf8), mode: 0o600)
        if let key = plan.mirror?.keyring {
            try extra.file("mirror.gpg", contents: try Data(contentsOf: URL(fileURLWithPath: key)), mode: 0o644)
        }
        var initramfs = try Data(contentsOf: URL(fileURLWithPath: appliance.initramfs))
        initramfs.append(extra.finished())
        let initrd = work + "/initramfs.cpio"
        try FileDescriptorIO.replaceFile(initrd, with: Array(initramfs))
        let console = work + "/console.log"
        unlink(console)
        guard FileManager.default.createFile(atPath: console, contents: nil, attributes: [.posixPermissions: 0o600]) else {
            throw WardenError(.io, "cannot create the console log", file: console)
        }
        if options.confine, case .directory(let d)? = plan.mirror?.source { try Self.checkReadableByOthers(d) }

        var first = try QEMULauncher.accelerator(options.accel)
        let bootID = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        if options.accel == "auto", first == "kvm", let f = options.kvmStallFile, let id = bootID,
           (try? String(contentsOfFile: f, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == id {
            first = "tcg"
        }
        let started = Date()
        var result = try boot(accel: first, plan: plan, disks: disks, initrd: initrd, console: console, work: work,
                              readyWithin: options.accel == "auto" && first == "kvm" ? options.kvmReadySeconds : nil)
        if result == nil {
            if let f = options.kvmStallFile, let id = bootID { try? FileDescriptorIO.replaceFile(f, with: Array((id + "\n").utf8)) }
            result = try boot(accel: "tcg", plan: plan, disks: disks, initrd: initrd, console: console, work: work, readyWithin: nil)
        }
        guard var r = result else { throw WardenError(.internal, "the maintenance boot did not run") }
        r.seconds = Date().timeIntervalSince(started)
        return r
    }

    /// One QEMU run; nil when `readyWithin` passed without the appliance's `ready` line (the
    /// caller tries TCG).
    func boot(accel: String, plan: MaintenancePlan, disks: [Disk], initrd: String, console: String, work: String,
              readyWithin: TimeInterval?) throws -> Result? {
        _ = truncate(console, 0)
        var args = [
            "-name", "warden-maintenance", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            // spawn stays allowed: the user network starts the mirror pipe per connection.
            "-sandbox", Confinement.sandbox,
            "-accel", accel, "-m", "\(options.memoryMiB)", "-smp", "\(options.cpus)",
            "-kernel", appliance.kernel, "-initrd", initrd,
            "-append", "console=ttyS0 quiet loglevel=3 panic=-1",
            "-chardev", "file,id=serial0,path=\(QEMULauncher.escapeOption(console))", "-serial", "chardev:serial0",
            "-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-pci,rng=rng0",
        ]
        if accel == "kvm" { args += ["-cpu", "host"] }
        for (i, d) in disks.enumerated() {
            // Guest flushes are not passed on (the new layer is synced once, after QEMU exits).
            args += ["-blockdev", "driver=file,filename=\(QEMULauncher.escapeOption(d.path)),node-name=f\(i),cache.no-flush=on",
                     "-blockdev", "driver=\(d.format),file=f\(i),node-name=d\(i),cache.no-flush=on",
                     "-device", "virtio-blk-pci,drive=d\(i)"]
        }
        var netdev = "user,id=n0,restrict=on,net=10.0.2.0/24,host=10.0.2.2,ipv6=off"
        if let mirror = plan.mirror {
            let command = mirror.pipeCommand(executable: options.pipeExecutable).map(Self.shellQuote).joined(separator: " ")
            netdev += ",guestfwd=tcp:\(Mirror.applianceAddress):80-cmd:" + QEMULauncher.escapeOption(command)
        }
        args += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"]
        var argv = [try QEMULauncher.resolve(options.qemuBinary)] + args
        if options.confine {
            argv = Confinement.wrapper + argv + ["-runas", "\(options.uid):\(options.uid)"]
        }

        let started = Date()
        let pid = try Spawn.spawn(argv, log: work + "/qemu.log", newSession: true, truncate: true)
        // Memory and CPU limits as for any Warden-run QEMU (best effort, as there).
        if options.confine {
            var limits = LaunchOptions()
            limits.memoryMiB = options.memoryMiB
            // The vCPUs' worth, and one more for QEMU's own threads (the user network, the disk).
            limits.cpus = options.cpus + 1
            _ = Confinement.limit(pid: pid, vm: options.vm, options: limits)
        }
        defer { if options.confine { Confinement.removeCgroups(vm: options.vm) } }
        var timedOut = false, truncated = false, notReady = false
        let deadline = started.addingTimeInterval(options.timeout)
        var status: Int32 = 0
        let readyLine = Data("WARDEN-\(plan.token) ready".utf8)
        var ready = readyWithin == nil
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid || (r < 0 && errno != EINTR) { break }
            var st = stat()
            if stat(console, &st) == 0 && Int64(st.st_size) > options.consoleLimit { truncated = true }
            if Date() > deadline { timedOut = true }
            if !ready, let limit = readyWithin {
                ready = (try? Data(contentsOf: URL(fileURLWithPath: console)))?.range(of: readyLine) != nil
                if !ready && Date().timeIntervalSince(started) > limit { notReady = true }
            }
            if timedOut || truncated || notReady {
                kill(pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                break
            }
            usleep(100_000)
        }
        if notReady { return nil }
        let seconds = Date().timeIntervalSince(started)
        if truncated { truncate(console, off_t(options.consoleLimit)) }
        let exitedBadly = status & 0x7f != 0 || (status >> 8) & 0xff != 0
        var result = Self.parse(console: console, token: plan.token, seconds: seconds, timedOut: timedOut, truncated: truncated)
        if result.outcome == nil && !timedOut && !truncated && exitedBadly {
            let log = (try? String(contentsOfFile: work + "/qemu.log", encoding: .utf8)) ?? ""
            let first = log.split(separator: "\n").first.map(String.init) ?? "exit status \((status >> 8) & 0xff)"
            throw WardenError(.unavailable, "the maintenance boot did not run: \(first)", file: work + "/qemu.log")
        }
        result.console = console
        return result
    }

    /// Reads the appliance's lines from the console log.
    static func parse(console: String, token: String, seconds: Double, timedOut: Bool, truncated: Bool) -> Result {
        let data = (try? Data(contentsOf: URL(fileURLWithPath: console))) ?? Data()
        let prefix = "WARDEN-\(token) "
        var steps: [String] = []
        var outcome: String?, failed: String?
        var probes: [String: String] = [:]
        for raw in String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline) {
            guard let r = raw.range(of: prefix) else { continue }
            let line = String(raw[r.upperBound...]).trimmingCharacters(in: .whitespaces)
            steps.append(TerminalText.line(String(line.prefix(300))))
            let words = line.split(separator: " ").map(String.init)
            if words.first == "done", words.count >= 2, outcome == nil {
                outcome = words[1]
                if words[1] != "ok" { failed = words.count > 2 && !words[2].hasPrefix("@") ? words[2] : "unknown" }
            }
            if words.first == "probe", words.count >= 3 { probes[words[1]] = words[2] }
        }
        return Result(steps: steps, outcome: outcome, failedStep: failed, timedOut: timedOut, consoleTruncated: truncated,
                      seconds: seconds, console: console, probes: probes)
    }

    /// Single-quotes a word for the shell-like parser of QEMU's `cmd:` forwards.
    static func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// A confined QEMU runs the mirror pipe as its own uid: the directory must be readable by others.
    static func checkReadableByOthers(_ dir: String) throws {
        var path = ""
        for part in dir.split(separator: "/") {
            path += "/" + part
            var st = stat()
            guard stat(path, &st) == 0, st.st_mode & 0o001 != 0 else {
                throw WardenError(.invalidArgument, "the mirror directory must be readable by others (the maintenance boot serves it as an unprivileged uid)", file: path)
            }
        }
        var st = stat()
        guard stat(dir, &st) == 0, st.st_mode & 0o004 != 0 else {
            throw WardenError(.invalidArgument, "the mirror directory must be readable by others (the maintenance boot serves it as an unprivileged uid)", file: dir)
        }
    }
}
