import Foundation
import Testing
import WardenTestSupport

/// `warden inspect --json` on real debootstrapped Debian 12 guests, checked against
/// virt-inspector (OS, hostname, packages, root filesystem), `ssh-keygen -lf` (host key
/// fingerprints) and `dpkg-query --admindir` (package set). See GuestFixtures.
@Suite(.serialized) struct GuestOracleTests {
    struct Expect {
        var image: String
        var rootType: String
        var rootUUID: String
        var esp: Bool
        var logicalVolume: String?
    }

    @Test(.enabled(if: GuestFixtures.available, "needs root, debootstrap and the Debian mirror"),
          .enabled(if: GuestFixtures.virtInspectorAvailable, "needs virt-inspector (libguestfs-tools)"))
    func guestAExt4WithESPAsQcow2() throws {
        let dir = try GuestFixtures.guestA()
        try check(Expect(image: dir + "/disk.qcow2", rootType: "ext4", rootUUID: GuestFixtures.rootUUIDA, esp: true))
    }

    @Test(.enabled(if: GuestFixtures.available, "needs root, debootstrap and the Debian mirror"),
          .enabled(if: GuestFixtures.virtInspectorAvailable, "needs virt-inspector (libguestfs-tools)"))
    func guestBXfsFromProtofile() throws {
        let dir = try GuestFixtures.guestB()
        try check(Expect(image: dir + "/disk.raw", rootType: "xfs", rootUUID: GuestFixtures.rootUUIDB, esp: false))
    }

    @Test(.enabled(if: GuestFixtures.available, "needs root, debootstrap and the Debian mirror"),
          .enabled(if: GuestFixtures.virtInspectorAvailable, "needs virt-inspector (libguestfs-tools)"),
          .enabled(if: GuestFixtures.lvmAvailable, "needs loop devices and lvm2"))
    func guestCExt4OnLVM() throws {
        let dir = try GuestFixtures.guestC()
        try check(Expect(image: dir + "/disk.raw", rootType: "ext4", rootUUID: GuestFixtures.rootUUIDC, esp: false,
                         logicalVolume: "/dev/mapper/vg0-root"))
    }

    /// Guest A converted by qemu-img into VHDX, VDI, VHD and an OVA inspects exactly as the qcow2 does
    /// (everything but the `image` facts).
    @Test(.enabled(if: GuestFixtures.available, "needs root, debootstrap and the Debian mirror"))
    func guestAInspectsTheSameInEveryFormat() throws {
        let qcow2 = try GuestFixtures.guestA() + "/disk.qcow2"
        let formats = [("vhdx", "subformat=dynamic", "disk.vhdx"), ("vdi", "static=off", "disk.vdi"), ("vpc", "force_size=on", "disk.vhd")]
        let dir = try Fixtures.cached("guest-a-formats", recipe: "v2 " + qcow2 + formats.map { "\($0)" }.joined()) { dir in
            for (fmt, options, name) in formats {
                try Tool.run(["qemu-img", "convert", "-f", "qcow2", "-O", fmt, "-o", options, qcow2, name], cwd: dir)
            }
            // An OVA: an OVF descriptor and a streamOptimized VMDK in a tar, read in place.
            try Tool.run(["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized", qcow2, "guest.vmdk"], cwd: dir)
            let ovf = """
            <?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">\
            <References><File ovf:id="f" ovf:href="guest.vmdk"/></References><DiskSection><Disk ovf:diskId="d" ovf:fileRef="f"/></DiskSection>\
            <VirtualSystem ovf:id="guest-a"><Name>guest-a</Name></VirtualSystem></Envelope>
            """
            try ovf.write(toFile: dir + "/guest.ovf", atomically: true, encoding: .utf8)
            try Tool.run(["tar", "--format=ustar", "-cf", "disk.ova", "guest.ovf", "guest.vmdk"], cwd: dir)
            try FileManager.default.removeItem(atPath: dir + "/guest.vmdk")
        }
        func inventory(_ path: String) throws -> [String: Any] {
            let r = try WardenRun.run(["inspect", "--json", path], timeoutSeconds: 120)
            #expect(r.status == 0, "stderr: \(r.stderr)")
            var inv = try #require((try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]])?.first)
            inv["image"] = nil
            return inv
        }
        let want = try inventory(qcow2)
        #expect(want["os"] != nil && want["packages"] != nil)
        for name in formats.map(\.2) + ["disk.ova"] {
            let got = try inventory(dir + "/" + name)
            #expect(NSDictionary(dictionary: got).isEqual(to: want), "\(name) inspects differently")
        }
        // Registering the OVA records what its descriptor says of the appliance, and the guest's OS.
        try Fixtures.withTemporaryDirectory { tmp in
            let db = ["--db", tmp + "/w.db"]
            #expect(try WardenRun.run(["vm", "register", "--name", "appliance", "--owner", "ops", dir + "/disk.ova"] + db).status == 0)
            let h = try WardenRun.run(["vm", "history", "appliance", "--json"] + db)
            let events = try #require((try JSONSerialization.jsonObject(with: h.stdout) as? [String: Any])?["events"] as? [[String: Any]])
            let payload = try #require(events.first?["payload"] as? [String: Any])
            let disk = try #require((payload["disks"] as? [[String: Any]])?.first)
            #expect(disk["format"] as? String == "ova" && (disk["backing_chain"] as? [Any])?.isEmpty == true)
            #expect((disk["appliance"] as? [String: Any])?["name"] as? String == "guest-a")
            #expect(payload["os"] as? String == "debian 12")
        }
    }

    // MARK: -

    func check(_ e: Expect) throws {
        let root = try GuestFixtures.rootTree() + "/root"
        let r = try WardenRun.run(["inspect", "--json", e.image], timeoutSeconds: 120)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let inv = try #require((try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]])?.first)
        let vi = try GuestFixtures.virtInspector(e.image)

        // OS: distro, major version (warden has no minor; the oracle's minor is checked
        // against /etc/debian_version), architecture, hostname.
        let os = try #require(inv["os"] as? [String: Any])
        #expect(vi["distro"] as? String == "debian")
        #expect(os["id"] as? String == vi["distro"] as? String)
        #expect(os["family"] as? String == "debian")
        #expect(os["version_id"] as? String == vi["major_version"] as? String)
        #expect(os["version_id"] as? String == "12")
        let debianVersion = try String(contentsOfFile: root + "/etc/debian_version", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect("\(vi["major_version"] as? String ?? "").\(vi["minor_version"] as? String ?? "")" == debianVersion)
        let arch = try #require(os["architecture"] as? [String: Any])
        #expect(arch["name"] as? String == vi["arch"] as? String)
        let identity = try #require(inv["identity"] as? [String: Any])
        #expect(identity["hostname"] as? String == vi["hostname"] as? String)
        #expect(identity["hostname"] as? String == GuestFixtures.hostname)

        // Root filesystem: same UUID and type as virt-inspector's "/" mountpoint.
        let mounts = try #require(inv["mounts"] as? [[String: Any]])
        let rootMount = try #require(mounts.first)
        #expect(rootMount["path"] as? String == "/")
        #expect(rootMount["type"] as? String == e.rootType)
        let rootVolume = try #require(rootMount["volume"] as? [String: Any])
        let rootFS = try #require(rootVolume["filesystem"] as? [String: Any])
        let viMounts = try #require(vi["mountpoints"] as? [String: String])
        let viFS = try #require(vi["filesystems"] as? [String: [String: String]])
        let viRoot = try #require(viFS[viMounts["/"] ?? ""], "virt-inspector mountpoints: \(viMounts)")
        #expect(rootFS["uuid"] as? String == viRoot["uuid"])
        #expect(rootFS["type"] as? String == viRoot["type"])
        #expect(rootFS["uuid"] as? String == e.rootUUID)
        if let lv = e.logicalVolume {
            #expect(rootVolume["logical_volume"] as? String == lv)
        }
        let unassembled = inv["unassembled"] as? [[String: Any]] ?? []
        #expect(unassembled.isEmpty, "\(unassembled)")

        // ESP at /boot/efi (guest A), as virt-inspector sees it too.
        if e.esp {
            let espMount = try #require(mounts.first { $0["path"] as? String == "/boot/efi" }, "mounts: \(mounts.map { $0["path"] ?? "" })")
            #expect(espMount["spec"] as? String == "UUID=\(GuestFixtures.espUUID)")
            #expect(espMount["type"] as? String == "vfat")
            let espFS = (espMount["volume"] as? [String: Any])?["filesystem"] as? [String: Any]
            #expect(espFS?["uuid"] as? String == GuestFixtures.espUUID)
            let viESP = try #require(viFS[viMounts["/boot/efi"] ?? ""], "virt-inspector mountpoints: \(viMounts)")
            #expect(viESP["uuid"] == GuestFixtures.espUUID)
            #expect(viESP["type"] == "vfat")
        } else {
            #expect(mounts.count == 1, "\(mounts.map { $0["path"] ?? "" })")
        }

        // Packages: warden's dpkg inventory vs virt-inspector (epoch, version, release
        // recombined as epoch:version-release) and vs dpkg-query on the source tree.
        let packages = try #require(inv["packages"] as? [[String: Any]])
        let dpkgInv = try #require(packages.first { $0["manager"] as? String == "dpkg" })
        let list = try #require(dpkgInv["packages"] as? [[String: Any]])
        var warden: [String: String] = [:]
        var wardenParts: [String: [String]] = [:]
        for p in list {
            let name = try #require(p["name"] as? String)
            warden[name] = p["version"] as? String
            wardenParts[name] = [(p["epoch"] as? NSNumber).map { "\($0)" } ?? "0",
                                 p["upstream_version"] as? String ?? "", p["revision"] as? String ?? ""]
        }
        #expect(warden.count == list.count, "duplicate package names")
        let apps = try #require(vi["applications"] as? [[String: String]])
        var oracle: [String: String] = [:]
        var oracleParts: [String: [String]] = [:]
        for a in apps {
            let epoch = a["epoch"] ?? ""
            let release = a["release"] ?? ""
            let version = a["version"] ?? ""
            oracle[a["name"] ?? ""] = (epoch.isEmpty || epoch == "0" ? "" : epoch + ":") + version + (release.isEmpty ? "" : "-" + release)
            oracleParts[a["name"] ?? ""] = [epoch.isEmpty ? "0" : epoch, version, release]
        }
        #expect(oracle.count > 80)
        #expect(warden == oracle, "differ: \(Set(warden.map { "\($0.key)=\($0.value)" }).symmetricDifference(oracle.map { "\($0.key)=\($0.value)" }).sorted())")
        // Parts: virt-inspector splits a Debian version at the first '-' (libedit2's
        // 3.1-20221030-2 becomes version 3.1, release 20221030-2); Debian policy, dpkg and
        // warden split the revision off at the last '-'. So the parts are checked against
        // the policy split of dpkg-query's version, and virt-inspector's parts must agree
        // wherever the upstream version has no '-'.
        var hyphenated = 0
        for (name, parts) in oracleParts {
            guard let w = wardenParts[name] else { continue }
            if w[1].contains("-") {
                hyphenated += 1
                #expect(parts == [w[0], String(w[1].prefix { $0 != "-" }), String(w[1].drop { $0 != "-" }.dropFirst()) + (w[2].isEmpty ? "" : "-" + w[2])], "\(name)")
            } else {
                #expect(parts == w, "\(name)")
            }
        }
        #expect(hyphenated >= 1, "libedit2 3.1-20221030-2 should exercise the last-hyphen split")
        let dq = try Tool.run(["dpkg-query", "--admindir", root + "/var/lib/dpkg", "-W",
                               "-f", "${db:Status-Status}\t${Package}\t${Version}\n"]).stdoutText
        var dpkg: [String: String] = [:]
        for line in dq.split(separator: "\n") {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            if f.count == 3, f[0] == "installed" { dpkg[f[1]] = f[2] }
        }
        #expect(warden == dpkg)
        for (name, version) in dpkg {
            var rest = Substring(version)
            var epoch = "0"
            if let colon = rest.firstIndex(of: ":") { epoch = String(rest[..<colon]); rest = rest[rest.index(after: colon)...] }
            var revision = ""
            if let dash = rest.lastIndex(of: "-") { revision = String(rest[rest.index(after: dash)...]); rest = rest[..<dash] }
            #expect(wardenParts[name] == [epoch, String(rest), revision], "\(name) \(version)")
        }
        #expect(warden["openssh-server"] != nil && warden["sudo"] != nil)

        // SSH host keys: fingerprint lines exactly as ssh-keygen -lf prints them.
        let ssh = try #require(inv["ssh"] as? [String: Any])
        let hostKeys = try #require(ssh["host_keys"] as? [[String: Any]])
        let wardenLines = Set(hostKeys.compactMap { ($0["public_key"] as? [String: Any])?["fingerprint_line"] as? String })
        var oracleLines = Set<String>()
        for name in try FileManager.default.contentsOfDirectory(atPath: root + "/etc/ssh")
        where name.hasPrefix("ssh_host_") && name.hasSuffix("_key.pub") {
            oracleLines.insert(try Tool.run(["ssh-keygen", "-lf", root + "/etc/ssh/" + name]).stdoutText
                .trimmingCharacters(in: .newlines))
        }
        #expect(oracleLines.count >= 3)
        #expect(wardenLines == oracleLines)
        #expect(hostKeys.count == oracleLines.count)

        // sshd: enabled through multi-user.target.wants; its config was read.
        let services = try #require(inv["services"] as? [String: Any])
        let enabled = try #require(services["enabled"] as? [[String: Any]])
        #expect(enabled.contains { $0["unit"] as? String == "ssh.service" && $0["wanted_by"] as? String == "multi-user.target"
            && $0["dependency"] as? String == "wants" && $0["local"] as? Bool == true },
                "\(enabled.map { "\($0["wanted_by"] ?? "")/\($0["unit"] ?? "")" })")
        let sshd = try #require(ssh["sshd"] as? [String: Any])
        #expect((sshd["files_read"] as? [String])?.contains("/etc/ssh/sshd_config") == true)

        // sudo: the user is an admin through the sudo group, with a SHA-512 hash.
        let accounts = try #require(inv["accounts"] as? [String: Any])
        let accountList = try #require(accounts["accounts"] as? [[String: Any]])
        let alice = try #require(accountList.first { $0["name"] as? String == GuestFixtures.user })
        #expect(alice["is_admin"] as? Bool == true)
        #expect((alice["admin_via"] as? [String])?.contains("group:sudo") == true, "\(alice)")
        #expect((alice["password_state"] as? String)?.hasPrefix("hash:") == true, "\(alice)")
        #expect(alice["can_log_in"] as? Bool == true)
        #expect((accounts["sudoers_files"] as? [String])?.contains("/etc/sudoers") == true)
    }
}
