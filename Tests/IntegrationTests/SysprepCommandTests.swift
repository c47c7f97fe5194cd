import Foundation
import Testing
import WardenTestSupport

/// `warden image sysprep` on the debootstrapped Debian guest with identity artifacts
/// (SysprepFixtures), checked with qemu-img, e2fsck, ssh-keygen and `warden inspect`.
@Suite(.serialized) struct SysprepCommandTests {
    static func sha256(_ path: String) throws -> String {
        String(try Tool.run(["sha256sum", path]).stdoutText.prefix(64))
    }

    static func json(_ r: WardenRun) throws -> Any {
        try JSONSerialization.jsonObject(with: r.stdout)
    }

    /// `warden inspect --json IMAGE` → the first inventory.
    static func inspect(_ image: String) throws -> [String: Any] {
        let r = try WardenRun.run(["inspect", "--json", image])
        #expect(r.status == 0, "\(r.stderr)")
        let all = try #require(try json(r) as? [[String: Any]])
        return try #require(all.first)
    }

    static func identity(_ inv: [String: Any]) -> [String: Any] { inv["identity"] as? [String: Any] ?? [:] }

    static func hostKeyFingerprints(_ inv: [String: Any]) -> [String] {
        let keys = (inv["ssh"] as? [String: Any])?["host_keys"] as? [[String: Any]] ?? []
        return keys.compactMap { ($0["public_key"] as? [String: Any])?["fingerprint"] as? String }.sorted()
    }

    static let guestAvailable = GuestFixtures.available

    @Test(.enabled(if: guestAvailable, "needs root, debootstrap and the Debian mirror"))
    func dryRunChangesNothing() throws {
        let src = try SysprepFixtures.identityGuest() + "/disk.qcow2"
        try Fixtures.withTemporaryDirectory { dir in
            let img = dir + "/copy.qcow2"
            try Tool.run(["cp", "--sparse=always", src, img])
            let before = try Self.sha256(img)
            let r = try WardenRun.run(["image", "sysprep", "--dry-run", "--json", "--hostname", "dry-1", img])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(try Self.sha256(img) == before)
            let report = try #require(try Self.json(r) as? [String: Any])
            #expect(report["schema"] as? String == "warden.sysprep/v1")
            #expect(report["dry_run"] as? Bool == true)
            let ops = report["operations"] as? [[String: Any]] ?? []
            var changed: [String: [String]] = [:]
            for op in ops {
                let name = op["name"] as? String ?? ""
                changed[name] = (op["changes"] as? [[String: Any]] ?? []).filter { $0["action"] as? String != "none" }
                    .compactMap { ($0["action"] as? String ?? "") + " " + ($0["path"] as? String ?? "") }
            }
            #expect(changed["machine-id"] == ["replace /etc/machine-id"])
            #expect(changed["random-seed"] == ["remove /var/lib/systemd/random-seed", "remove /var/lib/systemd/credential.secret"])
            #expect(changed["hostname"] == ["replace /etc/hostname", "edit /etc/hosts"])
            #expect(changed["udev-persistent-net"] == ["remove /etc/udev/rules.d/70-persistent-net.rules"])
            #expect(changed["net-mac-pins"] == ["edit /etc/NetworkManager/system-connections/wired.nmconnection"])
            #expect(Set(changed["dhcp-client-state"] ?? []) == ["remove /var/lib/dhcp/dhclient.eth0.leases",
                                                                "remove /var/lib/NetworkManager/internal-6d3f-eth0.lease",
                                                                "remove /var/lib/NetworkManager/secret_key",
                                                                "remove /var/lib/systemd/netif/leases/2"])
            #expect(changed["cloud-init"]?.contains("remove /var/lib/cloud/data/instance-id") == true)
            #expect(changed["ssh-hostkeys"]?.filter { $0.hasPrefix("create") }.count == 6)
            // The secret in the NetworkManager profile never appears in the output.
            #expect(!r.stdoutText.contains("not-a-real-secret"))
            // Human output also writes nothing.
            let h = try WardenRun.run(["image", "sysprep", "--dry-run", img])
            #expect(h.status == 0)
            #expect(h.stdoutText.contains("would remove /var/lib/systemd/random-seed"))
            #expect(try Self.sha256(img) == before)
        }
    }

    @Test func badArgumentsExitTwo() throws {
        for args in [["image", "sysprep", "--operations", "nope", "x.qcow2"],
                     ["image", "sysprep", "--hostname", "bad host", "x.qcow2"],
                     ["image", "sysprep", "--operations", "authorized-keys", "x.qcow2"],
                     ["image", "sysprep", "/nonexistent.qcow2"]] {
            let r = try WardenRun.run(args)
            #expect(r.status == 2, "\(args): \(r.stderr)")
            #expect(r.stderr.hasPrefix("warden: ") || r.stderr.hasPrefix("Error: "), "\(r.stderr)")
        }
    }

    @Test(.enabled(if: guestAvailable, "needs root, debootstrap and the Debian mirror"))
    func sysprepInPlaceRefreshesEveryIdentityField() throws {
        let src = try SysprepFixtures.identityGuest() + "/disk.qcow2"
        let srcDigest = try Self.sha256(src)
        try Fixtures.withTemporaryDirectory { dir in
            // A naive copy, then refreshed in place.
            let img = dir + "/copy.qcow2"
            try Tool.run(["cp", "--sparse=always", src, img])
            let r = try WardenRun.run(["image", "sysprep", "--json", "--hostname", "web-2", "--remove-authorized-keys", "alice", img])
            #expect(r.status == 0, "\(r.stderr)")
            let report = try #require(try Self.json(r) as? [String: Any])
            #expect(report["dry_run"] as? Bool == false)
            let keys = report["host_keys"] as? [[String: Any]] ?? []
            #expect(keys.count == 3)

            // qemu-img check clean; e2fsck -fn clean on the converted root filesystem.
            let check = try Tool.run(["qemu-img", "check", img], check: false)
            #expect(check.status == 0, "\(check.stdoutText)\(check.stderr)")
            let fsck = try SysprepFixtures.e2fsckRoot(img, in: dir)
            #expect(fsck.status == 0, "\(fsck.stdoutText)\(fsck.stderr)")

            // Inspect both: nothing shared.
            let a = try Self.inspect(src), b = try Self.inspect(img)
            let ia = Self.identity(a), ib = Self.identity(b)
            #expect(ia["machine_id"] as? String == SysprepFixtures.machineID)
            let newID = try #require(ib["machine_id"] as? String)
            #expect(newID != SysprepFixtures.machineID && newID.count == 32)
            #expect(ib["dbus_machine_id_links_to_etc"] as? Bool == true)
            #expect(ib["hostname"] as? String == "web-2")
            #expect((ib["random_seed"] as? [String: Any])?["present"] as? Bool == false)
            #expect((ib["persistent_net_rules"] as? [Any])?.isEmpty == true)
            #expect((ib["network_manager_connections"] as? [Any])?.isEmpty == true)
            #expect((ib["dhcp_leases"] as? [Any])?.isEmpty == true)
            #expect(ib["cloud_init_instance_id"] is [String: Any])   // unknown: reset
            let fa = Self.hostKeyFingerprints(a), fb = Self.hostKeyFingerprints(b)
            #expect(fa.count == 3 && fb.count == 3)
            #expect(Set(fa).isDisjoint(with: fb))
            #expect(Set(fb) == Set(keys.compactMap { $0["fingerprint"] as? String }))

            // ssh-keygen agrees with the recorded fingerprints and loads every private key.
            for k in keys {
                let pubPath = try #require(k["path"] as? String)
                let privPath = String(pubPath.dropLast(4))
                let pub = try WardenRun.run(["image", "cat", img, pubPath])
                let priv = try WardenRun.run(["image", "cat", img, privPath])
                try pub.stdout.write(to: URL(fileURLWithPath: dir + "/k.pub"))
                try priv.stdout.write(to: URL(fileURLWithPath: dir + "/k"))
                chmod(dir + "/k", 0o600)
                let l = try Tool.run(["ssh-keygen", "-lf", dir + "/k.pub"]).stdoutText
                let recorded = k["fingerprint"] as? String ?? "?"
                #expect(String(l.split(separator: " ")[1]) == recorded)
                let y = try Tool.run(["ssh-keygen", "-y", "-f", dir + "/k"]).stdoutText
                #expect(y.split(separator: " ").prefix(2) == pub.stdoutText.split(separator: " ").prefix(2))
            }
            // Modes and owners as OpenSSH makes them.
            let ls = try WardenRun.run(["image", "ls", "--json", img, "/etc/ssh"])
            let entries = (try Self.json(ls) as? [String: Any])?["entries"] as? [[String: Any]] ?? []
            for e in entries where (e["name"] as? String ?? "").hasPrefix("ssh_host_") {
                let name = e["name"] as? String ?? ""
                #expect(e["mode"] as? String == (name.hasSuffix(".pub") ? "0644" : "0600"), "\(name)")
                #expect(e["uid"] as? Int == 0 && e["gid"] as? Int == 0)
            }
            // The NetworkManager profile keeps its other settings and mode; only the pin went.
            let nm = try WardenRun.run(["image", "cat", img, "/etc/NetworkManager/system-connections/wired.nmconnection"]).stdoutText
            #expect(!nm.contains("mac-address") && nm.contains("[ipv4]") && nm.contains("method=auto"))
            let hosts = try WardenRun.run(["image", "cat", img, "/etc/hosts"]).stdoutText
            #expect(hosts.contains("127.0.1.1\tweb-2\n") && hosts.contains("127.0.0.1\tlocalhost"))
            let ak = try WardenRun.run(["image", "cat", img, "/home/alice/.ssh/authorized_keys"])
            #expect(ak.status == 2)
        }
        #expect(try Self.sha256(src) == srcDigest)
    }
}
