import DiskImage
import Foundation
import Ledger
import Policy
import Sysprep
import Vault
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// The VM workflows that the CLI, the libvirt hook and (later) the fleet server share:
/// register, copy, clone, transfer and retire, each deciding through policy and committing the
/// decision together with the change it allows (``LedgerStore/atomically(family:_:)``).
///
/// A decision that depends on ledger state is therefore never stale: twenty concurrent copies
/// under `maxReplicas: 2` are serialised, each counts the replicas the earlier ones created, and
/// the third and later are denied (docs/decisions.md, "Atomic decisions").
public struct VMService: Sendable {
    public let store: any LedgerStore
    /// Where the policy comes from (`--policy`, else the default directory).
    public let policy: PolicyGate.Source
    public let host: HostName
    /// Where notes go (quarantine summaries, warnings).
    public var note: @Sendable (String) -> Void
    /// Host keys made ahead of time for clones (docs/sysprep.md); nil: generated per clone.
    public var keyPool: KeyPool?
    /// Called after a clone that needed host keys found the pool below its size (the CLI
    /// refills it in the background).
    public var keyPoolUsed: (@Sendable () -> Void)?
    /// Copies and clones of encrypted VMs: their disks get keys of their own (docs/vault.md).
    /// Nil: encrypted VMs are not copied or cloned (no vault here).
    public var crypto: (any DiskCrypto)?

    public init(store: any LedgerStore, policy: PolicyGate.Source = .defaultDirectory, host: HostName = .current,
                note: @escaping @Sendable (String) -> Void = { _ in }) {
        self.store = store; self.policy = policy; self.host = host; self.note = note
    }

    // MARK: - Decisions

    /// Decides `request` without recording, to fail early before expensive work. The decision
    /// that counts is the one made again inside the commit (``decideAndApply(_:vm:family:apply:)``).
    public func preview(_ request: PolicyRequest, vm: VMRecord) -> Decision {
        PolicyGate.decide(request, vm: vm, policy: Result { try PolicyGate.load(policy) }, facts: LedgerPolicyFacts.wired(store))
    }

    /// Decides, records the decision and, when allowed, runs `apply`, all in one ledger
    /// transaction. A denial is recorded (the transaction commits without the change) and then
    /// thrown as `WardenError(.denied)`. If `apply` throws, nothing of it is committed.
    public func decideAndApply<T>(_ request: PolicyRequest, vm: VMRecord, family: VMID?, facts: PolicyFacts? = nil,
                                  apply: () throws -> T) throws -> (Decision, T) {
        let (decision, result): (Decision, T?) = try store.atomically(family: family) {
            let (decision, _) = PolicyGate.evaluate(request, vm: vm, store: store, source: policy, facts: facts)
            guard decision.effect != .deny else { return (decision, nil) }
            return (decision, try apply())
        }
        guard let result, decision.effect != .deny else { throw WardenError(.denied, decision.summary) }
        if decision.effect == .quarantine { note(decision.summary) }
        return (decision, result)
    }

    /// Before expensive work (copying, refreshing a clone): when the preview denies, records
    /// the denial (the decision is made again, inside its transaction) and throws it.
    func refuseEarly(_ request: PolicyRequest, vm: VMRecord) throws {
        if preview(request, vm: vm).effect == .deny {
            _ = try decideAndApply(request, vm: vm, family: vm.id) { () }
        }
    }

    /// Decides and records a decision that changes nothing else (transfer, retire gates).
    public func authorize(_ request: PolicyRequest, vm: VMRecord) throws -> Decision {
        try decideAndApply(request, vm: vm, family: vm.id) { () }.0
    }

    // MARK: - The lifecycle gate

    /// The policy gate for VM lifecycle operations (start, stop, snapshot, rollback) that
    /// `Hypervisor.VMRunner` calls before acting: decide, record, and throw
    /// `WardenError(.denied)` (exit 3) unless allowed. `reexposure` is what a rollback would
    /// re-open (nil when the impact report could not check advisories, so a `reexposes` rule
    /// fails closed). With `forceStop`, a denied stop goes ahead, the override recorded first
    /// (docs/decisions.md).
    public func lifecycleGate(reexposure: [ReexposedFinding]?, forceStop: Bool)
        -> (_ operation: VMOperation, _ vm: VMRecord, _ detail: [String: String]) throws -> Void {
        { [self] op, vm, _ in
            let request = PolicyRequest(operation: op, host: host, reexposure: op == .rollback ? reexposure : nil)
            if op == .stop && forceStop {
                let (decision, _) = PolicyGate.evaluate(request, vm: vm, store: store, source: policy)
                guard decision.effect == .deny else { return }
                try PolicyGate.recordOverride(decision, store: store, host: host, why: "vm stop --force")
                note("warning: \(decision.summary); stopping anyway (--force), override recorded in the ledger")
                return
            }
            let decision = try PolicyGate.check(request, vm: vm, store: store, source: policy)
            if decision.effect == .quarantine { note(decision.summary) }
        }
    }

    // MARK: - register

    public struct RegisterRequest: Sendable {
        public var images: [String]
        public var name: String
        public var owner: String
        public var labels: [String: String]
        public init(images: [String], name: String, owner: String, labels: [String: String] = [:]) {
            self.images = images; self.name = name; self.owner = owner; self.labels = labels
        }
    }

    /// Registers a VM from its disk images. The check that no live VM has any of the disks
    /// (by path, or by device and inode) and the registration commit together; the database
    /// enforces the same with a trigger.
    public func register(_ r: RegisterRequest) throws -> VMRecord {
        let disks = try r.images.map { try ExaminedDisk.examine($0) }
        if Set(disks.map(\.path)).count != disks.count { throw WardenError(.invalidArgument, "the same image is given twice") }
        if Set(disks.compactMap(\.file)).count != disks.compactMap(\.file).count {
            throw WardenError(.invalidArgument, "two of the images are the same file")
        }
        let now = Date()
        let vm = VMRecord(name: r.name, owner: r.owner, labels: r.labels, state: .registered, createdAt: now, updatedAt: now)
        return try store.atomically(family: nil) {
            try checkUnregistered(disks.map { ($0.path, $0.file) })
            let (created, _) = try store.createVM(vm, disks: disks.enumerated().map { $1.record(vm: vm.id, index: $0) },
                                                  event: NewEvent(kind: .registered, vm: vm.id, host: host, time: now,
                                                                  payload: ExaminedDisk.payload(disks)))
            try store.openResidency(vm: created.id, host: host, kind: .stored, at: now)
            return created
        }
    }

    /// Throws `.conflict` if a live VM already has a disk at one of these files.
    func checkUnregistered(_ files: [(path: String, file: DiskRecord.FileID?)]) throws {
        for (path, file) in files {
            if let owner = try store.vms(withDisk: path, file: file).first(where: { $0.state != .retired }) {
                throw WardenError(.conflict, "already registered to VM \(owner.id) (\(owner.name))", file: path)
            }
        }
    }

    // MARK: - copy

    public struct CopyRequest: Sendable {
        public var vm: String
        public var destination: String
        public var name: String?
        public var overlay: Bool
        public var host: HostName?
        public init(vm: String, destination: String, name: String? = nil, overlay: Bool = false, host: HostName? = nil) {
            self.vm = vm; self.destination = destination; self.name = name; self.overlay = overlay; self.host = host
        }
    }

    /// Copies a VM's disks into a folder (full sparse copies, or qcow2 overlays) and records the
    /// copy with its lineage. Files are staged under hidden names and linked into place in the
    /// same transaction as the decision and the `copied` event (``Staging``).
    public func copy(_ r: CopyRequest, testPause: (() throws -> Void)? = nil, afterLink: (() throws -> Void)? = nil) throws -> VMRecord {
        let src = try store.resolveVM(r.vm)
        let host = r.host ?? self.host
        guard src.state != .retired else { throw WardenError(.conflict, "VM \(src.id) is retired") }
        let disks = try store.disks(of: src.id)
        guard !disks.isEmpty else { throw WardenError(.invalidArgument, "VM \(src.id) has no disks to copy") }
        let encrypted = try encryptedDisks(disks)
        if !encrypted.isEmpty && (r.overlay || crypto == nil) {
            try refuseEncrypted(src, disks.filter { encrypted.contains($0.index) }, what: r.overlay ? "overlay copies" : "copies")
        }
        let destDir = absolutePath(r.destination)
        let request = PolicyRequest(operation: .copy, host: host, destination: destDir)
        try refuseEarly(request, vm: src)
        try PrivateDirectory.make(destDir)
        let newID = VMID()
        let staging = try Staging(directory: destDir, token: newID, store: store)
        var temps: [String] = []
        for d in disks {
            var base = (d.path as NSString).lastPathComponent
            if r.overlay { base = ((base as NSString).deletingPathExtension) + ".qcow2" }
            temps.append(try staging.add(final: destDir + "/" + base))
        }
        var newKeys: [Int: (key: String, passphrase: SecretBytes)] = [:]
        do {
            for (d, t) in zip(disks, temps) {
                if r.overlay {
                    try QCOW2Overlay.create(at: t, backing: d.path, backingFormat: d.format)
                } else if encrypted.contains(d.index), let crypto {
                    newKeys[d.index] = try crypto.reencrypt(source: src, disk: d, copy: newID, output: t)
                } else {
                    try DiskCopy.sparseCopy(d.path, to: t)
                    try DiskCopy.fixRelativeBacking(of: d, copy: t)
                }
            }
            var examined = try zip(disks, temps).map { try ExaminedDisk.examine($1, passphrase: newKeys[$0.index]?.passphrase) }
            for (i, f) in staging.files.enumerated() { examined[i].path = f.final }
            try testPause?()
            let now = Date()
            let new = VMRecord(id: newID, name: r.name ?? src.name + "-copy", owner: src.owner, labels: src.labels, state: .stopped,
                               generation: UUID(), parent: src.id, parentGeneration: src.generation, createdAt: now, updatedAt: now)
            var payload = ExaminedDisk.payload(examined)
            payload["source"] = .string(src.id.description)
            payload["source_generation"] = .string(src.generation.uuidString.lowercased())
            payload["mode"] = .string(r.overlay ? "overlay" : "full")
            if !newKeys.isEmpty {
                // The copy's own keys (ids only): it never shares the source's.
                payload["keys"] = .array(newKeys.keys.sorted().map { .object(["index": .number(Double($0)), "key": .string(newKeys[$0]!.key)]) })
            }
            let (_, created) = try decideAndApply(request, vm: src, family: src.id) { () -> VMRecord in
                try staging.link()
                do {
                    try afterLink?()
                    let (created, _) = try store.createVM(new, disks: examined.enumerated().map { $1.record(vm: new.id, index: $0) },
                                                          event: NewEvent(kind: .copied, vm: new.id, host: host, time: now,
                                                                          generationBefore: src.generation, generationAfter: new.generation,
                                                                          payload: payload))
                    try store.openResidency(vm: created.id, host: host, kind: .stored, at: now)
                    return created
                } catch {
                    staging.unlinkFinals()
                    throw error
                }
            }
            staging.finish()
            return created
        } catch {
            staging.discard()
            if !newKeys.isEmpty { crypto?.discard(newID) }
            throw error
        }
    }

    /// The indexes of the disks that are encrypted qcow2 images.
    func encryptedDisks(_ disks: [DiskRecord]) throws -> Set<Int> {
        var out = Set<Int>()
        for d in disks where d.format == "qcow2" {
            do { _ = try ImageOpener.open(d.path, options: OpenOptions()) } catch let e as WardenError where e.message.contains("encrypted") {
                out.insert(d.index)
            } catch {
                continue   // other problems surface where the disk is really read
            }
        }
        return out
    }

    /// Refuses copies of encrypted `disks` where they cannot be made (overlays on an encrypted
    /// image; no vault), naming the first.
    func refuseEncrypted(_ vm: VMRecord, _ disks: [DiskRecord], what: String) throws {
        if let d = disks.first {
            throw WardenError(.unsupported, "VM \(vm.name) has encrypted disks: \(what) of encrypted VMs are not supported (a full `vm copy` or `vm clone` re-encrypts them; docs/vault.md)", file: d.path)
        }
    }

    // MARK: - clone

    public struct CloneRequest: Sendable {
        public var vm: String
        public var name: String
        public var full: Bool
        public var directory: String?
        public var operations: [any SysprepOperation]
        public var hostname: String?
        public var authorizedKeysUsers: [String]
        /// Carries the source's device state (vTPM, UEFI variables) over to the clone: run after
        /// the disks are linked, before the record is committed; what it returns is recorded in
        /// the cloned event.
        public var deviceState: (@Sendable (_ source: VMID, _ clone: VMID) throws -> [String: JSONValue])?
        public init(vm: String, name: String, full: Bool = false, directory: String? = nil, operations: [any SysprepOperation],
                    hostname: String? = nil, authorizedKeysUsers: [String] = [],
                    deviceState: (@Sendable (_ source: VMID, _ clone: VMID) throws -> [String: JSONValue])? = nil) {
            self.vm = vm; self.name = name; self.full = full; self.directory = directory; self.operations = operations
            self.hostname = hostname; self.authorizedKeysUsers = authorizedKeysUsers; self.deviceState = deviceState
        }
    }

    public struct CloneResult: Sendable {
        public var vm: VMRecord
        public var source: VMRecord
        public var paths: [String]
        public var report: SysprepReport
        /// Identity fields the clone still shared with its source (then nothing was created).
        public var collisions: [IdentityCollision]
    }

    /// Clones a VM offline: overlays (or full copies) with a fresh identity, verified against the
    /// source, linked into place and recorded in one transaction with the policy decision.
    public func clone(_ r: CloneRequest, beforeCommit: (() throws -> Void)? = nil, afterLink: (() throws -> Void)? = nil) throws -> CloneResult {
        let timer = PhaseTimer.shared
        let ops = r.operations
        // RSA-3072 generation is the longest step: start it now, so it overlaps the ledger and
        // policy work as well as the overlay (keys are discarded if the clone does not happen).
        let forge = ops.contains { $0.name == "ssh-hostkeys" } ? HostKeyForge(pool: keyPool) : nil
        try Clone.checkName(r.name)
        let src = try store.resolveVM(r.vm)
        guard src.state != .retired else { throw WardenError(.conflict, "VM \(src.id) is retired") }
        let all = try store.listVMs()
        if all.contains(where: { $0.name == r.name && $0.state != .retired }) {
            throw WardenError(.conflict, "a VM named \(r.name) already exists")
        }
        let disks = try store.disks(of: src.id).sorted { $0.index < $1.index }
        guard !disks.isEmpty else { throw WardenError(.invalidArgument, "VM \(src.id) has no disks to clone") }
        // Encrypted disks are cloned as full copies (the identity refresh writes plaintext,
        // which is then encrypted under the clone's own keys): Warden does not stack an overlay
        // on, or write into, an encrypted image.
        let encrypted = try encryptedDisks(disks)
        if !encrypted.isEmpty && crypto == nil { try refuseEncrypted(src, disks.filter { encrypted.contains($0.index) }, what: "clones") }
        let full = r.full || !encrypted.isEmpty
        var hostname = r.hostname
        if hostname == nil, SysprepOptions.validHostname(r.name) { hostname = r.name }
        let used = Set(all.compactMap { $0.mac?.lowercased() })
        var mac = Sysprep.newMAC()
        for _ in 0..<64 where used.contains(mac) { mac = Sysprep.newMAC() }
        let refreshMAC = ops.contains { $0.name == "mac-address" }
        let options = SysprepOptions(hostname: hostname, authorizedKeysUsers: r.authorizedKeysUsers,
                                     ledgerMAC: refreshMAC ? mac : nil, keys: forge)
        let destDir = absolutePath(r.directory ?? (disks[0].path as NSString).deletingLastPathComponent)
        timer.lap("ledger-read")
        let request = PolicyRequest(operation: .clone, host: host, destination: destDir)
        try refuseEarly(request, vm: src)
        timer.lap("policy-decision")
        try PrivateDirectory.make(destDir)
        let newID = VMID()
        let staging = try Staging(directory: destDir, token: newID, store: store)
        let finals = disks.indices.map {
            destDir + "/" + Clone.fileName(name: r.name, index: $0, count: disks.count, full: full && !encrypted.contains(disks[$0].index))
        }
        let temps = try finals.map { try staging.add(final: $0) }
        var created: VMRecord?
        var newKeys: [Int: String] = [:]
        do {
            // The source's keys, released by an unlock decision on it (recorded).
            let passphrases = try encrypted.isEmpty ? [:] : crypto?.passphrases(src, disks: encrypted) ?? [:]
            // The caller links (below, in the decision's transaction): Clone.make only prepares and verifies.
            let result = try Clone.make(
                sources: disks.map { Clone.Source(path: $0.path, format: $0.format, passphrase: passphrases[$0.index]) },
                finals: finals, temps: temps, full: full,
                operations: ops, options: options, checkFilesystemUUIDs: ops.contains { $0.name == "fs-uuids" },
                beforeCommit: beforeCommit, commit: {})
            if !result.collisions.isEmpty {
                // Record the refused clone on the source VM; nothing was linked.
                _ = try store.append(NewEvent(kind: .policyDecision, vm: src.id, time: Date(), payload: [
                    "decision": .string("deny"), "rule": .string("clone-identity-verification"),
                    "clone_name": .string(r.name),
                    "collisions": .array(result.collisions.map { c -> JSONValue in .object(["field": .string(c.field), "detail": .string(c.detail)]) }),
                ]))
                staging.discard()
                return CloneResult(vm: src, source: src, paths: [], report: result.report, collisions: result.collisions)
            }
            // The verified plaintext copies of encrypted disks are encrypted under the clone's
            // own keys, replacing them under their temporary names.
            var formats = result.formats
            for (i, d) in disks.enumerated() where encrypted.contains(d.index) {
                guard let crypto else { break }
                let sealed = temps[i] + ".enc"
                newKeys[i] = try crypto.encrypt(plain: temps[i], format: "raw", vm: newID, index: i, output: sealed).key
                guard rename(sealed, temps[i]) == 0 else {
                    unlink(sealed)
                    throw WardenError(.io, "cannot replace the plaintext copy with its encrypted image: \(String(cString: strerror(errno)))", file: finals[i])
                }
                if formats.indices.contains(i) { formats[i] = "qcow2" }
            }
            let now = Date()
            let new = VMRecord(id: newID, name: r.name, owner: src.owner, labels: src.labels, state: .stopped, generation: UUID(),
                               parent: src.id, parentGeneration: src.generation, createdAt: now, updatedAt: now,
                               mac: refreshMAC ? mac : src.mac)
            let rep = result.report
            var payload: [String: JSONValue] = [
                "parent": .string(src.id.description),
                "parent_generation": .string(src.generation.uuidString.lowercased()),
                "mode": .string(full ? "full" : "overlay"),
                "disks": .array(zip(finals, disks).enumerated().map { i, pd -> JSONValue in
                    .object(["path": .string(pd.0), "format": .string(formats.indices.contains(i) ? formats[i] : (full ? "raw" : "qcow2")), "source": .string(pd.1.path)])
                }),
                "operations": .array(rep.operations.map { op -> JSONValue in
                    .object(["name": .string(op.name), "changed": .bool(op.changedSomething)])
                }),
                "ssh_host_keys": .array(rep.hostKeys.map { $0.fingerprint }.sorted().map { JSONValue.string($0) }),
                "ssh_host_key_files": .array(rep.hostKeys.map { k -> JSONValue in
                    .object(["type": .string(k.type), "path": .string(k.path), "fingerprint": .string(k.fingerprint)])
                }),
                "verification": .object(["passed": .bool(true)]),
            ]
            if !newKeys.isEmpty {
                // The clone's own keys (ids only): it never shares the source's.
                payload["keys"] = .array(newKeys.keys.sorted().map { .object(["index": .number(Double($0)), "key": .string(newKeys[$0]!)]) })
            }
            // Pool keys this clone really wrote (a guest without that key type took none into use;
            // a key taken from the pool is destroyed either way, never used twice).
            let pooledWritten = (forge?.pooled ?? []).filter { t in rep.hostKeys.contains { $0.type == t.label } }
            if !pooledWritten.isEmpty {
                payload["ssh_host_keys_from_pool"] = .array(pooledWritten.map(\.rawValue).sorted().map(JSONValue.string))
            }
            if let m = rep.machineId { payload["machine_id"] = .string(m) }
            if let h = hostname, ops.contains(where: { $0.name == "hostname" }) { payload["hostname"] = .string(h) }
            if let m = new.mac { payload["mac"] = .string(m) }
            if !rep.filesystemUUIDs.isEmpty { payload["filesystem_uuids"] = .object(rep.filesystemUUIDs.mapValues { JSONValue.string($0) }) }
            let records = finals.enumerated().map { i, p in
                DiskRecord(vm: new.id, index: i, path: p, format: formats.indices.contains(i) ? formats[i] : (full ? "raw" : "qcow2"),
                           backingChain: full ? [] : [disks[i].path] + disks[i].backingChain,
                           file: DiskRecord.FileID.of(path: temps[i]))
            }
            let (_, made) = try decideAndApply(request, vm: src, family: src.id) { () -> VMRecord in
                if let clash = try store.listVMs().first(where: { $0.name == r.name && $0.state != .retired }) {
                    throw WardenError(.conflict, "a VM named \(r.name) already exists (\(clash.id))")
                }
                try staging.link()
                do {
                    try afterLink?()
                    for (k, v) in try r.deviceState?(src.id, new.id) ?? [:] { payload[k] = v }
                    let (made, _) = try store.createVM(new, disks: records,
                                                       event: NewEvent(kind: .cloned, vm: new.id, host: host, time: now,
                                                                       generationBefore: src.generation, generationAfter: new.generation,
                                                                       payload: payload))
                    return made
                } catch {
                    staging.unlinkFinals()
                    throw error
                }
            }
            created = made
            staging.finish()
            // Keep the pool topped up: after a clone took from it, or found it short.
            if forge != nil, let keyPool, keyPool.count < KeyPool.defaultSize { keyPoolUsed?() }
            timer.lap("ledger-append-cloned")
            return CloneResult(vm: made, source: src, paths: finals, report: rep, collisions: [])
        } catch {
            if created == nil {
                staging.discard()
                if !newKeys.isEmpty { crypto?.discard(newID) }
            }
            throw error
        }
    }

    // MARK: - transfer / retire

    /// Gives a VM to a new owner (policy-checked; the decision and the change commit together).
    public func transfer(_ reference: String, to owner: String) throws -> (VMRecord, EventRecord) {
        let v = try store.resolveVM(reference)
        guard v.state != .retired else { throw WardenError(.conflict, "VM \(v.id) is retired") }
        guard v.owner != owner else { throw WardenError(.conflict, "VM \(v.id) already belongs to \(owner)") }
        return try decideAndApply(PolicyRequest(operation: .transfer, host: host), vm: v, family: v.id) {
            try store.updateVM(v.id, event: NewEvent(kind: .ownershipTransferred, vm: v.id,
                                                     payload: ["from": .string(v.owner), "to": .string(owner)])) { $0.owner = owner }
        }.1
    }

    /// Retires a VM: it stays in the ledger, marked retired; its open ran-on interval is closed.
    public func retire(_ reference: String) throws -> (VMRecord, EventRecord) {
        let v = try store.resolveVM(reference)
        guard v.state != .retired else { throw WardenError(.conflict, "VM \(v.id) is already retired") }
        let now = Date()
        return try decideAndApply(PolicyRequest(operation: .retire, host: host), vm: v, family: v.id) {
            let r = try store.updateVM(v.id, event: NewEvent(kind: .retired, vm: v.id, time: now,
                                                             payload: ["previous_state": .string(v.state.rawValue)])) { $0.state = .retired }
            for res in try store.residency(of: v.id) where res.to == nil && res.kind == .ran {
                try store.closeResidency(vm: v.id, host: res.host, kind: .ran, at: max(now, res.from))
            }
            return r
        }.1
    }
}

/// Upkeep that the next run does by itself and `warden doctor` does on demand.
public enum Upkeep {
    /// Recovers staging leftovers (``Staging/recover(directory:store:)``) in `directories`, and
    /// in every folder that holds a disk of a VM in the ledger.
    public static func recoverLeftovers(store: any LedgerStore, directories: [String] = []) throws -> [Staging.Leftover] {
        var dirs = Set(directories.map(absolutePath))
        for vm in try store.listVMs() {
            for d in try store.disks(of: vm.id) { dirs.insert((d.path as NSString).deletingLastPathComponent) }
        }
        return dirs.sorted().flatMap { Staging.recover(directory: $0, store: store) }
    }
}
