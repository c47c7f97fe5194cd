import Foundation
import WardenTestSupport

/// Real Debian 12 guests built at test time (debootstrap), cached by recipe under the
/// fixture cache, plus the virt-inspector oracle (cached by image digest).
///
/// Nothing is mounted or chrooted: the tree is customised from the host side only, and
/// filesystems are made with `mkfs.ext4 -d` / `mkfs.xfs -p`.
enum GuestFixtures {
    static let mirror = "http://deb.debian.org/debian"
    static let hostname = "warden-oracle"
    static let user = "alice"
    /// `mkfs.vfat -i` volume id; blkid/fstab spell it `1A2B-3C4D`.
    static let espVolumeID = "1A2B3C4D"
    static let espUUID = "1A2B-3C4D"
    static let rootUUIDA = "3d1c5a7e-2b4f-4e61-9c8d-0a1b2c3d4e5f"
    static let rootUUIDB = "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d"
    static let rootUUIDC = "c0ffee00-1234-4abc-8def-001122334455"
    /// SHA-512 crypt of "warden" with salt "wardensalt" (`openssl passwd -6`), fixed so the recipe is stable.
    static let userHashCommand = "openssl passwd -6 -salt wardensalt warden"

    /// True when we are root, have debootstrap, and the Debian mirror answers within 10 s.
    /// Decided once per process.
    static let available: Bool = {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/debootstrap") else { return false }
        let r = try? Tool.run(["timeout", "10", "curl", "-sfI", "-o", "/dev/null", mirror + "/dists/bookworm/Release"], check: false)
        return r?.status == 0
    }()

    static var virtInspectorAvailable: Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/virt-inspector")
    }

    static var lvmAvailable: Bool {
        FileManager.default.fileExists(atPath: "/dev/loop-control")
            && (try? Tool.run(["lvm", "version"], check: false).status) == 0
    }

    /// Unmounts anything left mounted under `$ROOT` (debootstrap mounts proc/sys and
    /// possibly binds /dev entries; a failed run must never leave them for `rm -rf`).
    static let unmountUnderRoot = """
    for m in $(awk -v r="$ROOT" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r); do umount -l "$m" || true; done
    if awk -v r="$ROOT" 'index($2, r) == 1 {found=1} END {exit !found}' /proc/self/mounts; then
      echo "still mounted under $ROOT; refusing to continue" >&2; exit 99
    fi
    """

    /// A directory holding `root/`: a debootstrapped bookworm minbase with openssh-server
    /// and sudo, hostname set, fstab naming the ESP and the ext4 root (guest A) by UUID=,
    /// a sudo-group user with a password hash, and SSH host keys.
    static func rootTree() throws -> String {
        let recipe = "guest-root-v1 bookworm minbase openssh-server,sudo \(mirror) host=\(hostname) user=\(user) esp=\(espUUID) root=\(rootUUIDA)"
        return try Fixtures.cached("guest-root", recipe: recipe) { dir in
            let root = dir + "/root"
            do {
                try Tool.sh("""
                ROOT="\(root)"
                rc=0
                debootstrap --variant=minbase --include=openssh-server,sudo bookworm "$ROOT" \(mirror) > "\(dir)/debootstrap.log" 2>&1 || rc=$?
                \(unmountUnderRoot)
                if [ $rc != 0 ]; then tail -30 "\(dir)/debootstrap.log" >&2; exit $rc; fi
                """)
            } catch {
                // Never leave a half-built tree with mounts inside; the cache removes the rest.
                _ = try? Tool.sh("ROOT=\"\(root)\"\n" + unmountUnderRoot, check: false)
                throw error
            }
            try Tool.sh("""
            set -eu
            ROOT="\(root)"
            echo \(hostname) > "$ROOT/etc/hostname"
            mkdir -p "$ROOT/boot/efi"
            cat > "$ROOT/etc/fstab" <<EOF
            # guest A: ext4 root and an EFI System Partition, both by UUID
            UUID=\(rootUUIDA) / ext4 errors=remount-ro 0 1
            UUID=\(espUUID) /boot/efi vfat umask=0077 0 1
            EOF
            sed -i 's/^ *//' "$ROOT/etc/fstab"
            # A login user in the sudo group, with a SHA-512 password hash written directly.
            grep -q '^\(user):' "$ROOT/etc/passwd" || {
              echo '\(user):x:1000:1000:Alice,,,:/home/\(user):/bin/bash' >> "$ROOT/etc/passwd"
              echo '\(user):x:1000:' >> "$ROOT/etc/group"
              echo '\(user):!:1000:' >> "$ROOT/etc/gshadow"
              hash=$(\(userHashCommand))
              echo "\(user):$hash:19800:0:99999:7:::" >> "$ROOT/etc/shadow"
              sed -i 's/^sudo:x:27:$/sudo:x:27:\(user)/' "$ROOT/etc/group"
              sed -i 's/^sudo:\\*::$/sudo:*::\(user)/' "$ROOT/etc/gshadow"
              mkdir -p "$ROOT/home/\(user)"
              chown 1000:1000 "$ROOT/home/\(user)"; chmod 750 "$ROOT/home/\(user)"
            }
            grep -q '^sudo:x:27:\(user)$' "$ROOT/etc/group"
            # openssh-server's postinst may skip host keys outside a running system.
            for t in ed25519 ecdsa rsa; do
              k="$ROOT/etc/ssh/ssh_host_${t}_key"
              [ -e "$k" ] || ssh-keygen -q -t $t -N '' -C root@\(hostname) -f "$k"
            done
            """)
        }
    }

    /// Writes a mkfs.xfs protofile for the tree at `root` to `proto`, with `/etc/fstab`
    /// taken from `fstab` instead of the tree's own.
    static func writeProtofile(root: String, fstab: String, to proto: String) throws {
        try Tool.run(["python3", "-c", """
        import os, stat, sys
        root, fstab, out = sys.argv[1], sys.argv[2], sys.argv[3]
        lines = ["/dev/null", "0 0"]
        def mode(st, kind):
            m = stat.S_IMODE(st.st_mode)
            return kind + ("u" if m & stat.S_ISUID else "-") + ("g" if m & stat.S_ISGID else "-") + "%03o" % (m & 0o777)
        def walk(path, depth):
            for name in sorted(os.listdir(path)):
                if any(c.isspace() for c in name):
                    sys.exit("protofile: whitespace in name: " + os.path.join(path, name))
                p = os.path.join(path, name)
                st = os.lstat(p)
                owner = "%d %d" % (st.st_uid, st.st_gid)
                if stat.S_ISDIR(st.st_mode):
                    lines.append("%s %s %s" % (name, mode(st, "d"), owner))
                    walk(p, depth + 1)
                    lines.append("$")
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(p)
                    if any(c.isspace() for c in target):
                        sys.exit("protofile: whitespace in link target: " + p)
                    lines.append("%s l--777 %s %s" % (name, owner, target))
                elif stat.S_ISREG(st.st_mode):
                    src = fstab if os.path.relpath(p, root) == "etc/fstab" else p
                    lines.append("%s %s %s %s" % (name, mode(st, "-"), owner, src))
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
                    lines.append("%s %s %s %d %d" % (name, mode(st, kind), owner, os.major(st.st_rdev), os.minor(st.st_rdev)))
                elif stat.S_ISFIFO(st.st_mode):
                    lines.append("%s %s %s" % (name, mode(st, "p"), owner))
                # sockets are skipped: a protofile cannot describe them
        st = os.lstat(root)
        lines.append("%s %d %d" % (mode(st, "d"), st.st_uid, st.st_gid))
        walk(root, 1)
        lines.append("$")
        open(out, "w").write("\\n".join(lines) + "\\n")
        """, root, fstab, proto])
    }

    /// Guest A: GPT, partition 1 EFI System (FAT32 with one file), partition 2 ext4 root;
    /// as `disk.qcow2`.
    static func guestA() throws -> String {
        let tree = try rootTree()
        return try Fixtures.cached("guest-a", recipe: "guest-a-v1 \(tree) esp=\(espVolumeID) root=\(rootUUIDA)") { dir in
            try Tool.sh("""
            set -eu
            cd "\(dir)"
            truncate -s 64M esp.img
            mkfs.vfat -F 32 -i \(espVolumeID) -n ESP esp.img >/dev/null
            mkdir -p efi/EFI/debian && echo 'warden oracle grub stub' > efi/EFI/debian/grubx64.efi
            mcopy -i esp.img -s efi/EFI ::/
            truncate -s 1G root.img
            mkfs.ext4 -q -F -U \(rootUUIDA) -L root -d "\(tree)/root" root.img
            truncate -s 1100M disk.raw
            sgdisk -n 1:2048:+64M -t 1:ef00 -c 1:EFI -n 2:0:0 -t 2:8300 -c 2:root disk.raw >/dev/null
            s1=$(sgdisk -i 1 disk.raw | awk '/First sector/ {print $3}')
            s2=$(sgdisk -i 2 disk.raw | awk '/First sector/ {print $3}')
            dd if=esp.img of=disk.raw bs=512 seek="$s1" conv=notrunc,sparse status=none
            dd if=root.img of=disk.raw bs=512 seek="$s2" conv=notrunc,sparse status=none
            qemu-img convert -q -O qcow2 disk.raw disk.qcow2
            rm -rf disk.raw root.img esp.img efi
            """)
        }
    }

    /// Guest B: the same tree as XFS (mkfs.xfs -p protofile) in partition 1 of a GPT raw disk.
    static func guestB() throws -> String {
        let tree = try rootTree()
        return try Fixtures.cached("guest-b", recipe: "guest-b-v1 \(tree) root=\(rootUUIDB)") { dir in
            try "UUID=\(rootUUIDB) / xfs defaults 0 1\n".write(toFile: dir + "/fstab", atomically: true, encoding: .utf8)
            try writeProtofile(root: tree + "/root", fstab: dir + "/fstab", to: dir + "/proto")
            try Tool.sh("""
            set -eu
            cd "\(dir)"
            truncate -s 1G xfs.img
            mkfs.xfs -q -f -m uuid=\(rootUUIDB) -L root -p proto xfs.img
            truncate -s 1040M disk.raw
            sgdisk -n 1:2048:0 -t 1:8300 -c 1:root disk.raw >/dev/null
            dd if=xfs.img of=disk.raw bs=512 seek=2048 conv=notrunc,sparse status=none
            rm -f xfs.img
            """)
        }
    }

    /// Guest C: the same tree as ext4 in LVM `vg0/root` on GPT partition 2 (partition 1 is
    /// BIOS boot), fstab naming `/dev/mapper/vg0-root`. LVM metadata only (activation = 0).
    static func guestC() throws -> String {
        let tree = try rootTree()
        return try Fixtures.cached("guest-c", recipe: "guest-c-v1 \(tree) root=\(rootUUIDC)") { dir in
            try Tool.sh("""
            set -eu
            cd "\(dir)"
            echo '/dev/mapper/vg0-root / ext4 errors=remount-ro 0 1' > fstab
            truncate -s 1G root.img
            mkfs.ext4 -q -F -U \(rootUUIDC) -L root -d "\(tree)/root" root.img
            debugfs -w -R 'rm /etc/fstab' root.img >/dev/null 2>&1
            debugfs -w -R 'write fstab /etc/fstab' root.img >/dev/null 2>&1
            debugfs -w -R 'sif /etc/fstab mode 0100644' root.img >/dev/null 2>&1
            debugfs -w -R 'sif /etc/fstab uid 0' root.img >/dev/null 2>&1
            debugfs -w -R 'sif /etc/fstab gid 0' root.img >/dev/null 2>&1
            [ "$(debugfs -R 'cat /etc/fstab' root.img 2>/dev/null)" = "$(cat fstab)" ]
            CFG='global { activation = 0 } devices { use_devicesfile = 0 } backup { backup = 0 archive = 0 }'
            truncate -s 1200M disk.raw
            sgdisk -n 1:2048:+1M -t 1:ef02 -c 1:bios -n 2:0:0 -t 2:8e00 -c 2:lvm disk.raw >/dev/null
            s2=$(sgdisk -i 2 disk.raw | awk '/First sector/ {print $3}')
            size=$(sgdisk -i 2 disk.raw | awk '/Partition size/ {print $3}')
            L=$(losetup -f --show -o $((s2 * 512)) --sizelimit $((size * 512)) disk.raw)
            trap 'losetup -d "$L"' EXIT
            lvm pvcreate -q --config "$CFG" "$L" >/dev/null
            lvm vgcreate -q --config "$CFG" -s 4M vg0 "$L" >/dev/null
            lvm lvcreate -q --config "$CFG" -an -Zn -y -L 1G -n root vg0 >/dev/null
            pe=$(lvm pvs -q --config "$CFG" -o pe_start --units b --noheadings --nosuffix "$L" | tr -d ' ')
            dd if=root.img of=disk.raw bs=1M oflag=seek_bytes seek=$((s2 * 512 + pe)) conv=notrunc,sparse status=none
            rm -f root.img
            """)
        }
    }

    /// What virt-inspector says about `image`, as JSON converted from its XML; cached by
    /// the image's sha256 (a run takes ~30 s).
    static func virtInspector(_ image: String) throws -> [String: Any] {
        let digest = String(try Tool.run(["sha256sum", image]).stdoutText.prefix(64))
        let dir = try Fixtures.cached("virt-inspector", recipe: "v1 sha256=\(digest)") { dir in
            try Tool.sh("""
            set -eu
            LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg virt-inspector --format=\(image.hasSuffix(".qcow2") ? "qcow2" : "raw") -a "\(image)" > "\(dir)/inspect.xml"
            python3 - "\(dir)/inspect.xml" > "\(dir)/inspect.json" <<'PY'
            import json, sys, xml.etree.ElementTree as ET
            oses = []
            for os_ in ET.parse(sys.argv[1]).getroot().findall("operatingsystem"):
                t = lambda k: (os_.findtext(k) or "")
                oses.append({
                    "root": t("root"), "name": t("name"), "distro": t("distro"), "arch": t("arch"),
                    "major_version": t("major_version"), "minor_version": t("minor_version"),
                    "hostname": t("hostname"), "package_format": t("package_format"),
                    "mountpoints": {m.text: m.get("dev") for m in os_.findall("mountpoints/mountpoint")},
                    "filesystems": {f.get("dev"): {"type": f.findtext("type") or "", "uuid": f.findtext("uuid") or ""}
                                    for f in os_.findall("filesystems/filesystem")},
                    "applications": [{k: (a.findtext(k) or "") for k in ("name", "epoch", "version", "release", "arch")}
                                     for a in os_.findall("applications/application")],
                })
            json.dump(oses, sys.stdout)
            PY
            """)
        }
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/inspect.json"))
        let oses = try JSONSerialization.jsonObject(with: data) as? [[String: Any]] ?? []
        guard oses.count == 1 else { throw OracleError("virt-inspector found \(oses.count) operating systems in \(image)") }
        return oses[0]
    }

    struct OracleError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }
}
