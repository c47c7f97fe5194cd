import Foundation
import WardenCore

/// A tiny bootable test guest for real-QEMU tests (software emulation is enough):
/// Debian's own kernel from the host's `/boot` (package linux-image-amd64, which has
/// `CONFIG_VMGENID=y`) and a busybox initramfs built at test time.
///
/// The initramfs carries the virtio modules the kernel needs (virtio_pci, virtio_console,
/// virtio_rng, virtio_blk and their dependencies, resolved from `modules.dep`), the guest
/// state-port client (`share/guest/warden-state.sh` as `/bin/warden-state`) and an init
/// script that:
/// - loads the modules, mounts proc, sys and dev;
/// - reads `/dev/random` once, so the crng is initialised (the kernel's
///   `crng reseeded due to virtual machine fork` appears only after that);
/// - prints `WARDEN-GUEST-READY` on the serial console, then `WARDEN-TICK <uptime>` every second;
/// - with `warden.counter=NAME` on the kernel command line, asks the state port for the next
///   value of counter NAME every second and prints `WARDEN-COUNTER NAME=<value>`;
/// - with `warden.probe=1`, prints `WARDEN-GEN <generation>` and `WARDEN-RANDOM <32 hex digits>`
///   from the state port once (while the counter loop may hold the port: the client retries);
/// - with `warden.bench=N`, times N counter round trips (busybox `adjtimex`, µs) and prints
///   `WARDEN-RTT-US <µs>` for each, then `WARDEN-BENCH-DONE`;
/// - with `warden.readdisk=1`, prints `WARDEN-DISK <the first 32 bytes of /dev/vda>` (bytes
///   other than letters, digits and `-` as `.`);
/// - with `warden.diskotp=N`, issues N one-time-password counter values kept on its disk: reads
///   the decimal number in the first 16 bytes of `/dev/vda` (none: 0), prints `WARDEN-DISK-OTP <n>`,
///   writes n + 1 back (fsync), N times, then `WARDEN-DISK-OTP-DONE` (scenario S4);
/// - with `warden.wipedisk=1`, overwrites the first 4 KiB of `/dev/vda` with zeros and prints
///   `WARDEN-WIPED` (scenario S11);
/// - with `warden.urandom=1`, prints `WARDEN-URANDOM <32 hex digits>` read from `/dev/urandom`
///   every 0.2 s (scenario S5);
/// - with `warden.halt=1` (after the options it should act on), powers off;
/// - with `warden.net=ADDR/LEN`, brings up its NIC (virtio-net, `eth0`) with that address;
/// - with `warden.fetch=URL,URL…` (after `warden.net`), fetches each URL with busybox wget (up to
///   3 tries of 3 s: a fresh link may still be settling) and prints `WARDEN-FETCH <url> ok <body>` or `WARDEN-FETCH <url> fail <wget's error>`, then
///   `WARDEN-FETCH-DONE`.
///
/// The kernel logs at `loglevel=6`, so notices (the reseed message) reach the serial console.
public struct TestGuest: Sendable {
    public var kernel: String
    public var initrd: String
    public var kernelVersion: String

    /// The kernel command line for `--append`; `extra` adds `warden.*` options.
    public func append(_ extra: String = "") -> String {
        "console=ttyS0 loglevel=6 panic=-1 " + extra
    }

    /// The modules the guest loads (module names as `modprobe` spells them).
    public static let wantedModules = ["virtio_pci", "virtio_console", "virtio_rng", "virtio_blk", "virtio_net"]

    /// Why a test guest cannot be built here, or nil when it can.
    public static var unavailableReason: String? {
        for tool in ["/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-img", "/usr/bin/cpio"] where !FileManager.default.isExecutableFile(atPath: tool) {
            return "\(tool) is not installed (scripts/install-deps)"
        }
        if busybox == nil { return "no static busybox (package busybox-static)" }
        if (try? findKernel()) == nil { return "no Debian kernel with modules in /boot and /lib/modules (package linux-image-amd64)" }
        return nil
    }

    static var busybox: String? {
        for p in ["/bin/busybox", "/usr/bin/busybox"] where FileManager.default.isExecutableFile(atPath: p) {
            if let r = try? Tool.run(["file", "-L", p], check: false), r.stdoutText.contains("dynamically") { continue }
            return p
        }
        return nil
    }

    /// The newest `/boot/vmlinuz-VER` with `/lib/modules/VER/modules.dep` and `CONFIG_VMGENID=y`.
    static func findKernel() throws -> (path: String, version: String) {
        guard let k = KernelModules.newestKernel(requiring: "CONFIG_VMGENID=y") else { throw TestGuestError("no usable kernel in /boot") }
        return (k.image, k.version)
    }

    /// The repository's `share/guest/warden-state.sh`.
    public static var stateClientPath: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("share/guest/warden-state.sh").path
    }

    static let initScript = #"""
    #!/bin/busybox sh
    /bin/busybox --install -s /bin
    export PATH=/bin
    mount -t proc proc /proc
    mount -t sysfs sys /sys
    mount -t devtmpfs dev /dev
    while read -r m; do insmod "/lib/modules/$m" || echo "WARDEN-GUEST-ERROR insmod $m"; done < /lib/modules/load-order
    # Initialise the crng: the vmgenid reseed only happens once it is.
    dd if=/dev/random of=/dev/null bs=16 count=1 2>/dev/null
    echo "WARDEN-GUEST-READY $(cat /proc/sys/kernel/random/boot_id)"
    (n=0; while :; do n=$((n + 1)); echo "WARDEN-TICK $n $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done) &
    for opt in $(cat /proc/cmdline); do
        case "$opt" in
            warden.counter=*)
                name=${opt#warden.counter=}
                (while :; do
                    if v=$(timeout 10 warden-state counter "$name"); then echo "WARDEN-COUNTER $name=$v"
                    else echo "WARDEN-COUNTER-ERROR $name"; fi
                    sleep 1
                done) & ;;
            warden.probe=1)
                (echo "WARDEN-GEN $(warden-state generation)"
                 echo "WARDEN-RANDOM $(warden-state random 16)") & ;;
            warden.bench=*)
                n=${opt#warden.bench=}
                usec() { adjtimex | awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {printf "%d%06d\n", s, u}'; }
                i=0
                while [ "$i" -lt "$n" ]; do
                    a=$(usec); warden-state counter bench >/dev/null; b=$(usec)
                    echo "WARDEN-RTT-US $((b - a))"; i=$((i + 1))
                done
                echo "WARDEN-BENCH-DONE" ;;
            warden.readdisk=1)
                echo "WARDEN-DISK $(head -c 32 /dev/vda | tr -c 'A-Za-z0-9-' '.')" ;;
            warden.diskotp=*)
                i=0
                while [ "$i" -lt "${opt#warden.diskotp=}" ]; do
                    v=$(head -c 16 /dev/vda | tr -cd '0-9' | sed 's/^0*//'); v=${v:-0}
                    echo "WARDEN-DISK-OTP $v"
                    printf '%016d' $((v + 1)) | dd of=/dev/vda bs=16 count=1 conv=notrunc,fsync 2>/dev/null
                    i=$((i + 1))
                done
                echo "WARDEN-DISK-OTP-DONE" ;;
            warden.wipedisk=1)
                dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=notrunc,fsync 2>/dev/null && echo "WARDEN-WIPED" ;;
            warden.urandom=1)
                (while :; do echo "WARDEN-URANDOM $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"; usleep 200000; done) & ;;
            warden.halt=1)
                sync; poweroff -f ;;
            warden.net=*)
                ip link set eth0 up && ip addr add "${opt#warden.net=}" dev eth0 && echo "WARDEN-NET-UP ${opt#warden.net=}" ;;
            warden.fetch=*)
                urls=${opt#warden.fetch=}
                (sleep 1
                 for u in $(echo "$urls" | tr ',' ' '); do
                     r="fail"
                     for try in 1 2 3; do
                         # (not wget -T: Debian's static busybox crashes on it)
                         if body=$(timeout 3 wget -q -O - "$u" 2>/run/wget.err); then r="ok $body"; break; fi
                         r="fail $(tail -n 1 /run/wget.err)"
                     done
                     echo "WARDEN-FETCH $u $r"
                 done
                 echo "WARDEN-FETCH-DONE") & ;;
        esac
    done
    while :; do sleep 3600; done
    """#

    /// Builds (or finds in the fixture cache) the kernel and initramfs.
    public static func build() throws -> TestGuest {
        if let why = unavailableReason { throw TestGuestError(why) }
        let (kernel, version) = try findKernel()
        let bb = busybox!
        let client = try String(contentsOfFile: stateClientPath, encoding: .utf8)
        let modulesDep = try String(contentsOfFile: "/lib/modules/\(version)/modules.dep", encoding: .utf8)
        let modules = try KernelModules.loadOrder(wantedModules, modulesDep: modulesDep)
        let bbSize = (try? FileManager.default.attributesOfItem(atPath: bb)[.size] as? Int) ?? 0
        let recipe = [version, "\(bbSize)", modules.joined(separator: ","), initScript, client].joined(separator: "\u{1}")
        let dir = try Fixtures.cached("test-guest", recipe: recipe) { dir in
            let root = dir + "/root"
            let fm = FileManager.default
            for d in ["bin", "dev", "proc", "sys", "run", "lib/modules", "etc"] {
                try fm.createDirectory(atPath: root + "/" + d, withIntermediateDirectories: true)
            }
            try fm.copyItem(atPath: bb, toPath: root + "/bin/busybox")
            var order: [String] = []
            for m in modules {
                let src = "/lib/modules/\(version)/\(m)"
                var name = (m as NSString).lastPathComponent
                if name.hasSuffix(".xz") {
                    name = String(name.dropLast(3))
                    let r = try Tool.run(["xz", "-dc", src])
                    try r.stdout.write(to: URL(fileURLWithPath: root + "/lib/modules/" + name))
                } else if name.hasSuffix(".zst") {
                    name = String(name.dropLast(4))
                    let r = try Tool.run(["zstd", "-dcq", src])
                    try r.stdout.write(to: URL(fileURLWithPath: root + "/lib/modules/" + name))
                } else {
                    try fm.copyItem(atPath: src, toPath: root + "/lib/modules/" + name)
                }
                order.append(name)
            }
            try (order.joined(separator: "\n") + "\n").write(toFile: root + "/lib/modules/load-order", atomically: true, encoding: .utf8)
            try initScript.write(toFile: root + "/init", atomically: true, encoding: .utf8)
            try client.write(toFile: root + "/bin/warden-state", atomically: true, encoding: .utf8)
            try Tool.run(["chmod", "0755", root + "/init", root + "/bin/warden-state"])
            try Tool.sh("cd '\(root)' && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz")
            try fm.copyItem(atPath: kernel, toPath: dir + "/vmlinuz")
            try fm.removeItem(atPath: root)
        }
        return TestGuest(kernel: dir + "/vmlinuz", initrd: dir + "/initrd.gz", kernelVersion: version)
    }

    /// Creates a small empty qcow2 data disk at `path`.
    public static func makeDataDisk(_ path: String, size: String = "16M") throws {
        try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", path, size])
    }
}

public struct TestGuestError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
