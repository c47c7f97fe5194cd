import Crypto
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// The maintenance appliance: the host's Debian kernel and a busybox initramfs with the
/// virtio, filesystem and device-mapper modules, the LVM tool and an init script that
/// assembles a guest's root from a plan and runs the guest's own package manager in a chroot
/// (docs/patching.md). Built once per kernel, busybox and script, and kept under
/// `$WARDEN_HOME/appliance/<key>/` (0700); each boot adds a small archive with its plan.
public struct Appliance: Sendable {
    /// The kernel image (`/boot/vmlinuz-VER`).
    public var kernel: String
    public var kernelVersion: String
    /// The base initramfs (uncompressed newc cpio).
    public var initramfs: String
    /// Whether the appliance can activate LVM volume groups (the host has `lvm`).
    public var hasLVM: Bool

    public init(kernel: String, kernelVersion: String, initramfs: String, hasLVM: Bool) {
        self.kernel = kernel; self.kernelVersion = kernelVersion; self.initramfs = initramfs; self.hasLVM = hasLVM
    }

    /// The modules every boot loads (required).
    static let baseModules = ["virtio_pci", "virtio_blk", "virtio_net"]
    /// Modules loaded only when the plan needs them (`lib/modules/group-<name>`, each in load
    /// order with its dependencies): a filesystem's module costs its load time (btrfs' raid6
    /// self-benchmark, under TCG a second) only in boots that mount one. ext4 is required.
    static let moduleGroups: [(name: String, modules: [String], required: Bool)] = [
        ("ext4", ["ext4", "crc32c_generic"], true),
        ("xfs", ["xfs", "crc32c_generic"], false),
        ("vfat", ["vfat", "nls_cp437", "nls_ascii", "nls_utf8"], false),
        ("btrfs", ["btrfs"], false),
        ("dm", ["dm_mod"], false),
    ]

    /// Where a static busybox is (Debian package busybox-static).
    static func findBusybox() throws -> String {
        for p in ["/bin/busybox", "/usr/bin/busybox"] where FileManager.default.isExecutableFile(atPath: p) {
            // The static build has no program interpreter; the dynamic one (package busybox) has.
            if let h = FileHandle(forReadingAtPath: p) {
                defer { try? h.close() }
                if let head = try? h.read(upToCount: 1 << 16), Data(head).range(of: Data("/lib64/ld-linux".utf8)) != nil { continue }
            }
            return p
        }
        throw WardenError(.unavailable, "no static busybox for the maintenance appliance (Debian package busybox-static)")
    }

    /// Builds the appliance, or finds it built. `home` is Warden's state folder.
    public static func prepare(home: String, kernel requested: String? = nil) throws -> Appliance {
        let kernel: KernelModules.Kernel
        if let requested {
            let v = (requested as NSString).lastPathComponent.replacingOccurrences(of: "vmlinuz-", with: "")
            kernel = KernelModules.Kernel(image: requested, version: v)
            guard FileManager.default.fileExists(atPath: kernel.modulesDirectory + "/modules.dep") else {
                throw WardenError(.unavailable, "no modules for kernel \(v) in \(kernel.modulesDirectory)", file: requested)
            }
        } else {
            guard let k = KernelModules.newestKernel() else {
                throw WardenError(.unavailable, "no kernel with modules in /boot and /lib/modules for the maintenance appliance (Debian package linux-image-amd64)")
            }
            kernel = k
        }
        let busybox = try findBusybox()
        let modulesDep = try String(contentsOfFile: kernel.modulesDirectory + "/modules.dep", encoding: .utf8)
        let base = try KernelModules.loadOrder(baseModules, modulesDep: modulesDep)
        var groups: [(name: String, order: [String])] = []
        for g in moduleGroups {
            let order = try KernelModules.loadOrder(g.modules, modulesDep: modulesDep, optional: g.required ? [] : Set(g.modules))
            if !order.isEmpty { groups.append((g.name, order)) }
        }
        let modules = Array(Set(base + groups.flatMap(\.order))).sorted()
        let lvm = ["/usr/sbin/lvm", "/sbin/lvm"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let libraries = try lvm.map(sharedLibraries) ?? []

        // The key covers everything that goes in: a changed kernel, busybox, script or library rebuilds.
        var hash = SHA256()
        for part in [kernel.image, kernel.version, ApplianceInit.script, busybox, lvm ?? "-"] + base + groups.map { $0.name + ":" + $0.order.joined(separator: ",") } + libraries {
            hash.update(data: Data(part.utf8)); hash.update(data: Data([0]))
        }
        for file in [busybox, kernel.image] + (lvm.map { [$0] } ?? []) + libraries {
            var st = stat()
            guard stat(file, &st) == 0 else { throw WardenError(.unavailable, "cannot read \(file) for the appliance", file: file) }
            hash.update(data: Data("\(st.st_size) \(st.st_mtim.tv_sec)".utf8))
        }
        let key = Array(hash.finalize()).hexString.prefix(16)
        let dir = home + "/appliance/" + key
        let initramfs = dir + "/initramfs.cpio"
        let vmlinux = dir + "/vmlinux"
        if FileManager.default.fileExists(atPath: initramfs) {
            let k = FileManager.default.fileExists(atPath: vmlinux) ? vmlinux : kernel.image
            return Appliance(kernel: k, kernelVersion: kernel.version, initramfs: initramfs, hasLVM: lvm != nil)
        }

        var cpio = CPIOArchive()
        for d in ["bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", "sysroot", "lib", "lib/modules", "lib64", "usr", "usr/lib"] {
            try cpio.directory(d)
        }
        try cpio.file("bin/busybox", contents: try read(busybox), mode: 0o755)
        for m in modules {
            let name = (m as NSString).lastPathComponent
            guard name.hasSuffix(".ko") else {
                throw WardenError(.unsupported, "compressed kernel modules (\(name)) are not unpacked by the appliance builder yet", file: kernel.modulesDirectory)
            }
            try cpio.file("lib/modules/" + name, contents: try read(kernel.modulesDirectory + "/" + m))
        }
        func names(_ order: [String]) -> Data { Data((order.map { ($0 as NSString).lastPathComponent }.joined(separator: "\n") + "\n").utf8) }
        try cpio.file("lib/modules/load-order", contents: names(base))
        for g in groups { try cpio.file("lib/modules/group-" + g.name, contents: names(g.order)) }
        if let lvm {
            try cpio.file("sbin/lvm", contents: try read(lvm), mode: 0o755)
            var made = Set(["lib", "lib64", "usr", "usr/lib"])
            for lib in libraries {
                let rel = String(lib.dropFirst())
                var parent = ""
                for comp in rel.split(separator: "/").dropLast() {
                    parent += (parent.isEmpty ? "" : "/") + comp
                    if made.insert(parent).inserted { try cpio.directory(parent) }
                }
                try cpio.file(rel, contents: try read(lib), mode: 0o755)
            }
        }
        try cpio.file("init", contents: Data(ApplianceInit.script.utf8), mode: 0o755)

        try FileDescriptorIO.ensurePrivateDirectory(dir, what: "the appliance folder")
        // The kernel, decompressed once: an xz bzImage takes seconds to unpack itself under TCG,
        // and a kernel with PVH boots from its ELF image directly (QEMU's -kernel).
        var bootKernel = kernel.image
        if let elf = try? uncompressedKernel(kernel) {
            try FileDescriptorIO.replaceFile(vmlinux, with: Array(elf))
            bootKernel = vmlinux
        }
        // Written last: its presence means the appliance is complete.
        try FileDescriptorIO.replaceFile(initramfs, with: Array(cpio.finished()))
        removeStale(in: home + "/appliance", keeping: String(key))
        return Appliance(kernel: bootKernel, kernelVersion: kernel.version, initramfs: initramfs, hasLVM: lvm != nil)
    }

    /// The ELF kernel inside an xz- or gzip-compressed bzImage, when the kernel was built with
    /// PVH (so QEMU can boot the ELF image); nil otherwise. Decompressed by `xz` or `gzip`.
    static func uncompressedKernel(_ kernel: KernelModules.Kernel) throws -> Data? {
        let config = (try? String(contentsOfFile: "/boot/config-\(kernel.version)", encoding: .utf8)) ?? ""
        guard config.split(separator: "\n").contains("CONFIG_PVH=y") else { return nil }
        let image = try read(kernel.image)
        guard image.count < 256 << 20 else { return nil }
        let formats: [(magic: [UInt8], tool: String, package: String, args: [String])] = [
            ([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00], "xz", "xz-utils", ["-dc", "--single-stream"]),
            ([0x1F, 0x8B, 0x08], "gzip", "gzip", ["-dc"]),
        ]
        for f in formats {
            guard let r = image.range(of: Data(f.magic)) else { continue }
            let tool = try ToolProcess.find(f.tool, package: f.package)
            let tmp = NSTemporaryDirectory() + "warden-kernel-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            guard FileManager.default.createFile(atPath: tmp, contents: image[r.lowerBound...], attributes: [.posixPermissions: 0o600]) else { return nil }
            defer { unlink(tmp) }
            let out = try ToolProcess.run(tool, f.args + [tmp], timeout: 120, outputLimit: 512 << 20)
            // gzip complains about the bytes after the stream; the output is whole regardless.
            let elf = out.stdout
            guard elf.count > 1 << 20, elf.starts(with: [0x7F, 0x45, 0x4C, 0x46]) else { continue }
            return elf
        }
        return nil
    }

    /// Appliances of other keys (an older kernel, busybox or script) built more than a day ago
    /// are removed when a new one is built: a boot in progress holds its own copy of the
    /// initramfs, and a day covers a fleet run that started with the old one.
    static func removeStale(in folder: String, keeping key: String) {
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: folder)) ?? [] where name != key && name.count == 16 && name.allSatisfy(\.isHexDigit) {
            let dir = folder + "/" + name
            let used = (try? fm.attributesOfItem(atPath: dir + "/initramfs.cpio")[.modificationDate] as? Date) ?? .distantPast
            if Date().timeIntervalSince(used) > 86_400 { try? fm.removeItem(atPath: dir) }
        }
    }

    static func read(_ path: String) throws -> Data {
        do { return try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw WardenError(.io, "cannot read it for the appliance", file: path)
        }
    }

    /// The shared libraries a dynamic executable loads (ldd's resolved paths, the loader included).
    static func sharedLibraries(_ binary: String) throws -> [String] {
        let ldd = try ToolProcess.find("ldd", package: "libc-bin")
        let r = try ToolProcess.run(ldd, [binary], timeout: 30)
        guard r.status == 0 else { throw WardenError(.unavailable, "ldd \(binary): \(r.firstErrorLine)", file: binary) }
        var out: [String] = []
        for line in String(decoding: r.stdout, as: UTF8.self).split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            if let arrow = words.firstIndex(of: "=>"), arrow + 1 < words.count, words[arrow + 1].hasPrefix("/") {
                out.append(words[arrow + 1])
            } else if let first = words.first, first.hasPrefix("/") {
                out.append(first)
            }
        }
        return Array(Set(out)).sorted()
    }

}
