import Foundation
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
    public init() {}
}

/// One disk as QEMU gets it.
public struct LaunchDisk: Sendable, Equatable {
    public var path: String
    public var format: String
    public init(path: String, format: String) { self.path = path; self.format = format }
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
            "-nodefaults", "-sandbox", "on", "-display", "none", "-no-user-config",
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
            a += ["-blockdev", "driver=file,filename=\(escapeOption(d.path)),node-name=\(node)-file",
                  "-blockdev", "driver=\(d.format),file=\(node)-file,node-name=\(node)",
                  "-device", "virtio-blk-pci,drive=\(node)"]
        }
        if let k = options.kernel { a += ["-kernel", k] }
        if let i = options.initrd { a += ["-initrd", i] }
        if let ap = options.append { a += ["-append", ap] }
        if let s = loadSnapshot { a += ["-loadvm", s] }
        if daemonize { a += ["-daemonize", "-pidfile", run.pidFile] }
        return a
    }

    /// QEMU's option syntax doubles commas inside a value.
    static func escapeOption(_ s: String) -> String { s.replacingOccurrences(of: ",", with: ",,") }

    /// Runs QEMU with `-daemonize` (it forks, calls setsid, writes the pid file, and its first
    /// process exits once the VM is set up) and returns the pid. A failure to start throws with
    /// QEMU's own message from `qemu.log`.
    public static func launch(binary: String, arguments: [String], run: RunDirectory) throws -> pid_t {
        unlink(run.pidFile)
        FileManager.default.createFile(atPath: run.qemuLog, contents: nil, attributes: [.posixPermissions: 0o600])
        guard let log = FileHandle(forWritingAtPath: run.qemuLog) else {
            throw WardenError(.io, "cannot write the QEMU log", file: run.qemuLog)
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try resolve(binary))
        p.arguments = arguments
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = log
        p.standardError = log
        do { try p.run() } catch {
            throw WardenError(.unavailable, "cannot run \(binary): \(error.localizedDescription)")
        }
        p.waitUntilExit()
        try? log.close()
        if p.terminationStatus != 0 {
            let text = (try? String(contentsOfFile: run.qemuLog, encoding: .utf8)) ?? ""
            let first = text.split(separator: "\n").first.map(String.init) ?? "exit status \(p.terminationStatus)"
            throw WardenError(.unavailable, "QEMU did not start: \(first)", file: run.qemuLog)
        }
        guard let pid = RunDirectory.readPid(run.pidFile) else {
            throw WardenError(.internal, "QEMU started but wrote no pid file", file: run.pidFile)
        }
        return pid
    }

    /// Finds `name` on PATH (an absolute path is taken as is).
    static func resolve(_ name: String) throws -> String {
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
