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
    static let rootUUID = "0b7c6e1a-3f55-4d2e-9a41-5c2f7b0e9d11"
    static let varPartUUID = "6f1d2c3b-4a5e-4f60-8172-93a4b5c6d7e8"

    static func disk() throws -> String {
        try Fixtures.cached("guestview-disk", recipe: "v1") { dir in
            try Tool.sh("""
            cd "\(dir)"
            mkdir -p root/etc root/boot/efi root/srv/data root/var root/mnt/again data/sub var/lib/app esp/EFI/BOOT
            printf 'ID=debian\\nVERSION_ID="12"\\n' > root/etc/os-release
            ln -s /var/lib/app/state root/etc/app-state
            ln -s ../../srv/data/sub/../hello root/etc/data-link
            cat > root/etc/fstab <<'FSTAB'
            # <file system> <mount point> <type> <options> <dump> <pass>
            UUID=\(rootUUID) / ext4 errors=remount-ro 0 1
            UUID=1234-ABCD /boot/efi vfat umask=0077 0 1
            LABEL=DATA /srv/data ext4 defaults 0 2
            PARTUUID=\(varPartUUID) /var ext4 defaults 0 2
            /dev/vda3 /mnt/again ext4 defaults 0 0
            server:/export /mnt/nfs nfs defaults 0 0
            UUID=deadbeef-0000-0000-0000-000000000000 /opt ext4 defaults 0 2
            /dev/sdb1 /backup ext4 defaults 0 0
            garbage
            proc /proc proc defaults 0 0
            /swapfile none swap sw 0 0
            FSTAB
            sed -i 's/^ *//' root/etc/fstab
            echo hello-from-data > data/hello
            echo state-on-var > var/lib/app/state
            head -c 5000 /dev/urandom > esp/EFI/BOOT/BOOTX64.EFI
            truncate -s 8M root.img && mkfs.ext4 -q -F -U \(rootUUID) -d root root.img
            truncate -s 4M data.img && mkfs.ext4 -q -F -L DATA -d data data.img
            truncate -s 4M var.img && mkfs.ext4 -q -F -d var var.img
            truncate -s 8M esp.img && mkfs.vfat -F 16 -s 1 -i 1234ABCD esp.img >/dev/null
            (cd esp && mcopy -i ../esp.img -s -- * ::/)
            truncate -s 40M disk.raw
            sgdisk -n 1:2048:+8M -t 1:ef00 -n 2:0:+8M -t 2:8300 -n 3:0:+4M -t 3:8300 -n 4:0:+4M -t 4:8300 -u 4:\(varPartUUID) disk.raw >/dev/null
            for p in 1:esp 2:root 3:data 4:var; do
              s=$(sgdisk -i ${p%%:*} disk.raw | awk '/First sector/ {print $3}')
              dd if=${p##*:}.img of=disk.raw bs=512 seek=$s conv=notrunc status=none
            done
            qemu-img convert -q -O qcow2 disk.raw disk.qcow2
            """)
        }
    }

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
