import Foundation
import DiskImage
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// How a VM is launched: what `vm start` was given, saved in the run directory's
/// `launch.json` so a rollback restarts QEMU the same way.
public struct LaunchOptions: Codable, Sendable, Equatable {
    public var version = 1
    public var memoryMiB: Int = 512
    public var cpus: Int = 1
    public var kernel: String?
    public var initrd: String?
    public var append: String?
    /// `auto` (KVM when /dev/kvm really works, else TCG), `kvm` or `tcg`.
    public var accel: String = "auto"
    public var qemuBinary: String = "qemu-system-x86_64"
    /// Network interfaces: taps on the host (nil or empty: the guest has no network).
    public var nics: [NIC]?
    /// Confine QEMU (``Confinement``): nil means yes when Warden runs as root.
    public var confined: Bool?
    /// Give the guest its own TPM 2.0 (``VTPM``).
    public var tpm: Bool?
    /// Boot UEFI firmware with the VM's own variable store (``NVRAM``) instead of SeaBIOS.
    public var uefi: Bool?
    public init() {}

    /// Whether this launch confines QEMU.
    public var confines: Bool { confined ?? Confinement.available }
}

/// One disk as QEMU gets it.
public struct LaunchDisk: Sendable, Equatable {
    public var path: String
    public var format: String
    /// For an encrypted qcow2: the file QEMU reads its LUKS passphrase from (base64).
    public var secretFile: String?
    public init(path: String, format: String, secretFile: String? = nil) { self.path = path; self.format = format; self.secretFile = secretFile }
    /// The block node name of disk `index` (QMP snapshot-save names nodes).
    public static func nodeName(_ index: Int) -> String { "disk\(index)" }
}

/// Builds QEMU command lines and launches QEMU in the background.
public enum QEMULauncher {
    /// Whether KVM really works here: `/dev/kvm` opens read-write and `KVM_GET_API_VERSION` answers 12.
    public static func kvmUsable(device: String = "/dev/kvm") -> Bool {
        let fd = open(device, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        // KVM_GET_API_VERSION = _IO(0xAE, 0x00)
        let version = ioctl(fd, UInt(0xAE00))
        return version == 12
    }

    /// The accelerator to use for `options.accel`.
    public static func accelerator(_ requested: String) throws -> String {
        switch requested {
        case "auto": return kvmUsable() ? "kvm" : "tcg"
        case "tcg": return "tcg"
        case "kvm":
            guard kvmUsable() else { throw WardenError(.unavailable, "KVM was asked for but /dev/kvm does not work here", file: "/dev/kvm") }
            return "kvm"
        default: throw WardenError(.invalidArgument, "unknown accelerator \(requested) (auto, kvm, tcg)")
        }
    }

    /// The QEMU arguments (without the binary) for a VM.
    ///
    /// - Parameter loadSnapshot: restore this internal snapshot at start (`-loadvm`).
    public static func arguments(vm: VMID, name: String, generation: UUID, disks: [LaunchDisk], options: LaunchOptions,
                                 accel: String, run: RunDirectory, loadSnapshot: String? = nil, daemonize: Bool = true) -> [String] {
        var a: [String] = [
            "-name", "warden-\(vm)",
            "-nodefaults", "-sandbox", options.confines ? Confinement.sandbox : "on", "-display", "none", "-no-user-config",
            "-accel", accel,
            "-m", "\(options.memoryMiB)", "-smp", "\(options.cpus)",
            "-qmp", "unix:\(escapeOption(run.qmpSocket)),server=on,wait=off",
            "-chardev", "file,id=serial0,path=\(escapeOption(run.serialLog)),append=on",
            "-serial", "chardev:serial0",
            "-device", "vmgenid,guid=\(generation.uuidString.lowercased())",
            "-object", "rng-random,filename=/dev/urandom,id=rng0",
            "-device", "virtio-rng-pci,rng=rng0",
            "-chardev", "socket,path=\(escapeOption(run.stateSocket)),server=on,wait=off,id=wstate",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=wstate,name=org.warden.state",
        ]
        for (i, d) in disks.enumerated() {
            let node = LaunchDisk.nodeName(i)
            // qemu's driver name (a VHD is `vpc`).
            let driver = ImageFormat(rawValue: d.format)?.qemuName ?? d.format
            var format = "driver=\(driver),file=\(node)-file,node-name=\(node)"
            if let secret = d.secretFile {
                a += ["-object", "secret,id=\(node)-key,file=\(escapeOption(secret)),format=raw"]
                format += ",encrypt.format=luks,encrypt.key-secret=\(node)-key"
            }
            a += ["-blockdev", "driver=file,filename=\(escapeOption(d.path)),node-name=\(node)-file",
                  "-blockdev", format,
                  "-device", "virtio-blk-pci,drive=\(node)"]
        }
        for (i, nic) in (options.nics ?? []).enumerated() {
            // Names and MAC were checked (NIC.validated): nothing here needs escaping.
            a += ["-netdev", "tap,id=net\(i),ifname=\(nic.tap),script=no,downscript=no",
                  "-device", "virtio-net-pci,netdev=net\(i),mac=\(nic.mac)"]
        }
        if let k = options.kernel { a += ["-kernel", k] }
        if let i = options.initrd { a += ["-initrd", i] }
        if let ap = options.append { a += ["-append", ap] }
        if options.tpm == true { a += VTPM.qemuArguments(run) }
        if options.uefi == true { a += NVRAM.qemuArguments(run: run) }
        if let s = loadSnapshot { a += ["-loadvm", s] }
        if options.confines { a += Confinement.qemuArguments(vm: vm, run: run) }
        if daemonize { a += ["-daemonize", "-pidfile", run.pidFile] }
        return a
    }

    /// QEMU's option syntax doubles commas inside a value.
    public static func escapeOption(_ s: String) -> String { s.replacingOccurrences(of: ",", with: ",,") }

    /// Runs QEMU with `-daemonize` (it forks, calls setsid, writes the pid file, and its first
    /// process exits once the VM is set up) and returns the pid. A failure to start throws with
    /// QEMU's own message from `qemu.log`.
    public static func launch(binary: String, arguments: [String], run: RunDirectory, wrapper: [String] = []) throws -> pid_t {
        unlink(run.pidFile)
        // posix_spawn + waitpid, not Foundation.Process: Process notices a child's exit when
        // every copy of an inherited socket closes, and QEMU's daemon child would keep it open.
        let child = try Spawn.spawn(wrapper + [try resolve(binary)] + arguments, log: run.qemuLog, newSession: false, truncate: true)
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7f == 0, code = (status >> 8) & 0xff
        if !exited || code != 0 {
            let text = (try? String(contentsOfFile: run.qemuLog, encoding: .utf8)) ?? ""
            let first = text.split(separator: "\n").first.map(String.init) ?? "exit status \(code)"
            throw WardenError(.unavailable, "QEMU did not start: \(first)", file: run.qemuLog)
        }
        guard let pid = RunDirectory.readPid(run.pidFile) else {
            throw WardenError(.internal, "QEMU started but wrote no pid file", file: run.pidFile)
        }
        return pid
    }

    /// Finds `name` on PATH (an absolute path is taken as is).
    public static func resolve(_ name: String) throws -> String {
        if name.hasPrefix("/") { return name }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") + ["/usr/bin", "/usr/sbin"] {
            let c = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: c) { return c }
        }
        throw WardenError(.unavailable, "\(name) is not installed (package qemu-system-x86)")
    }

    /// Waits until `pid` is gone (up to `timeout`); true when it is.
    public static func waitForExit(_ pid: pid_t, qmpSocket: String, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if !RunDirectory.processMentions(pid, qmpSocket) { return true }
            usleep(50_000)
        } while Date() < deadline
        return !RunDirectory.processMentions(pid, qmpSocket)
    }
}

/// posix_spawn with only stdin (/dev/null), stdout and stderr (a log file) passed on: every other
/// descriptor of this process is closed in the child, so QEMU and the state server never hold
/// Warden's database, lock or pipe descriptors.
public enum Spawn {
    /// `pass` hands descriptors on: each source (this process's) becomes the target number in
    /// the child; every other descriptor above 2 is closed there.
    public static func spawn(_ argv: [String], log: String, newSession: Bool, truncate: Bool = false, pass: [(source: Int32, target: Int32)] = []) throws -> pid_t {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        if newSession {
            posix_spawnattr_setflags(&attr, Int16(0x80))  // POSIX_SPAWN_SETSID (glibc ≥ 2.26; a GNU macro Swift does not import)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | (truncate ? O_TRUNC : O_APPEND), 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Sources first go to high numbers (so no target overwrites a source still to be moved),
        // then to their targets; dup2 to another number leaves the copy without close-on-exec.
        var high: [(Int32, Int32)] = []
        defer { for (h, _) in high { close(h) } }
        for p in pass {
            let h = fcntl(p.source, F_DUPFD_CLOEXEC, 200)
            guard h >= 0 else { throw WardenError(.io, "cannot pass a descriptor to \(argv[0])") }
            high.append((h, p.target))
        }
        for (h, target) in high { posix_spawn_file_actions_adddup2(&actions, h, target) }
        let keep = Set(pass.map(\.target))
        let fds = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
        for fd in fds where fd > 2 && !keep.contains(fd) && !high.contains(where: { $0.0 == fd }) && fcntl(fd, F_GETFD) >= 0 {
            posix_spawn_file_actions_addclose(&actions, fd)
        }
        for (h, _) in high { posix_spawn_file_actions_addclose(&actions, h) }
        var cargs = argv.map { strdup($0) }
        cargs.append(nil)
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let r = posix_spawn(&pid, argv[0], &actions, &attr, cargs, environ)
        guard r == 0 else {
            throw WardenError(.unavailable, "cannot start \(argv[0]): \(String(cString: strerror(r)))")
        }
        return pid
    }
}
