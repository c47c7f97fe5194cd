import Advisories
import Crypto
import DiskImage
import Foundation
import Inspection
import Ledger
import Maintenance
import Policy
import Storage
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// `warden vm patch`, `warden image patch` and `warden fleet patch` (docs/patching.md): a
/// dormant guest's packages are upgraded by its own package manager in a maintenance boot
/// that reaches only the mirror, into a **new qcow2 layer** over its disk; the layer is
/// re-assessed offline and kept only when the targeted findings are gone and dpkg's database
/// is consistent. The VM's disk then becomes the new layer (the old one stays beneath it, the
/// state to roll back to), and a `patched` event records the packages before and after, the
/// mirror, the findings closed and the layer's digest. Anything else leaves the VM as it was.
public struct PatchService: Sendable {
    public let database: WardenDatabase
    public let vms: VMService
    public var appliance: Appliance
    public var boot: MaintenanceBoot.Options
    /// Where consoles are kept: `<home>/patch/<vm>/<time>/console.log`.
    public var home: String
    public var note: @Sendable (String) -> Void
    /// Held around every ledger and advisory-store step (not around boots) when patches run
    /// side by side (`warden fleet patch`).
    public var ledgerLock: NSLock?

    public init(database: WardenDatabase, vms: VMService, appliance: Appliance, boot: MaintenanceBoot.Options,
                home: String, note: @escaping @Sendable (String) -> Void = { _ in }) {
        self.database = database; self.vms = vms; self.appliance = appliance; self.boot = boot
        self.home = home; self.note = note
    }

    /// What to upgrade.
    public enum Selection: Sendable, Equatable {
        /// The packages carrying open findings (at or above the severity, when given) that
        /// have a fix, each to the mirror's newest version (which must reach the fix).
        case findings(minimum: Severity?)
        /// These packages: `NAME` (upgrade if installed) or `NAME=VERSION` (install that version).
        case packages([String])
        /// `apt-get upgrade`.
        case all

        var word: String {
            switch self {
            case .findings: return "findings"
            case .packages: return "packages"
            case .all: return "all"
            }
        }
    }

    public struct Request: Sendable {
        public var selection: Selection
        public var mirror: Mirror
        public var dryRun = false
        public init(selection: Selection, mirror: Mirror, dryRun: Bool = false) {
            self.selection = selection; self.mirror = mirror; self.dryRun = dryRun
        }
    }

    /// One package the patch targets.
    public struct Target: Codable, Sendable, Equatable {
        public var package: String
        public var installed: String?
        /// The highest fixed version among its findings (findings selection).
        public var fixedVersion: String?
        /// What apt-get is given: `NAME` or `NAME=VERSION`.
        public var spec: String
        public var advisories: [String]
    }

    public struct PackageChange: Codable, Sendable, Equatable {
        public var name: String
        public var before: String?
        public var after: String?
    }

    public struct Layer: Codable, Sendable, Equatable {
        public var path: String
        public var backing: String
        public var digest: String
    }

    /// The outcome for one VM or image (`warden.patch/v1`, docs/patching.md).
    public struct Report: Codable, Sendable {
        public var schema = "warden.patch/v1"
        public var vm: String?
        public var name: String?
        public var image: String
        /// `patched`, `planned` (dry run), `nothing-to-do`, `failed`, `skipped`.
        public var status: String
        public var reason: String?
        public var mirror: String
        public var selection: String
        public var targets: [Target] = []
        /// Findings that have no fix yet (not patchable from any mirror).
        public var unfixable: [String] = []
        public var packages: [PackageChange] = []
        public var findingsClosed: [String] = []
        /// Targeted findings still open after the patch (why a patch failed).
        public var findingsRemaining: [String] = []
        public var layer: Layer?
        public var console: String?
        public var steps: [String] = []
        public var bootSeconds: Double?
        public var seconds: Double = 0
        public var decision: String?

        public init(vm: String? = nil, name: String? = nil, image: String, status: String, mirror: String, selection: String) {
            self.vm = vm; self.name = name; self.image = image; self.status = status; self.mirror = mirror; self.selection = selection
        }

        enum CodingKeys: String, CodingKey {
            case schema, vm, name, image, status, reason, mirror, selection, targets, unfixable, packages
            case findingsClosed = "findings_closed", findingsRemaining = "findings_remaining", layer, console, steps
            case bootSeconds = "boot_seconds", seconds, decision
        }
    }

    public func selectionWord(_ s: Selection) -> String { s.word }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        guard let l = ledgerLock else { return try body() }
        l.lock()
        defer { l.unlock() }
        return try body()
    }

    // MARK: - One VM

    /// Patches ledger VM `reference`. A running VM is refused (`.conflict`); a policy deny
    /// throws `.denied` with nothing written but the decision; a failed patch is recorded
    /// (a `patched` event with `outcome: failed`), the new layer removed, and thrown.
    public func patch(vm reference: String, _ request: Request) throws -> Report {
        let started = Date()
        let store = vms.store
        let vm = try locked { try store.resolveVM(reference) }
        var report = Report(vm: vm.id.description, name: vm.name, image: "", status: "failed",
                            mirror: request.mirror.name, selection: request.selection.word)
        guard vm.state != .retired else { throw WardenError(.conflict, "VM \(vm.name) is retired") }
        guard vm.state != .running else {
            throw WardenError(.conflict, "VM \(vm.name) is running: patch it in-guest, or stop it first")
        }
        let disks = try locked { try store.disks(of: vm.id) }.sorted { $0.index < $1.index }
        guard let disk = disks.first else { throw WardenError(.notFound, "VM \(vm.name) has no disks in the ledger") }
        report.image = disk.path

        // Fail early on a deny (recorded), before any work.
        var policyRequest = PolicyRequest(operation: .patch, host: vms.host)
        policyRequest.mirror = request.mirror.name
        let timer = PhaseTimer.shared
        if !request.dryRun { try locked { try vms.refuseEarly(policyRequest, vm: vm) } }
        timer.lap("patch-policy")
        // From here on a failure is recorded on the VM (a `patched` event, outcome failed).
        func recordFailure(_ e: WardenError) -> WardenError {
            var r = report
            r.reason = e.message
            r.seconds = Date().timeIntervalSince(started)
            _ = try? locked { try store.append(NewEvent(kind: .patched, vm: vm.id, host: vms.host, payload: Self.payload(r, outcome: "failed", consoleDigest: nil))) }
            return e
        }
        let prepared: Prepared
        do { prepared = try locked { try prepare(image: disk.path, request) } } catch let e as WardenError {
            throw request.dryRun ? e : recordFailure(e)
        }
        timer.lap("patch-prepare")
        report.targets = prepared.targets
        report.unfixable = prepared.unfixable
        if prepared.targets.isEmpty && !(request.selection == .all) {
            report.status = "nothing-to-do"
            report.reason = prepared.unfixable.isEmpty ? "no open findings to patch" : "the open findings have no fix yet"
            report.seconds = Date().timeIntervalSince(started)
            return report
        }
        if request.dryRun {
            report.status = "planned"
            report.seconds = Date().timeIntervalSince(started)
            return report
        }

        let stamp = Self.stamp(started)
        let layerPath = Self.layerPath(for: disk.path, stamp: stamp)
        let work = home + "/patch/" + vm.id.description + "/" + stamp
        let outcome: Applied
        // QEMU runs as the VM's own uid, as when the VM itself runs.
        var options = boot
        options.uid = MaintenanceBoot.uid(for: vm.id)
        options.vm = vm.id
        do {
            outcome = try apply(prepared: prepared, image: disk.path, format: disk.format, layerPath: layerPath, work: work, options: options, request)
        } catch let e as WardenError {
            // apply throws only before the layer exists (another patch may own a file of that name).
            throw recordFailure(e)
        }
        report.steps = outcome.boot?.steps ?? []
        report.bootSeconds = outcome.boot?.seconds
        report.console = outcome.boot.map { _ in work + "/console.log" }
        report.packages = outcome.packages
        report.findingsClosed = outcome.closed
        report.findingsRemaining = outcome.remaining
        timer.lap("patch-reassess")

        if let failure = outcome.failure {
            unlink(layerPath)
            report.reason = failure.message
            report.seconds = Date().timeIntervalSince(started)
            _ = try locked { try store.append(NewEvent(kind: .patched, vm: vm.id, host: vms.host, payload: Self.payload(report, outcome: "failed", consoleDigest: outcome.consoleDigest))) }
            throw failure
        }

        // Commit: the decision (made again, in the transaction), the new disk and the event.
        let examined: ExaminedDisk
        do { examined = try ExaminedDisk.examine(layerPath, inspect: false) } catch {
            unlink(layerPath); throw error
        }
        timer.lap("patch-examine-layer")
        let layer = Layer(path: layerPath, backing: disk.path, digest: try Self.fileDigest(layerPath))
        timer.lap("patch-layer-digest")
        report.layer = layer
        report.status = "patched"
        report.seconds = Date().timeIntervalSince(started)
        let payload = Self.payload(report, outcome: "patched", consoleDigest: outcome.consoleDigest)
        do {
            let (decision, _) = try locked { try vms.decideAndApply(policyRequest, vm: vm, family: vm.id) {
                // Another patch (or a copy of the disk record) may have moved the VM on meanwhile.
                let now = try store.disks(of: vm.id).sorted { $0.index < $1.index }
                guard now.first?.path == disk.path, let state = try store.vm(vm.id)?.state, state != .running, state != .retired else {
                    throw WardenError(.conflict, "VM \(vm.name) changed during the patch (its disk or state); the new layer is discarded")
                }
                var records = now
                records[0] = examined.record(vm: vm.id, index: disk.index)
                try store.replaceDisks(of: vm.id, with: records)
                _ = try store.append(NewEvent(kind: .patched, vm: vm.id, host: vms.host, payload: payload))
            } }
            report.decision = decision.id.uuidString.lowercased()
        } catch {
            unlink(layerPath)
            throw error
        }
        timer.lap("patch-commit")
        // The VM's disk is the new layer now: its scan (findings, scan age) is of that layer.
        _ = locked { try? ScanService(database: database).scan(images: [layerPath]) }
        timer.lap("patch-rescan-as-vm")
        return report
    }

    // MARK: - Undoing a patch

    /// What `undo` did.
    public struct Undo: Codable, Sendable {
        public var schema = "warden.patch.undo/v1"
        public var vm: String
        public var name: String
        /// The patch layer the VM leaves (kept on disk).
        public var layer: String
        /// The pre-patch disk the VM returns to.
        public var restored: String
        /// Findings the pre-patch state re-opens (`ADVISORY PACKAGE`).
        public var reopens: [String]
        public var decision: String
    }

    /// Returns VM `reference` to the state below its latest patch: its disk record goes back to
    /// the layer's backing file (the layer stays on disk). Decided as a `rollback`, with the
    /// findings the pre-patch state re-opens as its re-exposure (a `reexposes` rule applies).
    public func undo(vm reference: String) throws -> Undo {
        let store = vms.store
        let vm = try store.resolveVM(reference)
        guard vm.state != .running else {
            throw WardenError(.conflict, "VM \(vm.name) is running: stop it before undoing a patch")
        }
        let disks = try store.disks(of: vm.id).sorted { $0.index < $1.index }
        guard let disk = disks.first else { throw WardenError(.notFound, "VM \(vm.name) has no disks in the ledger") }
        // Only Warden's own patch events (not ones reported through `warden event record`).
        guard let last = try store.events(of: vm.id).last(where: { $0.kind == .patched && !$0.reportedByCaller && $0.payload["outcome"] == .string("patched") }),
              case .object(let layer)? = last.payload["layer"], case .string(let path)? = layer["path"],
              case .string(let backing)? = layer["backing"] else {
            throw WardenError(.notFound, "VM \(vm.name) has no patch to undo")
        }
        guard path == disk.path else {
            throw WardenError(.conflict, "VM \(vm.name)'s disk is no longer the layer of its latest patch (\(path)); nothing undone")
        }
        let restored = backing.hasPrefix("/") ? backing : (path as NSString).deletingLastPathComponent + "/" + backing
        // The layer's own header must name the same backing file the event does.
        let chain = try ImageOpener.open(path, options: OpenOptions()).chain
        guard chain.count >= 2, MalwareService.canonical(chain[1].path) == MalwareService.canonical(restored) else {
            throw WardenError(.conflict, "the layer's backing file is not the pre-patch disk its patch event names; nothing undone", file: path)
        }
        // What the pre-patch state re-opens: its findings that the layer does not have.
        let scan = ScanService(database: database)
        let below = try scan.scan(images: [restored])
        if let f = below.failures.first { throw f }
        let above = try scan.scan(images: [path])
        let open = Set((above.results.first?.findings ?? []).filter { $0.status == .vulnerable }.map { "\($0.advisory) \($0.package)" })
        var reexposed: [ReexposedFinding] = []
        var seen = Set<String>()
        for f in below.results.first?.findings ?? [] where f.status == .vulnerable {
            let key = "\(f.advisory) \(f.package)"
            guard !open.contains(key), seen.insert(key).inserted else { continue }
            reexposed.append(ReexposedFinding(id: f.advisory, severity: f.severity, package: f.package))
        }
        let examined = try ExaminedDisk.examine(restored, inspect: false)
        let request = PolicyRequest(operation: .rollback, host: vms.host, reexposure: reexposed)
        let reopens = reexposed.map { "\($0.id) \($0.package ?? "")" }.sorted()
        let (decision, _) = try vms.decideAndApply(request, vm: vm, family: vm.id) {
            var records = disks
            records[0] = examined.record(vm: vm.id, index: disk.index)
            try store.replaceDisks(of: vm.id, with: records)
            _ = try store.append(NewEvent(kind: .rolledBack, vm: vm.id, host: vms.host, payload: [
                "undo_patch": .number(Double(last.seq)),
                "layer": .string(path),
                "restored": .string(restored),
                "reopens": .array(reopens.map { .string($0) }),
            ]))
        }
        _ = try? scan.scan(images: [restored])
        return Undo(vm: vm.id.description, name: vm.name, layer: path, restored: restored, reopens: reopens,
                    decision: decision.id.uuidString.lowercased())
    }

    // MARK: - An unregistered image

    /// Patches `image` into a new overlay at `output` (no ledger VM, no policy). A failure
    /// removes the overlay and throws.
    public func patch(image: String, output: String, _ request: Request) throws -> Report {
        let started = Date()
        let abs = absolutePath(image)
        var report = Report(image: abs, status: "failed", mirror: request.mirror.name, selection: request.selection.word)
        let opened = try ImageOpener.open(abs, options: OpenOptions())
        let prepared = try prepare(image: abs, request)
        report.targets = prepared.targets
        report.unfixable = prepared.unfixable
        if prepared.targets.isEmpty && request.selection != .all {
            report.status = "nothing-to-do"
            report.reason = "no open findings to patch"
            return report
        }
        if request.dryRun { report.status = "planned"; return report }
        let out = absolutePath(output)
        guard !FileManager.default.fileExists(atPath: out) else { throw WardenError(.conflict, "already exists", file: out) }
        let work = home + "/patch/images/" + Self.stamp(started) + "-" + MaintenancePlan.newToken().prefix(6)
        let outcome = try apply(prepared: prepared, image: abs, format: opened.info.format.qemuName, layerPath: out, work: work, request)
        report.steps = outcome.boot?.steps ?? []
        report.bootSeconds = outcome.boot?.seconds
        report.console = outcome.boot.map { _ in work + "/console.log" }
        report.packages = outcome.packages
        report.findingsClosed = outcome.closed
        report.findingsRemaining = outcome.remaining
        report.seconds = Date().timeIntervalSince(started)
        if let failure = outcome.failure {
            unlink(out)
            throw failure
        }
        report.layer = Layer(path: out, backing: abs, digest: try Self.fileDigest(out))
        report.status = "patched"
        return report
    }

    // MARK: - Steps

    struct Prepared {
        var targets: [Target]
        var unfixable: [String]
        /// Vulnerable findings of the targeted packages before the patch (`ADVISORY package`).
        var targetedFindings: Set<String>
        var before: [String: String]
        var plan: MaintenancePlan
    }

    /// Scans the image, picks the targets and plans the boot (mounts from the offline assembly).
    func prepare(image: String, _ request: Request) throws -> Prepared {
        let scan = try ScanService(database: database).scan(images: [image])
        if let f = scan.failures.first { throw f }
        guard let result = scan.results.first else { throw WardenError(.internal, "no scan result", file: image) }
        if let p = result.problem, result.packages == 0 { throw WardenError(.unsupported, "cannot assess the guest: \(p)", file: image) }
        let guest = try OpenedGuest.open(image)
        let inventory = try guest.inventory()
        guard case .known(let dbs) = inventory.packages, dbs.contains(where: { $0.manager == .dpkg }) else {
            throw WardenError(.unsupported, "only dpkg/apt guests are patched so far (docs/patching.md)", file: image)
        }
        let before = Self.versions(inventory)
        let vulnerable = result.findings.filter { $0.status == .vulnerable }
        var targets: [Target] = []
        var unfixable: [String] = []
        var targeted = Set<String>()
        switch request.selection {
        case .findings(let minimum):
            var byPackage: [String: (fixed: String, advisories: [String])] = [:]
            for f in vulnerable where minimum.map({ f.severity >= $0 }) ?? true {
                guard let fixed = f.fixedVersion else { unfixable.append("\(f.advisory) in \(f.package)"); continue }
                targeted.insert("\(f.advisory) \(f.package)")
                var entry = byPackage[f.package] ?? (fixed, [])
                if (try? VersionScheme.deb.compare(fixed, entry.fixed)) == .greater { entry.fixed = fixed }
                entry.advisories.append(f.advisory)
                byPackage[f.package] = entry
            }
            for (name, e) in byPackage.sorted(by: { $0.key < $1.key }) {
                targets.append(Target(package: name, installed: before[name], fixedVersion: e.fixed, spec: name,
                                      advisories: Array(Set(e.advisories)).sorted()))
            }
        case .packages(let specs):
            for spec in specs {
                guard MaintenancePlan.validPackageSpec(spec) else {
                    throw WardenError(.invalidArgument, "not a Debian package name (or NAME=VERSION): \(spec)")
                }
                let name = String(spec.split(separator: "=").first ?? "")
                let fixes = vulnerable.filter { $0.package == name }
                for f in fixes { targeted.insert("\(f.advisory) \(f.package)") }
                targets.append(Target(package: name, installed: before[name], fixedVersion: nil, spec: spec,
                                      advisories: Array(Set(fixes.map(\.advisory))).sorted()))
            }
        case .all:
            for f in vulnerable where f.fixedVersion != nil { targeted.insert("\(f.advisory) \(f.package)") }
        }
        let (mounts, lvm) = try MaintenancePlan.mounts(for: guest.view)
        if lvm && !appliance.hasLVM {
            throw WardenError(.unavailable, "the guest's root is on LVM and this host has no lvm tool for the appliance (package lvm2)", file: image)
        }
        let mode: MaintenancePlan.Mode
        switch request.selection {
        case .all: mode = .all
        case .packages(let specs): mode = specs.contains(where: { $0.contains("=") }) ? .install : .upgrade
        case .findings: mode = .upgrade
        }
        let plan = MaintenancePlan(mode: mode, packages: targets.map(\.spec), mounts: mounts, lvm: lvm, mirror: request.mirror)
        _ = try plan.text()   // every value checked before anything is written
        return Prepared(targets: targets, unfixable: unfixable.sorted(), targetedFindings: targeted, before: before, plan: plan)
    }

    struct Applied {
        var boot: MaintenanceBoot.Result?
        var packages: [PackageChange] = []
        var closed: [String] = []
        var remaining: [String] = []
        var consoleDigest: String?
        var failure: WardenError?
    }

    /// Makes the new layer, boots, and re-assesses it. A failure is returned (the caller
    /// records it and removes the layer); only errors before the layer exists are thrown.
    func apply(prepared: Prepared, image: String, format: String, layerPath: String, work: String,
               options: MaintenanceBoot.Options? = nil, _ request: Request) throws -> Applied {
        try FileDescriptorIO.ensurePrivateDirectory(work, what: "the patch folder")
        let backing = (layerPath as NSString).deletingLastPathComponent == (image as NSString).deletingLastPathComponent
            ? (image as NSString).lastPathComponent : image
        try QCOW2Overlay.create(at: layerPath, backing: backing, backingFormat: ImageFormat(rawValue: format)?.qemuName ?? format)
        var out = Applied()
        let boot: MaintenanceBoot.Result
        do {
            boot = try MaintenanceBoot(appliance: appliance, options: options ?? self.boot)
                .run(plan: prepared.plan, disks: [.init(path: layerPath, format: "qcow2")], work: work)
        } catch {
            out.failure = (error as? WardenError) ?? WardenError(.internal, "the maintenance boot failed: \(error)")
            return out
        }
        unlink(work + "/initramfs.cpio")
        // The boot did not pass flushes on: the layer is made durable here, once.
        let fd = open(layerPath, O_RDONLY | O_CLOEXEC)
        if fd >= 0 { _ = fsync(fd); close(fd) }
        PhaseTimer.shared.lap("patch-layer-and-boot")
        out.boot = boot
        out.consoleDigest = try? Self.fileDigest(boot.console)
        if boot.timedOut {
            out.failure = WardenError(.unavailable, "the maintenance boot did not finish within \(Int(self.boot.timeout)) s (console: \(boot.console))")
            return out
        }
        if boot.consoleTruncated {
            out.failure = WardenError(.limitExceeded, "the maintenance boot wrote more than \(self.boot.consoleLimit >> 20) MiB to its console and was stopped")
            return out
        }
        guard boot.outcome == "ok" else {
            out.failure = Self.failure(step: boot.failedStep, console: boot.console)
            return out
        }

        // Proof: the new layer, re-inspected and re-scanned offline.
        return locked { reassess(prepared: prepared, layerPath: layerPath, request, into: out) }
    }

    /// Re-inspects and rescans the new layer; the failure (if any) in the result.
    func reassess(prepared: Prepared, layerPath: String, _ request: Request, into start: Applied) -> Applied {
        var out = start
        let after: Inventory
        do { after = try OpenedGuest.open(layerPath).inventory() } catch {
            out.failure = WardenError(.corrupt, "the patched layer cannot be read back: \((error as? WardenError)?.message ?? "\(error)")", file: layerPath)
            return out
        }
        let afterVersions = Self.versions(after)
        let names = Set(prepared.targets.map(\.package)).union(prepared.before.keys.filter { afterVersions[$0] != prepared.before[$0] })
        out.packages = names.sorted().compactMap { n in
            let b = prepared.before[n], a = afterVersions[n]
            return b == a && !prepared.targets.contains(where: { $0.package == n }) ? nil : PackageChange(name: n, before: b, after: a)
        }
        if case .known(let dbs) = after.packages, let bad = dbs.flatMap(\.incomplete).first {
            out.failure = WardenError(.corrupt, "dpkg's database is not consistent after the patch: \(bad.name) is \(bad.status)", file: layerPath)
            return out
        }
        let rescan: ScanService.Outcome
        do { rescan = try ScanService(database: database).scan(images: [layerPath]) } catch {
            out.failure = WardenError(.internal, "the patched layer was not rescanned: \(error)", file: layerPath)
            return out
        }
        guard let r = rescan.results.first else {
            out.failure = rescan.failures.first ?? WardenError(.internal, "the patched layer was not rescanned", file: layerPath)
            return out
        }
        let open = Set(r.findings.filter { $0.status == .vulnerable }.map { "\($0.advisory) \($0.package)" })
        out.remaining = prepared.targetedFindings.intersection(open).sorted()
        out.closed = prepared.targetedFindings.subtracting(open).sorted()
        for t in prepared.targets {
            guard let now = afterVersions[t.package] else {
                out.failure = WardenError(.corrupt, "\(t.package) is no longer installed after the patch", file: layerPath)
                return out
            }
            // An unparseable version counts as below the fix (fail closed).
            if let fixed = t.fixedVersion, [nil, .less].contains(try? VersionScheme.deb.compare(now, fixed)) {
                out.failure = WardenError(.unavailable, "the mirror's \(t.package) \(now) is below the fixed version \(fixed)", file: request.mirror.name)
                return out
            }
        }
        if !out.remaining.isEmpty {
            out.failure = WardenError(.unavailable, "findings still open after the patch: \(out.remaining.prefix(5).joined(separator: ", "))")
        }
        return out
    }

    /// A failed step, in words (the console has the details).
    static func failure(step: String?, console: String) -> WardenError {
        let s = step ?? "unknown"
        let where_ = " (console: \(console))"
        switch s {
        case "assemble": return WardenError(.unsupported, "the guest's root could not be assembled in the appliance" + where_)
        case "network": return WardenError(.unavailable, "the appliance's network did not come up" + where_)
        case "update": return WardenError(.unavailable, "apt-get update failed: is the mirror up and does it serve this suite?" + where_)
        case "no-apt": return WardenError(.unsupported, "the guest has no apt-get and dpkg" + where_)
        case "audit": return WardenError(.corrupt, "dpkg --audit reports unfinished packages after the patch" + where_)
        default:
            if s.hasPrefix("install-rc-") { return WardenError(.unavailable, "apt-get failed (exit \(s.dropFirst("install-rc-".count))): a package did not download, unpack or configure" + where_) }
            return WardenError(.unavailable, "the maintenance boot failed at \(s)" + where_)
        }
    }

    // MARK: - Helpers

    /// Installed dpkg package versions by name.
    static func versions(_ inv: Inventory) -> [String: String] {
        guard case .known(let dbs) = inv.packages else { return [:] }
        var out: [String: String] = [:]
        for db in dbs where db.manager == .dpkg { for p in db.packages { out[p.name] = p.version } }
        return out
    }

    static func stamp(_ d: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return f.string(from: d)
    }

    /// `disk.qcow2` → `disk.patch-20261207T071500Z.qcow2`, beside it.
    static func layerPath(for disk: String, stamp: String) -> String {
        let dir = (disk as NSString).deletingLastPathComponent
        var base = (disk as NSString).lastPathComponent
        for ext in [".qcow2", ".img", ".raw"] where base.hasSuffix(ext) { base = String(base.dropLast(ext.count)); break }
        if let r = base.range(of: ".patch-") { base = String(base[..<r.lowerBound]) }
        return dir + "/" + base + ".patch-" + stamp + ".qcow2"
    }

    /// `sha256:` + the file's SHA-256.
    static func fileDigest(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw WardenError(.io, "cannot read it", file: path) }
        defer { close(fd) }
        var h = SHA256()
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw WardenError(.io, "cannot read it", file: path) }
            if n == 0 { break }
            h.update(data: buf[..<n])
        }
        return "sha256:" + Array(h.finalize()).hexString
    }

    static func payload(_ r: Report, outcome: String, consoleDigest: String?) -> [String: JSONValue] {
        var p: [String: JSONValue] = [
            "outcome": .string(outcome),
            "image": .string(r.image),
            "mirror": .string(r.mirror),
            "selection": .string(r.selection),
            "packages": .array(r.packages.map { c in
                var o: [String: JSONValue] = ["name": .string(c.name)]
                o["before"] = c.before.map { .string($0) } ?? .null
                o["after"] = c.after.map { .string($0) } ?? .null
                return .object(o)
            }),
            "findings_closed": .array(r.findingsClosed.map { .string($0) }),
            "seconds": .number((r.seconds * 10).rounded() / 10),
        ]
        if !r.findingsRemaining.isEmpty { p["findings_remaining"] = .array(r.findingsRemaining.map { .string($0) }) }
        if let l = r.layer { p["layer"] = .object(["path": .string(l.path), "backing": .string(l.backing), "digest": .string(l.digest)]) }
        if let c = r.console {
            var o: [String: JSONValue] = ["path": .string(c)]
            if let d = consoleDigest { o["digest"] = .string(d) }
            p["console"] = .object(o)
        }
        if let reason = r.reason { p["reason"] = .string(reason) }
        return p
    }
}
