import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// How `warden vm start` confines QEMU (docs/vmm-hardening.md): QEMU opens what the VM needs —
/// disks, secrets, kernel, sockets, taps, /dev/kvm — as root, then, before the guest runs,
/// changes to a **uid and gid of the VM's own** (no account, no capabilities, no-new-privs),
/// **chroots into an empty directory** (any later open of a path fails), runs under **seccomp**
/// (`-sandbox on,obsolete=deny,resourcecontrol=deny`), in **mount, IPC and UTS namespaces of
/// its own** (`unshare`), and in a **cgroup** with the VM's memory and CPU limits. Confinement
/// needs root; as another user QEMU runs as that user, unconfined, and the start says so.
public enum Confinement {
    /// The uid and gid QEMU runs as for `vm`: derived from its id into a range no login account
    /// uses (2,100,000,000 + up to 90 million), so two VMs never share one and can neither signal
    /// nor trace each other.
    public static func uid(for vm: VMID) -> UInt32 {
        let u = vm.uuid.uuid
        let n = UInt32(u.0) << 24 | UInt32(u.1) << 16 | UInt32(u.2) << 8 | UInt32(u.3)
        return 2_100_000_000 + n % 90_000_000
    }

    /// Whether this process can confine QEMU: root, with util-linux's `unshare`.
    public static var available: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: unshare)
    }

    static let unshare = "/usr/bin/unshare"

    /// QEMU 7.2 installs its seccomp filter before it daemonizes and drops to `-runas`, so the
    /// filter has to allow fork and setuid (`spawn` and `elevateprivileges` stay allowed); after
    /// the drop the process has no capabilities and no-new-privs, so neither can raise it again.
    public static let sandbox = "on,obsolete=deny,resourcecontrol=deny"

    /// The arguments that confine QEMU itself.
    static func qemuArguments(vm: VMID, run: RunDirectory) -> [String] {
        let id = uid(for: vm)
        return ["-runas", "\(id):\(id)", "-chroot", run.chrootDirectory]
    }

    /// The program QEMU is started under: new mount (private propagation), IPC and UTS namespaces.
    public static var wrapper: [String] { [unshare, "--mount", "--propagation", "private", "--ipc", "--uts", "--"] }

    /// The empty directory QEMU is chrooted into: root-owned, 0555, emptied if anything was put there.
    static func prepareChroot(_ run: RunDirectory) throws {
        let dir = run.chrootDirectory
        var st = stat()
        if lstat(dir, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFDIR, st.st_uid == 0 else {
                throw WardenError(.conflict, "the chroot directory is not a root-owned directory", file: dir)
            }
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                try FileManager.default.removeItem(atPath: dir + "/" + name)
            }
        } else {
            guard mkdir(dir, 0o555) == 0 else { throw WardenError(.io, "cannot make the chroot directory: \(String(cString: strerror(errno)))", file: dir) }
        }
        chmod(dir, 0o555)
    }

    /// Puts `pid` into a cgroup of the VM's own with its memory (guest RAM plus 256 MiB for QEMU)
    /// and CPU (its vCPUs' worth) limits: cgroup v2 when the host has it, else v1's memory and
    /// cpu controllers. Returns the cgroup's path, or why it could not (the VM runs without).
    public static func limit(pid: pid_t, vm: VMID, options: LaunchOptions) -> Result<String, WardenError> {
        let memory = UInt64(options.memoryMiB + 256) << 20
        let quota = 100_000 * max(1, options.cpus)
        let name = "warden/vm-\(vm)"
        func write(_ path: String, _ value: String) throws {
            do { try value.write(toFile: path, atomically: false, encoding: .utf8) } catch {
                throw WardenError(.unavailable, "cannot write \(value.trimmingCharacters(in: .whitespaces)) to the cgroup", file: path)
            }
        }
        do {
            if FileManager.default.fileExists(atPath: "/sys/fs/cgroup/cgroup.controllers") {
                let parent = "/sys/fs/cgroup/warden", dir = "/sys/fs/cgroup/" + name
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                try? write("/sys/fs/cgroup/cgroup.subtree_control", "+memory +cpu")
                try write(parent + "/cgroup.subtree_control", "+memory +cpu")
                try write(dir + "/memory.max", "\(memory)")
                try write(dir + "/cpu.max", "\(quota) 100000")
                try write(dir + "/cgroup.procs", "\(pid)")
                return .success(dir)
            }
            let mem = "/sys/fs/cgroup/memory/" + name, cpu = "/sys/fs/cgroup/cpu/" + name
            guard FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/memory.limit_in_bytes") else {
                return .failure(WardenError(.unavailable, "no cgroup v2 and no v1 memory controller at /sys/fs/cgroup"))
            }
            try FileManager.default.createDirectory(atPath: mem, withIntermediateDirectories: true)
            try write(mem + "/memory.limit_in_bytes", "\(memory)")
            try write(mem + "/cgroup.procs", "\(pid)")
            if FileManager.default.fileExists(atPath: "/sys/fs/cgroup/cpu/cpu.cfs_quota_us") {
                try FileManager.default.createDirectory(atPath: cpu, withIntermediateDirectories: true)
                try write(cpu + "/cpu.cfs_period_us", "100000")
                try write(cpu + "/cpu.cfs_quota_us", "\(quota)")
                try write(cpu + "/cgroup.procs", "\(pid)")
            }
            return .success(mem)
        } catch let e as WardenError {
            return .failure(e)
        } catch {
            return .failure(WardenError(.unavailable, "cannot make the VM's cgroup: \(error)"))
        }
    }

    /// Removes the VM's cgroups once QEMU has gone (quietly: they may not exist). A QEMU that
    /// has exited stays in its cgroup until its parent reaps it, so busy groups are retried for
    /// up to two seconds; one left behind is reused by the next start.
    public static func removeCgroups(vm: VMID) {
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu"] {
            let dir = root + "/warden/vm-\(vm)"
            for _ in 0..<40 {
                if rmdir(dir) == 0 || errno == ENOENT { break }
                usleep(50_000)
            }
        }
    }
}
