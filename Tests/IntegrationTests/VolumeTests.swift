import Foundation
import Testing
import WardenTestSupport

/// Whole-disk layouts beyond a single ext4 partition: an EFI (FAT32) + XFS GPT disk, and
/// an LVM physical volume holding an ext4 logical volume. Built with real tools, no mounting.
@Suite struct VolumeTests {
    /// GPT: partition 1 EFI System (FAT32, populated with mcopy), partition 2 XFS root
    /// (mkfs.xfs -p protofile). Also as a qcow2.
    static func efiXfsDisk() throws -> String {
        try Fixtures.cached("efi-xfs-disk", recipe: "efi-xfs-v1") { dir in
            try Tool.sh("""
            cd "\(dir)"
            mkdir -p src/EFI/BOOT
            head -c 200000 /dev/urandom > src/EFI/BOOT/BOOTX64.EFI
            echo 'default linux' > src/loader.conf
            printf 'NAME="Rocky Linux"\\nID="rocky"\\nVERSION_ID="9.4"\\n' > os-release
            head -c 123457 /dev/urandom > blob
            echo rocky-host > hostname
            cat > proto <<PROTO
            /dev/null
            0 0
            d--755 0 0
            etc d--755 0 0
            os-release ---644 0 0 \(dir)/os-release
            hostname ---644 0 0 \(dir)/hostname
            $
            usr d--755 0 0
            lib d--755 0 0
            blob ---600 1000 1000 \(dir)/blob
            $
            $
            bin l--777 0 0 usr/bin
            $
            PROTO
            sed -i 's/^ *//' proto
            truncate -s 320M xfs.img
            mkfs.xfs -q -f -L rocky-root -p proto xfs.img
            truncate -s 40M esp.img
            mkfs.vfat -F 32 -n ESP esp.img >/dev/null
            (cd src && mcopy -i ../esp.img -s -- * ::/)
            truncate -s 380M disk.raw
            sgdisk -n 1:2048:+40M -t 1:ef00 -c 1:EFI -n 2:0:0 -t 2:8300 -c 2:root disk.raw >/dev/null
            s1=$(sgdisk -i 1 disk.raw | awk '/First sector/ {print $3}')
            s2=$(sgdisk -i 2 disk.raw | awk '/First sector/ {print $3}')
            dd if=esp.img of=disk.raw bs=512 seek="$s1" conv=notrunc,sparse status=none
            dd if=xfs.img of=disk.raw bs=512 seek="$s2" conv=notrunc,sparse status=none
            qemu-img convert -q -O qcow2 disk.raw disk.qcow2
            """)
        }
    }

    @Test func efiAndXfsVolumes() throws {
        let dir = try Self.efiXfsDisk()
        let img = dir + "/disk.qcow2"
        let info = try WardenRun.run(["image", "info", "--json", img])
        #expect(info.status == 0, "stderr: \(info.stderr)")
        let obj = try #require(try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any])
        let volumes = try #require(obj["volumes"] as? [[String: Any]])
        let fs = volumes.compactMap { $0["filesystem"] as? [String: Any] }
        #expect(fs.map { $0["type"] as? String } == ["vfat", "xfs"])
        for (f, name) in zip(fs, ["esp.img", "xfs.img"]) {
            let blkid = try Tool.run(["blkid", "-p", "-o", "export", dir + "/" + name]).stdoutText
            let fields = Dictionary(blkid.split(separator: "\n").compactMap { line -> (String, String)? in
                let kv = line.split(separator: "=", maxSplits: 1)
                return kv.count == 2 ? (String(kv[0]), String(kv[1])) : nil
            }, uniquingKeysWith: { a, _ in a })
            #expect(f["uuid"] as? String == fields["UUID"])
            #expect(f["label"] as? String == fields["LABEL"])
        }
        // The largest Linux filesystem is the XFS root; the ESP is reachable by partition.
        let hostname = try WardenRun.run(["image", "cat", img, "/etc/hostname"])
        #expect(hostname.stdoutText == "rocky-host\n")
        let blob = try WardenRun.run(["image", "cat", img, "/usr/lib/blob"])
        let source = try Data(contentsOf: URL(fileURLWithPath: dir + "/blob"))
        let same = blob.stdout == source
        #expect(same)
        let efi = try WardenRun.run(["image", "cat", "--partition", "1", img, "/EFI/BOOT/BOOTX64.EFI"])
        let oracle = try Tool.run(["mtype", "-i", dir + "/esp.img", "::/EFI/BOOT/BOOTX64.EFI"]).stdout
        let efiSame = efi.stdout == oracle && efi.stdout.count == 200000
        #expect(efiSame)
        let manifest = try WardenRun.run(["image", "manifest", img])
        #expect(manifest.status == 0, "stderr: \(manifest.stderr)")
        #expect(manifest.stderr.contains("using partition 2 (xfs, label rocky-root"))
        let sum = String(try Tool.run(["sha256sum", dir + "/blob"]).stdoutText.prefix(64))
        #expect(manifest.stdoutText.contains("f\t0600\t1000\t1000\t123457\t\(sum)\t/usr/lib/blob\n"))
        #expect(manifest.stdoutText.contains("l\t0777\t0\t0\t7\tusr/bin\t/bin\n"))
    }

    static var lvmAvailable: Bool {
        getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control")
            && (try? Tool.run(["lvm", "version"], check: false).status) == 0
    }

    /// GPT partition 1 is an LVM PV; VG `vg-sys` holds LV `root` (ext4 from the standard
    /// tree, written at the LV's first extent) and LV `data`. LVs are created metadata-only
    /// (activation = 0): no device-mapper, no mounting.
    static func lvmDisk() throws -> String {
        let fsDir = try ImageFixtures.filesystem(ImageFixtures.variants[0], wide: 100)
        return try Fixtures.cached("lvm-disk", recipe: "lvm-v1 \(fsDir)") { dir in
            try Tool.sh("""
            cd "\(dir)"
            CFG='global { activation = 0 } devices { use_devicesfile = 0 } backup { backup = 0 archive = 0 }'
            truncate -s 200M disk.raw
            sgdisk -n 1:2048:0 -t 1:8e00 disk.raw >/dev/null
            size=$(sgdisk -i 1 disk.raw | awk '/Partition size/ {print $3}')
            L=$(losetup -f --show -o 1048576 --sizelimit $((size * 512)) disk.raw)
            trap 'losetup -d "$L"' EXIT
            lvm pvcreate -q --config "$CFG" "$L" >/dev/null
            lvm vgcreate -q --config "$CFG" -s 4M vg-sys "$L" >/dev/null
            lvm lvcreate -q --config "$CFG" -an -Zn -y -L 100M -n root vg-sys >/dev/null
            lvm lvcreate -q --config "$CFG" -an -Zn -y -L 20M -n data vg-sys >/dev/null
            pe=$(lvm pvs -q --config "$CFG" -o pe_start --units b --noheadings --nosuffix "$L" | tr -d ' ')
            dd if="\(fsDir)/fs.img" of=disk.raw bs=1M oflag=seek_bytes seek=$((1048576 + pe)) conv=notrunc status=none
            """)
        }
    }

    @Test(.enabled(if: VolumeTests.lvmAvailable, "needs root, loop devices and lvm2"))
    func lvmLogicalVolume() throws {
        let dir = try Self.lvmDisk()
        let img = dir + "/disk.raw"
        let info = try WardenRun.run(["image", "info", "--json", img])
        #expect(info.status == 0, "stderr: \(info.stderr)")
        let obj = try #require(try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any])
        let volumes = try #require(obj["volumes"] as? [[String: Any]])
        #expect(volumes.compactMap { $0["logical_volume"] as? String } == ["/dev/mapper/vg--sys-root", "/dev/mapper/vg--sys-data"])
        let rootVol = try #require(volumes.first { $0["logical_volume"] as? String == "/dev/mapper/vg--sys-root" })
        #expect((rootVol["size"] as? NSNumber)?.uint64Value == 100 << 20)
        #expect((rootVol["filesystem"] as? [String: Any])?["type"] as? String == "ext4")

        let oracle = try DebugfsOracle.manifest(filesystemImage: try ImageFixtures.filesystem(ImageFixtures.variants[0], wide: 100) + "/fs.img")
        for args in [["image", "manifest", img], ["image", "manifest", "--lv", "vg-sys/root", img],
                     ["image", "manifest", "--lv", "/dev/mapper/vg--sys-root", img]] {
            let r = try WardenRun.run(args)
            #expect(r.status == 0, "stderr: \(r.stderr)")
            let same = r.stdoutText.split(separator: "\n").map(String.init) == oracle
            #expect(same, "\(args)")
        }
        let auto = try WardenRun.run(["image", "manifest", img])
        #expect(auto.stderr.contains("using logical volume /dev/mapper/vg--sys-root"))
        let missing = try WardenRun.run(["image", "ls", "--lv", "vg-sys/nope", img])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("no logical volume vg-sys/nope"))
    }
}
