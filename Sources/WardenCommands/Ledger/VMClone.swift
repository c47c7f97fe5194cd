import ArgumentParser
import Foundation
import Hypervisor
import WardenCore
import DiskImage
import Ledger
import Sysprep
import WardenServices

/// `warden vm clone VM --name NAME`: a new VM whose disks are overlays of VM's, with a fresh identity.
struct VMClone: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clone",
        abstract: "Clone a VM offline: qcow2 overlays (or --full copies) with a fresh machine-id, SSH host keys, hostname…",
        discussion: """
        Each disk becomes a qcow2 overlay backed by the source disk (megabytes, not gigabytes), or with \
        --full a sparse raw copy of the whole guest-visible disk. The identity operations (docs/sysprep.md) \
        run on the boot disk; the clone is then re-inspected and compared with the source, and only a clone \
        that shares no identity field is put in place and recorded (a `cloned` event with its lineage, new \
        generation, new MAC and SSH host key fingerprints). The source is only read. JSON: docs/sysprep.md.
        
        Examples:
          warden vm clone web --name web2 --dir /srv/vms
          warden vm clone web --name web3 --full --hostname web3
        """
    )

    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM to clone (id, unique id prefix, or unique name).") var vm: String
    @Option(help: "The new VM's name (also its file names and, unless --hostname is given, its hostname).") var name: String
    @Flag(help: "Full copies (sparse raw, backing chain flattened) instead of qcow2 overlays.") var full = false
    @Option(help: "Folder for the new disk files, created if missing (default: the folder of the source's boot disk).") var dir: String?
    @OptionGroup var selection: SysprepSelection
    @OptionGroup var policyOptions: PolicyOptions
    @Flag(help: "Give the clone a copy of the source's vTPM state (same endorsement seed and sealed secrets; recorded) instead of a fresh vTPM.") var keepVtpm = false
    @Flag(help: "Print JSON (schema warden.vm.clone/v1, docs/sysprep.md).") var json = false

    func validate() throws {
        _ = try NameArgument.check(name, what: "--name")
        if name.contains("/") || name.hasPrefix(".") { throw ValidationError("--name must not contain '/' or start with '.'") }
    }

    struct Report: Encodable {
        var schema = "warden.vm.clone/v1"
        var vm: String
        var name: String
        var parent: String
        var parentGeneration: String
        var generation: String
        var mac: String?
        var disks: [String]
        var sysprep: SysprepReport
        var verification: Verification
    }

    struct Verification: Encodable {
        var passed: Bool
        var collisions: [IdentityCollision]
    }

    func run() throws {
        let service = VMRun.service(try database.open(create: false), policy: policyOptions.source)
        PhaseTimer.shared.lap("ledger-open")
        let result = try service.clone(.init(vm: vm, name: name, full: full, directory: dir, operations: try selection.selected(),
                                             hostname: selection.hostname, authorizedKeysUsers: selection.removeAuthorizedKeys,
                                             deviceState: { [keepVtpm] source, clone in
                                                 let home = RunDirectory.home()
                                                 var out: [String: JSONValue] = [:]
                                                 // UEFI variables go with the disks (boot entries name them).
                                                 let vars = NVRAM(vm: source, home: home)
                                                 if vars.exists {
                                                     let mine = NVRAM(vm: clone, home: home)
                                                     try mine.adopt(vars)
                                                     out["uefi_vars"] = .object(["path": .string(mine.varsFile), "sha256": .string(mine.kept.sha256() ?? "")])
                                                 }
                                                 let parent = VTPM(vm: source, home: home)
                                                 if parent.exists {
                                                     if keepVtpm { try parent.copy(to: VTPM(vm: clone, home: home)); out["vtpm"] = .string("copied") }
                                                     else { out["vtpm"] = .string("fresh") }
                                                 }
                                                 return out
                                             }),
                                       beforeCommit: Self.testHookBeforeCommit, afterLink: TestHooks.pause("WARDEN_TEST_CLONE_LINKED_PAUSE"))
        let src = result.source
        if !result.collisions.isEmpty {
            for c in result.collisions { Output.error("\(name): identity shared with \(src.name): \(c.field): \(c.detail)") }
            Output.error("clone \(name) of \(src.name) still shares \(result.collisions.count) identity field(s) with its source; nothing was created (recorded as a policy-decision event)")
            throw ExitCode(1)
        }
        let created = result.vm, r = result.report
        try Output.render(Report(
            vm: created.id.description, name: created.name, parent: src.id.description,
            parentGeneration: src.generation.uuidString.lowercased(),
            generation: created.generation.uuidString.lowercased(), mac: created.mac, disks: result.paths,
            sysprep: r, verification: Verification(passed: true, collisions: [])), json: json) {
            Output.stdout.line("\(created.id) \(oneLine(created.name)) (clone of \(oneLine(src.name)), generation \(created.generation.uuidString.lowercased()))")
            for p in result.paths { Output.stdout.line(oneLine("disk: \(p)")) }
            if let m = created.mac { Output.stdout.line("mac: \(m)") }
            SysprepSelection.printReport(r)
            Output.stdout.line("verification: no identity field shared with \(oneLine(src.name))")
        }
        if VTPM(vm: src.id).exists {
            Output.note(keepVtpm ? "vTPM: \(created.name) has a copy of \(src.name)'s vTPM (same endorsement seed; recorded)"
                                 : "vTPM: \(created.name) gets a fresh vTPM on its first start; secrets the guest sealed to \(src.name)'s vTPM (a TPM-bound LUKS key, say) need re-enrolment")
        }
        Output.stdout.flush()
    }

    /// `WARDEN_TEST_CLONE_PAUSE=SECONDS` sleeps just before the commit point, so crash tests can
    /// kill the process there deterministically. Only honoured with `WARDEN_TEST_HOOKS=1`.
    static var testHookBeforeCommit: (() throws -> Void)? { TestHooks.pause("WARDEN_TEST_CLONE_PAUSE") }
}
