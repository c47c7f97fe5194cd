import Foundation
import Testing
import WardenTestSupport

/// A Fedora-like guest as its installer lays it out: GPT with an EFI system partition and a
/// zstd-compressed btrfs holding the `root` and `home` subvolumes under a top-level default,
/// fstab mounting them by `subvol=`, and a read-only snapshot of the root taken before a
/// change. Written through the kernel (loop mounts), then converted to qcow2.
@Suite(.enabled(if: getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control"),
                "needs root and loop devices to write btrfs"))
struct BtrfsGuestTests {
    static let recipe = #"""
    set -euo pipefail
    truncate -s 64M esp.img && mkfs.vfat -F 32 -n EFI esp.img >/dev/null
    truncate -s 300M fs.img && mkfs.btrfs -q -f -L fedora fs.img
    mkdir -p mnt
    mount -o loop,compress=zstd:1 fs.img mnt
    trap 'umount mnt 2>/dev/null || true' EXIT
    btrfs -q subvolume create mnt/root; btrfs -q subvolume create mnt/home
    mkdir -p mnt/root/etc mnt/root/home mnt/root/boot/efi mnt/root/var/log mnt/root/usr/share/doc
    printf 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=39\nPRETTY_NAME="Fedora Linux 39 (Server Edition)"\n' > mnt/root/etc/os-release
    echo fedora-before > mnt/root/etc/hostname
    seq 1 100000 > mnt/root/usr/share/doc/numbers
    fs=$(blkid -s UUID -o value fs.img); esp=$(blkid -s UUID -o value esp.img)
    printf 'UUID=%s / btrfs subvol=root,compress=zstd:1 0 0\nUUID=%s /boot/efi vfat umask=0077 0 2\nUUID=%s /home btrfs subvol=home,compress=zstd:1 0 0\n' $fs $esp $fs > mnt/root/etc/fstab
    mkdir -p mnt/home/alice && echo 'hello from alice' > mnt/home/alice/notes && chown -R 1000:1000 mnt/home/alice
    mkdir mnt/snapshots && btrfs -q subvolume snapshot -r mnt/root mnt/snapshots/root-1
    echo fedora-web1 > mnt/root/etc/hostname
    umount mnt; trap - EXIT
    truncate -s 400M disk.raw
    sgdisk -n 1:2048:+64M -t 1:ef00 -n 2:0:+300M -t 2:8300 disk.raw >/dev/null
    s1=$(sgdisk -i 1 disk.raw | sed -n 's/^First sector: \([0-9]*\).*/\1/p')
    s2=$(sgdisk -i 2 disk.raw | sed -n 's/^First sector: \([0-9]*\).*/\1/p')
    dd if=esp.img of=disk.raw bs=512 seek=$s1 conv=notrunc status=none
    dd if=fs.img of=disk.raw bs=512 seek=$s2 conv=notrunc status=none
    qemu-img convert -O qcow2 disk.raw disk.qcow2
    rm -f disk.raw esp.img fs.img; rmdir mnt
    """#

    static func disk() throws -> String {
        let dir = try Fixtures.cached("btrfs-fedora-guest", recipe: recipe) { dir in
            try Tool.run(["bash", "-euo", "pipefail", "-c", recipe], cwd: dir)
        }
        return dir + "/disk.qcow2"
    }

    static func json(_ r: WardenRun) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
    }

    @Test func inspectAssemblesTheSubvolumesAsFstabMountsThem() throws {
        let img = try Self.disk()
        let r = try WardenRun.run(["inspect", "--json", img])
        #expect(r.status == 0, "\(r.stderr)")
        try JSONSchemaTests().validate(r.stdout, schema: "inspect.v1.json")
        let doc = try JSONSerialization.jsonObject(with: r.stdout)
        let text = String(decoding: r.stdout, as: UTF8.self)
        #expect(text.contains("\"fedora-web1\""), "the root subvolume's hostname, not the snapshot's")
        #expect(!text.contains("fedora-before"))
        let mounts = try #require(Self.find("mounts", in: doc) as? [[String: Any]])
        let paths = mounts.map { $0["path"] as? String ?? "?" }
        let subvolumes = mounts.map { $0["subvolume"] as? String ?? "-" }
        #expect(paths == ["/", "/boot/efi", "/home"], "\(mounts)")
        #expect(subvolumes == ["/root", "-", "/home"], "\(mounts)")
        #expect(text.contains("\"fedora\""))
    }

    /// Looks `key` up at any depth of a decoded JSON document.
    static func find(_ key: String, in value: Any) -> Any? {
        if let d = value as? [String: Any] {
            if let v = d[key] { return v }
            for v in d.values { if let f = find(key, in: v) { return f } }
        } else if let a = value as? [Any] {
            for v in a { if let f = find(key, in: v) { return f } }
        }
        return nil
    }

    @Test func snapshotsAreListedAndReadAsTheyWere() throws {
        let img = try Self.disk()
        let r = try WardenRun.run(["image", "ls", "--snapshots", "--json", img])
        #expect(r.status == 0, "\(r.stderr)")
        try JSONSchemaTests().validate(r.stdout, schema: "image-snapshots.v1.json")
        let doc = try Self.json(r)
        #expect(doc["viewed"] as? Int == 5)
        let subs = try #require(doc["subvolumes"] as? [[String: Any]])
        let paths: [String] = subs.map { $0["path"] as? String ?? "?" }
        #expect(paths == ["root", "home", "snapshots/root-1"])
        let snap = try #require(subs.last)
        #expect(snap["read_only"] as? Bool == true && snap["is_snapshot"] as? Bool == true)
        let rootUUID = subs.first?["uuid"] as? String
        #expect(rootUUID != nil && snap["parent_uuid"] as? String == rootUUID)

        let human = try WardenRun.run(["image", "ls", "--snapshots", img])
        #expect(human.stdoutText.contains("snapshots/root-1") && human.stdoutText.contains("ro"), "\(human.stdoutText)")

        // The snapshot by path and by id; the live root by its subvolume.
        let old = try WardenRun.run(["image", "cat", "--subvol", "snapshots/root-1", img, "/etc/hostname"])
        #expect(old.status == 0 && old.stdoutText == "fedora-before\n", "\(old.stderr)")
        let byID = try WardenRun.run(["image", "cat", "--subvol", "\(snap["id"] as? Int ?? 0)", img, "/etc/hostname"])
        #expect(byID.stdoutText == "fedora-before\n")
        let live = try WardenRun.run(["image", "cat", "--subvol", "/root/", img, "/etc/hostname"])
        #expect(live.stdoutText == "fedora-web1\n")
        // The default subvolume is the top level: the subvolumes are directories in it.
        let top = try WardenRun.run(["image", "ls", img, "/"])
        #expect(top.stdoutText.split(separator: "\n") == ["home", "root", "snapshots"], "\(top.stdoutText)")
        let m = try WardenRun.run(["image", "manifest", "--subvol", "root", img])
        #expect(m.status == 0 && m.stdoutText.contains("/usr/share/doc/numbers"), "\(m.stderr)")
    }

    @Test func subvolumeOptionsOnTheWrongVolumeAreOneLineErrors() throws {
        let img = try Self.disk()
        let missing = try WardenRun.run(["image", "ls", "--subvol", "no/such", img, "/"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("no subvolume no/such") && missing.stderr.split(separator: "\n").count == 1, "\(missing.stderr)")
        let fat = try WardenRun.run(["image", "ls", "--partition", "1", "--subvol", "root", img, "/"])
        #expect(fat.status != 0 && fat.stderr.contains("--subvol applies to btrfs"), "\(fat.stderr)")
        let snaps = try WardenRun.run(["image", "ls", "--partition", "1", "--snapshots", img])
        #expect(snaps.status != 0 && snaps.stderr.contains("--snapshots lists btrfs subvolumes"), "\(snaps.stderr)")
    }
}
