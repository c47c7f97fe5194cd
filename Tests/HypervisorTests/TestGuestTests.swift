import Testing
import Foundation
import WardenTestSupport
import WardenCore

@Suite struct TestGuestTests {
    @Test func modulesResolveDependenciesFirst() throws {
        let dep = """
        kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
        kernel/drivers/virtio/virtio_ring.ko:
        kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
        kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
        kernel/drivers/virtio/virtio_pci_modern_dev.ko:
        kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
        """
        let order = try KernelModules.loadOrder(["virtio_pci", "virtio_rng"], modulesDep: dep).map { ($0 as NSString).lastPathComponent }
        #expect(order == ["virtio_ring.ko", "virtio.ko", "virtio_pci_modern_dev.ko", "virtio_pci_legacy_dev.ko", "virtio_pci.ko", "virtio-rng.ko.xz"])
        #expect(throws: WardenError.self) { try KernelModules.loadOrder(["nope"], modulesDep: dep) }
    }

    @Test func initramfsCarriesModulesInitAndClient() throws {
        if let why = TestGuest.unavailableReason { print("skipped: \(why)"); return }
        let guest = try TestGuest.build()
        let list = try Tool.sh("zcat '\(guest.initrd)' | cpio -t --quiet").stdoutText.split(separator: "\n").map(String.init)
        for f in ["init", "bin/busybox", "bin/warden-state", "lib/modules/virtio_pci.ko", "lib/modules/virtio_console.ko",
                  "lib/modules/virtio-rng.ko", "lib/modules/virtio_blk.ko", "lib/modules/virtio_ring.ko", "lib/modules/load-order"] {
            #expect(list.contains(f), "\(f) missing from the initramfs")
        }
        let config = try String(contentsOfFile: "/boot/config-\(guest.kernelVersion)", encoding: .utf8)
        #expect(config.contains("CONFIG_VMGENID=y"))
    }
}
