import Foundation
import WardenNetwork
import Ledger
import Policy
import WardenCore
import Storage

/// libvirt's qemu hook protocol (`/etc/libvirt/hooks/qemu` or `/etc/libvirt/hooks/qemu.d/*`).
///
/// libvirtd runs the hook with four arguments — domain name, operation, sub-operation, extra —
/// and the domain XML on standard input, and waits for it. For the vetoable calls a non-zero
/// exit aborts the operation and libvirt puts the hook's standard error into its error message,
/// which virsh prints. Warden decides on:
///
/// | arguments | Warden does |
/// |---|---|
/// | `prepare begin -`, `start begin -` | decide `start` (both are recorded) |
/// | `restore begin -` | decide `restore` |
/// | `migrate begin -` (on the destination) | decide `migrate` |
/// | `started begin -` | open a `ran` residency on this host |
/// | `stopped end -`, `release end -` | close it |
///
/// Everything else exits 0 without touching the ledger.
public enum LibvirtHook {
    public enum Action: Equatable, Sendable {
        case decide(VMOperation)
        case openResidency
        case closeResidency
        case ignore
    }

    /// The pure part: what to do for these arguments.
    public static func action(operation: String, subOperation: String) -> Action {
        switch (operation, subOperation) {
        case ("prepare", "begin"), ("start", "begin"): .decide(.start)
        case ("restore", "begin"): .decide(.restore)
        case ("migrate", "begin"): .decide(.migrate)
        case ("started", "begin"): .openResidency
        case ("stopped", "end"), ("release", "end"): .closeResidency
        default: .ignore
        }
    }

    /// The outcome of one hook run: the exit status and the one line for standard error.
    public struct Outcome: Sendable, Equatable {
        public var status: Int32
        public var message: String?
        public var decision: Decision?
    }

    /// The owner recorded for domains Warden first sees through libvirt.
    public static let discoveredOwner = "unknown"

    /// Opens the ledger for the hook: the database must already exist (a hook that invented an
    /// empty fleet would allow everything). No signing key is loaded and no checkpoint is
    /// signed: the hook's events get their Merkle leaves now and are covered by the next signed
    /// checkpoint (any later `warden` write, or `warden ledger checkpoint`; docs/ledger-log.md).
    /// The WAL is left in place when the hook exits (``WardenDatabase/init(path:create:readOnly:checkpointOnClose:)``).
    public static func openLedger(_ path: String, host: HostName = .current) throws -> SQLiteLedger {
        try SQLiteLedger.open(path, .hook, host: host)
    }

    /// The ledger VM with a disk at one of the domain's disk paths, if exactly one live VM has it.
    public static func vmByDiskPath(_ store: any LedgerStore, _ domain: LibvirtDomain) throws -> VMRecord? {
        for path in domain.diskPaths {
            let vms = try store.vms(withDisk: path, file: DiskRecord.FileID.of(path: path)).filter { $0.state != .retired }
            if vms.count == 1 { return vms[0] }
            if vms.count > 1 {
                throw WardenError(.conflict, "disk \(path) belongs to \(vms.count) VMs in the ledger (\(vms.map(\.name).joined(separator: ", ")))")
            }
        }
        return nil
    }

    /// Runs the hook: `openStore` is called only when the action needs the ledger, and its
    /// failure fails closed for vetoable operations.
    public static func run(arguments: [String], domainXML: Data, host: HostName = .current, time: Date = Date(),
                           policy: PolicyGate.Source, openStore: () throws -> any LedgerStore,
                           findVM: ((any LedgerStore, LibvirtDomain) throws -> VMRecord?)? = nil) -> Outcome {
        // Exactly libvirt's layout, or deny: a domain named like an option, a missing or extra
        // argument, or a shell wrapper without `--` must never turn into an ignored call.
        guard arguments.count == 4 else {
            return failed(.start, vm: nil, host: host, time: time, status: 2, vetoable: true,
                          reason: "libvirt-hook: expected exactly DOMAIN OPERATION SUB-OPERATION EXTRA, got \(arguments.count) argument(s)")
        }
        let action = action(operation: arguments[1], subOperation: arguments[2])
        if action == .ignore { return Outcome(status: 0) }
        let vetoable: Bool
        let operation: VMOperation
        if case .decide(let op) = action { vetoable = true; operation = op } else { vetoable = false; operation = .start }
        // Residency after `started` also fails closed: libvirt stops a domain whose started hook fails,
        // so no VM runs that the ledger does not know is running.
        let failStatus: Int32 = (vetoable || action == .openResidency) ? 1 : 0
        let domain: LibvirtDomain
        do { domain = try LibvirtDomain.parse(domainXML) } catch let e as WardenError {
            return failed(operation, vm: nil, host: host, time: time, status: failStatus, vetoable: vetoable,
                          reason: "\(arguments[0]): \(e.message)")
        } catch {
            return failed(operation, vm: nil, host: host, time: time, status: failStatus, vetoable: vetoable, reason: "\(error)")
        }
        // The XML must describe the domain libvirt names in the arguments.
        guard domain.name == arguments[0] else {
            return failed(operation, vm: nil, host: host, time: time, status: failStatus, vetoable: vetoable,
                          reason: "the domain XML names \(domain.name), the arguments \(arguments[0])")
        }
        let store: any LedgerStore
        do { store = try openStore() } catch {
            return failed(operation, vm: nil, host: host, time: time, status: failStatus, vetoable: vetoable,
                          reason: "ledger unavailable: " + ((error as? WardenError)?.description ?? "\(error)"))
        }
        let vm: VMRecord
        do {
            vm = try resolveOrDiscover(domain, store: store, host: host, time: time, findVM: findVM)
        } catch {
            return failed(operation, vm: nil, host: host, time: time, status: failStatus, vetoable: vetoable,
                          reason: "cannot map domain \(domain.name) to a ledger VM: " + ((error as? WardenError)?.description ?? "\(error)"))
        }
        switch action {
        case .decide(let op):
            if op == .start, arguments[1] == "prepare" {
                // Warden-encrypted disks are unlocked only through `warden libvirt start`, which
                // records an `unlock` decision just before libvirt prepares the domain. A start
                // without one (a secret defined by hand) is refused, and the refusal recorded.
                let refusal: String?
                do { refusal = try unreleasedEncryptedDisk(vm: vm, domain: domain, store: store, host: host, time: time) } catch {
                    refusal = "cannot read the VM's encryption history: " + ((error as? WardenError)?.description ?? "\(error)")
                }
                if let refusal {
                    let d = PolicyEngine.failClosed(.unlock, vm: vm, reason: refusal,
                                                    context: PolicyContext(time: time, host: .known(HostFacts(name: host.value, labels: [:]))))
                    _ = try? PolicyGate.record(d, store: store, host: host, actor: NewEvent.hookActor(host))
                    return Outcome(status: 1, message: d.summary, decision: d)
                }
            }
            let request = PolicyRequest(operation: op, host: host, time: time)
            do {
                let d = try PolicyGate.check(request, vm: vm, store: store, source: policy, actor: NewEvent.hookActor(host))
                return Outcome(status: 0, message: d.effect == .quarantine ? d.summary : nil, decision: d)
            } catch let e as WardenError {
                return Outcome(status: 1, message: e.message)
            } catch {
                return Outcome(status: 1, message: "denied by Warden policy: \(error)")
            }
        case .openResidency:
            do {
                try store.openResidency(vm: vm.id, host: host, kind: .ran, at: time)
            } catch {
                return Outcome(status: 1, message: "cannot record that \(domain.name) runs on \(host): \((error as? WardenError)?.description ?? "\(error)")")
            }
            // The guest's CPUs have not run yet (libvirt starts QEMU paused and resumes it after
            // this hook): its network state goes on its interfaces now, or the start fails.
            do {
                let n = try enforceNetwork(vm: vm, domain: domain, store: store, policy: policy, host: host)
                return Outcome(status: 0, message: n.map { "\(domain.name): network \($0.state.rawValue) on \($0.interfaces.joined(separator: ", "))" })
            } catch {
                return Outcome(status: 1, message: "\(domain.name) must not run: its network state cannot be enforced: \((error as? WardenError)?.message ?? "\(error)")")
            }
        case .closeResidency:
            do {
                try store.closeResidency(vm: vm.id, host: host, kind: .ran, at: time)
                return Outcome(status: 0)
            } catch {
                return Outcome(status: 0, message: "cannot record that \(domain.name) stopped on \(host): \((error as? WardenError)?.description ?? "\(error)")")
            }
        case .ignore:
            return Outcome(status: 0)
        }
    }

    /// How recent the `unlock` decision of `warden libvirt start` must be when libvirt prepares
    /// an encrypted domain.
    public static let unlockWindow: TimeInterval = 120

    /// Why the domain must not be prepared: it uses a disk Warden encrypted, and no key release
    /// for it was recorded on this host in the last ``unlockWindow``. Nil when it may.
    static func unreleasedEncryptedDisk(vm: VMRecord, domain: LibvirtDomain, store: any LedgerStore, host: HostName, time: Date) throws -> String? {
        let history = try store.events(of: vm.id)
        let encrypted = EventRecord.encryptedDisks(in: history)
        guard !encrypted.isEmpty else { return nil }
        guard let used = domain.ledgerDisks(try store.disks(of: vm.id)).map(\.disk).first(where: { encrypted.contains($0.index) }) else {
            return nil
        }
        let released = history.contains { $0.isKeyRelease && $0.host == host && $0.time >= time - unlockWindow && $0.time <= time + 5 }
        return released ? nil : "disk \(used.path) of \(vm.name) is encrypted by Warden and no key was released for this start: start it with `warden libvirt start \(domain.name)`"
    }

    /// At `started`: the VM's network state goes on this start's interfaces
    /// (``NetworkService/enforceAtStart(_:interfaces:actor:)``). Nil when it stays open.
    static func enforceNetwork(vm: VMRecord, domain: LibvirtDomain, store: any LedgerStore, policy: PolicyGate.Source,
                               host: HostName) throws -> VMNetwork? {
        // A domain without network devices has nothing to enforce a network state on.
        if domain.interfaces.isEmpty { return nil }
        let net = NetworkService(ledger: store, policyDirectory: policy.directory)
        return try net.enforceAtStart(vm, interfaces: domain.interfaces, actor: NewEvent.hookActor(host))
    }

    static func failed(_ op: VMOperation, vm: VMRecord?, host: HostName, time: Date, status: Int32, vetoable: Bool, reason: String) -> Outcome {
        guard vetoable else { return Outcome(status: status, message: reason) }
        let d = PolicyEngine.failClosed(op, vm: vm, reason: reason,
                                        context: PolicyContext(time: time, host: .known(HostFacts(name: host.value, labels: [:]))))
        return Outcome(status: status, message: d.summary, decision: d)
    }

    /// The ledger VM for a domain: by UUID (a VM registered from libvirt has the domain's UUID
    /// as its id), then by disk path; an unknown domain is registered as `discovered`.
    public static func resolveOrDiscover(_ domain: LibvirtDomain, store: any LedgerStore, host: HostName, time: Date,
                                         findVM: ((any LedgerStore, LibvirtDomain) throws -> VMRecord?)?) throws -> VMRecord {
        if let uuid = domain.uuid, let vm = try store.vm(VMID(uuid)) { return vm }
        if let findVM, let vm = try findVM(store, domain) { return vm }
        // A domain without a UUID would be a new VM on every call: never register one.
        guard let uuid = domain.uuid else {
            throw WardenError(.invalidArgument, "the domain XML has no <uuid> and no registered disk")
        }
        let id = VMID(uuid)
        let record = VMRecord(id: id, name: domain.name, owner: discoveredOwner, state: .discovered, createdAt: time, updatedAt: time)
        let disks = domain.diskPaths.enumerated().map { DiskRecord(vm: id, index: $0.offset, path: $0.element, format: domain.diskFormats[$0.offset]) }
        let event = NewEvent(kind: .discovered, vm: id, actor: NewEvent.hookActor(host), host: host, time: time,
                             payload: ["source": .string("libvirt-hook"), "domain": .string(domain.name)])
        do {
            return try store.createVM(record, disks: disks, event: event).0
        } catch let e as WardenError where e.code == .conflict {
            // Another hook run registered the same domain at the same moment: use its record.
            if let vm = try store.vm(id) { return vm }
            throw e
        }
    }
}
