import Foundation
import Testing
import WardenTestSupport

/// The adversarial suite (issue 25): concurrency storms against `maxReplicas` and disk
/// uniqueness, kill -9 loops at commit points, hostile hook argument shapes, domain names and
/// policy files. Every loop is bounded in count and time; everything runs in a temporary folder.
///
/// The storms start their processes from one shell, all at once, and collect every exit status.
enum Storm {
    /// Runs each command line in the background at once; returns the exit statuses in order.
    static func run(_ commands: [[String]], environment: [String: String] = [:], cwd: String) throws -> [Int32] {
        var script = "set +e\n"
        for (i, c) in commands.enumerated() {
            let line = c.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
            script += "( \(line) >out.\(i) 2>err.\(i); echo $? > rc.\(i) ) &\n"
        }
        script += "wait\n"
        _ = try Tool.run(["timeout", "-s", "KILL", "600", "sh", "-c", script], cwd: cwd, environment: environment)
        return try commands.indices.map { i in
            let s = try String(contentsOfFile: "\(cwd)/rc.\(i)", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            return Int32(s) ?? -1
        }
    }

    static func stderr(_ i: Int, cwd: String) -> String {
        (try? String(contentsOfFile: "\(cwd)/err.\(i)", encoding: .utf8)) ?? ""
    }
}

/// The ledger after a storm: live VMs, the files they own, and `ledger verify`.
struct LedgerState {
    var live: [[String: Any]]
    var diskPaths: Set<String>

    static func read(db: String) throws -> LedgerState {
        let list = try WardenRun.run(["vm", "list", "--json", "--db", db])
        let vms = (try JSONSerialization.jsonObject(with: list.stdout) as? [String: Any])?["vms"] as? [[String: Any]] ?? []
        let live = vms.filter { ($0["state"] as? String) != "retired" }
        var paths = Set<String>()
        for v in vms {
            let show = try WardenRun.run(["vm", "show", v["id"] as! String, "--json", "--db", db])
            let doc = try JSONSerialization.jsonObject(with: show.stdout) as? [String: Any]
            for d in doc?["disks"] as? [[String: Any]] ?? [] { if let p = d["path"] as? String { paths.insert(p) } }
        }
        let verify = try WardenRun.run(["ledger", "verify", "--db", db])
        #expect(verify.status == 0, "ledger verify: \(verify.stderr) \(verify.stdoutText)")
        return LedgerState(live: live, diskPaths: paths)
    }
}

/// Every disk file in `dir` (recursively) that is not owned by a ledger VM, and every hidden
/// staging leftover.
func strayFiles(in dir: String, owned: Set<String>, ignoring: Set<String> = []) -> [String] {
    var out: [String] = []
    let e = FileManager.default.enumerator(atPath: dir)
    while let rel = e?.nextObject() as? String {
        let p = dir + "/" + rel
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue else { continue }
        let name = (rel as NSString).lastPathComponent
        if ignoring.contains(p) || name.hasPrefix("out.") || name.hasPrefix("err.") || name.hasPrefix("rc.") || name.hasPrefix("w.db") { continue }
        // Warden's own state beside the database: signing keys, policy, the vault, the host key pool.
        if ["keys", "policy", "vault", "keypool"].contains((rel as NSString).pathComponents.first ?? "") { continue }
        if name.contains(".warden-") || !owned.contains(p) { out.append(p) }
    }
    return out.sorted()
}

@Suite(.serialized) struct AdversarialConcurrencyTests {
    /// A registered VM `web` on a copy of the ledger fixture's guest; returns the database.
    func fleet(_ tmp: String) throws -> String {
        let db = tmp + "/w.db"
        try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/base.qcow2"])
        let r = try WardenRun.run(["vm", "register", tmp + "/base.qcow2", "--name", "web", "--owner", "alice", "--db", db])
        #expect(r.status == 0, "\(r.stderr)")
        return db
    }

    @Test func maxReplicasHoldsUnderTwentyConcurrentCopies() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let db = try fleet(tmp)
            let policy = try PolicyFiles.write(PolicyFiles.maxReplicas(3), in: tmp)
            let cmds = (0..<20).map { i in
                [Fixtures.wardenBinary, "vm", "copy", "web", tmp + "/r\(i)", "--overlay", "--name", "r\(i)", "--db", db, "--policy", policy]
            }
            let rc = try Storm.run(cmds, cwd: tmp)
            #expect(rc.filter { $0 == 0 }.count == 2, "exit codes \(rc)")
            #expect(rc.filter { $0 == 3 }.count == 18, "exit codes \(rc)")
            for (i, c) in rc.enumerated() where c == 3 {
                #expect(Storm.stderr(i, cwd: tmp).contains("at most 3 allowed"), "\(Storm.stderr(i, cwd: tmp))")
            }
            let state = try LedgerState.read(db: db)
            #expect(state.live.count == 3)
            #expect(strayFiles(in: tmp, owned: state.diskPaths) == [])
        }
    }

    @Test func maxReplicasHoldsUnderTwentyConcurrentClones() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let db = try fleet(tmp)
            let policy = try PolicyFiles.write(PolicyFiles.maxReplicas(3), in: tmp)
            let cmds = (0..<20).map { i in
                [Fixtures.wardenBinary, "vm", "clone", "web", "--name", "c\(i)", "--dir", tmp + "/clones", "--db", db, "--policy", policy]
            }
            let rc = try Storm.run(cmds, cwd: tmp)
            #expect(rc.filter { $0 == 0 }.count == 2, "exit codes \(rc)")
            #expect(rc.filter { $0 == 3 }.count == 18, "exit codes \(rc)")
            let state = try LedgerState.read(db: db)
            #expect(state.live.count == 3)
            #expect(strayFiles(in: tmp, owned: state.diskPaths) == [])
        }
    }

    @Test func maxReplicasHoldsUnderTwentyConcurrentClonesAndCopies() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let db = try fleet(tmp)
            let policy = try PolicyFiles.write(PolicyFiles.maxReplicas(3), in: tmp)
            let cmds = (0..<20).map { i -> [String] in
                i % 2 == 0
                    ? [Fixtures.wardenBinary, "vm", "clone", "web", "--name", "c\(i)", "--dir", tmp + "/clones", "--db", db, "--policy", policy]
                    : [Fixtures.wardenBinary, "vm", "copy", "web", tmp + "/r\(i)", "--overlay", "--name", "r\(i)", "--db", db, "--policy", policy]
            }
            let rc = try Storm.run(cmds, cwd: tmp)
            #expect(rc.filter { $0 == 0 }.count == 2, "exit codes \(rc): \((0..<20).map { Storm.stderr($0, cwd: tmp) }.filter { !$0.contains("at most 3") })")
            #expect(rc.filter { $0 == 3 }.count == 18, "exit codes \(rc)")
            let state = try LedgerState.read(db: db)
            #expect(state.live.count == 3)
            #expect(strayFiles(in: tmp, owned: state.diskPaths) == [])
        }
    }

    @Test func oneDiskIsRegisteredOnceUnderTwentyConcurrentRegistrations() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/base.qcow2"])
            try Tool.run(["ln", tmp + "/base.qcow2", tmp + "/hard.qcow2"])
            try Tool.run(["ln", "-s", tmp + "/base.qcow2", tmp + "/soft.qcow2"])
            let db = tmp + "/w.db"
            // A fresh database: the first uses race on the migrations too.
            let names = ["base.qcow2", "hard.qcow2", "soft.qcow2", "./base.qcow2"]
            let cmds = (0..<20).map { i in
                [Fixtures.wardenBinary, "vm", "register", names[i % names.count], "--name", "v\(i)", "--owner", "o", "--db", db]
            }
            let rc = try Storm.run(cmds, cwd: tmp)
            #expect(rc.filter { $0 == 0 }.count == 1, "exit codes \(rc)")
            #expect(rc.filter { $0 == 2 }.count == 19, "exit codes \(rc)")
            for (i, c) in rc.enumerated() where c == 2 {
                #expect(Storm.stderr(i, cwd: tmp).contains("already"), "\(Storm.stderr(i, cwd: tmp))")
            }
            #expect(try LedgerState.read(db: db).live.count == 1)
        }
    }

    @Test func concurrentFirstUseOfANewDatabase() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let guest = try LedgerFixtures.guests() + "/base.qcow2"
            for i in 0..<8 { try Tool.run(["cp", guest, tmp + "/d\(i).qcow2"]) }
            let db = tmp + "/fresh/w.db"
            let cmds = (0..<8).map { i in
                [Fixtures.wardenBinary, "vm", "register", "d\(i).qcow2", "--name", "v\(i)", "--owner", "o", "--db", db]
            }
            let rc = try Storm.run(cmds, cwd: tmp)
            #expect(rc == Array(repeating: 0, count: 8), "\((0..<8).map { Storm.stderr($0, cwd: tmp) })")
            #expect(try LedgerState.read(db: db).live.count == 8)
        }
    }
}

/// kill -9 at many points of copy, clone, register and in-place sysprep: the ledger always
/// verifies, and once the next run (or `warden doctor`) has looked, no file is under a final
/// name without its event.
@Suite(.serialized) struct AdversarialKillTests {
    /// Starts warden in the background, kills it with SIGKILL after `delay` seconds.
    func killAfter(_ delay: Double, _ args: [String], cwd: String, environment: [String: String] = [:]) throws {
        let line = ([Fixtures.wardenBinary] + args).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        _ = try Tool.run(["timeout", "-s", "KILL", "120", "sh", "-c", "\(line) >/dev/null 2>&1 & p=$!; sleep \(delay); kill -9 $p 2>/dev/null; wait $p; true"],
                         cwd: cwd, environment: environment)
    }

    let hooks = ["WARDEN_TEST_HOOKS": "1"]
    let delays = [0.02, 0.08, 0.15, 0.3, 0.6]

    @Test func killedCopiesLeaveNothingUnderAFinalNameAfterRecovery() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let db = tmp + "/w.db"
            // A 48 MiB raw disk with data throughout: a full copy takes a while to write.
            try Tool.sh("head -c 50331648 /dev/urandom > '\(tmp)/big.raw'")
            #expect(try WardenRun.run(["vm", "register", tmp + "/big.raw", "--name", "big", "--owner", "o", "--db", db]).status == 0)
            // One destination per kill: during the copy, in the pause before the commit, and
            // between the link into place and the ledger commit.
            var runs: [(dest: String, env: [String: String], delay: Double)] = delays.enumerated().map { (tmp + "/d\($0.offset)", [:], $0.element) }
            runs.append((tmp + "/paused", hooks.merging(["WARDEN_TEST_COPY_PAUSE": "5"]) { a, _ in a }, 1.0))
            runs.append((tmp + "/linked", hooks.merging(["WARDEN_TEST_COPY_LINKED_PAUSE": "5"]) { a, _ in a }, 1.5))
            for (i, r) in runs.enumerated() {
                try killAfter(r.delay, ["vm", "copy", "big", r.dest, "--name", "k\(i)", "--db", db], cwd: tmp, environment: r.env)
            }
            var state = try LedgerState.read(db: db)
            // Killed between link and commit: the file is under its final name, the ledger does not know it.
            #expect(FileManager.default.fileExists(atPath: tmp + "/linked/big.raw"))
            #expect(!state.diskPaths.contains(tmp + "/linked/big.raw"))
            let doctor = try WardenRun.run(["doctor", "--json", "--db", db] + runs.map(\.dest))
            #expect(doctor.status == 0, "\(doctor.stderr)")
            #expect(doctor.stdoutText.contains("rolled-back"), "\(doctor.stdoutText)")
            state = try LedgerState.read(db: db)
            #expect(strayFiles(in: tmp, owned: state.diskPaths, ignoring: [tmp + "/big.raw"]) == [])
            // A retry into each folder whose copy did not complete now succeeds (no "already exists").
            for (i, r) in runs.enumerated() where !state.diskPaths.contains(r.dest + "/big.raw") {
                let retry = try WardenRun.run(["vm", "copy", "big", r.dest, "--name", "retry\(i)", "--db", db])
                #expect(retry.status == 0, "\(r.dest): \(retry.stderr)")
            }
            state = try LedgerState.read(db: db)
            #expect(strayFiles(in: tmp, owned: state.diskPaths, ignoring: [tmp + "/big.raw"]) == [])
        }
    }

    @Test func killedClonesLeaveNothingUnderAFinalNameAfterRecovery() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let db = tmp + "/w.db"
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/base.qcow2"])
            #expect(try WardenRun.run(["vm", "register", tmp + "/base.qcow2", "--name", "web", "--owner", "o", "--db", db]).status == 0)
            var runs: [(env: [String: String], delay: Double)] = delays.map { ([:], $0) }
            runs.append((hooks.merging(["WARDEN_TEST_CLONE_PAUSE": "8"]) { a, _ in a }, 2.0))
            runs.append((hooks.merging(["WARDEN_TEST_CLONE_LINKED_PAUSE": "8"]) { a, _ in a }, 2.5))
            for (i, r) in runs.enumerated() {
                try killAfter(r.delay, ["vm", "clone", "web", "--name", "k\(i)", "--dir", tmp + "/dest", "--db", db], cwd: tmp, environment: r.env)
            }
            let doctor = try WardenRun.run(["doctor", tmp + "/dest", "--db", db])
            #expect(doctor.status == 0, "\(doctor.stderr)")
            var state = try LedgerState.read(db: db)
            #expect(strayFiles(in: tmp + "/dest", owned: state.diskPaths) == [])
            for i in runs.indices where !state.diskPaths.contains(tmp + "/dest/k\(i).qcow2") {
                let retry = try WardenRun.run(["vm", "clone", "web", "--name", "k\(i)", "--dir", tmp + "/dest", "--db", db])
                #expect(retry.status == 0, "k\(i): \(retry.stderr)")
            }
            state = try LedgerState.read(db: db)
            #expect(strayFiles(in: tmp + "/dest", owned: state.diskPaths) == [])
        }
    }

    @Test func killedRegistrationsKeepTheLedgerIntact() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let db = tmp + "/w.db"
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/base.qcow2"])
            for (i, d) in delays.enumerated() {
                try killAfter(d, ["vm", "register", tmp + "/base.qcow2", "--name", "v\(i)", "--owner", "o", "--db", db], cwd: tmp)
            }
            if FileManager.default.fileExists(atPath: db) {
                #expect(try LedgerState.read(db: db).live.count <= 1)
            }
        }
    }

    @Test func killedInPlaceSysprepLeavesAReadableImage() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let img = tmp + "/g.qcow2"
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", img])
            for d in delays {
                try killAfter(d, ["image", "sysprep", img, "--db", tmp + "/none.db"], cwd: tmp)
                let check = try Tool.run(["qemu-img", "check", "-q", img], check: false)
                #expect(check.status == 0, "qemu-img check after a kill at \(d) s: \(check.stderr)")
                let cat = try WardenRun.run(["image", "cat", img, "/etc/os-release"])
                #expect(cat.status == 0, "\(cat.stderr)")
            }
            // No trial overlay or writer temporary is left beside the image once a run finishes.
            #expect(try WardenRun.run(["image", "sysprep", img, "--db", tmp + "/none.db"]).status == 0)
            let names = try FileManager.default.contentsOfDirectory(atPath: tmp).filter { $0.contains(".warden-") }
            #expect(names == [], "\(names)")
        }
    }
}

/// Hostile hook argument shapes, domain names and domain XML, under a deny-all policy: every
/// vetoable call is denied with a recorded decision; nothing exits 0 by accident.
@Suite struct AdversarialHookTests {
    var hookBinary: String { LeanHookTests.hookBinary }

    func xml(_ name: String, uuid: UUID?, extra: String = "") -> Data {
        let u = uuid.map { "<uuid>\($0.uuidString.lowercased())</uuid>" } ?? ""
        return Data("<domain type='qemu'><name>\(name)</name>\(u)\(extra)<devices><disk type='file' device='disk'><source file='/nonexistent/\(UUID().uuidString).qcow2'/></disk></devices></domain>".utf8)
    }

    func setUp(_ dir: String) throws -> (db: String, policy: String) {
        let db = dir + "/w.db"
        #expect(try WardenRun.run(["ledger", "init", "--db", db]).status == 0)
        return (db, try PolicyFiles.write(PolicyFiles.denyAll, in: dir))
    }

    func decisions(_ db: String) throws -> Int {
        let r = try Tool.run(["sqlite3", db, "SELECT count(*) FROM events WHERE kind = 'policy-decision'"])
        return Int(r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    @Test func domainsNamedLikeOptionsAreDeniedThroughTheInstalledWrappers() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, policy) = try setUp(dir)
            // Both wrappers `libvirt install-hook` writes: the lean hook and the fallback.
            for lean in [true, false] {
                let hooks = dir + "/hooks-\(lean)"
                var args = ["libvirt", "install-hook", "--dir", hooks, "--db", db, "--policy", policy]
                if !lean { args += ["--hook", "/nonexistent/warden-hook"] }
                let inst = try WardenRun.run(args)
                if !lean {
                    // --hook naming a missing file is refused; write the fallback form directly instead.
                    #expect(inst.status != 0)
                    try FileManager.default.createDirectory(atPath: hooks + "/qemu.d", withIntermediateDirectories: true)
                    let text = "#!/bin/sh\nexec '\(Fixtures.wardenBinary)' libvirt-hook --db '\(db)' --policy '\(policy)' -- \"$@\"\n"
                    try text.write(toFile: hooks + "/qemu.d/50-warden", atomically: true, encoding: .utf8)
                    _ = chmod(hooks + "/qemu.d/50-warden", 0o755)
                } else {
                    #expect(inst.status == 0, "\(inst.stderr)")
                }
                let wrapper = hooks + "/qemu.d/50-warden"
                let text = try String(contentsOfFile: wrapper, encoding: .utf8)
                #expect(text.contains("-- \"$@\""), "\(text)")
                for name in ["--db", "--db=X", "--policy", "--", "-h", "--help"] {
                    let before = try decisions(db)
                    let r = try Tool.run([wrapper, name, "prepare", "begin", "-"], stdin: xml(name, uuid: UUID()), check: false)
                    #expect(r.status != 0, "domain \(name) via \(lean ? "warden-hook" : "warden libvirt-hook"): exit 0")
                    #expect(try decisions(db) == before + 1, "domain \(name): no decision recorded; \(r.stderr)")
                }
            }
        }
    }

    /// The README's install path builds the lean hook, so `install-hook` never has to fall back.
    @Test func theDemoBuildsTheLeanHook() throws {
        let demo = try String(contentsOfFile: (#filePath as NSString).deletingLastPathComponent + "/../../scripts/demo", encoding: .utf8)
        #expect(demo.contains("--product warden-hook"))
        #expect(FileManager.default.isExecutableFile(atPath: LeanHookTests.hookBinary))
    }

    @Test func theFormDocsSuggestIsDenied() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, policy) = try setUp(dir)
            let r = try WardenRun.run(["libvirt-hook", "--db", db, "--policy", policy, "--", "web", "prepare", "begin", "-"],
                                      stdin: xml("web", uuid: UUID()))
            #expect(r.status == 1, "\(r.stderr)")
            #expect(r.stderr.contains("denied"), "\(r.stderr)")
        }
    }

    @Test func anythingButLibvirtsLayoutIsDenied() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, _) = try setUp(dir)
            try PolicyFiles.writeFile(PolicyFiles.allowAll, at: dir + "/allow.yaml")
            let shapes: [[String]] = [[], ["web"], ["web", "prepare"], ["web", "prepare", "begin"],
                                      ["web", "prepare", "begin", "-", "extra"], ["web", "stopped", "end", "-", "x"]]
            for s in shapes {
                let r = try Tool.run([hookBinary, "--db", db, "--policy", dir + "/allow.yaml", "--"] + s,
                                     stdin: xml("web", uuid: UUID()), check: false)
                #expect(r.status != 0, "arguments \(s) exited 0")
                #expect(r.stderr.hasPrefix("warden: ") && r.stderr.filter { $0 == "\n" }.count == 1, "\(r.stderr)")
            }
            // Old wrappers without `--`: a domain named like an option cannot hide the operation.
            for name in ["--db", "--db=X", "--policy"] {
                let r = try Tool.run([hookBinary, "--db", db, "--policy", dir + "/allow.yaml", name, "prepare", "begin", "-"],
                                     stdin: xml(name, uuid: UUID()), check: false)
                #expect(r.status != 0, "old wrapper, domain \(name): exit 0")
            }
            // The arguments and the XML must name the same domain.
            let mismatch = try Tool.run([hookBinary, "--db", db, "--policy", dir + "/allow.yaml", "--", "web", "prepare", "begin", "-"],
                                        stdin: xml("other", uuid: UUID()), check: false)
            #expect(mismatch.status == 1 && mismatch.stderr.contains("names other"), "\(mismatch.stderr)")
        }
    }

    @Test func controlCharactersNeverReachTheTerminal() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, policy) = try setUp(dir)
            let name = "evil\u{1B}[2J\u{07}\u{9B}31m\u{202E}gpj.exe"
            let r = try Tool.run([hookBinary, "--db", db, "--policy", policy, "--", name, "prepare", "begin", "-"],
                                 stdin: xml(name, uuid: UUID()), check: false)
            #expect(r.status == 1)
            for bad in ["\u{1B}", "\u{07}", "\u{9B}", "\u{202E}"] { #expect(!r.stderr.contains(bad), "raw \(bad.unicodeScalars.first!.value) on stderr") }
            #expect(r.stderr.hasPrefix("warden: ") && r.stderr.filter { $0 == "\n" }.count == 1, "\(r.stderr)")
        }
    }

    @Test func firstNameAndUUIDCountAndUUIDlessDomainsAreNeverRegistered() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, _) = try setUp(dir)
            try PolicyFiles.writeFile(PolicyFiles.allowAll, at: dir + "/allow.yaml")
            let first = UUID(), second = UUID()
            let dup = Data("<domain type='qemu'><name>web</name><uuid>\(first.uuidString)</uuid><name>other</name><uuid>\(second.uuidString)</uuid><devices/></domain>".utf8)
            let r = try Tool.run([hookBinary, "--db", db, "--policy", dir + "/allow.yaml", "--", "web", "prepare", "begin", "-"], stdin: dup, check: false)
            #expect(r.status == 0, "\(r.stderr)")
            let ids = try Tool.run(["sqlite3", db, "SELECT id FROM vms"]).stdoutText
            #expect(ids.contains(first.uuidString.lowercased()) && !ids.contains(second.uuidString.lowercased()), "\(ids)")
            // No <uuid>: denied, and no VM is registered, however often it is tried.
            for _ in 0..<3 {
                let n = try Tool.run([hookBinary, "--db", db, "--policy", dir + "/allow.yaml", "--", "nouuid", "prepare", "begin", "-"],
                                     stdin: xml("nouuid", uuid: nil), check: false)
                #expect(n.status == 1 && n.stderr.contains("uuid"), "\(n.stderr)")
            }
            let count = try Tool.run(["sqlite3", db, "SELECT count(*) FROM vms"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(count == "1")
        }
    }
}

/// Hostile and missing policy.
@Suite struct AdversarialPolicyTests {
    /// `rules: ` and 5,000 `[`/`]`: refused with file:line:col, exit 2, never a crash.
    @Test func deeplyNestedPolicyIsRefusedBeforeParsing() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let deep = "apiVersion: warden/v1\nkind: Policy\nrules: " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000) + "\n"
            let policy = try PolicyFiles.write(deep, in: dir)
            let lint = try WardenRun.run(["policy", "lint", policy])
            #expect(lint.status == 2, "\(lint.stderr) \(lint.stdoutText)")
            #expect(lint.stdoutText.contains("p.yaml:3:") && lint.stdoutText.contains("nested deeper than 64"), "\(lint.stdoutText)")
            #expect(lint.stderr.utf8.count < 400)
            let block = "apiVersion: warden/v1\nkind: Policy\nrules:\n" + (0..<200).map { String(repeating: " ", count: $0 + 1) + "- " }.joined(separator: "\n") + "x\n"
            let p2 = try PolicyFiles.write(block, in: dir + "/b")
            #expect(try WardenRun.run(["policy", "lint", p2]).status == 2)
            // The deciding paths fail closed with one line.
            let db = dir + "/w.db"
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", dir + "/base.qcow2"])
            #expect(try WardenRun.run(["vm", "register", dir + "/base.qcow2", "--name", "web", "--owner", "o", "--db", db]).status == 0)
            let check = try WardenRun.run(["policy", "check", "--op", "start", "web", "--policy", policy, "--db", db])
            #expect(check.status == 3, "\(check.stderr)")
            let copy = try WardenRun.run(["vm", "copy", "web", dir + "/c", "--policy", policy, "--db", db])
            #expect(copy.status == 3 && copy.stderr.contains("nested deeper"), "\(copy.stderr)")
            let hook = try Tool.run([LeanHookTests.hookBinary, "--db", db, "--policy", policy, "--", "web", "prepare", "begin", "-"],
                                    stdin: Data("<domain><name>web</name><uuid>\(UUID().uuidString)</uuid></domain>".utf8), check: false)
            #expect(hook.status == 1 && hook.stderr.filter { $0 == "\n" }.count == 1, "\(hook.stderr)")
        }
    }

    /// A rule name with raw ESC (a quoted YAML string can hold one) reaches `policy lint` and
    /// `policy test` output escaped.
    @Test func controlCharactersInRuleNamesAreEscaped() throws {
        try Fixtures.withTemporaryDirectory { dir in
            // YAML escapes put ESC, U+009B and U+202E into the rule name.
            let text = "apiVersion: warden/v1\nkind: Policy\nrules:\n  - name: \"evil\\e[2J\\x9bx\\u202Ey\"\n    on: [start]\n    require: {maxReplicas: 1}\n  - name: \"evil\\e[2J\\x9bx\\u202Ey\"\n    on: [start]\n    require: {maxReplicas: 1}\n"
            let policy = try PolicyFiles.write(text, in: dir)
            let lint = try WardenRun.run(["policy", "lint", policy])
            #expect(lint.status == 2, "\(lint.stdoutText)")
            #expect(lint.stdoutText.contains("must be letters, digits"), "\(lint.stdoutText)")
            for bad in ["\u{1B}", "\u{9B}", "\u{202E}"] { #expect(!lint.stdoutText.contains(bad) && !lint.stderr.contains(bad)) }
            #expect(lint.stdoutText.contains("evil\\x1b[2J\\u{009b}x\\u{202e}y"), "\(lint.stdoutText)")
        }
    }

    @Test func aMisspeltWardenPolicyDenies() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let db = dir + "/w.db"
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", dir + "/base.qcow2"])
            #expect(try WardenRun.run(["vm", "register", dir + "/base.qcow2", "--name", "web", "--owner", "o", "--db", db]).status == 0)
            let r = try Tool.run([Fixtures.wardenBinary, "vm", "copy", "web", dir + "/c", "--overlay", "--db", db],
                                 environment: ["WARDEN_POLICY": dir + "/polcy"], check: false)
            #expect(r.status == 3, "\(r.stderr)")
            #expect(r.stderr.contains("no such policy directory"), "\(r.stderr)")
            // Every deciding command takes --policy.
            let allow = try PolicyFiles.write(PolicyFiles.allowAll, in: dir)
            for args in [["vm", "copy", "web", dir + "/c", "--overlay"], ["vm", "clone", "web", "--name", "cl", "--dir", dir + "/cl"],
                         ["vm", "transfer", "web", "--to", "bob"], ["vm", "retire", "web"]] {
                let ok = try WardenRun.run(args + ["--policy", allow, "--db", db])
                #expect(ok.status == 0, "\(args): \(ok.stderr)")
            }
        }
    }
}

/// Guests whose links point where the identity operations must not write.
enum LinkGuests {
    /// `shadowlink.qcow2`: /etc/machine-id -> ../../etc/shadow; `dangling.qcow2`: /etc/hostname -> /nonexistent.
    static func images() throws -> String {
        try Fixtures.cached("adversarial-link-guests", recipe: "v1") { dir in
            try Tool.sh("""
            cd "\(dir)"
            mk() {
              mkdir -p "$1/etc/ssh" "$1/root"
              printf 'ID=debian\\nVERSION_ID="12"\\n' > "$1/etc/os-release"
              printf 'root:$6$secret$hash:19000:0:99999:7:::\\n' > "$1/etc/shadow"
              ssh-keygen -q -t ed25519 -N '' -C "root@$1" -f "$1/etc/ssh/ssh_host_ed25519_key"
            }
            mk a; ln -s ../../etc/shadow a/etc/machine-id; echo a > a/etc/hostname
            mk b; echo 0123456789abcdef0123456789abcdef > b/etc/machine-id; ln -s /nonexistent/hostname b/etc/hostname
            for g in a b; do truncate -s 16M $g.raw; mkfs.ext4 -q -F -d $g $g.raw; done
            qemu-img convert -f raw -O qcow2 a.raw shadowlink.qcow2
            qemu-img convert -f raw -O qcow2 b.raw dangling.qcow2
            rm -rf a b a.raw b.raw
            """)
        }
    }
}

@Suite struct AdversarialWriteTests {
    func manifest(_ img: String) throws -> String {
        let r = try WardenRun.run(["image", "manifest", img])
        #expect(r.status == 0, "\(r.stderr)")
        return r.stdoutText
    }

    @Test func inPlaceSysprepNeverWritesThroughGuestLinksAndChangesNothingOnFailure() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            for (name, expect) in [("shadowlink.qcow2", "/etc/machine-id is a symbolic link to ../../etc/shadow, resolving to /etc/shadow"),
                                   ("dangling.qcow2", "/etc/hostname is a symbolic link to /nonexistent/hostname, which does not resolve")] {
                let img = tmp + "/" + name
                try Tool.run(["cp", try LinkGuests.images() + "/" + name, img])
                let before = try manifest(img)
                let bytes = try Fixtures.read(img)
                let dry = try WardenRun.run(["image", "sysprep", "--dry-run", "--hostname", "h2", img])
                #expect(dry.status == 0, "\(dry.stderr)")
                #expect(dry.stdoutText.contains("refused, links are not written through"), "\(dry.stdoutText)")
                let r = try WardenRun.run(["image", "sysprep", "--hostname", "h2", img, "--db", tmp + "/none.db"])
                #expect(r.status == 2, "\(name): \(r.stderr)")
                #expect(r.stderr.contains(expect) && r.stderr.contains("nothing was changed"), "\(r.stderr)")
                #expect(r.stderr.filter { $0 == "\n" }.count == 1)
                #expect(try manifest(img) == before)
                #expect(try Fixtures.read(img) == bytes, "\(name) was written")
                #expect(try FileManager.default.contentsOfDirectory(atPath: tmp).filter { $0.contains(".warden-") } == [])
            }
            let shadow = try WardenRun.run(["image", "cat", tmp + "/shadowlink.qcow2", "/etc/shadow"])
            #expect(shadow.stdoutText.hasPrefix("root:$6$secret$hash"))
        }
    }

    /// Under umask 000: clone overlays, copies, exports 0600; created folders 0700.
    @Test func newDisksAndFoldersArePrivateWhateverTheUmask() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let db = tmp + "/w.db"
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/base.qcow2"])
            _ = chmod(tmp + "/base.qcow2", 0o600)
            func w(_ args: [String]) throws {
                let line = ([Fixtures.wardenBinary] + args + ["--db", db]).map { "'\($0)'" }.joined(separator: " ")
                let r = try Tool.run(["sh", "-c", "umask 000; exec \(line)"], check: false)
                #expect(r.status == 0, "\(args): \(r.stderr)")
            }
            try w(["vm", "register", tmp + "/base.qcow2", "--name", "web", "--owner", "o"])
            try w(["vm", "clone", "web", "--name", "c1", "--dir", tmp + "/new/clones"])
            try w(["vm", "copy", "web", tmp + "/new2/copies", "--overlay", "--name", "o1"])
            try w(["vm", "copy", "web", tmp + "/new3", "--name", "f1"])
            let r = try Tool.run(["sh", "-c", "umask 000; exec '\(Fixtures.wardenBinary)' image export '\(tmp)/base.qcow2' -o '\(tmp)/export.raw'"], check: false)
            #expect(r.status == 0, "\(r.stderr)")
            func mode(_ p: String) throws -> Int {
                ((try FileManager.default.attributesOfItem(atPath: p))[.posixPermissions] as? NSNumber)?.intValue ?? -1
            }
            for f in ["new/clones/c1.qcow2", "new2/copies/base.qcow2", "new3/base.qcow2", "export.raw"] {
                let m = try mode(tmp + "/" + f)
                #expect(m == 0o600, "\(f): \(String(m, radix: 8))")
            }
            for d in ["new", "new/clones", "new2", "new2/copies", "new3"] {
                let m = try mode(tmp + "/" + d)
                #expect(m == 0o700, "\(d): \(String(m, radix: 8))")
            }
        }
    }

    @Test func aTrailingSlashOnAFileIsNotADirectory() throws {
        let img = try LedgerFixtures.guests() + "/base.qcow2"
        let r = try WardenRun.run(["image", "cat", img, "/etc/hostname/"])
        #expect(r.status == 2 && r.stderr.contains("not a directory"), "\(r.stderr)")
        #expect(try WardenRun.run(["image", "ls", img, "/etc/"]).status == 0)
    }

    @Test func terminalControlsInGuestNamesAreEscaped() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try Tool.sh("""
            cd '\(tmp)' && mkdir -p g/etc && printf 'x' > "g/etc/$(printf 'a\\302\\233b\\342\\200\\256c\\033d')"
            truncate -s 8M g.raw && mkfs.ext4 -q -F -d g g.raw
            """)
            for args in [["image", "ls", tmp + "/g.raw", "/etc"], ["image", "manifest", tmp + "/g.raw"]] {
                let r = try WardenRun.run(args)
                #expect(r.status == 0, "\(r.stderr)")
                for bad in ["\u{9B}", "\u{202E}", "\u{1B}"] { #expect(!r.stdoutText.contains(bad), "\(args[1]): raw U+\(String(bad.unicodeScalars.first!.value, radix: 16))") }
                #expect(r.stdoutText.contains("a\\xc2\\x9bb\\xe2\\x80\\xaec\\x1bd"), "\(r.stdoutText)")
            }
        }
    }

    /// 60,000 central-directory entries all pointing at one deflated record: refused at once.
    @Test func overlappingZipEntriesAreRefused() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try Tool.run(["python3", "-c", """
            import struct, sys, zipfile, io
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("a.json", b"[" + b" " * (1 << 20) + b"]")
            data = buf.getvalue()
            eocd = data.rfind(b"PK\\x05\\x06")
            cd_size, cd_off = struct.unpack("<II", data[eocd + 12:eocd + 20])
            entry = data[cd_off:cd_off + cd_size]
            name_len = struct.unpack("<H", entry[28:30])[0]
            out = bytearray(data[:cd_off])
            n = 60000
            start = len(out)
            for i in range(n):
                nm = ("e%05d.json" % i).encode()
                e = bytearray(entry[:46]) + nm
                struct.pack_into("<HHH", e, 28, len(nm), 0, 0)
                out += e
            size = len(out) - start
            out += struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, n if n < 0xffff else 0xffff, n if n < 0xffff else 0xffff, size, start, 0)
            if n >= 0xffff:
                raise SystemExit("n too large for this simple writer")
            open(sys.argv[1], "wb").write(out)
            """, tmp + "/overlap.zip"])
            let r = try WardenRun.run(["advisories", "import", tmp + "/overlap.zip", "--db", tmp + "/w.db"], timeoutSeconds: 60)
            #expect(r.status == 2, "\(r.stderr)")
            #expect(r.stderr.contains("share or overlap"), "\(r.stderr)")
        }
    }
}
