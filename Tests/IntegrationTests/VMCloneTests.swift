import Foundation
import Testing
import WardenTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `warden vm clone` on the debootstrapped Debian guest: several clones, checked with
/// qemu-img check, e2fsck -fn, ssh-keygen against the ledger's fingerprints, distinct
/// machine-ids, `warden discover` collisions, and kill -9 at random moments.
@Suite(.serialized) struct VMCloneTests {
    /// A ledger in `dir` with the identity guest (a private copy) registered as `template`.
    static func setUp(_ dir: String) throws -> (env: [String], source: String) {
        let src = dir + "/template.qcow2"
        try Tool.run(["cp", "--sparse=always", try SysprepFixtures.identityGuest() + "/disk.qcow2", src])
        let db = dir + "/warden.db"
        let r = try WardenRun.run(["vm", "register", "--db", db, "--name", "template", "--owner", "ops", src])
        #expect(r.status == 0, "\(r.stderr)")
        return (["--db", db], src)
    }

    static func sha256(_ path: String) throws -> String { try SysprepCommandTests.sha256(path) }

    /// The `cloned` event of VM `name`: its payload.
    static func clonedPayload(_ db: [String], _ name: String) throws -> [String: Any] {
        let h = try WardenRun.run(["vm", "history", "--json"] + db + [name])
        #expect(h.status == 0, "\(h.stderr)")
        let doc = try #require(try JSONSerialization.jsonObject(with: h.stdout) as? [String: Any])
        let events = doc["events"] as? [[String: Any]] ?? []
        let cloned = try #require(events.first { $0["kind"] as? String == "cloned" })
        return cloned["payload"] as? [String: Any] ?? [:]
    }

    @Test(.enabled(if: GuestFixtures.available, "needs root, debootstrap and the Debian mirror"))
    func severalClonesShareNoIdentityAndPassEveryCheck() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, src) = try Self.setUp(dir)
            let before = try Self.sha256(src)
            var machineIDs: Set<String> = []
            var allFingerprints: [String] = []
            var images: [String] = []
            for (i, extra) in [[], ["--hostname", "web-two.example.org"], ["--full"], []].enumerated() {
                let name = "web-\(i + 1)"
                let r = try WardenRun.run(["vm", "clone", "--json", "template", "--name", name, "--dir", dir + "/clones"] + db + extra,
                                          timeoutSeconds: 120)
                #expect(r.status == 0, "\(r.stderr)")
                let report = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
                let disks = report["disks"] as? [String] ?? []
                let disk = try #require(disks.first)
                images.append(disk)
                #expect((report["verification"] as? [String: Any])?["passed"] as? Bool == true)
                #expect((report["mac"] as? String)?.hasPrefix("52:54:00:") == true)
                if extra.contains("--full") {
                    #expect(disk.hasSuffix(".raw"))
                } else {
                    #expect(disk.hasSuffix(".qcow2"))
                    let check = try Tool.run(["qemu-img", "check", disk], check: false)
                    #expect(check.status == 0, "\(check.stdoutText)")
                    let info = try Tool.run(["qemu-img", "info", "--output=json", disk]).stdoutText
                    #expect(info.contains("\"backing-filename\": \"\(src)\""))
                }
                let fsck = try SysprepFixtures.e2fsckRoot(disk, in: dir)
                #expect(fsck.status == 0, "\(name): \(fsck.stdoutText)")

                // Lineage and the recorded fingerprints.
                let payload = try Self.clonedPayload(db, name)
                #expect(payload["parent"] != nil && payload["parent_generation"] != nil)
                let recorded = (payload["ssh_host_keys"] as? [String] ?? []).sorted()
                #expect(recorded.count == 3)
                var fromKeygen: [String] = []
                let files = payload["ssh_host_key_files"] as? [[String: Any]] ?? []
                for f in files {
                    let pub = try #require(f["path"] as? String)
                    let pubBytes = try WardenRun.run(["image", "cat", disk, pub])
                    let privBytes = try WardenRun.run(["image", "cat", disk, String(pub.dropLast(4))])
                    try pubBytes.stdout.write(to: URL(fileURLWithPath: dir + "/k.pub"))
                    try privBytes.stdout.write(to: URL(fileURLWithPath: dir + "/k"))
                    chmod(dir + "/k", 0o600)
                    let l = try Tool.run(["ssh-keygen", "-lf", dir + "/k.pub"]).stdoutText
                    fromKeygen.append(String(l.split(separator: " ")[1]))
                    let y = try Tool.run(["ssh-keygen", "-y", "-f", dir + "/k"], check: false)
                    #expect(y.status == 0, "ssh-keygen -y refused \(pub) of \(name)")
                }
                #expect(fromKeygen.sorted() == recorded)
                allFingerprints += recorded
                let inv = try SysprepCommandTests.inspect(disk)
                let id = try #require(SysprepCommandTests.identity(inv)["machine_id"] as? String)
                #expect(machineIDs.insert(id).inserted, "machine-id shared")
                #expect(payload["machine_id"] as? String == id)
                let host = SysprepCommandTests.identity(inv)["hostname"] as? String
                #expect(host == (extra.contains("--hostname") ? "web-two.example.org" : name))
            }
            #expect(!machineIDs.contains(SysprepFixtures.machineID))
            #expect(Set(allFingerprints).count == allFingerprints.count)
            #expect(try Self.sha256(src) == before, "the source was written")

            // discover: no identity collision among the clones.
            let clean = try WardenRun.run(["discover", "--json", dir + "/clones"] + db, timeoutSeconds: 120)
            #expect(clean.status == 0, "\(clean.stderr)")
            let cleanDoc = try #require(try JSONSerialization.jsonObject(with: clean.stdout) as? [String: Any])
            #expect((cleanDoc["collisions"] as? [Any])?.isEmpty == true, "\(clean.stdoutText)")
            // A naive cp is the template's content: discover reports it as an unregistered copy.
            // Once that copy is changed at all (here only its hostname, as people do), it is a
            // distinct guest claiming the template's machine-id and host keys: a collision.
            try FileManager.default.createDirectory(atPath: dir + "/naive", withIntermediateDirectories: true)
            try Tool.run(["cp", "--sparse=always", src, dir + "/naive/copy.qcow2"])
            let copyRun = try WardenRun.run(["discover", "--json", dir + "/clones", dir + "/naive", src] + db, timeoutSeconds: 120)
            let copyDoc = try #require(try JSONSerialization.jsonObject(with: copyRun.stdout) as? [String: Any])
            let copies = (copyDoc["copies"] as? [[String: Any]] ?? []).compactMap { $0["path"] as? String }
            #expect(copies == [dir + "/naive/copy.qcow2"], "\(copyRun.stdoutText)")
            try Tool.run(["cp", "--sparse=always", src, dir + "/naive/renamed.qcow2"])
            let rename = try WardenRun.run(["image", "sysprep", "--operations", "hostname", "--hostname", "renamed", dir + "/naive/renamed.qcow2"])
            #expect(rename.status == 0, "\(rename.stderr)")
            let naive = try WardenRun.run(["discover", "--json", dir + "/clones", dir + "/naive", src] + db, timeoutSeconds: 120)
            let naiveDoc = try #require(try JSONSerialization.jsonObject(with: naive.stdout) as? [String: Any])
            let collisions = naiveDoc["collisions"] as? [[String: Any]] ?? []
            let kinds = Set(collisions.compactMap { $0["kind"] as? String })
            #expect(kinds == ["machine-id", "ssh-host-key"], "\(naive.stdoutText)")
            // Every collision is between the template (and its byte copy) and the renamed copy, never a clone.
            for c in collisions {
                let imgs = ((c["guests"] as? [[String: Any]]) ?? []).flatMap { $0["images"] as? [String] ?? [] }
                #expect(!imgs.contains { $0.hasPrefix(dir + "/clones/") }, "\(imgs)")
                #expect(imgs.contains(dir + "/naive/renamed.qcow2"))
            }
        }
    }

    @Test(.enabled(if: GuestFixtures.available, "needs root, debootstrap and the Debian mirror"))
    func cloneRefusesExistingNameAndFile() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, _) = try Self.setUp(dir)
            let a = try WardenRun.run(["vm", "clone", "template", "--name", "twin", "--dir", dir] + db)
            #expect(a.status == 0, "\(a.stderr)")
            let b = try WardenRun.run(["vm", "clone", "template", "--name", "twin", "--dir", dir] + db)
            #expect(b.status == 2 && b.stderr.contains("already exists"), "\(b.stderr)")
            let bad = try WardenRun.run(["vm", "clone", "template", "--name", "../x"] + db)
            #expect(bad.status == 2)
            // A disk of a VM in the ledger is not refreshed in place.
            let inPlace = try WardenRun.run(["image", "sysprep", dir + "/twin.qcow2"] + db)
            #expect(inPlace.status == 2 && inPlace.stderr.contains("in the ledger"), "\(inPlace.stderr)")
        }
    }

    /// kill -9 at random moments of many clones: the source never changes, and the final
    /// clone file is either absent or a valid image whose identity is fresh.
    @Test(.enabled(if: GuestFixtures.available, "needs root, debootstrap and the Debian mirror"))
    func killedClonesLeaveSourceIntactAndNoBrokenClone() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, src) = try Self.setUp(dir)
            let before = try Self.sha256(src)
            var rng = SeededRandom(seed: 0x5eed)
            var outcomes: [String: Int] = [:]
            for i in 0..<12 {
                let name = "k\(i)"
                // Half the runs pause 1 s at the commit point (test hook) so kills land around it;
                // every fourth run is not killed (the control: it must finish with a valid clone).
                let pause = i % 2 == 0 ? "1" : "0"
                let delayMs = i % 4 == 3 ? 60_000 : Int(rng.next() % 3000)
                let r = try Tool.sh("""
                WARDEN_TEST_HOOKS=1 WARDEN_TEST_CLONE_PAUSE=\(pause) "\(Fixtures.wardenBinary)" vm clone template --name \(name) --dir "\(dir)/clones" --db "\(db[1])" >/dev/null 2>&1 &
                pid=$!
                t=0; while [ $t -lt \(delayMs) ] && kill -0 $pid 2>/dev/null; do sleep 0.05; t=$((t + 50)); done
                kill -9 $pid 2>/dev/null && echo killed || echo finished
                wait $pid 2>/dev/null || true
                """)
                let what = r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
                let final = dir + "/clones/\(name).qcow2"
                #expect(try Self.sha256(src) == before, "run \(i): the source changed")
                if FileManager.default.fileExists(atPath: final) {
                    let check = try Tool.run(["qemu-img", "check", final], check: false)
                    #expect(check.status == 0, "run \(i): \(check.stdoutText)")
                    let inv = try SysprepCommandTests.inspect(final)
                    let id = SysprepCommandTests.identity(inv)["machine_id"] as? String
                    #expect(id != nil && id != SysprepFixtures.machineID, "run \(i): a committed clone kept the old identity")
                    outcomes[what + " present", default: 0] += 1
                } else {
                    outcomes[what + " absent", default: 0] += 1
                }
                // Leftovers are only hidden temporary files.
                for n in (try? FileManager.default.contentsOfDirectory(atPath: dir + "/clones")) ?? [] {
                    #expect(n.hasPrefix(".") || n.hasSuffix(".qcow2"), "run \(i): unexpected \(n)")
                }
            }
            // The runs must have hit both sides of the commit point.
            #expect(outcomes.keys.contains { $0.hasSuffix("absent") }, "\(outcomes)")
            #expect(outcomes.keys.contains { $0.hasSuffix("present") }, "\(outcomes)")
        }
    }
}
