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
