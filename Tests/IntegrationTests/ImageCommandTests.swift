import Foundation
import Testing
import WardenTestSupport

@Suite struct ImageManifestTests {
    @Test(arguments: ImageFixtures.variants)
    func manifestEqualsDebugfsOracle(_ variant: ImageFixtures.Variant) throws {
        let dir = try ImageFixtures.filesystem(variant)
        let fs = dir + "/fs.img"
        let ours = try WardenRun.run(["image", "manifest", fs])
        #expect(ours.status == 0, "stderr: \(ours.stderr)")
        let oracle = try DebugfsOracle.manifest(filesystemImage: fs)
        let lines = ours.stdoutText.split(separator: "\n").map(String.init)
        #expect(lines.count == oracle.count)
        #expect(lines.count > 5000)
        for (a, b) in zip(lines, oracle) where a != b {
            Issue.record("manifest differs:\n warden: \(a)\n oracle: \(b)")
            break
        }
        let same = lines == oracle
        #expect(same)
    }

    @Test func manifestPicksLargestLinuxFilesystemAndNamesIt() throws {
        let dir = try ImageFixtures.gptDisk()
        let whole = try WardenRun.run(["image", "manifest", dir + "/disk.qcow2"])
        #expect(whole.status == 0, "stderr: \(whole.stderr)")
        #expect(whole.stderr.contains("partition 3"))
        let explicit = try WardenRun.run(["image", "manifest", "--partition", "3", dir + "/disk.raw"])
        #expect(explicit.status == 0)
        let same = explicit.stdout == whole.stdout
        #expect(same)
        let oracle = try DebugfsOracle.manifest(filesystemImage: try ImageFixtures.filesystem(ImageFixtures.variants[0]) + "/fs.img")
        let same2 = whole.stdoutText.split(separator: "\n").map(String.init) == oracle
        #expect(same2)
    }
}

@Suite struct ImageExportTests {
    @Test(arguments: ["disk.raw", "disk.qcow2", "disk.vmdk"])
    func exportIsByteIdenticalToQemuImgConvert(_ name: String) throws {
        let dir = try ImageFixtures.gptDisk()
        try Fixtures.withTemporaryDirectory { tmp in
            let ours = tmp + "/ours.raw", theirs = tmp + "/qemu.raw"
            let r = try WardenRun.run(["image", "export", dir + "/" + name, "-o", ours])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            try Tool.run(["qemu-img", "convert", "-O", "raw", dir + "/" + name, theirs])
            let cmp = try Tool.run(["cmp", ours, theirs], check: false)
            #expect(cmp.status == 0, "\(cmp.stdoutText)")
        }
    }

    @Test func exportToStdoutMatchesFile() throws {
        let dir = try ImageFixtures.gptDisk()
        let r = try WardenRun.run(["image", "export", dir + "/disk.qcow2", "-o", "-"])
        #expect(r.status == 0)
        let raw = try Data(contentsOf: URL(fileURLWithPath: dir + "/disk.raw"))
        #expect(r.stdout.count == raw.count)
        let same = r.stdout == raw   // compared outside #expect: a diff of 110 MB is not a message
        #expect(same)
    }

    @Test func exportRefusesToClobber() throws {
        let dir = try ImageFixtures.gptDisk()
        try Fixtures.withTemporaryDirectory { tmp in
            let copy = tmp + "/disk.qcow2"
            try Tool.run(["cp", dir + "/disk.qcow2", copy])
            let before = try Data(contentsOf: URL(fileURLWithPath: copy))
            let r = try WardenRun.run(["image", "export", copy, "-o", copy, "--force"])
            #expect(r.status == 2)
            let unchanged = try Data(contentsOf: URL(fileURLWithPath: copy)) == before
            #expect(unchanged)
            let existing = tmp + "/exists"
            try Data("keep".utf8).write(to: URL(fileURLWithPath: existing))
            let r2 = try WardenRun.run(["image", "export", copy, "-o", existing])
            #expect(r2.status == 2)
            #expect(try String(contentsOfFile: existing, encoding: .utf8) == "keep")
        }
    }
}

@Suite struct ImageInfoTests {
    struct QemuInfo: Decodable {
        var virtualSize: UInt64
        var format: String
        enum CodingKeys: String, CodingKey { case virtualSize = "virtual-size", format }
    }
    struct SfdiskDump: Decodable {
        struct Table: Decodable { var partitions: [Part] }
        struct Part: Decodable { var node: String; var start: UInt64; var size: UInt64; var type: String; var uuid: String?; var name: String? }
        var partitiontable: Table
    }

    @Test(arguments: ["disk.raw", "disk.qcow2", "disk.vmdk"])
    func infoMatchesQemuImgAndSfdisk(_ name: String) throws {
        let dir = try ImageFixtures.gptDisk()
        let path = dir + "/" + name
        let r = try WardenRun.run(["image", "info", "--json", path])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let ours = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
        let image = try #require(ours["image"] as? [String: Any])
        let qemu = try JSONDecoder().decode(QemuInfo.self, from: try Tool.run(["qemu-img", "info", "--output=json", path]).stdout)
        #expect((image["virtual_size"] as? NSNumber)?.uint64Value == qemu.virtualSize)
        #expect(image["format"] as? String == qemu.format)
        let table = try #require(ours["partition_table"] as? [String: Any])
        #expect(table["scheme"] as? String == "gpt")
        let parts = try #require(table["partitions"] as? [[String: Any]])
        let sf = try JSONDecoder().decode(SfdiskDump.self, from: try Tool.run(["sfdisk", "--json", dir + "/disk.raw"]).stdout)
        #expect(parts.count == sf.partitiontable.partitions.count)
        for (p, s) in zip(parts, sf.partitiontable.partitions) {
            #expect((p["start"] as? NSNumber)?.uint64Value == s.start * 512)
            #expect((p["size"] as? NSNumber)?.uint64Value == s.size * 512)
            #expect((p["type_code"] as? String)?.uppercased() == s.type.uppercased())
            #expect((p["uuid"] as? String)?.lowercased() == s.uuid?.lowercased())
            #expect(p["name"] as? String == s.name)
        }
        let volumes = try #require(ours["volumes"] as? [[String: Any]])
        let fsVol = try #require(volumes.first { ($0["partition_index"] as? Int) == 3 })
        let fsInfo = try #require(fsVol["filesystem"] as? [String: Any])
        #expect(fsInfo["type"] as? String == "ext4")
        #expect(fsInfo["label"] as? String == "fixture")
        let blkid = try Tool.run(["blkid", "-o", "value", "-s", "UUID", try ImageFixtures.filesystem(ImageFixtures.variants[0]) + "/fs.img"]).stdoutText
        #expect(fsInfo["uuid"] as? String == blkid.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

@Suite struct ImageBrowseTests {
    @Test func lsAndCatInsideTheGuest() throws {
        let dir = try ImageFixtures.gptDisk()
        let img = dir + "/disk.qcow2"
        let ls = try WardenRun.run(["image", "ls", img, "/etc"])
        #expect(ls.status == 0, "stderr: \(ls.stderr)")
        #expect(ls.stdoutText.split(separator: "\n") == ["hostname", "os-release", "ssh"])
        let long = try WardenRun.run(["image", "ls", "-l", img, "/usr/bin"])
        #expect(long.stdoutText.hasPrefix("-rwsr-xr-x  1  0  0  70000  "))
        let cat = try WardenRun.run(["image", "cat", img, "/etc/hostname"])
        #expect(cat.stdoutText == "fixture-host\n")
        // A five-link chain ending in ../etc/hostname.
        let chain = try WardenRun.run(["image", "cat", img, "/links/c1"])
        #expect(chain.stdoutText == "fixture-host\n")
        // /links/escape -> /../../etc must stay inside the guest: it is the guest's /etc.
        let esc = try WardenRun.run(["image", "ls", img, "/links/escape"])
        #expect(esc.status == 0)
        #expect(esc.stdoutText == ls.stdoutText)
        let json = try WardenRun.run(["image", "ls", "--json", img, "/links"])
        let obj = try #require(try JSONSerialization.jsonObject(with: json.stdout) as? [String: Any])
        let entries = try #require(obj["entries"] as? [[String: Any]])
        #expect(entries.first { $0["name"] as? String == "escape" }?["target"] as? String == "/../../etc")
    }

    @Test func catErrorsAreOneLineWithExitTwo() throws {
        let dir = try ImageFixtures.gptDisk()
        let img = dir + "/disk.qcow2"
        for path in ["/etc", "/nope", "/links/dangling"] {
            let r = try WardenRun.run(["image", "cat", img, path])
            #expect(r.status == 2)
            #expect(r.stderr.split(separator: "\n").count == 1)
            #expect(r.stderr.contains("disk.qcow2"))
        }
    }
}
