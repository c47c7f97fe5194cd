import Foundation
import Hypervisor
import Ledger
import Testing
import WardenCore
import WardenTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A VM's own TPM (swtpm) across its lifecycle: started confined beside QEMU, fresh for a
/// clone (a different endorsement key), and restored with the disks by a rollback (an NV
/// index written before the snapshot comes back). The vTPM's state is read from the host with
/// a swtpm of the test's own and tpm2-tools.
@Suite(.serialized) struct VTPMTests {
    static func warden(_ args: [String], home: String, check: Bool = true) throws -> ToolResult {
        try Tool.run([Fixtures.wardenBinary] + args, environment: ["WARDEN_HOME": home, "WARDEN_DB": "", "WARDEN_POLICY": home + "/policy"],
                     check: check, timeout: 180)
    }

    /// NV index 0x01500016 of the TPM whose state is in `state`: written with `value`, or read (nil).
    @discardableResult
    static func nv(_ state: String, write value: String? = nil) throws -> String {
        try SoftwareTPM.with(stateDirectory: state) { tpm in
            if let value {
                _ = try? tpm.tool(["tpm2_nvundefine", "0x01500016"])
                try tpm.tool(["tpm2_nvdefine", "0x01500016", "-s", "8", "-a", "ownerread|ownerwrite|authread|authwrite"])
                let file = tpm.directory + "/v"
                try Data(value.utf8).write(to: URL(fileURLWithPath: file))
                try tpm.tool(["tpm2_nvwrite", "0x01500016", "-i", file])
                return value
            }
            return try tpm.tool(["tpm2_nvread", "0x01500016", "-s", "8"]).stdoutText
        }
    }

    static func ek(_ vm: String, home: String) throws -> String? {
        let r = try warden(["vm", "tpm", vm, "--json"], home: home)
        return (try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])?["endorsement_key_sha256"] as? String
    }

    @Test func vtpmFollowsTheVMThroughStartCloneAndRollback() throws {
        guard Confinement.available, FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64") else {
            print("skipped: needs root, unshare and QEMU"); return
        }
        try Fixtures.withTemporaryDirectory { home in
            try PolicyFiles.write(PolicyFiles.allowAll, in: home)
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", home + "/p.qcow2"])
            let vm = try #require(VMID(try Self.warden(["vm", "register", "--name", "p", "--owner", "ops", home + "/p.qcow2"], home: home)
                .stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(try Self.ek("p", home: home) == nil)

            // Started with a vTPM: QEMU has a TPM device backed by a swtpm that runs as the VM's uid.
            _ = try Self.warden(["vm", "start", "p", "--tpm", "--uefi", "--memory", "64", "--accel", "tcg"], home: home)
            let run = home + "/run/\(vm)"
            do {
                defer { _ = try? Self.warden(["vm", "stop", "p", "--timeout", "1"], home: home) }
                let qmp = try QMPClient(path: run + "/qmp.sock")
                let tpms = try qmp.execute("query-tpm") as? [[String: Any]]
                #expect(tpms?.count == 1 && tpms?.first?["model"] as? String == "tpm-tis", "\(String(describing: tpms))")
                let swtpmPid = try String(contentsOfFile: VTPM(vm: vm, home: home).pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
                let status = try String(contentsOfFile: "/proc/\(swtpmPid)/status", encoding: .utf8)
                let uid = Confinement.uid(for: vm)
                #expect(status.contains("Uid:\t\(uid)\t\(uid)\t\(uid)\t\(uid)"), "\(status.prefix(600))")
                #expect(status.contains("Seccomp:\t2"))
                let ledger = try SQLiteLedger(path: home + "/warden.db")
                let started = try ledger.events(of: vm).last { $0.kind == .started }
                #expect(started?.payload["vtpm"] == .string("fresh"))
                // UEFI: the shared firmware read-only, the VM's own variable store (recorded).
                let cmdline = try String(contentsOfFile: "/proc/\(try String(contentsOfFile: run + "/qemu.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))/cmdline", encoding: .utf8)
                #expect(cmdline.contains("if=pflash,format=raw,unit=1,file=\(home)/nvram/\(vm)/OVMF_VARS.fd"))
                guard case .object(let vars)? = started?.payload["uefi_vars"] else { Issue.record("no uefi_vars"); return }
                #expect(vars["fresh"] == .bool(true))
            }
            #expect(!FileManager.default.fileExists(atPath: VTPM(vm: vm, home: home).pidFile))
            let vtpm = VTPM(vm: vm, home: home)
            #expect(vtpm.exists)
            var st = stat()
            #expect(stat(vtpm.directory, &st) == 0 && st.st_mode & 0o777 == 0o700)
            let parentEK = try #require(try Self.ek("p", home: home))

            // Rollback restores the vTPM with the disks: an NV value written before the snapshot comes back.
            // So do the UEFI variables.
            let nvram = NVRAM(vm: vm, home: home)
            #expect(stat(nvram.varsFile, &st) == 0 && st.st_mode & 0o777 == 0o600)
            try Self.nv(vtpm.stateDirectory, write: "before!!")
            let varsBefore = try #require(nvram.kept.sha256())
            _ = try Self.warden(["vm", "snapshot", "p", "s1"], home: home)
            try Self.nv(vtpm.stateDirectory, write: "after!!!")
            let fh = try FileHandle(forWritingTo: URL(fileURLWithPath: nvram.varsFile))
            try fh.seek(toOffset: 4096); fh.write(Data("changed after the snapshot".utf8)); try fh.close()
            #expect(nvram.kept.sha256() != varsBefore)
            #expect(try Self.nv(vtpm.stateDirectory) == "after!!!")
            _ = try Self.warden(["vm", "rollback", "p", "s1"], home: home)
            #expect(try Self.nv(vtpm.stateDirectory) == "before!!")
            #expect(nvram.kept.sha256() == varsBefore)
            let ledger = try SQLiteLedger(path: home + "/warden.db")
            #expect(try ledger.events(of: vm).last { $0.kind == .rolledBack }?.payload["vtpm"] == .string("restored"))
            #expect(try ledger.events(of: vm).last { $0.kind == .snapshotted }?.payload["vtpm"] == .bool(true))

            // A clone gets a fresh vTPM: a different endorsement key once it has started.
            let clone = try Self.warden(["vm", "clone", "p", "--name", "q", "--dir", home + "/clones"], home: home)
            #expect(clone.stderr.contains("fresh vTPM") && clone.stderr.contains("re-enrolment"), "\(clone.stderr)")
            #expect(try Self.ek("q", home: home) == nil)
            _ = try Self.warden(["vm", "start", "q", "--tpm", "--memory", "64", "--accel", "tcg"], home: home)
            _ = try Self.warden(["vm", "stop", "q", "--timeout", "1"], home: home)
            let cloneEK = try #require(try Self.ek("q", home: home))
            #expect(cloneEK != parentEK)
            let q = try #require(try ledger.listVMs().first { $0.name == "q" })
            let cloned = try ledger.events(of: q.id).first { $0.kind == .cloned }
            #expect(cloned?.payload["vtpm"] == .string("fresh"))
            // The clone's UEFI variables are a copy of its parent's, recorded with their digest.
            guard case .object(let qVars)? = cloned?.payload["uefi_vars"] else { Issue.record("no uefi_vars in the cloned event"); return }
            #expect(qVars["sha256"] == .string(varsBefore))
            #expect(NVRAM(vm: q.id, home: home).exists)
            // --keep-vtpm: the same endorsement key, recorded.
            _ = try Self.warden(["vm", "clone", "p", "--name", "r", "--dir", home + "/clones", "--keep-vtpm"], home: home)
            #expect(try Self.ek("r", home: home) == parentEK)
        }
    }

    /// A VM whose disks are under the vault keeps its vTPM state under the vault too: swtpm gets
    /// the key through a pipe at each start (the same `unlock` decision as the disks), and the
    /// state cannot be read without it.
    @Test func encryptedVMsKeepTheirVTPMUnderTheVault() throws {
        guard Confinement.available, FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64") else {
            print("skipped: needs root, unshare and QEMU"); return
        }
        try Fixtures.withTemporaryDirectory { home in
            try PolicyFiles.write(PolicyFiles.allowAll, in: home)
            try Tool.run(["qemu-img", "create", "-q", "-f", "raw", home + "/e.img", "16M"])
            let vm = try #require(VMID(try Self.warden(["vm", "register", "--name", "e", "--owner", "ops", "--encrypt", home + "/e.img"], home: home)
                .stdoutText.split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""))
            _ = try Self.warden(["vm", "start", "e", "--tpm", "--memory", "64", "--accel", "tcg"], home: home)
            _ = try Self.warden(["vm", "stop", "e", "--timeout", "1"], home: home)
            let vtpm = VTPM(vm: vm, home: home)
            #expect(vtpm.exists)
            // Without the key the state is unreadable.
            try Fixtures.withTemporaryDirectory { copy in
                try FileManager.default.copyItem(atPath: vtpm.stateFile, toPath: copy + "/" + VTPM.stateFileName)
                #expect(throws: (any Error).self) { try SoftwareTPM.with(stateDirectory: copy) { try $0.tool(["tpm2_createek", "-G", "rsa", "-c", copy + "/ek.ctx"]) } }
            }
            // With it (released by policy, recorded) the vTPM answers.
            #expect(try Self.ek("e", home: home)?.count == 64)
            let ledger = try SQLiteLedger(path: home + "/warden.db")
            #expect(try ledger.events(of: vm).filter { $0.kind == .policyDecision && $0.payload["op"] == .string("unlock") }.count >= 2)
        }
    }
}
