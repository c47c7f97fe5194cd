import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
import Partitions
@testable import GuestFS

/// fstab assembly on a real GPT disk: ESP (vfat), root, a labelled data volume and a
/// /var found by PARTUUID, plus fstab lines that cannot be assembled.
@Suite struct GuestViewTests {
    static func disk() throws -> String { try SharedFixtures.guestViewDisk() }

    @Test func assemblesFstabMountsAndReportsTheRest() throws {
        let img = try ImageOpener.open(try Self.disk() + "/disk.qcow2")
        let layout = try GuestDisk.layout(of: img.device)
        let view = try GuestView.assemble(disk: img.device, layout: layout)
        #expect(view.mounts.map(\.path) == ["/", "/boot/efi", "/mnt/again", "/srv/data", "/var"])
        #expect(view.mounts.first?.volume.partitionIndex == 2)
        #expect(view.mounts.map(\.type) == ["ext4", "vfat", "ext4", "ext4", "ext4"])
        let problems = Dictionary(uniqueKeysWithValues: view.problems.map { ($0.mountPoint, $0.reason) })
        #expect(problems["/mnt/nfs"]?.contains("network filesystem") == true)
        #expect(problems["/opt"]?.contains("no volume on this disk has UUID") == true)
        #expect(problems["/backup"]?.contains("another disk") == true)
        #expect(view.problems.contains { $0.spec == "garbage" && $0.reason.contains("malformed") })
        #expect(view.problems.count == 4)

        func text(_ p: String) throws -> String {
            let r = try view.resolve(p)
            return String(decoding: try r.fs.read(r.inode, at: 0, count: Int(r.stat.size)), as: UTF8.self)
        }
        #expect(try text("/srv/data/hello") == "hello-from-data\n")
        #expect(try text("/mnt/again/hello") == "hello-from-data\n")
        #expect(try text("/etc/app-state") == "state-on-var\n")       // symlink crossing into /var
        #expect(try text("/etc/data-link") == "hello-from-data\n")     // relative link with .. across a mount
        #expect(try view.resolve("/etc/app-state").path == "/var/lib/app/state")
        let efi = try view.resolve("/boot/efi/EFI/BOOT/BOOTX64.EFI")
        #expect(efi.stat.size == 5000)
        let oracle = try Tool.run(["mtype", "-i", try Self.disk() + "/esp.img", "::/EFI/BOOT/BOOTX64.EFI"]).stdout
        #expect(Data(try efi.fs.read(efi.inode, at: 0, count: 5000)) == oracle)
        #expect(throws: WardenError.self) { _ = try view.resolve("/opt/nothing") }
    }

    @Test func fstabSpecsAndDeviceNames() {
        #expect(FSTab.deviceName("/dev/vda3").map { [$0.disk, $0.partition] } == [0, 3])
        #expect(FSTab.deviceName("/dev/sdb1").map { [$0.disk, $0.partition] } == [1, 1])
        #expect(FSTab.deviceName("/dev/xvda").map { [$0.disk, $0.partition] } == [0, 0])
        #expect(FSTab.deviceName("/dev/nvme0n1p2").map { [$0.disk, $0.partition] } == [0, 2])
        #expect(FSTab.deviceName("/dev/mmcblk0p1").map { [$0.disk, $0.partition] } == [0, 1])
        #expect(FSTab.deviceName("/dev/mapper/vg-root") == nil)
        #expect(FSTab.unescape("/mnt/my\\040disk") == "/mnt/my disk")
        #expect(FSTab.canonical("/boot//efi/./") == "/boot/efi")
        let entries = FSTab.parse(Array("LABEL=a\\040b /x ext4 ro 0 0\n  \n# c\nonly-one\n".utf8))
        #expect(entries.count == 2)
        #expect(entries[0].spec == "LABEL=a b" && entries[0].options == ["ro"])
        #expect(entries[1].problem != nil && entries[1].line == 4)
    }
}
