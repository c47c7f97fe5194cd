import ArgumentParser
import Foundation
import Hypervisor
import Ledger
import LedgerPostgres
import Policy
import Storage
import Vault
import WardenConfig
import WardenCore
import WardenServices

/// `warden doctor`: checks the host for what Warden needs, and cleans up after interrupted
/// copies and clones.
struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check the host (QEMU, KVM, libvirt and the hook, nft, swtpm, PostgreSQL, permissions, ledger verification) and clean up after interrupted copies.",
        discussion: """
        Each check prints ok, warn or fail, and for what is missing the Debian package that \
        provides it. Missing optional parts (libvirt, swtpm, nft, KVM) are warnings: Warden works \
        without them, with less. Failures: a key or vault folder that others can reach or \
        that another user owns (a state folder like that is a warning), a ledger whose last verification found tampering, a configured \
        PostgreSQL that does not answer.

        Then the clean-up: `vm copy` and `vm clone` write new disks under hidden names \
        (.NAME.warden-VMID) and link them into place in the same ledger transaction that records \
        them. A process killed on the way leaves the hidden file, and at most a final name that the \
        ledger does not know. doctor looks in every folder that holds a ledger disk, and in the \
        folders given: a leftover whose VM is in the ledger loses its hidden name; any other is \
        removed with its final name. Folders where a copy or clone is running are skipped.

        Exit 0 when nothing failed, 1 when a check failed.

        Examples:
          warden doctor
          warden doctor --json /srv/vms/incoming
        """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "More folders to look in for leftovers (for example a copy's destination).") var folders: [String] = []
    @Option(help: ArgumentHelp("libvirt's hooks folder.", valueName: "dir")) var hooksDir = "/etc/libvirt/hooks"
    @Option(help: ArgumentHelp("Warn when the ledger was last verified longer ago than this.", valueName: "days")) var verifyAge = 7
    @Flag(help: "Print JSON (schema warden.doctor/v1).") var json = false

    struct Check: Encodable {
        var name: String
        var status: String
        var detail: String
        var package: String?
    }
    struct Doc: Encodable {
        var schema = "warden.doctor/v1"
        var checks: [Check]
        var leftovers: [Staging.Leftover]
    }

    func run() throws {
        let checks = hostChecks()
        // The clean-up needs the ledger; without one there is nothing to clean.
        var found: [Staging.Leftover] = []
        if FileManager.default.fileExists(atPath: database.path) {
            found = try Upkeep.recoverLeftovers(store: try database.open(create: false), directories: folders)
        }
        try Output.render(Doc(checks: checks, leftovers: found), json: json) {
            let w = checks.map(\.name.count).max() ?? 0
            for c in checks {
                var line = c.status.padding(toLength: 5, withPad: " ", startingAt: 0) + " " + c.name.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + c.detail
                if let p = c.package, c.status != "ok" { line += " (apt install \(p))" }
                Output.stdout.line(oneLine(line))
            }
            if found.isEmpty { Output.stdout.line("no leftovers") }
            for l in found {
                Output.stdout.line(oneLine("\(l.action == "committed" ? "removed staging name" : "rolled back") \(l.temp)\(l.action == "committed" ? "" : " (and \(l.final) if it was linked)")"))
            }
        }
        if checks.contains(where: { $0.status == "fail" }) {
            Output.stdout.flush()
            throw ExitCode(1)
        }
    }

    func hostChecks() -> [Check] {
        var out: [Check] = []
        func tool(_ name: String, _ package: String, purpose: String, required: Bool = false) {
            if let p = try? ToolProcess.find(name, package: package) {
                out.append(Check(name: name, status: "ok", detail: p, package: package))
            } else {
                out.append(Check(name: name, status: required ? "fail" : "warn", detail: "not installed: \(purpose)", package: package))
            }
        }
        tool("qemu-system-x86_64", "qemu-system-x86", purpose: "vm start cannot run VMs")
        tool("qemu-img", "qemu-utils", purpose: "vm copy and clone of qcow2 disks, snapshots")
        if access("/dev/kvm", R_OK | W_OK) == 0 {
            out.append(Check(name: "kvm", status: "ok", detail: "/dev/kvm"))
        } else {
            out.append(Check(name: "kvm", status: "warn", detail: "/dev/kvm is not usable: VMs run under software emulation (--accel tcg)"))
        }
        let libvirtd = ["/usr/sbin/libvirtd", "/usr/sbin/virtqemud"].first { FileManager.default.isExecutableFile(atPath: $0) }
        out.append(Check(name: "libvirt", status: libvirtd == nil ? "warn" : "ok",
                         detail: libvirtd ?? "not installed: no hook enforcement for libvirt-managed VMs", package: "libvirt-daemon-system"))
        if libvirtd != nil {
            let hooks = [hooksDir + "/qemu.d/50-warden", hooksDir + "/qemu"]
            let ours = hooks.first { p in
                (try? String(contentsOfFile: p, encoding: .utf8))?.contains(LibvirtHookInstaller.marker) == true
            }
            out.append(Check(name: "libvirt hook", status: ours == nil ? "warn" : "ok",
                             detail: ours ?? "not installed: libvirt starts VMs without asking Warden (warden libvirt install-hook)"))
        }
        tool("nft", "nftables", purpose: "no network quarantine or shields")
        tool("swtpm", "swtpm", purpose: "no virtual TPM for VMs")
        if let url = ProcessInfo.processInfo.environment["WARDEN_DATABASE_URL"], !url.isEmpty {
            let shown = Configuration.shown(ConfigKey.named("database_url")!, url)
            do {
                let store = try PostgresStore(url: url, migrate: false)
                store.close()
                out.append(Check(name: "postgresql", status: "ok", detail: shown))
            } catch {
                out.append(Check(name: "postgresql", status: "fail", detail: "\(shown) does not answer: \((error as? WardenError)?.message ?? "\(type(of: error))")"))
            }
        }
        // Folders that hold the ledger, keys and data keys: private to their owner.
        let db = database.path
        let dbDir = (db as NSString).deletingLastPathComponent
        // The ledger file itself is 0600; a wider state folder only shows names, so it warns.
        // Keys and data keys fail.
        for (name, dir, strict) in [("state folder", dbDir.isEmpty ? "." : dbDir, false),
                                    ("keys folder", HostKey.directory(databasePath: db), true),
                                    ("vault folder", Vault.beside(database: db).directory, true)] {
            var check = Self.privateFolder(name, dir)
            if !strict && check.status == "fail" { check.status = "warn" }
            out.append(check)
        }
        if FileManager.default.fileExists(atPath: db) {
            if let stamp = VerifyStamp.read(besideDatabase: db) {
                let days = Date().timeIntervalSince(stamp.at) / 86_400
                let age = days < 1 ? String(format: "%.0f hours ago", days * 24) : String(format: "%.0f days ago", days)
                if !stamp.ok {
                    out.append(Check(name: "ledger", status: "fail", detail: "the last verification (\(age)) found tampering: warden ledger verify"))
                } else {
                    out.append(Check(name: "ledger", status: days > Double(verifyAge) ? "warn" : "ok",
                                     detail: "verified \(age) at \(stamp.treeSize) entries\(days > Double(verifyAge) ? ": warden ledger verify" : "")"))
                }
            } else {
                out.append(Check(name: "ledger", status: "warn", detail: "\(db) has never been verified: warden ledger verify"))
            }
        } else {
            out.append(Check(name: "ledger", status: "ok", detail: "no ledger yet at \(db) (the first vm register makes it)"))
        }
        return out
    }

    /// ok when `dir` is absent or owned by this user with no access for group or others.
    static func privateFolder(_ name: String, _ dir: String) -> Check {
        var st = stat()
        guard stat(dir, &st) == 0 else { return Check(name: name, status: "ok", detail: "\(dir) (not made yet)") }
        let mode = st.st_mode & 0o777
        if st.st_uid != geteuid() {
            return Check(name: name, status: "fail", detail: "\(dir) is owned by uid \(st.st_uid), not this user (\(geteuid()))")
        }
        if mode & 0o077 != 0 {
            return Check(name: name, status: "fail", detail: "\(dir) has mode \(String(mode, radix: 8)); others can reach its keys and state: chmod 700 \(dir)")
        }
        return Check(name: name, status: "ok", detail: "\(dir) (mode \(String(mode, radix: 8)))")
    }
}
