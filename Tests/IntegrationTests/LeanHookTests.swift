import Foundation
import Ledger
import Testing
import WardenCore
import WardenTestSupport
import Storage

/// The lean `warden-hook` executable as libvirtd runs it: arguments, the domain XML on stdin,
/// the exit status and one stderr line. Its decisions are recorded unsigned and signed later.
@Suite struct LeanHookTests {
    static var hookBinary: String {
        (Fixtures.wardenBinary as NSString).deletingLastPathComponent + "/warden-hook"
    }

    static let policy = """
    apiVersion: warden/v1
    kind: Policy
    rules:
      - name: secure-only
        on: [start, restore]
        require: { host: { labels: { zone: secure } } }
    """

    static func xml(_ name: String, _ uuid: UUID) -> Data {
        Data("<domain type='qemu'><name>\(name)</name><uuid>\(uuid.uuidString.lowercased())</uuid><devices><disk type='file' device='disk'><source file='/var/lib/libvirt/images/\(name).qcow2'/></disk></devices></domain>".utf8)
    }

    func hook(_ args: [String], stdin: Data) throws -> ToolResult {
        try Tool.run(["timeout", "-s", "KILL", "60", Self.hookBinary] + args, stdin: stdin, check: false)
    }

    /// A ledger with this host in zone `zone` and one registered VM; returns (db, policy dir, vm id).
    func fleet(_ dir: String, zone: String) throws -> (String, String, UUID) {
        let db = dir + "/w.db"
        let ledger = try SQLiteLedger(path: db)
        try ledger.addHost(HostRecord(name: .current, labels: ["zone": zone]))
        let uuid = UUID()
        _ = try ledger.createVM(VMRecord(id: VMID(uuid), name: "web1", owner: "alice", state: .stopped), disks: [],
                                event: NewEvent(kind: .registered, vm: VMID(uuid)))
        try FileManager.default.createDirectory(atPath: dir + "/policy", withIntermediateDirectories: true)
        try Self.policy.write(toFile: dir + "/policy/p.yaml", atomically: true, encoding: .utf8)
        return (db, dir + "/policy", uuid)
    }

    @Test func linksNeitherLibvirtNorXMLNorTheSharedSwiftRuntime() throws {
        let out = try Tool.run(["ldd", Self.hookBinary]).stdoutText
        for lib in ["libvirt", "libxml2", "libFoundation", "libswiftCore", "libgnutls"] {
            #expect(!out.contains(lib), "warden-hook links \(lib):\n\(out)")
        }
    }

    @Test func decisionsAreRecordedUnsignedAndVerifyPasses() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, policy, uuid) = try fleet(dir, zone: "secure")
            let allowed = try hook(["--db", db, "--policy", policy, "web1", "prepare", "begin", "-"], stdin: Self.xml("web1", uuid))
            #expect(allowed.status == 0, "\(allowed.stderr)")
            #expect(allowed.stderr.isEmpty && allowed.stdout.isEmpty)
            // The same code behind `warden libvirt-hook`.
            let sub = try WardenRun.run(["libvirt-hook", "--db", db, "--policy", policy, "web1", "start", "begin", "-"], stdin: Self.xml("web1", uuid))
            #expect(sub.status == 0, "\(sub.stderr)")

            let ledger = try SQLiteLedger(path: db)
            let decisions = try ledger.events(of: VMID(uuid)).filter { $0.kind == .policyDecision }
            #expect(decisions.count == 2)
            #expect(decisions.allSatisfy { $0.actor == "libvirt-hook@\(HostName.current)" && $0.payload["effect"] == .string("allow") })
            // No checkpoint was signed for them.
            let signed = try #require(try ledger.latestCheckpoint()).treeSize
            #expect(try ledger.eventCount() == signed + 2)
            #expect(try ledger.unsignedTail() == (2, 0))

            let verify = try WardenRun.run(["ledger", "verify", "--db", db])
            #expect(verify.status == 0, "\(verify.stdoutText) \(verify.stderr)")
            #expect(verify.stdoutText.contains("pending: the last 2 entries were recorded by the libvirt hook"), "\(verify.stdoutText)")
            let json = try WardenRun.run(["ledger", "verify", "--db", db, "--json"])
            let report = try #require(try JSONSerialization.jsonObject(with: json.stdout) as? [String: Any])
            #expect(report["ok"] as? Bool == true && report["pending_entries"] as? Int == 2)

            // `ledger checkpoint` signs them; verify then has nothing pending.
            let cp = try WardenRun.run(["ledger", "checkpoint", "--db", db])
            #expect(cp.status == 0 && cp.stdoutText.contains("tree size: \(signed + 2)"), "\(cp.stdoutText) \(cp.stderr)")
            let again = try WardenRun.run(["ledger", "verify", "--db", db, "--json"])
            let r2 = try #require(try JSONSerialization.jsonObject(with: again.stdout) as? [String: Any])
            #expect(r2["ok"] as? Bool == true && r2["pending_entries"] as? Int == 0 && again.status == 0)

            // An unsigned entry that the hook did not write is still tampering, and is never signed.
            let raw = SQLiteLedger(database: try WardenDatabase(path: db), signs: false)
            _ = try raw.append(NewEvent(kind: .scanned, vm: VMID(uuid)))
            _ = try hook(["--db", db, "--policy", policy, "web1", "prepare", "begin", "-"], stdin: Self.xml("web1", uuid))
            let tampered = try WardenRun.run(["ledger", "verify", "--db", db])
            #expect(tampered.status == 1 && tampered.stdoutText.contains("unsigned"), "\(tampered.stdoutText)")
            let refused = try WardenRun.run(["ledger", "checkpoint", "--db", db])
            #expect(refused.status == 2 && refused.stderr.contains("were not recorded by warden"), "\(refused.stderr)")
        }
    }

    @Test func failsClosed() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, policy, uuid) = try fleet(dir, zone: "dmz")
            let xml = Self.xml("web1", uuid)
            // Denied by policy: the reason virsh shows.
            let denied = try hook(["--db", db, "--policy", policy, "web1", "prepare", "begin", "-"], stdin: xml)
            #expect(denied.status == 1)
            #expect(denied.stderr == "warden: denied start of web1 by Warden policy: rule secure-only: host \(HostName.current) has zone=dmz, needs zone=secure\n", "\(denied.stderr)")
            // No database.
            let noDB = try hook(["--db", dir + "/missing.db", "--policy", policy, "web1", "prepare", "begin", "-"], stdin: xml)
            #expect(noDB.status == 1 && noDB.stderr.contains("failing closed: ledger unavailable: \(dir)/missing.db: no Warden database"), "\(noDB.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/missing.db"))
            // A damaged database.
            try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: dir + "/junk.db"))
            let junk = try hook(["--db", dir + "/junk.db", "--policy", policy, "web1", "restore", "begin", "-"], stdin: xml)
            #expect(junk.status == 1 && junk.stderr.contains("denied restore of an unknown VM by Warden policy: failing closed: ledger unavailable:"), "\(junk.stderr)")
            // No policy directory (given explicitly), and a broken policy.
            let noPolicy = try hook(["--db", db, "--policy", dir + "/nope", "web1", "prepare", "begin", "-"], stdin: xml)
            #expect(noPolicy.status == 1 && noPolicy.stderr.contains("policy unavailable"), "\(noPolicy.stderr)")
            try "rules: [ {".write(toFile: dir + "/policy/broken.yaml", atomically: true, encoding: .utf8)
            let broken = try hook(["--db", db, "--policy", policy, "web1", "prepare", "begin", "-"], stdin: xml)
            #expect(broken.status == 1 && broken.stderr.contains("policy unavailable") && broken.stderr.contains("broken.yaml"), "\(broken.stderr)")
            try FileManager.default.removeItem(atPath: dir + "/policy/broken.yaml")
            // Malformed, empty and oversized XML.
            let bad = try hook(["--db", db, "--policy", policy, "web1", "prepare", "begin", "-"], stdin: Data("<domain><name>web1".utf8))
            #expect(bad.status == 1 && bad.stderr.contains("failing closed: web1: domain XML: truncated"), "\(bad.stderr)")
            let empty = try hook(["--db", db, "--policy", policy, "web1", "migrate", "begin", "-"], stdin: Data())
            #expect(empty.status == 1 && empty.stderr.contains("domain XML: empty document"), "\(empty.stderr)")
            let huge = try hook(["--db", db, "--policy", policy, "web1", "prepare", "begin", "-"],
                                stdin: Data(repeating: 0x20, count: 11 << 20))
            #expect(huge.status == 1 && huge.stderr.contains("larger than"), "\(huge.stderr)")
            // A bad command line.
            let usage = try hook(["--frobnicate", "web1", "prepare", "begin", "-"], stdin: xml)
            #expect(usage.status == 2 && usage.stderr.contains("unknown option --frobnicate"), "\(usage.stderr)")
            let short = try hook(["--db", db], stdin: xml)
            #expect(short.status == 2 && short.stderr.contains("expected exactly DOMAIN OPERATION SUB-OPERATION EXTRA"), "\(short.stderr)")
            // Not vetoable: stopped without a database exits 0 (libvirt ignores it anyway).
            let stopped = try hook(["--db", dir + "/missing.db", "web1", "stopped", "end", "-"], stdin: xml)
            #expect(stopped.status == 0, "\(stopped.stderr)")
            // started without a database fails (libvirt then stops the domain).
            let started = try hook(["--db", dir + "/missing.db", "web1", "started", "begin", "-"], stdin: xml)
            #expect(started.status == 1, "\(started.stderr)")
        }
    }

    /// A database is stamped with the schema when migrated; an unstamped one (an older warden's)
    /// is walked and stamped on the next read-write open, and still opens read-only meanwhile.
    @Test func schemaStamp() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let db = dir + "/s.db"
            _ = try WardenDatabase(path: db)
            func version() throws -> String { try Tool.run(["sqlite3", db, "PRAGMA user_version"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) }
            #expect(try version() == "\(WardenSchema.stamp)")
            try Tool.run(["sqlite3", db, "PRAGMA user_version = 0"])
            _ = try WardenDatabase(path: db, create: false, readOnly: true)
            #expect(try version() == "0")
            _ = try WardenDatabase(path: db, create: false)
            #expect(try version() == "\(WardenSchema.stamp)")
        }
    }

    @Test func installHookInstallsTheLeanHook() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let (db, policy, uuid) = try fleet(dir, zone: "secure")
            let r = try WardenRun.run(["libvirt", "install-hook", "--dir", dir + "/hooks", "--db", db, "--policy", policy])
            #expect(r.status == 0, "\(r.stderr)")
            let path = dir + "/hooks/qemu.d/50-warden"
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let hookPath = URL(fileURLWithPath: Self.hookBinary).resolvingSymlinksInPath().path
            #expect(text.contains("exec '\(hookPath)' --db '\(db)' --policy '\(policy)' -- \"$@\""), "\(text)")
            // The installed file works as libvirtd runs it: empty environment, cwd /.
            let run = try Tool.run(["env", "-i", "sh", "-c", "cd / && exec \"$0\" web1 prepare begin -", path],
                                   stdin: Self.xml("web1", uuid), check: false)
            #expect(run.status == 0, "\(run.stderr)")
            let ledger = try SQLiteLedger(path: db)
            #expect(try ledger.events(of: VMID(uuid)).filter { $0.kind == .policyDecision }.count == 1)
        }
    }
}
