import Testing
import WardenCore
import WardenTestSupport
import GuestFS
@testable import Inspection

@Suite struct KernelsTests {
    @Test func debianStyleBootAndModules() throws {
        let (g, _) = try PkgFixture.guest("kern-debian", size: "8M", script: """
        mkdir -p boot lib/modules/6.1.0-18-amd64/kernel lib/modules/6.1.0-17-amd64 usr/lib
        head -c 1000 /dev/zero > boot/vmlinuz-6.1.0-18-amd64
        head -c 900 /dev/zero > boot/vmlinuz-6.1.0-17-amd64
        touch boot/config-6.1.0-18-amd64 boot/System.map-6.1.0-18-amd64 boot/initrd.img-6.1.0-18-amd64
        touch boot/kernel-config
        ln -s vmlinuz-6.1.0-18-amd64 boot/vmlinuz
        ln -s vmlinuz-6.1.0-16-amd64 boot/vmlinuz.old
        ln -s ../../lib/modules usr/lib/modules
        touch lib/modules/not-a-dir
        """)
        let k = try Inspection.kernels(g)
        #expect(k.images == [
            KernelImage(path: "/boot/vmlinuz", suffix: nil, linkTarget: "vmlinuz-6.1.0-18-amd64", size: 1000),
            KernelImage(path: "/boot/vmlinuz-6.1.0-17-amd64", suffix: "6.1.0-17-amd64", linkTarget: nil, size: 900),
            KernelImage(path: "/boot/vmlinuz-6.1.0-18-amd64", suffix: "6.1.0-18-amd64", linkTarget: nil, size: 1000),
            KernelImage(path: "/boot/vmlinuz.old", suffix: nil, linkTarget: "vmlinuz-6.1.0-16-amd64", size: nil),
        ])
        #expect(k.modules == [
            KernelModules(release: "6.1.0-17-amd64", path: "/lib/modules/6.1.0-17-amd64"),
            KernelModules(release: "6.1.0-18-amd64", path: "/lib/modules/6.1.0-18-amd64"),
        ])
        #expect(k.kernels == [
            InstalledKernel(release: "6.1.0-17-amd64", images: ["/boot/vmlinuz-6.1.0-17-amd64"], modulesPath: "/lib/modules/6.1.0-17-amd64"),
            InstalledKernel(release: "6.1.0-18-amd64", images: ["/boot/vmlinuz", "/boot/vmlinuz-6.1.0-18-amd64"],
                            modulesPath: "/lib/modules/6.1.0-18-amd64"),
        ])
        #expect(k.warnings == [])
    }

    @Test func alpineFlavorsAndFedoraModuleImages() throws {
        let (g, _) = try PkgFixture.guest("kern-alpine-fedora", size: "8M", script: """
        mkdir -p boot lib/modules/6.6.22-0-lts lib/modules/6.6.22-0-virt usr/lib/modules/6.8.5-301.fc40.x86_64
        head -c 10 /dev/zero > boot/vmlinuz-lts
        head -c 20 /dev/zero > boot/vmlinuz-virt
        head -c 30 /dev/zero > usr/lib/modules/6.8.5-301.fc40.x86_64/vmlinuz
        """)
        let k = try Inspection.kernels(g)
        #expect(k.images.map(\.path) == ["/boot/vmlinuz-lts", "/boot/vmlinuz-virt", "/usr/lib/modules/6.8.5-301.fc40.x86_64/vmlinuz"])
        #expect(k.images.map(\.suffix) == ["lts", "virt", "6.8.5-301.fc40.x86_64"])
        #expect(k.kernels == [
            InstalledKernel(release: "6.6.22-0-lts", images: ["/boot/vmlinuz-lts"], modulesPath: "/lib/modules/6.6.22-0-lts"),
            InstalledKernel(release: "6.6.22-0-virt", images: ["/boot/vmlinuz-virt"], modulesPath: "/lib/modules/6.6.22-0-virt"),
            InstalledKernel(release: "6.8.5-301.fc40.x86_64", images: ["/usr/lib/modules/6.8.5-301.fc40.x86_64/vmlinuz"],
                            modulesPath: "/usr/lib/modules/6.8.5-301.fc40.x86_64"),
        ])
    }

    @Test func noKernels() throws {
        let (g, _) = try PkgFixture.guest("kern-none", size: "8M", script: "mkdir etc")
        var expected = KernelInventory(kernels: [], images: [], modules: [], warnings: [])
        expected.booting = .unknown(reason: "no grub.cfg, no Boot Loader Specification entry, and not exactly one installed kernel")
        #expect(try Inspection.kernels(g) == expected)
    }
}
