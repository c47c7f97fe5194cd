import ArgumentParser
import Foundation
import WardenCore
import DiskImage
import Ledger
import Sysprep

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
        """
    )

    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM to clone (id, unique id prefix, or unique name).") var vm: String
    @Option(help: "The new VM's name (also its file names and, unless --hostname is given, its hostname).") var name: String
    @Flag(help: "Full copies (sparse raw, backing chain flattened) instead of qcow2 overlays.") var full = false
    @Option(help: "Folder for the new disk files, created if missing (default: the folder of the source's boot disk).") var dir: String?
    @OptionGroup var selection: SysprepSelection
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
        let timer = PhaseTimer.shared
        let ops = try selection.selected()
        // RSA-3072 generation is the longest step: start it now, so it overlaps the ledger and
        // policy work as well as the overlay (keys are discarded if the clone does not happen).
        let forge = ops.contains { $0.name == "ssh-hostkeys" } ? HostKeyForge() : nil
        let store = try database.open(create: false)
        timer.lap("ledger-open")
        let src = try store.resolveVM(vm)
        guard src.state != .retired else { throw WardenError(.conflict, "VM \(src.id) is retired") }
        let all = try store.listVMs()
        if all.contains(where: { $0.name == name && $0.state != .retired }) {
            throw WardenError(.conflict, "a VM named \(name) already exists")
        }
        let disks = try store.disks(of: src.id).sorted { $0.index < $1.index }
        guard !disks.isEmpty else { throw WardenError(.invalidArgument, "VM \(src.id) has no disks to clone") }

        // The hostname: --hostname, else the clone's name when it is a valid hostname.
        var hostname = selection.hostname
        if hostname == nil, SysprepOptions.validHostname(name) { hostname = name }
        // A MAC no other VM in the ledger has.
        let used = Set(all.compactMap { $0.mac?.lowercased() })
        var mac = Sysprep.newMAC()
        for _ in 0..<64 where used.contains(mac) { mac = Sysprep.newMAC() }
        let refreshMAC = ops.contains { $0.name == "mac-address" }
        let options = SysprepOptions(hostname: hostname, authorizedKeysUsers: selection.removeAuthorizedKeys,
                                     ledgerMAC: refreshMAC ? mac : nil, keys: forge)
        let destDir = absolutePath(dir ?? (disks[0].path as NSString).deletingLastPathComponent)
        timer.lap("ledger-read")

        // Policy check: the one call site for clone decisions (exit 3 when denied).
        try LedgerPolicy.authorize(.clone, vm: src, store: store,
                                   detail: ["mode": .string(full ? "full" : "overlay"), "name": .string(name),
                                            "dest": .string(destDir), "operations": .array(ops.map { .string($0.name) })])

        timer.lap("policy-decision")
        try FileManager.default.createDirectory(atPath: destDir, withIntermediateDirectories: true)
        let result = try Clone.make(sources: disks.map { Clone.Source(path: $0.path, format: $0.format) },
                                    into: destDir, name: name, full: full, operations: ops, options: options,
                                    checkFilesystemUUIDs: ops.contains { $0.name == "fs-uuids" },
                                    beforeCommit: Self.testHookBeforeCommit)
        let now = Date()
        timer.lap("clone-make")
        if !result.collisions.isEmpty {
            // Record the refused clone on the source VM, then fail loudly.
            _ = try store.append(NewEvent(kind: .policyDecision, vm: src.id, time: now, payload: [
                "decision": .string("deny"), "rule": .string("clone-identity-verification"),
                "clone_name": .string(name),
                "collisions": .array(result.collisions.map { c -> JSONValue in .object(["field": .string(c.field), "detail": .string(c.detail)]) }),
            ]))
            for c in result.collisions { Output.error("\(name): identity shared with \(src.name): \(c.field): \(c.detail)") }
            Output.error("clone \(name) of \(src.name) still shares \(result.collisions.count) identity field(s) with its source; nothing was created (recorded as a policy-decision event)")
            throw ExitCode(1)
        }

        let new = VMRecord(name: name, owner: src.owner, labels: src.labels, state: .stopped, generation: UUID(),
                           parent: src.id, parentGeneration: src.generation, createdAt: now, updatedAt: now,
                           mac: refreshMAC ? mac : src.mac)
        let r = result.report
        var payload: [String: JSONValue] = [
            "parent": .string(src.id.description),
            "parent_generation": .string(src.generation.uuidString.lowercased()),
            "mode": .string(full ? "full" : "overlay"),
            "disks": .array(zip(result.paths, disks).map { p, d -> JSONValue in
                .object(["path": .string(p), "format": .string(full ? "raw" : "qcow2"), "source": .string(d.path)])
            }),
            "operations": .array(r.operations.map { op -> JSONValue in
                .object(["name": .string(op.name), "changed": .bool(op.changedSomething)])
            }),
            // As in registered/discovered events: the fingerprints, sorted; plus which file holds each.
            "ssh_host_keys": .array(r.hostKeys.map { $0.fingerprint }.sorted().map { JSONValue.string($0) }),
            "ssh_host_key_files": .array(r.hostKeys.map { k -> JSONValue in
                .object(["type": .string(k.type), "path": .string(k.path), "fingerprint": .string(k.fingerprint)])
            }),
            "verification": .object(["passed": .bool(true)]),
        ]
        if let m = r.machineId { payload["machine_id"] = .string(m) }
        if let h = hostname, ops.contains(where: { $0.name == "hostname" }) { payload["hostname"] = .string(h) }
        if let m = new.mac { payload["mac"] = .string(m) }
        if !r.filesystemUUIDs.isEmpty { payload["filesystem_uuids"] = .object(r.filesystemUUIDs.mapValues { JSONValue.string($0) }) }
        let records = result.paths.enumerated().map { i, p in
            DiskRecord(vm: new.id, index: i, path: p, format: result.formats[i],
                       backingChain: full ? [] : [disks[i].path] + disks[i].backingChain)
        }
        let (created, _) = try store.createVM(new, disks: records,
                                              event: NewEvent(kind: .cloned, vm: new.id, time: now,
                                                              generationBefore: src.generation, generationAfter: new.generation,
                                                              payload: payload))
        timer.lap("ledger-append-cloned")
        if json {
            Output.stdout.line(try Output.json(Report(
                vm: created.id.description, name: created.name, parent: src.id.description,
                parentGeneration: src.generation.uuidString.lowercased(),
                generation: created.generation.uuidString.lowercased(), mac: created.mac, disks: result.paths,
                sysprep: r, verification: Verification(passed: true, collisions: []))))
        } else {
            Output.stdout.line("\(created.id) \(oneLine(created.name)) (clone of \(oneLine(src.name)), generation \(created.generation.uuidString.lowercased()))")
            for p in result.paths { Output.stdout.line(oneLine("disk: \(p)")) }
            if let m = created.mac { Output.stdout.line("mac: \(m)") }
            SysprepSelection.printReport(r)
            Output.stdout.line("verification: no identity field shared with \(oneLine(src.name))")
        }
        Output.stdout.flush()
    }

    /// `WARDEN_TEST_CLONE_PAUSE=SECONDS` sleeps just before the commit point, so crash tests can
    /// kill the process there deterministically. Only honoured with `WARDEN_TEST_HOOKS=1`.
    static var testHookBeforeCommit: (() throws -> Void)? {
        let env = ProcessInfo.processInfo.environment
        guard env["WARDEN_TEST_HOOKS"] == "1", let s = env["WARDEN_TEST_CLONE_PAUSE"].flatMap(Double.init), s > 0, s < 60 else { return nil }
        return { Thread.sleep(forTimeInterval: s) }
    }
}
