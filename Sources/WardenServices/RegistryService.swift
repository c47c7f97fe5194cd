import DiskImage
import Foundation
import ImageStore
import Ledger
import Policy
import Sysprep
import Vault
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// `warden vm push` and `warden vm pull` (docs/oci.md): policy first (operations `push` and
/// `pull`, conditions `registries:` and `signature:`), the transfer through ``ImageStore``, and
/// the ledger record: a `pushed` event on the VM; a pulled VM registered as a copy in the
/// lineage of the pushed one, its identity refreshed unless policy allowed `--keep-identity`.
public struct RegistryService: Sendable {
    public let store: any LedgerStore
    public let policy: PolicyGate.Source
    public let host: HostName
    /// The folder of this host's signing key (``HostKey``).
    public let keysDirectory: String
    public var note: @Sendable (String) -> Void
    /// Called after each batch of chunks moved (tests kill the registry there).
    public var afterBatch: (@Sendable () -> Void)?
    /// Family keys of encrypted pushes live here (docs/oci.md, "Encryption").
    public var vault: Vault?
    /// SSH host keys made ahead of time (docs/sysprep.md): a pull's identity refresh takes its
    /// RSA key from here instead of generating one.
    public var keyPool: KeyPool?

    public init(store: any LedgerStore, policy: PolicyGate.Source = .defaultDirectory, host: HostName = .current,
                keysDirectory: String, vault: Vault? = nil, note: @escaping @Sendable (String) -> Void = { _ in }) {
        self.store = store; self.policy = policy; self.host = host; self.keysDirectory = keysDirectory; self.vault = vault; self.note = note
    }

    /// The vault layer of a family key (on the family's root VM: `warden vault shred ROOT` destroys it).
    public static let familyLayer = "oci"

    /// The lineage family a VM's pushes share a key with: its oldest ancestor here, or, for a
    /// pulled root, the family its image named.
    func familyRoot(of vm: VMRecord) throws -> VMID {
        var cur = vm
        var steps = 0
        while let p = cur.parent, steps < 64, let parent = try store.vm(p) { cur = parent; steps += 1 }
        if let e = try store.events(of: cur.id).first(where: { $0.kind == .pulled }), case .string(let f)? = e.payload["family"], let id = VMID(f) {
            return id
        }
        return cur.id
    }

    /// The family's key from the vault, made there on first use.
    func familyKey(for vm: VMRecord) throws -> FamilyKey {
        guard let vault else { throw WardenError(.unsupported, "--encrypt needs the vault") }
        let root = try familyRoot(of: vm)
        let ctx = KeyContext(vm: root, layer: Self.familyLayer)
        let k = try vault.key(for: ctx) ?? vault.newKey(for: ctx)
        return try FamilyKey(family: root.description, keyID: k.id, key: k.key)
    }

    /// The key of a sealed image: from this vault (same family key id), else unwrapped with this
    /// host's recipient key and then kept in the vault (so the copy's own pushes stay in the family).
    func unseal(_ s: SealedConfig) throws -> FamilyKey {
        guard let family = VMID(s.family) else { throw WardenError(.corrupt, "the sealed config names an invalid family") }
        let ctx = KeyContext(vm: family, layer: Self.familyLayer)
        if let vault, let k = try vault.key(for: ctx), k.id == s.keyID { return try FamilyKey(family: s.family, keyID: k.id, key: k.key) }
        let mine = try RecipientKey.loadOrCreate(directory: keysDirectory, host: host.value)
        guard let raw = try FamilyKey.unwrap(s, with: mine) else {
            throw WardenError(.denied, "the image is encrypted for \(s.recipients.count) other recipient(s): neither this host's key \(mine.id) nor its vault holds key \(s.keyID)")
        }
        if let vault, try vault.keys.get(ctx) == nil {
            try vault.keys.put(try vault.provider.wrap(raw, id: s.keyID, context: ctx), for: ctx)
        }
        return try FamilyKey(family: s.family, keyID: s.keyID, key: raw)
    }

    var vms: VMService { VMService(store: store, policy: policy, host: host, note: note) }

    /// Trusted signing keys: `<policy dir>/trusted-keys/*.pub`.
    public var trustedKeysDirectory: String { policy.directory + "/trusted-keys" }

    // MARK: - push

    public struct PushRequest: Sendable {
        public var vm: String
        public var reference: ImageReference
        public var options: RegistryOptions
        public var chunkSize: Int
        public var partSize: Int
        public var progress: Bool
        /// Whether progress is redrawn while the transfer runs (else only the summary).
        public var liveProgress = true
        /// Encrypt with the family's key; `recipients` (X25519, raw) get it wrapped.
        public var encrypt: Bool
        public var recipients: [Data]
        public init(vm: String, reference: ImageReference, options: RegistryOptions = RegistryOptions(), chunkSize: Int = 4 << 20,
                    partSize: Int = 8 << 20, progress: Bool = true, encrypt: Bool = false, recipients: [Data] = []) {
            self.vm = vm; self.reference = reference; self.options = options; self.chunkSize = chunkSize
            self.partSize = partSize; self.progress = progress; self.encrypt = encrypt; self.recipients = recipients
        }
    }

    public struct PushOutcome: Sendable {
        public var vm: VMRecord
        public var result: PushResult
        public var decision: Decision
        public var keyID: String
    }

    public func push(_ r: PushRequest) async throws -> PushOutcome {
        let vm = try store.resolveVM(r.vm)
        guard vm.state != .retired else { throw WardenError(.conflict, "VM \(vm.id) is retired") }
        guard vm.state != .running else {
            throw WardenError(.conflict, "VM \(vm.name) is running: stop it first (a running disk is not a consistent image)")
        }
        let disks = try store.disks(of: vm.id).sorted { $0.index < $1.index }
        guard !disks.isEmpty else { throw WardenError(.invalidArgument, "VM \(vm.id) has no disks to push") }
        if let enc = try vms.encryptedDisks(disks).min() {
            throw WardenError(.unsupported, "VM \(vm.name) has encrypted disks: pushing them needs layer encryption, which is not built yet (docs/oci.md)",
                              file: disks[enc].path)
        }
        guard VMArtifactConfig.chunkSizes.contains(r.chunkSize) else {
            throw WardenError(.invalidArgument, "--chunk-size must be a power of two from 64K to 64M")
        }
        // The decision that counts is made and recorded before anything is uploaded.
        if !r.recipients.isEmpty && !r.encrypt { throw WardenError(.invalidArgument, "--recipient goes with --encrypt") }
        var request = PolicyRequest(operation: .push, host: host)
        request.registry = r.reference.name
        request.encrypted = r.encrypt
        let decision = try vms.authorize(request, vm: vm)
        let sealing = try r.encrypt ? PushPlan.Sealing(key: familyKey(for: vm), recipients: r.recipients) : nil
        let key = try HostKey.loadOrCreate(directory: keysDirectory, host: host)
        let facts = LedgerPolicyFacts.wired(store)
        var findings: VMArtifactConfig.Findings?
        if let scanned = try? facts.lastScan(of: vm.id), let counts = try? facts.openFindings(of: vm.id) {
            findings = .init(scannedAt: Self.time(scanned), counts: Dictionary(uniqueKeysWithValues: counts.map { ($0.key.description, $0.value) }))
        }
        let now = Date()
        let plan = PushPlan(
            target: r.reference, disks: disks.map { .init(path: $0.path, format: $0.format == "qcow2" ? "qcow2" : "raw") },
            chunkSize: r.chunkSize,
            vm: .init(id: vm.id.description, name: vm.name, owner: vm.owner, labels: vm.labels,
                      generation: vm.generation.uuidString.lowercased(), parent: vm.parent?.description),
            origin: .init(host: host.value, pushedAt: Self.time(now), ledgerSize: try? store.eventCount()),
            findings: findings, lineage: try lineage(of: vm), mountFrom: try ancestorRepositories(of: vm, registry: r.reference.registry),
            partSize: r.partSize,
            signer: .init(publicKey: key.publicKey, sign: { try key.sign($0) }), sealing: sealing)
        let result = try await RegistryClient.with(registry: r.reference.registry, options: r.options) { client in
            var pusher = VMPusher(client: client, progress: TransferProgress(verb: "pushed", enabled: r.progress, live: r.liveProgress))
            pusher.afterBatch = afterBatch
            return try await pusher.push(plan)
        }
        let keyID = ManifestSignature.keyID(key.publicKey)
        _ = try store.append(NewEvent(kind: .pushed, vm: vm.id, host: host, payload: [
            "reference": .string(r.reference.description), "registry": .string(r.reference.registry),
            "repository": .string(r.reference.repository), "digest": .string(result.digest),
            "chunks": .number(Double(result.chunks)), "uploaded": .number(Double(result.uploaded)),
            "reused": .number(Double(result.reused)), "mounted": .number(Double(result.mounted)),
            "uploaded_bytes": .number(Double(result.uploadedBytes)), "chunk_bytes": .number(Double(result.chunkBytes)),
            "signing_key": .string(keyID), "signature_tag": .string(result.signatureTag),
            "decision": .string(decision.id.uuidString.lowercased()),
            "encrypted": .bool(sealing != nil),
        ].merging(sealing.map { s -> [String: JSONValue] in
            ["family": .string(s.key.family), "key": .string(s.key.keyID),
             "recipients": .array(s.recipients.map { .string(RecipientKey.id($0)) })]
        } ?? [:]) { $1 }))
        return PushOutcome(vm: vm, result: result, decision: decision, keyID: keyID)
    }

    static func time(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: d)
    }

    /// The in-toto statements (JSON lines) of the VM's events and its ancestors', as
    /// `warden ledger export` writes them, oldest ancestor first.
    func lineage(of vm: VMRecord) throws -> [UInt8] {
        var chain: [VMID] = [vm.id]
        var cur = vm
        while let p = cur.parent, chain.count < 64, let parent = try store.vm(p) { chain.append(p); cur = parent }
        var out: [UInt8] = []
        if let sqlite = store as? SQLiteLedger {
            let exporter = LedgerExporter(ledger: sqlite)
            for id in chain.reversed() {
                try exporter.export(vm: id) { line in
                    guard out.count + line.count <= RegistryLimits.lineageBytes else {
                        throw WardenError(.limitExceeded, "the lineage of VM \(vm.name) is larger than \(RegistryLimits.lineageBytes) bytes")
                    }
                    out += line
                }
            }
        }
        if out.isEmpty { out = Array("{}\n".utf8) }
        return out
    }

    /// Repositories of `registry` where the VM's ancestors (or the VM) were pushed: chunks are
    /// mounted from the nearest one instead of uploaded again.
    func ancestorRepositories(of vm: VMRecord, registry: String) throws -> [String] {
        var out: [String] = []
        var cur: VMRecord? = vm
        var steps = 0
        while let v = cur, steps < 64 {
            for e in try store.events(of: v.id).reversed() where e.kind == .pushed {
                if case .string(let reg)? = e.payload["registry"], reg == registry, case .string(let repo)? = e.payload["repository"],
                   !out.contains(repo) { out.append(repo) }
            }
            cur = try v.parent.flatMap { try store.vm($0) }
            steps += 1
        }
        return out
    }

    // MARK: - pull

    public struct PullRequest: Sendable {
        public var reference: ImageReference
        public var name: String?
        /// Where the disks go.
        public var directory: String
        public var owner: String?
        public var keepIdentity: Bool
        public var operations: [any SysprepOperation]
        public var options: RegistryOptions
        public var progress: Bool
        /// Whether progress is redrawn while the transfer runs (else only the summary).
        public var liveProgress = true
        public init(reference: ImageReference, name: String? = nil, directory: String, owner: String? = nil, keepIdentity: Bool = false,
                    operations: [any SysprepOperation], options: RegistryOptions = RegistryOptions(), progress: Bool = true) {
            self.reference = reference; self.name = name; self.directory = directory; self.owner = owner
            self.keepIdentity = keepIdentity; self.operations = operations; self.options = options; self.progress = progress
        }
    }

    public struct PullOutcome: Sendable {
        public var vm: VMRecord
        public var digest: String
        public var signature: ManifestSignature.Verdict
        public var origin: VMArtifactConfig.VMInfo
        public var paths: [String]
        public var decision: Decision
        public var identity: SysprepReport?
        public var linkedToOrigin: Bool
        /// Chunks an earlier, interrupted pull had already written.
        public var resumedChunks: Int
        public var chunks: Int
    }

    public func pull(_ r: PullRequest) async throws -> PullOutcome {
        let name = r.name ?? ""
        if !name.isEmpty { try Clone.checkName(name) }
        let trusted = try TrustedKey.load(directory: trustedKeysDirectory)
        return try await RegistryClient.with(registry: r.reference.registry, options: r.options) { client in
            try await pull(r, client: client, trusted: trusted)
        }
    }

    func pull(_ r: PullRequest, client: RegistryClient, trusted: [TrustedKey]) async throws -> PullOutcome {
        let progress = TransferProgress(verb: "pulled", enabled: r.progress, live: r.liveProgress)
        var puller = VMPuller(client: client, progress: progress)
        puller.afterBatch = afterBatch
        let fetched: FetchedVM
        do {
            fetched = try await puller.fetch(r.reference, trusted: trusted, unseal: { try self.unseal($0) })
        } catch let found as ContainerImageFound {
            if let m = found.manifest { try ContainerDisk.checkLayers(m, ref: r.reference) }
            return try await pullContainerDisk(r, digest: found.digest, client: client, puller: puller, trusted: trusted)
        }
        let timer = PhaseTimer.shared
        timer.lap("pull-fetch-manifest-config-signature")
        let cfg = fetched.config
        let name = r.name ?? cfg.vm.name
        try Clone.checkName(name)
        if try store.listVMs().contains(where: { $0.name == name && $0.state != .retired }) {
            throw WardenError(.conflict, "a VM named \(name) already exists (pull with --name)")
        }
        guard let originID = VMID(cfg.vm.id) else { throw WardenError(.corrupt, "the VM config names an invalid VM id") }
        let local = try store.vm(originID)
        // Policy decides on the pushed VM as the manifest describes it (signed with it).
        let now = Date()
        let described = VMRecord(id: originID, name: cfg.vm.name, owner: cfg.vm.owner, labels: cfg.vm.labels, state: .stopped,
                                 generation: UUID(uuidString: cfg.vm.generation) ?? UUID(), createdAt: now, updatedAt: now)
        var request = PolicyRequest(operation: .pull, host: host, destination: absolutePath(r.directory))
        request.registry = r.reference.name
        request.signature = fetched.signature.label
        request.keepIdentity = r.keepIdentity
        request.encrypted = fetched.familyKey != nil
        let facts = PulledFacts(ledger: LedgerPolicyFacts.wired(store), config: cfg, originKnown: local != nil)
        if case .invalid(let why) = fetched.signature { note("\(r.reference): signature invalid: \(why)") }
        if fetched.signature == .unsigned { note("\(r.reference): no signature (no \(ManifestSignature.tag(for: fetched.digest)) tag)") }
        // A preview refuses before anything is written (the denial is recorded); the decision that
        // counts is made again in the transaction that registers the copy, so concurrent pulls
        // under `maxReplicas` are serialised on the family and counted (as copies and clones are).
        let preview = PolicyGate.decide(request, vm: described, policy: Result { try PolicyGate.load(policy) }, facts: facts)
        if preview.effect == .deny { _ = try vms.decideAndApply(request, vm: described, family: local?.id, facts: facts) { () } }

        let destDir = absolutePath(r.directory)
        try PrivateDirectory.make(destDir)
        let newID = VMID()
        let staging = try Staging(directory: destDir, token: newID, store: store)
        var finals: [String] = []
        var temps: [String] = []
        for d in cfg.disks {
            let final = destDir + "/" + Clone.fileName(name: name, index: d.index, count: cfg.disks.count, full: d.format == "raw")
            guard !FileManager.default.fileExists(atPath: final) else {
                throw WardenError(.conflict, "a file is already there", file: final)
            }
            finals.append(final)
            temps.append(try staging.add(final: final))
        }
        let digestKey = String(fetched.digest.dropFirst(7).prefix(16))
        var partials: [String] = []
        var resumed = 0
        var fingerprints: [WardenCore.Digest?] = []
        do {
            for d in cfg.disks {
                let partial = destDir + "/.warden-pull-\(digestKey)-\(d.index).\(d.format)"
                partials.append(partial)
                do {
                    // A trusted signer's word on the fingerprint is taken, as its word on the
                    // findings is (docs/oci.md); the refresh below changes the disk anyway.
                    let got = try await puller.download(fetched, disk: d.index, to: partial, trustFingerprint: fetched.signature.isTrusted)
                    resumed += got.resumed
                    fingerprints.append(got.fingerprint)
                } catch let e as WardenError where e.code == .corrupt {
                    // Corrupt content does not heal by resuming: nothing of it is kept.
                    unlink(partial); unlink(partial + ".done")
                    throw e
                }
            }
            progress.finish()
            timer.lap("pull-download")
            for i in cfg.disks.indices {
                unlink(partials[i] + ".done")
                guard rename(partials[i], temps[i]) == 0 else {
                    throw WardenError(.io, "cannot move the pulled disk into place: \(String(cString: strerror(errno)))", file: finals[i])
                }
            }
            timer.lap("pull-assemble")
            var report: SysprepReport?
            if !r.keepIdentity && !r.operations.isEmpty {
                report = try refreshIdentity(temps[0], format: cfg.disks[0].format, name: name, operations: r.operations)
                timer.lap("pull-identity-refresh")
            }
            // The fingerprints computed while writing hold unless the refresh changed the first disk.
            var examined = try temps.enumerated().map { i, t in
                try ExaminedDisk.examine(t, fingerprint: (report != nil && i == 0) ? nil : fingerprints[i])
            }
            timer.lap("pull-examine")
            for (i, f) in staging.files.enumerated() { examined[i].path = f.final }
            let vm = VMRecord(id: newID, name: name, owner: r.owner ?? cfg.vm.owner, labels: cfg.vm.labels, state: .stopped,
                              generation: UUID(), parent: local?.id, parentGeneration: local != nil ? UUID(uuidString: cfg.vm.generation) : nil,
                              createdAt: now, updatedAt: now, mac: report?.mac)
            var payload = ExaminedDisk.payload(examined)
            payload["reference"] = .string(r.reference.description)
            payload["digest"] = .string(fetched.digest)
            payload["registry"] = .string(r.reference.registry)
            payload["repository"] = .string(r.reference.repository)
            payload["origin"] = .object([
                "vm": .string(cfg.vm.id), "generation": .string(cfg.vm.generation), "name": .string(cfg.vm.name),
                "host": .string(cfg.origin.host), "pushed_at": .string(cfg.origin.pushedAt), "in_ledger": .bool(local != nil),
            ])
            switch fetched.signature {
            case .trusted(let key): payload["signature"] = .object(["verdict": .string("trusted"), "key": .string(key)])
            case .unsigned: payload["signature"] = .object(["verdict": .string("unsigned")])
            case .invalid(let why): payload["signature"] = .object(["verdict": .string("invalid"), "reason": .string(why)])
            }
            let statements = fetched.lineage.split(separator: 0x0A).count
            payload["lineage"] = .object(["statements": .number(Double(statements)), "sha256": .string(BlobDigest.of(fetched.lineage))])
            payload["identity_refreshed"] = .bool(report != nil)
            payload["encrypted"] = .bool(fetched.familyKey != nil)
            if let k = fetched.familyKey { payload["family"] = .string(k.family); payload["key"] = .string(k.keyID) }
            if let rep = report {
                payload["ssh_host_keys"] = .array(rep.hostKeys.map(\.fingerprint).sorted().map(JSONValue.string))
                if let m = rep.machineId { payload["machine_id"] = .string(m) }
            }
            payload["decision"] = .string(request.decisionID.uuidString.lowercased())
            let (decision, created): (Decision, VMRecord) = try vms.decideAndApply(request, vm: described, family: local?.id, facts: facts) {
                if let clash = try store.listVMs().first(where: { $0.name == name && $0.state != .retired }) {
                    throw WardenError(.conflict, "a VM named \(name) already exists (\(clash.id))")
                }
                try staging.link()
                do {
                    let (made, _) = try store.createVM(vm, disks: examined.enumerated().map { $1.record(vm: vm.id, index: $0) },
                                                       event: NewEvent(kind: .pulled, vm: vm.id, host: host, time: now,
                                                                       generationBefore: UUID(uuidString: cfg.vm.generation), generationAfter: vm.generation,
                                                                       payload: payload))
                    try store.openResidency(vm: made.id, host: host, kind: .stored, at: now)
                    return made
                } catch {
                    staging.unlinkFinals()
                    throw error
                }
            }
            staging.finish()
            timer.lap("pull-commit")
            for p in partials { unlink(p); unlink(p + ".done") }
            return PullOutcome(vm: created, digest: fetched.digest, signature: fetched.signature, origin: cfg.vm, paths: finals,
                               decision: decision, identity: report, linkedToOrigin: local != nil, resumedChunks: resumed,
                               chunks: cfg.disks.reduce(0) { $0 + $1.chunks.count })
        } catch {
            staging.discard()
            throw error
        }
    }
}

extension RegistryService {
    /// A pulled disk's identity refresh, in place before it is linked: the clone operations,
    /// the VM's name as hostname when it is one, a new MAC, RSA host keys from the pool.
    func refreshIdentity(_ path: String, format: String, name: String, operations: [any SysprepOperation]) throws -> SysprepReport {
        var options = SysprepOptions(hostname: SysprepOptions.validHostname(name) ? name : nil, authorizedKeysUsers: [])
        options.ledgerMAC = operations.contains { $0.name == "mac-address" } ? Sysprep.newMAC() : nil
        if operations.contains(where: { $0.name == "ssh-hostkeys" }) { options.keys = HostKeyForge(pool: keyPool) }
        return try Sysprep.applyImage(path, format: ImageFormat(qemuName: format), operations: operations, options: options)
    }

    /// `vm pull` of a KubeVirt containerDisk: an ordinary image whose layer holds `/disk/NAME`.
    /// Decided as a `pull` on a VM named after the repository (its findings unknown: never
    /// scanned, so findings rules fail closed; its signature checked as for Warden VMs), then
    /// fetched into a private folder beside the destination, refreshed and registered.
    func pullContainerDisk(_ r: PullRequest, digest: String, client: RegistryClient, puller: VMPuller,
                           trusted: [TrustedKey]) async throws -> PullOutcome {
        let ref = r.reference
        let leaf = ref.repository.split(separator: "/").last.map(String.init) ?? "containerdisk"
        let name = r.name ?? leaf
        try Clone.checkName(name)
        if try store.listVMs().contains(where: { $0.name == name && $0.state != .retired }) {
            throw WardenError(.conflict, "a VM named \(name) already exists (pull with --name)")
        }
        let verdict = try await puller.signature(repo: ref.repository, digest: digest, trusted: trusted, tag: ref.digest == nil ? ref.tag : nil)
        let now = Date()
        let owner = r.owner ?? ProcessInfo.processInfo.environment["USER"] ?? "root"
        let newID = VMID()
        let described = VMRecord(id: newID, name: name, owner: owner, labels: ["source": "containerdisk"], state: .stopped,
                                 generation: UUID(), createdAt: now, updatedAt: now)
        var request = PolicyRequest(operation: .pull, host: host, destination: absolutePath(r.directory))
        request.registry = ref.name
        request.signature = verdict.label
        request.keepIdentity = r.keepIdentity
        request.encrypted = false
        let facts = PulledFacts(ledger: LedgerPolicyFacts.wired(store), config: nil, originKnown: false)
        if case .invalid(let why) = verdict { note("\(ref): signature invalid: \(why)") }
        let decision = try vms.decideAndApply(request, vm: described, family: nil, facts: facts) { () }.0
        let destDir = absolutePath(r.directory)
        try PrivateDirectory.make(destDir)
        let work = destDir + "/.warden-cdisk-" + String(digest.dropFirst(7).prefix(16))
        try? FileManager.default.removeItem(atPath: work)
        try FileDescriptorIO.ensurePrivateDirectory(work, what: "the containerDisk folder")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let got = try await ContainerDisk.fetch(ref, client: client, into: work)
        let opened = try ImageOpener.open(got.path)
        let format = opened.info.format == .qcow2 ? "qcow2" : "raw"
        guard opened.info.format == .qcow2 || opened.info.format == .raw, opened.chain.count == 1 else {
            throw WardenError(.unsupported, "\(ref): the containerDisk's disk is \(opened.info.format.rawValue)\(opened.chain.count > 1 ? " with a backing file" : ""); qcow2 or raw without backing files are pulled")
        }
        let staging = try Staging(directory: destDir, token: newID, store: store)
        let final = destDir + "/" + Clone.fileName(name: name, index: 0, count: 1, full: format == "raw")
        guard !FileManager.default.fileExists(atPath: final) else { throw WardenError(.conflict, "a file is already there", file: final) }
        let temp = try staging.add(final: final)
        do {
            unlink(temp)
            guard rename(got.path, temp) == 0 else {
                throw WardenError(.io, "cannot move the disk into place: \(String(cString: strerror(errno)))", file: final)
            }
            var report: SysprepReport?
            if !r.keepIdentity && !r.operations.isEmpty {
                report = try refreshIdentity(temp, format: format, name: name, operations: r.operations)
            }
            var examined = try ExaminedDisk.examine(temp)
            examined.path = final
            let vm = VMRecord(id: newID, name: name, owner: owner, labels: ["source": "containerdisk"], state: .stopped, generation: UUID(),
                              createdAt: now, updatedAt: now, mac: report?.mac)
            var payload = ExaminedDisk.payload([examined])
            payload["reference"] = .string(ref.description)
            payload["digest"] = .string(digest)
            payload["registry"] = .string(ref.registry)
            payload["repository"] = .string(ref.repository)
            payload["containerdisk"] = .object(["member": .string(got.member), "manifest": .string(got.manifestDigest), "layer": .string(got.layerDigest)])
            payload["signature"] = .object(["verdict": .string(verdict.label)])
            payload["identity_refreshed"] = .bool(report != nil)
            payload["encrypted"] = .bool(false)
            payload["decision"] = .string(decision.id.uuidString.lowercased())
            let created: VMRecord = try store.atomically(family: nil) {
                if let clash = try store.listVMs().first(where: { $0.name == name && $0.state != .retired }) {
                    throw WardenError(.conflict, "a VM named \(name) already exists (\(clash.id))")
                }
                try staging.link()
                do {
                    let (made, _) = try store.createVM(vm, disks: [examined.record(vm: vm.id, index: 0)],
                                                       event: NewEvent(kind: .pulled, vm: vm.id, host: host, time: now, payload: payload))
                    try store.openResidency(vm: made.id, host: host, kind: .stored, at: now)
                    return made
                } catch {
                    staging.unlinkFinals()
                    throw error
                }
            }
            staging.finish()
            return PullOutcome(vm: created, digest: digest, signature: verdict,
                               origin: .init(id: newID.description, name: ref.description, owner: owner, labels: [:],
                                             generation: vm.generation.uuidString.lowercased(), parent: nil),
                               paths: [final], decision: decision, identity: report, linkedToOrigin: false, resumedChunks: 0, chunks: 0)
        } catch {
            staging.discard()
            throw error
        }
    }
}

/// Facts for a pull: the ledger's (host, attestation, replicas when the pushed VM is in this
/// ledger), and the findings the signed config carries (the pusher's last scan; none for a
/// containerDisk).
struct PulledFacts: PolicyFacts {
    let ledger: LedgerPolicyFacts
    let config: VMArtifactConfig?
    let originKnown: Bool

    func hostLabels(_ host: HostName) throws -> [String: String]? { try ledger.hostLabels(host) }
    func liveReplicaCount(of vm: VMID) throws -> Int { originKnown ? try ledger.liveReplicaCount(of: vm) : 0 }
    func lastScan(of vm: VMID) throws -> Date? {
        guard let s = config?.findings?.scannedAt else { return nil }
        return ISO8601DateFormatter().date(from: s)
    }
    func openFindings(of vm: VMID) throws -> [Severity: Int] {
        guard let f = config?.findings else { throw WardenError(.unavailable, "the image was never scanned before it was pushed") }
        var out: [Severity: Int] = [:]
        for (k, v) in f.counts { guard let s = Severity(word: k), v >= 0 else { continue }; out[s, default: 0] += v }
        return out
    }
    func advisoriesImported(after date: Date) throws -> Int { try ledger.advisoriesImported(after: date) }
    func ownerPresent(_ vm: VMRecord) throws -> Bool { try ledger.ownerPresent(vm) }
    func hostAttestation(_ host: HostName) throws -> HostAttestationFact? { try ledger.hostAttestation(host) }
    func latestMalwareScan(of vm: VMID) throws -> MalwareScanFact? {
        throw WardenError(.unavailable, "malware scans are not carried in the image")
    }
}
