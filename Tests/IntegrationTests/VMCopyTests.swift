import Foundation
import Testing
import WardenTestSupport

/// `warden vm copy` of a qcow2 whose backing file is written relative to its folder.
@Suite struct VMCopyTests {
    @Test func aCopyKeepsReachingItsBackingFile() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("""
                mkdir -p a b
                qemu-img create -q -f qcow2 a/base.qcow2 16M
                qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' a/base.qcow2 >/dev/null
                cd a && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
                """, cwd: dir)
            let db = ["--db", dir + "/w.db"]
            #expect(try WardenRun.run(["vm", "register", "--name", "src", "--owner", "ops", dir + "/a/top.qcow2"] + db).status == 0)
            let r = try WardenRun.run(["vm", "copy", "src", dir + "/b", "--name", "dst"] + db)
            #expect(r.status == 0, "stderr: \(r.stderr)")
            // The copy names its backing file by an absolute path, and reads the same bytes.
            let info = try Tool.run(["qemu-img", "info", "--output=json", dir + "/b/top.qcow2"])
            let obj = try #require(try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any])
            #expect(obj["backing-filename"] as? String == dir + "/a/base.qcow2")
            let a = try Tool.run(["qemu-img", "compare", dir + "/a/top.qcow2", dir + "/b/top.qcow2"], check: false)
            #expect(a.status == 0)
        }
    }
}
