import Foundation
import Testing
import WardenTestSupport

/// `warden vm push` / `warden vm pull` against Debian's docker-registry, started by the tests
/// (RegistryServer): round trips, dedupe measured in the registry's storage, faults (a killed
/// registry, a corrupted blob, a swapped manifest), policy, and skopeo on the same content.
@Suite(.serialized) struct RegistryTests {
    static func warden(_ args: [String], home: String, env: [String: String] = [:], timeout: Double = 600) throws -> ToolResult {
        try Tool.run([Fixtures.wardenBinary] + args,
                     environment: ["WARDEN_HOME": home, "WARDEN_DB": home + "/warden.db", "WARDEN_POLICY": home + "/policy"].merging(env) { $1 },
                     check: false, timeout: timeout)
    }

    static func json(_ r: ToolResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(r.stdoutText.utf8)) as? [String: Any], "\(r.stdoutText) \(r.stderr)")
    }

    /// A home whose policy trusts this host's signing key, with `policy` as its rules.
    static func makeHome(_ dir: String, policy: String = "") throws -> String {
        let home = dir + "/home"
        try FileManager.default.createDirectory(atPath: home + "/policy/trusted-keys", withIntermediateDirectories: true)
        let key = try warden(["registry", "key"], home: home)
        #expect(key.status == 0, "\(key.stderr)")
        try Data(key.stdout).write(to: URL(fileURLWithPath: home + "/policy/trusted-keys/this-host.pub"))
        if !policy.isEmpty { try Data(policy.utf8).write(to: URL(fileURLWithPath: home + "/policy/rules.yaml")) }
        return home
    }

    /// A 64 MiB qcow2 with `mib` MiB of random (incompressible) data at its start (not an OS: pulls use
    /// `--operations none`), registered as VM `name`.
    static func dataVM(_ dir: String, home: String, name: String, mib: Int = 12) throws -> String {
        let path = "\(dir)/\(name).qcow2"
        let raw = "\(dir)/\(name).raw"
        try Tool.sh("""
            set -e
            truncate -s 64M '\(raw)'
            dd if=/dev/urandom of='\(raw)' bs=1M count=\(mib) conv=notrunc status=none
            yes Z | tr -d '\\n' | dd of='\(raw)' bs=1M count=1 seek=40 iflag=fullblock conv=notrunc status=none || true
            qemu-img convert -q -O qcow2 '\(raw)' '\(path)'
            rm -f '\(raw)'
            """)
        let r = try warden(["vm", "register", "--name", name, "--owner", "alice", path], home: home)
        #expect(r.status == 0, "\(r.stderr)")
        return path
    }

    @Test func aVMRoundTripsThroughTheRegistryAsASignedCopyInItsLineage() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir)
                let disk = try Self.dataVM(dir, home: home, name: "web1")
                let ref = "\(reg.host)/team/web1:2026-12"
                let push = try Self.warden(["vm", "push", "web1", ref, "--plain-http", "--json"], home: home)
                #expect(push.status == 0, "\(push.stderr)")
                let p = try Self.json(push)
                #expect((p["chunks"] as? Int) == 4, "12 MiB of data and 1 MiB of 0x5a in 4 MiB chunks: \(p)")
                #expect((p["uploaded"] as? Int) == 4)
                #expect(push.stderr.contains("pushed"), "progress on stderr: \(push.stderr)")
                let pull = try Self.warden(["vm", "pull", ref, "--plain-http", "--name", "web1-copy", "--dir", dir + "/pulled",
                                            "--operations", "none", "--json"], home: home)
                #expect(pull.status == 0, "\(pull.stderr)")
                let q = try Self.json(pull)
                #expect(q["signature"] as? String == "trusted")
                #expect(q["linked_to_origin"] as? Bool == true)
                let copy = dir + "/pulled/web1-copy.qcow2"
                #expect(try Tool.run(["qemu-img", "compare", disk, copy], check: false).status == 0)
                // Sparse: the copy takes about the data's room, not the 64 MiB disk.
                let info = try Tool.run(["qemu-img", "info", "--output=json", copy])
                let obj = try #require(try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any])
                #expect((obj["format"] as? String) == "qcow2")
                #expect(((obj["actual-size"] as? Int) ?? Int.max) < 20 << 20)
                // The ledger: a `pulled` event, the copy's parent is the pushed VM.
                let show = try Self.json(try Self.warden(["vm", "show", "web1-copy", "--json"], home: home))
                let src = try Self.json(try Self.warden(["vm", "show", "web1", "--json"], home: home))
                let vm = show["vm"] as? [String: Any] ?? show
                let sv = src["vm"] as? [String: Any] ?? src
                #expect(vm["parent"] as? String == sv["id"] as? String, "\(show)")
                let events = try Self.warden(["vm", "history", "web1-copy", "--json"], home: home)
                #expect(events.stdoutText.contains("\"pulled\""), "\(events.stdoutText.prefix(2000))")
                let srcEvents = try Self.warden(["vm", "history", "web1", "--json"], home: home)
                #expect(srcEvents.stdoutText.contains("\"pushed\""))
                // Nothing hidden is left in the folder.
                let left = try FileManager.default.contentsOfDirectory(atPath: dir + "/pulled")
                #expect(left == ["web1-copy.qcow2"], "\(left)")
            }
        }
    }
}
