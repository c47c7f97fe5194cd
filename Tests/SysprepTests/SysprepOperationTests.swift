import Foundation
import Testing
import WardenCore
import DiskImage
import GuestFS
import Inspection
import WardenTestSupport
@testable import Sysprep

/// The operations on small guests made with `mkfs.* -d` (no network needed), written through
/// the real write path and checked with e2fsck, ssh-keygen and Warden's own readers.
@Suite(.serialized) struct SysprepOperationTests {
    static let machineID = "00112233445566778899aabbccddeeff"
    static let rootUUID = "a1b2c3d4-0000-4000-8000-000000000001"

    /// A guest tree with every identity artifact, plus hostile links; returns the tree path.
    static func tree() throws -> String {
        try Fixtures.cached("sysprep-tree", recipe: "sysprep-tree-v1 mid=\(machineID) uuid=\(rootUUID)") { dir in
            try Tool.sh(#"""
            set -eu
            R="\#(dir)/root"
            mkdir -p $R/etc/ssh $R/var/lib/dbus $R/var/lib/systemd/netif/leases $R/var/lib/dhcp $R/var/lib/dhcpcd \
                     $R/var/lib/cloud/instances/i-1/sem $R/var/lib/cloud/data $R/etc/NetworkManager/system-connections \
                     $R/etc/udev/rules.d $R/home/bob/.ssh $R/etc/sysconfig/network-scripts
            echo \#(machineID) > $R/etc/machine-id
            echo \#(machineID) > $R/var/lib/dbus/machine-id
            printf 'ID=debian\nVERSION_ID=12\n' > $R/etc/os-release
            printf 'UUID=\#(rootUUID) / ext4 defaults 0 1\n' > $R/etc/fstab
            echo old-host > $R/etc/hostname
            printf '127.0.0.1 localhost\n' > $R/etc/hosts
            echo 'Port 22' > $R/etc/ssh/sshd_config
            ssh-keygen -q -t ed25519 -N '' -C root@old-host -f $R/etc/ssh/ssh_host_ed25519_key
            ssh-keygen -q -t dsa -N '' -C root@old-host -f $R/etc/ssh/ssh_host_dsa_key 2>/dev/null || touch $R/etc/ssh/ssh_host_dsa_key
            head -c 512 /dev/urandom > $R/var/lib/systemd/random-seed
            # Hostile: a lease "file" that is a symlink to a file the guest must keep.
            echo 'root:x:0:0:root:/root:/bin/sh' > $R/etc/passwd
            echo 'bob:x:1001:1001::/home/bob:/bin/sh' >> $R/etc/passwd
            ln -s /etc/passwd $R/var/lib/dhcp/dhclient.leases
            ln -s ../../../../../../etc/os-release $R/var/lib/systemd/netif/leases/3
            printf 'lease\n' > $R/var/lib/dhcpcd/eth0.lease
            head -c 16 /dev/urandom > $R/var/lib/dhcpcd/duid
            ln -s /var/lib/cloud/instances/i-1 $R/var/lib/cloud/instance
            echo i-1 > $R/var/lib/cloud/data/instance-id
            touch $R/var/lib/cloud/instances/i-1/sem/config_ssh
            printf '[connection]\nid=a\n[ethernet]\nmac-address=52:54:00:aa:bb:cc\ncloned-mac-address=52:54:00:aa:bb:cd\n[ipv4]\nmethod=manual\n' > $R/etc/NetworkManager/system-connections/a.nmconnection
            chmod 600 $R/etc/NetworkManager/system-connections/a.nmconnection
            printf 'DEVICE=eth0\nHWADDR=52:54:00:aa:bb:cc\nBOOTPROTO=dhcp\n' > $R/etc/sysconfig/network-scripts/ifcfg-eth0
            echo 'SUBSYSTEM=="net", ATTR{address}=="52:54:00:aa:bb:cc", NAME="eth0"' > $R/etc/udev/rules.d/70-persistent-net.rules
            echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bob@x' > $R/home/bob/.ssh/authorized_keys
            """#)
        }
    }

    struct Variant: Sendable, CustomStringConvertible {
        var name: String
        var mkfs: [String]
        var description: String { name }
    }
    static let variants = [
        Variant(name: "ext4", mkfs: ["mkfs.ext4", "-q", "-F"]),
        Variant(name: "ext4-1k-nocsum", mkfs: ["mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "^metadata_csum"]),
        Variant(name: "ext3", mkfs: ["mkfs.ext3", "-q", "-F"]),
    ]

    /// A raw image (no partition table) holding the tree as `v`, in `dir`.
    static func image(_ v: Variant, in dir: String) throws -> String {
        let img = dir + "/disk.raw"
        try Tool.run(["truncate", "-s", "64M", img])
        try Tool.run(v.mkfs + ["-U", rootUUID, "-d", try tree() + "/root", img])
        return img
    }

    static func guest(_ path: String) throws -> GuestFiles {
        GuestFiles(view: try Sysprep.readOnlyGuest(path).1)
    }

    @Test(arguments: variants)
    func applyRefreshesEverythingAndKeepsTheFilesystemClean(_ v: Variant) throws {
        try Fixtures.withTemporaryDirectory { dir in
            let img = try Self.image(v, in: dir)
            let copy = dir + "/source.raw"
            try Tool.run(["cp", "--sparse=always", img, copy])
            let ops = try Sysprep.select("all")
            let options = SysprepOptions(hostname: "new-host", authorizedKeysUsers: ["bob", "nobody"])
            // The plan lists what apply then does.
            let plan = try Sysprep.planImage(img, operations: ops, options: options)
            let report = try Sysprep.applyImage(img, operations: ops, options: options)
            func acted(_ r: SysprepReport) -> [String] {
                r.operations.flatMap { op in op.changes.filter { $0.action != .none && $0.action != .set }.map { "\(op.name) \($0.action) \($0.path ?? "")" } }
            }
            #expect(acted(plan) == acted(report))

            let fsck = try Tool.run(["e2fsck", "-fn", img], check: false)
            #expect(fsck.status == 0, "\(v): \(fsck.stdoutText)")

            let g = try Self.guest(img), src = try Self.guest(copy)
            let id = Inspection.identity(g)
            #expect(id.machineId.value == report.machineId && report.machineId != Self.machineID)
            #expect(id.dbusMachineId.value == report.machineId)   // a file: same id written
            #expect(id.hostname.value == "new-host")
            #expect(try g.text("/etc/hosts") == "127.0.0.1 localhost\n127.0.1.1\tnew-host\n")
            #expect(!id.randomSeed.present)
            #expect(id.persistentNetRules.isEmpty && id.networkManagerConnections.isEmpty)
            #expect(try g.text("/etc/sysconfig/network-scripts/ifcfg-eth0") == "DEVICE=eth0\nBOOTPROTO=dhcp\n")
            #expect(try g.text("/etc/NetworkManager/system-connections/a.nmconnection")?.contains("method=manual") == true)
            #expect(try g.lstat("/etc/NetworkManager/system-connections/a.nmconnection")?.permissions == 0o600)
            #expect(id.dhcpLeases.isEmpty)
            #expect(try g.lstat("/var/lib/dhcpcd/duid") == nil)
            // Hostile links were removed as links; their targets are intact.
            #expect(try g.text("/etc/passwd")?.hasPrefix("root:x:0:0") == true)
            #expect(try g.text("/etc/os-release") == "ID=debian\nVERSION_ID=12\n")
            #expect(id.cloudInitInstanceId.value == nil)
            #expect(try g.lstat("/var/lib/cloud/instance") == nil)
            #expect(try g.lstat("/home/bob/.ssh/authorized_keys") == nil)
            // SSH: the guest had Ed25519 (and DSA): only Ed25519 is made, DSA is gone.
            #expect(report.hostKeys.map(\.type) == ["ED25519"])
            #expect(try g.lstat("/etc/ssh/ssh_host_dsa_key") == nil)
            let pub = try #require(try g.read("/etc/ssh/ssh_host_ed25519_key.pub"))
            let priv = try #require(try g.read("/etc/ssh/ssh_host_ed25519_key"))
            #expect(try g.lstat("/etc/ssh/ssh_host_ed25519_key")?.permissions == 0o600)
            #expect(try g.lstat("/etc/ssh/ssh_host_ed25519_key.pub")?.permissions == 0o644)
            try Fixtures.write(priv, to: dir + "/k"); chmod(dir + "/k", 0o600)
            try Fixtures.write(pub, to: dir + "/k.pub")
            let l = try Tool.run(["ssh-keygen", "-lf", dir + "/k.pub"]).stdoutText
            #expect(l == "256 \(report.hostKeys[0].fingerprint) root@new-host (ED25519)\n")
            #expect(try Tool.run(["ssh-keygen", "-y", "-f", dir + "/k"]).stdoutText.hasPrefix("ssh-ed25519 "))
            // fs-uuids: a new UUID and fstab follows it.
            let newUUID = try #require(report.filesystemUUIDs["/"])
            #expect(g.fs.uuid == newUUID)
            let blkid = try Tool.run(["blkid", "-o", "value", "-s", "UUID", img]).stdoutText
            #expect(blkid.trimmingCharacters(in: .whitespacesAndNewlines) == newUUID)
            #expect(try g.text("/etc/fstab") == "UUID=\(newUUID) / ext4 defaults 0 1\n")

            // Verification: nothing shared with the source; a copy shares everything.
            #expect(IdentityCheck.compare(source: src, clone: g, expectedHostname: "new-host", checkFilesystemUUIDs: true).isEmpty)
            let naive = IdentityCheck.compare(source: src, clone: try Self.guest(copy), expectedHostname: nil, checkFilesystemUUIDs: true)
            let fields = Set(naive.map(\.field))
            #expect(fields.isSuperset(of: ["machine-id", "dbus-machine-id", "ssh-host-key", "random-seed", "dhcp-lease",
                                           "cloud-init-instance-id", "udev-persistent-net", "nm-mac-pin", "filesystem-uuid"]), "\(fields)")
        }
    }

    @Test func guestWithoutSSHOrMachineIDIsLeftAlone() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("mkdir -p \(dir)/t/etc && printf 'ID=alpine\\n' > \(dir)/t/etc/os-release && truncate -s 16M \(dir)/d.raw && mkfs.ext4 -q -F -d \(dir)/t \(dir)/d.raw")
            let before = try Tool.run(["sha256sum", dir + "/d.raw"]).stdoutText
            let r = try Sysprep.applyImage(dir + "/d.raw", operations: try Sysprep.select(nil), options: SysprepOptions())
            #expect(r.operations.allSatisfy { !$0.changedSomething })
            #expect(r.hostKeys.isEmpty && r.machineId == nil)
            #expect(try Tool.run(["sha256sum", dir + "/d.raw"]).stdoutText == before)
            #expect(try Tool.run(["e2fsck", "-fn", dir + "/d.raw"], check: false).status == 0)
        }
    }
}
