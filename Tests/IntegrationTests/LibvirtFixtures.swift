import Foundation
import WardenTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A real libvirtd for the hook and watch tests, and a tiny guest for it to run.
///
/// The daemon is the system one (`qemu:///system`), set up as the issue describes: qemu runs as
/// root without a security driver, `virtlogd -d` and `libvirtd -d`. The Warden hook is installed
/// with `warden libvirt install-hook` into `/etc/libvirt/hooks/qemu.d/` and points at a fixed
/// test database and policy directory under /var/tmp; libvirtd is restarted when the hook it
/// started with differs (libvirt looks for hooks only at start-up). Tests using it hold an
/// exclusive lock on /var/tmp/warden-libvirt-test.lock, so two test runs on one machine take turns.
struct LibvirtSetupError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

enum LibvirtFixture {
    static let root = "/var/tmp/warden-libvirt-test"
    static let database = root + "/warden.db"
    static let policy = root + "/policy"
    static let uri = "qemu:///system"

    /// Why the libvirt tests cannot run here, or nil when they can.
    static var skipReason: String? {
        if getuid() != 0 { return "libvirt tests need root (they configure and start the system libvirtd)" }
        for tool in ["/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/virsh", "/usr/bin/qemu-system-x86_64"]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            return "\(tool) is not installed (scripts/install-deps installs it)"
        }
        if kernel == nil { return "no /boot/vmlinuz-* kernel (linux-image-amd64)" }
        return nil
    }

    static var kernel: String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        return names.filter { $0.hasPrefix("vmlinuz-") }.sorted().last.map { "/boot/" + $0 }
    }

    nonisolated(unsafe) static var lockFD: Int32 = -1
    static let setupLock = NSLock()
    nonisolated(unsafe) static var ready = false

    /// Takes the machine-wide test lock (held until the process exits), configures and starts
    /// libvirtd with the Warden hook, and returns once `virsh` answers.
    static func start() throws {
        setupLock.lock()
        defer { setupLock.unlock() }
        if ready { return }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        lockFD = open("/var/tmp/warden-libvirt-test.lock", O_RDWR | O_CREAT, 0o644)
        guard lockFD >= 0, flock(lockFD, LOCK_EX) == 0 else { throw LibvirtSetupError(message: "cannot lock /var/tmp/warden-libvirt-test.lock") }
        // libvirt-qemu user (the Debian package makes it; a minimal image may not have it).
        if try Tool.run(["getent", "passwd", "libvirt-qemu"], check: false).status != 0 {
            try Tool.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "libvirt-qemu"])
        }
        // A minimal image may lack the daemons' log and state folders.
        for dir in ["/var/log/libvirt", "/var/lib/libvirt", "/run/libvirt", "/etc/libvirt"] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        var changed = false
        let confPath = "/etc/libvirt/qemu.conf"
        var conf = (try? String(contentsOfFile: confPath, encoding: .utf8)) ?? ""
        for line in ["user = \"root\"", "group = \"root\"", "security_driver = \"none\""] where !conf.split(separator: "\n").contains(Substring(line)) {
            conf += (conf.hasSuffix("\n") || conf.isEmpty ? "" : "\n") + line + "\n"
            changed = true
        }
        if changed { try conf.write(toFile: confPath, atomically: true, encoding: .utf8) }
        try FileManager.default.createDirectory(atPath: policy, withIntermediateDirectories: true)
        let install = try Tool.run([Fixtures.wardenBinary, "libvirt", "install-hook", "--dir", "/etc/libvirt/hooks",
                                    "--name", "50-warden-test", "--db", database, "--policy", policy])
        if install.stdoutText.hasPrefix("installed") { changed = true }
        let pid = (try? String(contentsOfFile: "/run/libvirtd.pid", encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let running = pid.map { kill($0, 0) == 0 } ?? false
        if running && changed, let pid {
            // Restart the daemon this fixture started, so it sees the new hook and configuration.
            kill(pid, SIGTERM)
            for _ in 0..<300 where kill(pid, 0) == 0 { usleep(100_000) }
            // A daemon that does not stop in 30 s (a loaded machine) is killed, so the new
            // one can take the pid file.
            if kill(pid, 0) == 0 {
                kill(pid, SIGKILL)
                for _ in 0..<50 where kill(pid, 0) == 0 { usleep(100_000) }
            }
        }
        if try Tool.run(["pgrep", "-x", "virtlogd"], check: false).status != 0 {
            // Daemons must not inherit the test's pipes (Tool.run would wait for them to close).
            try Tool.sh("virtlogd -d </dev/null >/dev/null 2>&1")
        }
        if !running || changed {
            // Retried: the old daemon's pid file lock can outlive it briefly.
            var started = false
            for attempt in 0..<5 where !started {
                if attempt > 0 { usleep(1_000_000) }
                started = try Tool.run(["bash", "-c", "libvirtd -d </dev/null >/dev/null 2>&1"], check: false).status == 0
            }
            if !started { try Tool.sh("libvirtd -d </dev/null >/dev/null 2>&1") }
        }
        // The daemons are stopped when the test process exits, passed or failed (they keep no
        // state the next run needs: it starts them again).
        atexit {
            for pidFile in ["/run/libvirtd.pid", "/run/virtlogd.pid"] {
                guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
                      let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else { continue }
                kill(pid, SIGTERM)
                for _ in 0..<100 where kill(pid, 0) == 0 { usleep(50_000) }
                if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
            }
        }
        for _ in 0..<100 {
            if try Tool.run(["virsh", "-c", uri, "version"], check: false).status == 0 { ready = true; return }
            usleep(200_000)
        }
        throw LibvirtSetupError(message: "libvirtd does not answer: " + (try Tool.run(["virsh", "-c", uri, "version"], check: false)).stderr)
    }

    /// A busybox initramfs whose init mounts /proc and sleeps (the guest only has to run).
    static func initramfs() throws -> String {
        let busybox = "/bin/busybox"
        let recipe = "busybox initramfs v1; \(busybox) \((try? FileManager.default.attributesOfItem(atPath: busybox)[.size] as? Int) ?? 0)"
        let dir = try Fixtures.cached("libvirt-initramfs", recipe: recipe) { dir in
            try Tool.sh("""
            set -e
            R=\(dir)/root
            mkdir -p $R/bin $R/proc $R/sys $R/dev
            cp \(busybox) $R/bin/busybox
            ln -s busybox $R/bin/sh
            cat > $R/init <<'EOF'
            #!/bin/busybox sh
            /bin/busybox mount -t proc proc /proc
            /bin/busybox echo WARDEN-TEST-GUEST-UP
            while true; do /bin/busybox sleep 3600; done
            EOF
            chmod 755 $R/init
            cd $R && find . | cpio -o -H newc --quiet | gzip -1 > \(dir)/initramfs.cpio.gz
            rm -rf $R
            """)
        }
        return dir + "/initramfs.cpio.gz"
    }

    /// A domain definition: `type='qemu'`, Debian's kernel booted directly, one small qcow2 disk.
    static func domainXML(name: String, uuid: UUID, disk: String, tap: String? = nil) throws -> String {
        """
        <domain type='qemu'>
          <name>\(name)</name>
          <uuid>\(uuid.uuidString.lowercased())</uuid>
          <memory unit='MiB'>128</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
            <kernel>\(kernel ?? "")</kernel>
            <initrd>\(try initramfs())</initrd>
            <cmdline>console=ttyS0 quiet panic=-1</cmdline>
          </os>
          <features><acpi/></features>
          <on_poweroff>destroy</on_poweroff>
          <on_crash>destroy</on_crash>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2'/>
              <source file='\(disk)'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <serial type='pty'/>
            <console type='pty'/>\(tap.map { "\n    <interface type='ethernet'><target dev='\($0)' managed='yes'/><model type='virtio'/></interface>" } ?? "")
          </devices>
        </domain>
        """
    }

    /// Defines a fresh domain (removing an old one of that name) with its own disk; returns its UUID.
    static func define(_ name: String, uuid: UUID = UUID(), tap: String? = nil) throws -> UUID {
        try undefine(name)
        let disk = root + "/\(name).qcow2"
        try? FileManager.default.removeItem(atPath: disk)
        try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"])
        let xmlPath = root + "/\(name).xml"
        try domainXML(name: name, uuid: uuid, disk: disk, tap: tap).write(toFile: xmlPath, atomically: true, encoding: .utf8)
        try virsh(["define", xmlPath])
        return uuid
    }

    /// Destroys and undefines `name` (with its snapshots' metadata) if it exists.
    static func undefine(_ name: String) throws {
        _ = try virsh(["destroy", name], check: false)
        _ = try virsh(["undefine", name, "--snapshots-metadata", "--managed-save"], check: false)
    }

    @discardableResult
    static func virsh(_ args: [String], check: Bool = true) throws -> ToolResult {
        try Tool.run(["virsh", "-c", uri] + args, check: check)
    }

    static func state(_ name: String) throws -> String {
        try virsh(["domstate", name]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Writes the test policy (replacing any other) and starts from an empty ledger.
    static func reset(policy text: String) throws {
        let fm = FileManager.default
        for f in (try? fm.contentsOfDirectory(atPath: policy)) ?? [] { try fm.removeItem(atPath: policy + "/" + f) }
        try text.write(toFile: policy + "/policy.yaml", atomically: true, encoding: .utf8)
        for suffix in ["", "-wal", "-shm"] { try? fm.removeItem(atPath: database + suffix) }
        for f in (try? fm.contentsOfDirectory(atPath: root)) ?? [] where f.hasPrefix("keys") || f.hasSuffix(".witness") || f == "vault" {
            try? fm.removeItem(atPath: root + "/" + f)
        }
    }
}
