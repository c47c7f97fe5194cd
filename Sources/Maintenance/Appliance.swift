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

    /// The modules the appliance loads when the kernel has them; the first five are required.
    static let requiredModules = ["virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic"]
    static let optionalModules = ["xfs", "vfat", "nls_cp437", "nls_ascii", "btrfs", "dm_mod", "af_packet"]

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
        let modules = try KernelModules.loadOrder(requiredModules + optionalModules, modulesDep: modulesDep, optional: Set(optionalModules))
        let lvm = ["/usr/sbin/lvm", "/sbin/lvm"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let libraries = try lvm.map(sharedLibraries) ?? []

        // The key covers everything that goes in: a changed kernel, busybox, script or library rebuilds.
        var hash = SHA256()
        for part in [kernel.image, kernel.version, ApplianceInit.script, busybox, lvm ?? "-"] + modules + libraries {
            hash.update(data: Data(part.utf8)); hash.update(data: Data([0]))
        }
        for file in [busybox] + (lvm.map { [$0] } ?? []) + libraries {
            var st = stat()
            guard stat(file, &st) == 0 else { throw WardenError(.unavailable, "cannot read \(file) for the appliance", file: file) }
            hash.update(data: Data("\(st.st_size) \(st.st_mtim.tv_sec)".utf8))
        }
        let key = Array(hash.finalize()).hexString.prefix(16)
        let dir = home + "/appliance/" + key
        let initramfs = dir + "/initramfs.cpio"
        if FileManager.default.fileExists(atPath: initramfs) {
            return Appliance(kernel: kernel.image, kernelVersion: kernel.version, initramfs: initramfs, hasLVM: lvm != nil)
        }

        var cpio = CPIOArchive()
        for d in ["bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", "sysroot", "lib", "lib/modules", "lib64", "usr", "usr/lib"] {
            try cpio.directory(d)
        }
        try cpio.file("bin/busybox", contents: try read(busybox), mode: 0o755)
        var order: [String] = []
        for m in modules {
            let name = (m as NSString).lastPathComponent
            guard name.hasSuffix(".ko") else {
                throw WardenError(.unsupported, "compressed kernel modules (\(name)) are not unpacked by the appliance builder yet", file: kernel.modulesDirectory)
            }
            try cpio.file("lib/modules/" + name, contents: try read(kernel.modulesDirectory + "/" + m))
            order.append(name)
        }
        try cpio.file("lib/modules/load-order", contents: Data((order.joined(separator: "\n") + "\n").utf8))
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
        try FileDescriptorIO.replaceFile(initramfs, with: Array(cpio.finished()))
        return Appliance(kernel: kernel.image, kernelVersion: kernel.version, initramfs: initramfs, hasLVM: lvm != nil)
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
            let words = line.split(separator: " ").map(String.init)
            if let arrow = words.firstIndex(of: "=>"), arrow + 1 < words.count, words[arrow + 1].hasPrefix("/") {
                out.append(words[arrow + 1])
            } else if let first = words.first, first.hasPrefix("/") {
                out.append(first)
            }
        }
        return Array(Set(out)).sorted()
    }

}
