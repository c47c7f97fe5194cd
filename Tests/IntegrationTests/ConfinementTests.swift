import Foundation
import Hypervisor
import Ledger
import Testing
import WardenCore
import WardenTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `warden vm start` confines QEMU (docs/vmm-hardening.md), checked from outside the process:
/// its uid, capabilities, no-new-privs and seccomp in /proc; its namespaces and root; its
/// cgroup; and a QMP `blockdev-add` of another image next to its disk, which must fail.
@Suite(.serialized) struct ConfinementTests {
    static func warden(_ args: [String], home: String, check: Bool = true) throws -> ToolResult {
        try Tool.run([Fixtures.wardenBinary] + args, environment: ["WARDEN_HOME": home, "WARDEN_DB": "", "WARDEN_POLICY": home + "/policy"],
                     check: check, timeout: 120)
    }

    static func status(_ pid: String) throws -> [String: String] {
        var out: [String: String] = [:]
        for line in try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8).split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2 { out[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces) }
        }
        return out
    }

    @Test func qemuRunsConfinedAsSeenFromOutside() throws {
        guard Confinement.available, FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64") else {
            print("skipped: needs root, unshare and QEMU"); return
        }
        try Fixtures.withTemporaryDirectory { home in
            try PolicyFiles.write(PolicyFiles.allowAll, in: home)
            let images = home + "/images"
            try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            for name in ["disk", "other"] {
                try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", "\(images)/\(name).qcow2", "16M"])
                chmod("\(images)/\(name).qcow2", 0o600)
            }
            let vm = try #require(VMID(try Self.warden(["vm", "register", "--name", "c", "--owner", "ops", images + "/disk.qcow2"], home: home)
                .stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)))
            _ = try Self.warden(["vm", "start", "c", "--memory", "64", "--accel", "tcg"], home: home)
            defer { _ = try? Self.warden(["vm", "stop", "c", "--timeout", "1"], home: home) }
            let run = home + "/run/\(vm)"
            let pid = try String(contentsOfFile: run + "/qemu.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)

            // Its own uid and gid, no capabilities, no-new-privs, seccomp filtering.
            let s = try Self.status(pid)
            let uid = Confinement.uid(for: vm)
            #expect(s["Uid"]?.split(whereSeparator: { $0 == "\t" || $0 == " " }).allSatisfy { $0 == "\(uid)" } == true, "\(s["Uid"] ?? "")")
            #expect(s["Gid"]?.split(whereSeparator: { $0 == "\t" || $0 == " " }).allSatisfy { $0 == "\(uid)" } == true, "\(s["Gid"] ?? "")")
            #expect(uid >= 2_100_000_000)
            for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] { #expect(s[cap] == "0000000000000000", "\(cap) \(s[cap] ?? "")") }
            #expect(s["NoNewPrivs"] == "1" && s["Seccomp"] == "2", "\(s)")
            // Namespaces of its own, and an empty root.
            for ns in ["mnt", "ipc", "uts"] {
                let theirs = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/\(ns)")
                let ours = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(ns)")
                #expect(theirs != ours, "\(ns): \(theirs)")
            }
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/root") == run + "/chroot")
            #expect(try FileManager.default.contentsOfDirectory(atPath: run + "/chroot").isEmpty)
            // Its cgroup, with the VM's memory limit (or the started event says why not).
            let ledger = try SQLiteLedger(path: home + "/warden.db")
            let started = try #require(try ledger.events(of: vm).last { $0.kind == .started })
            guard case .object(let c)? = started.payload["confinement"] else { Issue.record("no confinement in \(started.payload)"); return }
            #expect(c["uid"] == .number(Double(uid)))
            if case .string(let cgroup)? = c["cgroup"] {
                let groups = try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)
                #expect(groups.contains("warden/vm-\(vm)"), "\(groups)")
                let limit = (try? String(contentsOfFile: cgroup + "/memory.max", encoding: .utf8)) ?? (try? String(contentsOfFile: cgroup + "/memory.limit_in_bytes", encoding: .utf8))
                #expect(limit?.trimmingCharacters(in: .whitespacesAndNewlines) == "\((64 + 256) << 20)")
            } else {
                print("no cgroup here: \(c["cgroup_unavailable"] ?? .null)")
            }
            // QEMU still serves its guest, but cannot open an image it was not given.
            let qmp = try QMPClient(path: run + "/qmp.sock")
            let state = try qmp.execute("query-status") as? [String: Any]
            #expect(state?["status"] as? String == "running")
            #expect(throws: (any Error).self) {
                _ = try qmp.execute("blockdev-add", ["driver": "file", "filename": images + "/other.qcow2", "node-name": "stolen"])
            }
            _ = try Self.warden(["vm", "stop", "c", "--timeout", "1"], home: home)
            #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/warden/vm-\(vm)") && !FileManager.default.fileExists(atPath: "/sys/fs/cgroup/warden/vm-\(vm)"))

            // --no-confine: root, the host's namespaces (the baseline the benchmark compares with).
            _ = try Self.warden(["vm", "start", "c", "--memory", "64", "--accel", "tcg", "--no-confine"], home: home)
            let plainPid = try String(contentsOfFile: run + "/qemu.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(try Self.status(plainPid)["Uid"]?.hasPrefix("0") == true)
        }
    }
}
