import Foundation
import WardenTestSupport

/// The debootstrapped Debian 12 guest (GuestFixtures.rootTree, with openssh-server) with
/// every identity artifact a used VM carries: machine-id (D-Bus copy as a symlink), systemd
/// random seed and credential secret, /etc/hosts, udev persistent-net rules, a MAC-pinned
/// NetworkManager profile (with a secret in it), dhclient/NetworkManager/systemd-networkd
/// leases, cloud-init instance data and a user's authorized_keys. Laid out like guest A
/// (GPT, ESP + 1 GiB ext4 root), as qcow2. Cached by recipe.
enum SysprepFixtures {
    static let machineID = "4b1d0c0ffee04242a5a5b6b6c7c7d8d8"
    static let mac = "52:54:00:12:34:56"
    static let instanceID = "iid-warden-template"
    static let rootUUID = "5e1f0000-aaaa-4bbb-8ccc-0123456789ab"

    static func identityGuest() throws -> String {
        let tree = try GuestFixtures.rootTree()
        let recipe = "ident-guest-v1 \(tree) mid=\(machineID) mac=\(mac) iid=\(instanceID) root=\(rootUUID) esp=\(GuestFixtures.espVolumeID)"
        return try Fixtures.cached("ident-guest", recipe: recipe) { dir in
            try Tool.sh("""
            set -eu
            cd "\(dir)"
            cp -a "\(tree)/root" root
            R=root
            echo \(machineID) > $R/etc/machine-id; chmod 444 $R/etc/machine-id
            mkdir -p $R/var/lib/dbus; ln -s /etc/machine-id $R/var/lib/dbus/machine-id
            mkdir -p $R/var/lib/systemd
            head -c 512 /dev/urandom > $R/var/lib/systemd/random-seed; chmod 600 $R/var/lib/systemd/random-seed
            head -c 4096 /dev/urandom > $R/var/lib/systemd/credential.secret; chmod 400 $R/var/lib/systemd/credential.secret
            printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\t\(GuestFixtures.hostname)\\n::1\\tlocalhost ip6-localhost\\n' > $R/etc/hosts
            mkdir -p $R/etc/udev/rules.d
            echo 'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="\(mac)", NAME="eth0"' > $R/etc/udev/rules.d/70-persistent-net.rules
            mkdir -p $R/etc/NetworkManager/system-connections
            printf '[connection]\\nid=wired\\ntype=ethernet\\n\\n[ethernet]\\nmac-address=\(mac.uppercased())\\n\\n[ipv4]\\nmethod=auto\\n\\n[802-1x]\\npassword=not-a-real-secret\\n' > $R/etc/NetworkManager/system-connections/wired.nmconnection
            chmod 600 $R/etc/NetworkManager/system-connections/wired.nmconnection
            mkdir -p $R/var/lib/dhcp $R/var/lib/NetworkManager $R/var/lib/systemd/netif/leases
            printf 'lease {\\n  interface "eth0";\\n  fixed-address 192.0.2.10;\\n}\\n' > $R/var/lib/dhcp/dhclient.eth0.leases
            printf 'lease {\\n  fixed-address 192.0.2.11;\\n}\\n' > $R/var/lib/NetworkManager/internal-6d3f-eth0.lease
            printf 'ADDRESS=192.0.2.12\\nCLIENTID=ff00\\n' > $R/var/lib/systemd/netif/leases/2
            head -c 32 /dev/urandom > $R/var/lib/NetworkManager/secret_key; chmod 600 $R/var/lib/NetworkManager/secret_key
            mkdir -p $R/var/lib/cloud/instances/\(instanceID)/sem $R/var/lib/cloud/data $R/var/lib/cloud/sem
            ln -s /var/lib/cloud/instances/\(instanceID) $R/var/lib/cloud/instance
            echo \(instanceID) > $R/var/lib/cloud/data/instance-id
            echo \(instanceID) > $R/var/lib/cloud/instances/\(instanceID)/datasource
            touch $R/var/lib/cloud/instances/\(instanceID)/sem/config_ssh $R/var/lib/cloud/sem/config_scripts_per_once.once
            mkdir -p $R/home/\(GuestFixtures.user)/.ssh
            ssh-keygen -q -t ed25519 -N '' -C alice@laptop -f user_key
            cp user_key.pub $R/home/\(GuestFixtures.user)/.ssh/authorized_keys
            chmod 700 $R/home/\(GuestFixtures.user)/.ssh; chmod 600 $R/home/\(GuestFixtures.user)/.ssh/authorized_keys
            chown -R 1000:1000 $R/home/\(GuestFixtures.user)
            sed -i 's/^UUID=[^ ]* \\/ /UUID=\(rootUUID) \\/ /' $R/etc/fstab
            grep -q '^UUID=\(rootUUID) / ' $R/etc/fstab
            truncate -s 64M esp.img
            mkfs.vfat -F 32 -i \(GuestFixtures.espVolumeID) -n ESP esp.img >/dev/null
            truncate -s 1G root.img
            mkfs.ext4 -q -F -U \(rootUUID) -L root -d root root.img
            truncate -s 1100M disk.raw
            sgdisk -n 1:2048:+64M -t 1:ef00 -c 1:EFI -n 2:0:0 -t 2:8300 -c 2:root disk.raw >/dev/null
            s1=$(sgdisk -i 1 disk.raw | awk '/First sector/ {print $3}')
            s2=$(sgdisk -i 2 disk.raw | awk '/First sector/ {print $3}')
            dd if=esp.img of=disk.raw bs=512 seek="$s1" conv=notrunc,sparse status=none
            dd if=root.img of=disk.raw bs=512 seek="$s2" conv=notrunc,sparse status=none
            echo "$s2" > root-start-sector
            qemu-img convert -q -O qcow2 disk.raw disk.qcow2
            rm -rf disk.raw root.img esp.img root user_key
            """)
        }
    }

    /// `e2fsck -fn` on the guest's root filesystem, read from `qemu-img convert -O raw` of
    /// `image`. Returns e2fsck's exit status and output.
    static func e2fsckRoot(_ image: String, in dir: String) throws -> ToolResult {
        let fixture = try identityGuest()
        let start = try String(contentsOfFile: fixture + "/root-start-sector", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let raw = dir + "/fsck-\(UInt32.random(in: 0...UInt32.max)).raw"
        defer { try? FileManager.default.removeItem(atPath: raw) }
        try Tool.run(["qemu-img", "convert", "-O", "raw", image, raw])
        // e2fsck takes no offset: cut the root partition out (sparse).
        try Tool.run(["dd", "if=\(raw)", "of=\(raw).root", "bs=512", "skip=\(start)", "count=\(1 << 21)", "conv=sparse", "status=none"])
        defer { try? FileManager.default.removeItem(atPath: raw + ".root") }
        return try Tool.run(["e2fsck", "-fn", raw + ".root"], check: false)
    }
}
