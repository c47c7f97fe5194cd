import Foundation
import Sysprep
import Testing
import WardenTestSupport

/// Clones take RSA host keys from a pool made ahead of time (`warden keys refill`), each key
/// used once; the pool refills itself in the background; two takers never get one key.
@Suite(.serialized) struct KeyPoolTests {
    @Test func clonesTakePoolKeysOnceAndThePoolRefills() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("""
            set -e
            cd "\(dir)"
            mkdir -p root/etc/ssh
            printf 'ID=debian\\nVERSION_ID="12"\\n' > root/etc/os-release
            printf '0123456789abcdef0123456789abcdef\\n' > root/etc/machine-id
            ssh-keygen -q -t rsa -b 3072 -N '' -f root/etc/ssh/ssh_host_rsa_key
            ssh-keygen -q -t ed25519 -N '' -f root/etc/ssh/ssh_host_ed25519_key
            mkfs.ext4 -q -F -d root src.img 16M
            """)
            let db = ["--db", dir + "/warden.db"]
            #expect(try WardenRun.run(["vm", "register", "--name", "src", "--owner", "ops", dir + "/src.img"] + db).status == 0)
            let refill = try WardenRun.run(["keys", "refill", "--count", "2"] + db)
            #expect(refill.status == 0 && refill.stdoutText.contains("made 2 key(s); 2 ready"), "\(refill.stdoutText) \(refill.stderr)")
            let poolDir = dir + "/keypool/rsa"
            let files = try FileManager.default.contentsOfDirectory(atPath: poolDir).filter { $0.hasSuffix(".der") }
            #expect(files.count == 2)
            for f in files { #expect((try FileManager.default.attributesOfItem(atPath: poolDir + "/" + f)[.posixPermissions] as? Int) == 0o600) }
            #expect((try FileManager.default.attributesOfItem(atPath: dir + "/keypool")[.posixPermissions] as? Int) == 0o700)

            var fingerprints: [String] = []
            for name in ["c1", "c2"] {
                let c = try WardenRun.run(["vm", "clone", "src", "--name", name] + db)
                #expect(c.status == 0, "\(c.stderr)")
                let payload = try VMCloneTests.clonedPayload(db, name)
                #expect(payload["ssh_host_keys_from_pool"] as? [String] == ["rsa"], "\(payload)")
                let keys = payload["ssh_host_key_files"] as? [[String: Any]] ?? []
                let rsa = try #require(keys.first { ($0["type"] as? String) == "RSA" }?["fingerprint"] as? String)
                // The key the guest got is the one recorded (ssh-keygen reads it from the clone).
                let pub = try WardenRun.run(["image", "cat", dir + "/\(name).qcow2", "/etc/ssh/ssh_host_rsa_key.pub"])
                try Data(pub.stdout).write(to: URL(fileURLWithPath: dir + "/\(name).pub"))
                let seen = try Tool.run(["ssh-keygen", "-l", "-f", dir + "/\(name).pub"]).stdoutText
                #expect(seen.contains(rsa) && seen.hasPrefix("3072 "), "\(seen) vs \(rsa)")
                fingerprints.append(rsa)
            }
            #expect(Set(fingerprints).count == 2)
            // The pool refills itself in the background, up to its size.
            var ready = 0
            for _ in 0..<300 {
                ready = try FileManager.default.contentsOfDirectory(atPath: poolDir).filter { $0.hasSuffix(".der") && !$0.hasPrefix(".") }.count
                if ready >= KeyPool.defaultSize { break }
                usleep(100_000)
            }
            #expect(ready == KeyPool.defaultSize)
            #expect(try WardenRun.run(["keys", "status", "--json"] + db).stdoutText.contains("\"rsa\" : \(KeyPool.defaultSize)"))
        }
    }

    @Test func twoTakersNeverGetOneKey() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let pool = KeyPool(directory: dir + "/pool")
            try pool.refill(to: 1)
            let got = LockedCounter()
            DispatchQueue.concurrentPerform(iterations: 8) { _ in if pool.takeRSA() != nil { got.add() } }
            #expect(got.value == 1 && pool.count == 0)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/pool/rsa").isEmpty)
        }
    }
}

final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

/// `warden image sysprep` of a qcow2 overlay: its dry run detects the overlay's own format
/// without opening the backing chain (it refused overlays: "backing chain is deeper than 0").
@Suite struct SysprepOverlayTests {
    @Test func sysprepRefreshesAnOverlayAndLeavesItsBaseAlone() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("""
            set -e
            cd "\(dir)"
            mkdir -p root/etc
            printf 'ID=debian\\nVERSION_ID="12"\\n' > root/etc/os-release
            printf '0123456789abcdef0123456789abcdef\\n' > root/etc/machine-id
            printf 'old\\n' > root/etc/hostname
            mkfs.ext4 -q -F -d root base.img 16M
            qemu-img create -q -f qcow2 -b base.img -F raw top.qcow2
            """)
            let before = try Tool.run(["sha256sum", dir + "/base.img"]).stdoutText
            let r = try WardenRun.run(["image", "sysprep", "--hostname", "fresh", dir + "/top.qcow2"])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(try WardenRun.run(["image", "cat", dir + "/top.qcow2", "/etc/hostname"]).stdoutText == "fresh\n")
            #expect(try Tool.run(["sha256sum", dir + "/base.img"]).stdoutText == before)
        }
    }

    /// `image sysprep` takes its RSA host key from the pool beside the database when there is
    /// one, and makes one itself when there is none (no pool folder is created for it).
    @Test func imageSysprepTakesAPoolKey() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("""
            set -e
            cd "\(dir)"
            mkdir -p root/etc/ssh
            printf 'ID=debian\\nVERSION_ID="12"\\n' > root/etc/os-release
            ssh-keygen -q -t rsa -b 1024 -N '' -f root/etc/ssh/ssh_host_rsa_key
            mkfs.ext4 -q -F -d root base.img 16M
            qemu-img create -q -f qcow2 -b base.img -F raw a.qcow2
            qemu-img create -q -f qcow2 -b base.img -F raw b.qcow2
            """)
            let db = ["--db", dir + "/home/warden.db"]
            // No pool: the key is generated, and no pool folder appears.
            let none = try WardenRun.run(["image", "sysprep", "--operations", "ssh-hostkeys", dir + "/a.qcow2"] + db)
            #expect(none.status == 0, "\(none.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/home/keypool"))
            #expect(try WardenRun.run(["keys", "refill", "--count", "2"] + db).status == 0)
            let r = try WardenRun.run(["image", "sysprep", "--operations", "ssh-hostkeys", dir + "/b.qcow2"] + db)
            #expect(r.status == 0, "\(r.stderr)")
            let status = try JSONSerialization.jsonObject(with: try WardenRun.run(["keys", "status", "--json"] + db).stdout) as? [String: Any]
            #expect(status?["rsa"] as? Int == 1, "\(String(describing: status))")
            let key = try WardenRun.run(["image", "cat", dir + "/b.qcow2", "/etc/ssh/ssh_host_rsa_key.pub"]).stdoutText
            #expect(key.hasPrefix("ssh-rsa "))
        }
    }
}
