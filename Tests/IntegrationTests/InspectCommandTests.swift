import Foundation
import Testing
import WardenTestSupport

@Suite struct InspectCommandTests {
    func inventories(_ r: WardenRun) throws -> [[String: Any]] {
        try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]])
    }

    @Test func inspectsAssembledGuestAndReportsUnassembledMounts() throws {
        let dir = try SharedFixtures.guestViewDisk()
        let r = try WardenRun.run(["inspect", "--json", dir + "/disk.qcow2"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let inv = try #require(try inventories(r).first)
        #expect(inv["schema"] as? String == "warden.inspect/v1")
        let mounts = try #require(inv["mounts"] as? [[String: Any]])
        #expect(mounts.compactMap { $0["path"] as? String } == ["/", "/boot/efi", "/mnt/again", "/srv/data", "/var"])
        let root = try #require(mounts.first?["volume"] as? [String: Any])
        #expect((root["filesystem"] as? [String: Any])?["uuid"] as? String == SharedFixtures.rootUUID)
        let unassembled = try #require(inv["unassembled"] as? [[String: Any]])
        #expect(Set(unassembled.compactMap { $0["mount_point"] as? String }) == ["/mnt/nfs", "/opt", "/backup", ""])
        let os = try #require(inv["os"] as? [String: Any])
        #expect(os["id"] as? String == "debian")
        #expect(os["version_id"] as? String == "12")
        #expect(os["family"] as? String == "debian")
        // No /etc/hostname in this guest: an explicit unknown with a reason, never the host's name.
        let identity = try #require(inv["identity"] as? [String: Any])
        let hostname = try #require(identity["hostname"] as? [String: Any])
        #expect((hostname["unknown"] as? String)?.isEmpty == false)
        let ownHost = ProcessInfo.processInfo.hostName
        #expect(!r.stdoutText.contains("\"\(ownHost)\""))
    }

    /// A guest whose only filesystem Warden cannot read (btrfs with RAID0 striping, made by
    /// mkfs.btrfs) is not "no root found" and nothing more: the message names the volume that
    /// was not read, and why.
    @Test func aRootOnAnUnreadFilesystemIsNamed() throws {
        let dir = try Fixtures.cached("btrfs-disk", recipe: "v2 raid0") { dir in
            try Tool.sh("truncate -s 300M disk.raw && mkfs.btrfs -q -f -d raid0 -m raid0 -L fedora disk.raw >/dev/null", cwd: dir)
        }
        let r = try WardenRun.run(["inspect", dir + "/disk.raw"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("no root filesystem found") && r.stderr.contains("not read: btrfs on whole disk")
                && r.stderr.contains("striped profile"), "\(r.stderr)")
    }

    @Test func recognisesWindowsFromNTFS() throws {
        let dir = try Fixtures.cached("ntfs-disk", recipe: "v1") { dir in
            try Tool.sh("""
            cd "\(dir)"
            truncate -s 40M disk.raw
            sgdisk -n 1:2048:0 -t 1:0700 disk.raw >/dev/null
            truncate -s 38M ntfs.img && mkntfs -q -F -Q -L Windows ntfs.img >/dev/null
            dd if=ntfs.img of=disk.raw bs=512 seek=2048 conv=notrunc status=none
            """)
        }
        let r = try WardenRun.run(["inspect", "--json", dir + "/disk.raw"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let inv = try #require(try inventories(r).first)
        let os = try #require(inv["os"] as? [String: Any])
        #expect(os["family"] as? String == "windows")
        let human = try WardenRun.run(["inspect", dir + "/disk.raw"])
        #expect(human.stdoutText.contains("Windows (NTFS on partition 1)"))
    }

    @Test func oneBadImageDoesNotStopTheOthers() throws {
        let dir = try SharedFixtures.guestViewDisk()
        try Fixtures.withTemporaryDirectory { tmp in
            let bad = tmp + "/bad.qcow2"
            try Fixtures.write(Array(try Fixtures.read(dir + "/disk.qcow2").prefix(70000)), to: bad)
            let r = try WardenRun.run(["inspect", "--json", bad, dir + "/disk.qcow2"])
            #expect(r.status == 2)
            #expect(try inventories(r).count == 1)
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.count == 1 && lines.first?.contains("bad.qcow2") == true)
        }
    }
}

/// The documented JSON schemas validate what the commands print (python3-jsonschema as the validator).
@Suite struct JSONSchemaTests {
    static let schemas = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("docs/json-schemas").path

    func validate(_ output: Data, schema: String) throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try output.write(to: URL(fileURLWithPath: tmp + "/doc.json"))
            let r = try Tool.run(["python3", "-c", """
            import json, sys, jsonschema
            schema = json.load(open(sys.argv[1])); doc = json.load(open(sys.argv[2]))
            jsonschema.Draft202012Validator.check_schema(schema)
            jsonschema.validate(doc, schema)
            """, Self.schemas + "/" + schema, tmp + "/doc.json"], check: false)
            #expect(r.status == 0, "\(schema): \(r.stderr.suffix(600))")
        }
    }

    @Test func configAndDoctorOutputsMatchTheirSchemas() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let env = ["WARDEN_HOME": tmp + "/home", "WARDEN_CONFIG": "", "WARDEN_DATABASE_URL": "postgres://w:secret@127.0.0.1:1/x"]
            let config = try Tool.run([Fixtures.wardenBinary, "config", "show", "--json"], environment: env, check: false)
            #expect(config.status == 0, "\(config.stderr)")
            try validate(config.stdout, schema: "config.v1.json")
            var doctorEnv = env
            doctorEnv["WARDEN_DATABASE_URL"] = nil
            let doctor = try Tool.run([Fixtures.wardenBinary, "doctor", "--json"], environment: doctorEnv, check: false)
            #expect(doctor.status == 0, "\(doctor.stderr)")
            try validate(doctor.stdout, schema: "doctor.v1.json")
        }
    }

    @Test func inspectOutputMatchesSchema() throws {
        let r = try WardenRun.run(["inspect", "--json", try SharedFixtures.guestViewDisk() + "/disk.qcow2"])
        try validate(r.stdout, schema: "inspect.v1.json")
    }

    @Test func imageInfoAndLsOutputMatchSchemas() throws {
        let img = try SharedFixtures.guestViewDisk() + "/disk.qcow2"
        try validate(try WardenRun.run(["image", "info", "--json", img]).stdout, schema: "image-info.v1.json")
        try validate(try WardenRun.run(["image", "ls", "--json", "--partition", "2", img, "/etc"]).stdout, schema: "image-ls.v1.json")
    }
}

/// A guest whose root is a LUKS2 partition (argon2id, as Debian's installer makes it), made by
/// cryptsetup on files: inspected with its passphrase from a file; without one, or with a
/// wrong one, one line saying so.
@Suite struct EncryptedRootTests {
    static func disk() throws -> String {
        try Fixtures.cached("luks-root-disk", recipe: "v1; \((try? Tool.run(["cryptsetup", "--version"]).stdoutText) ?? "?")") { dir in
            try Tool.sh("""
            set -e
            cd "\(dir)"
            mkdir -p root/etc root/var/lib/dpkg
            printf 'ID=debian\\nVERSION_ID="12"\\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\\n' > root/etc/os-release
            printf 'Package: zlib1g\\nStatus: install ok installed\\nVersion: 1:1.2.13.dfsg-1\\nArchitecture: amd64\\nSource: zlib\\n\\n' > root/var/lib/dpkg/status
            printf 'UUID=%s / ext4 defaults 0 1\\n' 00000000-0000-0000-0000-000000000000 > root/etc/fstab
            printf 'correct horse battery staple' > key
            mkfs.ext4 -q -F -d root root.img 12M
            truncate -s 28M root.img
            cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 16M --key-file key --batch-mode \\
                --pbkdf argon2id --pbkdf-memory 16384 --pbkdf-force-iterations 4 root.img
            truncate -s 40M disk.raw
            sgdisk -n 1:2048:+1M -t 1:ef00 -n 2:0:+28M -t 2:8309 disk.raw >/dev/null
            start=$(sgdisk -i 2 disk.raw | sed -n 's/^First sector: \\([0-9]*\\).*/\\1/p')
            dd if=root.img of=disk.raw bs=512 seek=$start conv=notrunc status=none
            rm -rf root root.img
            printf 'wrong' > wrong
            """)
        }
    }

    @Test func inspectsAGuestWithAnEncryptedRootGivenItsPassphrase() throws {
        let dir = try Self.disk()
        let r = try WardenRun.run(["inspect", "--json", dir + "/disk.raw", "--key-from", "file:" + dir + "/key"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let inv = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]]).first
        #expect((inv?["os"] as? [String: Any])?["version_id"] as? String == "12")
        let dpkg = (inv?["packages"] as? [[String: Any]])?.first?["packages"] as? [[String: Any]]
        #expect(dpkg?.first?["name"] as? String == "zlib1g", "\(r.stdoutText.prefix(2000))")
        let root = ((inv?["mounts"] as? [[String: Any]])?.first?["volume"] as? [String: Any])
        #expect((root?["logical_volume"] as? String)?.hasPrefix("/dev/mapper/luks-") == true, "\(String(describing: root))")

        let blind = try WardenRun.run(["inspect", dir + "/disk.raw"])
        #expect(blind.status == 2 && blind.stderr.contains("partition 2 is LUKS-encrypted: give its passphrase with --key-from")
                && blind.stderr.split(separator: "\n").count == 1, "\(blind.status) \(blind.stderr)")
        let wrong = try WardenRun.run(["inspect", dir + "/disk.raw", "--key-from", "file:" + dir + "/wrong"])
        #expect(wrong.status == 2 && wrong.stderr.contains("does not open") && wrong.stderr.split(separator: "\n").count == 1,
                "\(wrong.status) \(wrong.stderr)")
        // image info names the encrypted partition, as blkid does.
        let info = try WardenRun.run(["image", "info", "--json", dir + "/disk.raw"])
        #expect(info.stdoutText.contains("crypto_LUKS"), "\(info.stdoutText.prefix(3000))")
        let blkid = try Tool.run(["blkid", "-p", "-O", String(2048 * 512 + 1 << 20), "-o", "value", "-s", "TYPE", dir + "/disk.raw"], check: false)
        #expect(blkid.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "crypto_LUKS" || blkid.status != 0, "\(blkid.stdoutText)")
    }
}


/// Parts of a disk Warden did not read are reported, never silently clean: a plain root, a
/// LUKS2 partition without its key and an NTFS partition (read since NTFS support: not
/// reported); `--fail-on-unscanned` exits 2.
@Suite struct UnscannedPartsTests {
    static func disk() throws -> String {
        try Fixtures.cached("unscanned-parts-disk", recipe: "v1; \((try? Tool.run(["cryptsetup", "--version"]).stdoutText) ?? "?")") { dir in
            try Tool.sh("""
            set -e
            cd "\(dir)"
            mkdir -p root/etc root/var/lib/dpkg
            printf 'ID=debian\\nVERSION_ID="12"\\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\\n' > root/etc/os-release
            : > root/var/lib/dpkg/status
            mkfs.ext4 -q -F -d root root.img 12M
            printf 'k' > key
            truncate -s 20M secret.img
            cryptsetup luksFormat --type luks2 --batch-mode --key-file key --pbkdf pbkdf2 --pbkdf-force-iterations 1000 secret.img
            truncate -s 8M ntfs.img && mkntfs -q -F -Q ntfs.img >/dev/null
            truncate -s 48M disk.raw
            sgdisk -n 1:2048:+12M -n 2:0:+20M -n 3:0:+8M disk.raw >/dev/null
            for p in "1 root" "2 secret" "3 ntfs"; do
              set -- $p
              start=$(sgdisk -i $1 disk.raw | sed -n 's/^First sector: \\([0-9]*\\).*/\\1/p')
              dd if=$2.img of=disk.raw bs=512 seek=$start conv=notrunc status=none
            done
            rm -rf root *.img
            """)
        }
    }

    @Test func unreadPartsAreReportedAndCanFailTheRun() throws {
        let dir = try Self.disk()
        let r = try WardenRun.run(["inspect", "--json", dir + "/disk.raw"])
        #expect(r.status == 0, "\(r.stderr)")
        let inv = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]]).first
        let parts = try #require(inv?["unscanned"] as? [[String: Any]])
        #expect(parts.contains { $0["part"] as? String == "partition 2" && ($0["reason"] as? String)?.contains("LUKS-encrypted") == true }, "\(parts)")
        #expect(!parts.contains { $0["part"] as? String == "partition 3" }, "NTFS is read: \(parts)")
        #expect(parts.count == 1)
        #expect(r.stderr.contains("partition 2 was not scanned"), "\(r.stderr)")
        let support = inv?["release_support"] as? [String: Any]
        #expect(support?["release"] as? String == "debian 12" && support?["end_of_long_term_support"] as? String != nil, "\(String(describing: support))")
        let strict = try WardenRun.run(["inspect", dir + "/disk.raw", "--fail-on-unscanned"])
        #expect(strict.status == 2 && strict.stderr.contains("--fail-on-unscanned"), "\(strict.stderr)")
        // scan says the same, and --fail-on-unscanned fails it.
        try Fixtures.withTemporaryDirectory { tmp in
            let scan = try WardenRun.run(["scan", dir + "/disk.raw", "--db", tmp + "/w.db", "--fail-on-unscanned"])
            #expect(scan.status == 2 && scan.stderr.contains("partition 2 was not scanned") && scan.stderr.contains("--fail-on-unscanned"), "\(scan.status) \(scan.stderr)")
        }
        // With the key, nothing is left unread.
        let keyed = try WardenRun.run(["inspect", "--json", dir + "/disk.raw", "--key-from", "file:" + dir + "/key"])
        let keyedParts = (try JSONSerialization.jsonObject(with: keyed.stdout) as? [[String: Any]])?.first?["unscanned"] as? [[String: Any]]
        #expect((keyedParts ?? []).isEmpty, "\(String(describing: keyedParts)) \(keyed.stderr)")
        #expect(try WardenRun.run(["inspect", dir + "/disk.raw", "--key-from", "file:" + dir + "/key", "--fail-on-unscanned"]).status == 0)
    }
}
