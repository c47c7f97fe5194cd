import AdvisoryStorage
import Advisories
import Foundation
import Ledger
import WardenCore

/// Network states recorded in the ledger and enforced with nftables (docs/network.md).
///
/// **Fail closed.** A change is applied to the kernel first (the whole rule set, one
/// transaction) and recorded after; when the rules cannot be applied — no `nft`, a refused
/// script, an unreadable network configuration for a quarantine — the command fails and the
/// caller must not go on (a VM that should be quarantined is not started). When recording fails
/// after the rules were applied, the rules are re-derived from the ledger, so the kernel never
/// stays more open than the ledger says.
public struct NetworkService: Sendable {
    public let ledger: any LedgerStore
    public let policyDirectory: String
    public let nft: NFTables

    public init(ledger: any LedgerStore, policyDirectory: String, nft: NFTables = NFTables()) {
        self.ledger = ledger; self.policyDirectory = policyDirectory; self.nft = nft
    }

    /// Every VM's recorded network state (VMs never changed are open and left out).
    public func states() throws -> [VMNetwork] {
        var out: [VMNetwork] = []
        let latest = try ledger.latestEvents(kind: .networkState)
        guard !latest.isEmpty else { return [] }
        let vms = Dictionary(uniqueKeysWithValues: try ledger.listVMs().map { ($0.id, $0) })
        for e in latest {
            // A retired VM's rules go: it has no interface any more.
            guard let id = e.vm, let vm = vms[id], vm.state != .retired, let n = VMNetwork.from(e, name: vm.name) else { continue }
            out.append(n)
        }
        return out
    }

    public func state(of vm: VMID) throws -> VMNetwork? {
        guard let record = try ledger.vm(vm), record.state != .retired,
              let e = try ledger.events(of: vm).last(where: { $0.kind == .networkState }) else { return nil }
        return VMNetwork.from(e, name: record.name)
    }

    public func config() throws -> NetworkConfig { try NetworkConfig.load(policyDirectory: policyDirectory) }

    /// Puts `vm` into `state`: derives the rules of every VM with this change, applies them as
    /// one transaction, then records a `network-state` event with the reason.
    ///
    /// Changes are serialised on this host (``lock()``): the interface check, the rules and the
    /// record happen together, so two VMs can never both claim one interface, and concurrent
    /// changes of one VM never apply a change computed from a stale state.
    @discardableResult
    public func set(_ vm: VMRecord, to state: NetState, reason: String, interfaces: [String]?, ports: [ShieldedPort] = [],
                    actor: String = NewEvent.defaultActor) throws -> VMNetwork {
        guard (1...1000).contains(reason.utf8.count) else { throw WardenError(.invalidArgument, "a reason is 1-1000 bytes") }
        let lock = try Self.lock()
        defer { withExtendedLifetime(lock) {} }
        // This VM's old state (its interfaces, the chains to replace); the other VMs' only when
        // they name one of the same interfaces, so a change costs the same at any fleet size.
        let old = try self.state(of: vm.id)
        let ifs = try (interfaces ?? old?.interfaces ?? []).map(Interface.check)
        guard Set(ifs).count == ifs.count, ifs.count <= 32 else { throw WardenError(.invalidArgument, "interfaces repeat, or more than 32") }
        if state != .open, ifs.isEmpty {
            throw WardenError(.invalidArgument, "name the VM's host interface (--interface vnet0): a \(state.rawValue) VM needs one to enforce it on")
        }
        if state == .shielded, ports.isEmpty {
            throw WardenError(.invalidArgument, "nothing to shield: no open finding at the shield severity maps to a service port")
        }
        var next = VMNetwork(vm: vm.id, name: vm.name, state: state, reason: reason, interfaces: ifs, ports: state == .shielded ? ports : [],
                             since: Date(), seq: 0)
        // Another VM's rules on the same interface would fight over it.
        if state != .open {
            for iface in ifs {
                for e in try ledger.latestEvents(kind: .networkState, mentioning: "\"\(iface)\"") where e.vm != vm.id {
                    guard let id = e.vm, let other = try ledger.vm(id), other.state != .retired,
                          let n = VMNetwork.from(e, name: other.name), n.state != .open, n.interfaces.contains(iface) else { continue }
                    throw WardenError(.conflict, "interface \(iface) already carries VM \(other.name)'s rules")
                }
            }
        }
        let config = try self.config()
        if state != .open, let missing = ifs.first(where: { !Interface.exists($0) }) {
            throw WardenError(.unavailable, "interface \(missing) does not exist on this host: the \(state.rawValue) state cannot be enforced")
        }
        // This VM's chains only, one transaction; if that fails (the table was lost, say), the
        // whole table from the ledger plus this change.
        do {
            try nft.apply(NFTRules.change(from: old, to: next, config: config))
        } catch {
            try nft.apply(NFTRules.script(try states().filter { $0.vm != vm.id } + [next], config: config))
        }
        do {
            let e = try ledger.append(NewEvent(kind: .networkState, vm: vm.id, actor: actor, payload: next.payload))
            next.seq = e.seq; next.since = e.time
        } catch {
            _ = try? syncLocked()
            throw error
        }
        return next
    }

    /// The host-wide lock of network changes: `/run/lock/warden-net.lock` (root), else one per
    /// user in the temporary directory.
    public static func lock() throws -> FileLock {
        let path = access("/run/lock", W_OK) == 0 ? "/run/lock/warden-net.lock" : NSTemporaryDirectory() + "/warden-net-\(getuid()).lock"
        return try FileLock(path: path, timeout: 60, holder: "another warden command is changing this host's network rules")
    }

    /// Re-derives every VM's rules from the ledger and applies them as one transaction: rules
    /// survive a restart this way, and rules of VMs that are gone (retired, or not in the
    /// ledger) disappear.
    public struct SyncReport: Codable, Sendable {
        public var enforced: Int
        public var interfaces: Int
        public var rules: Int
    }

    @discardableResult
    public func sync() throws -> SyncReport {
        let lock = try Self.lock()
        defer { withExtendedLifetime(lock) {} }
        return try syncLocked()
    }

    func syncLocked() throws -> SyncReport {
        let all = try states().filter { $0.state != .open }
        let script = NFTRules.script(all, config: try config())
        try nft.apply(script)
        return SyncReport(enforced: all.count, interfaces: all.reduce(0) { $0 + $1.interfaces.count },
                          rules: script.split(separator: "\n").filter { $0.hasPrefix("    ") && !$0.contains("type filter hook") }.count)
    }

    /// The ports a shield closes for `vm`: its open findings at or above the configured
    /// severity, mapped to their services' ports — `shield.servicePorts` first, then what the
    /// guest itself says (`guestPorts`: sshd's effective ports), then the built-in table.
    public func shieldPorts(for vm: VMRecord, advisories: any AdvisoryFacts, guestPorts: [String: [UInt16]] = [:]) throws -> [ShieldedPort] {
        let config = try self.config()
        let findings = try advisories.openFindings(disks: try ledger.disks(of: vm.id)).findings
            .filter { $0.status == .vulnerable && $0.severity >= config.shieldSeverity }
        var byPort: [String: ShieldedPort] = [:]
        for f in findings {
            for name in [f.package, f.sourcePackage] {
                guard let ports = config.servicePorts[name] ?? guestPorts[name] ?? ServicePorts.builtIn[name] else { continue }
                for p in ports {
                    for proto in NFTRules.udpServices.contains(p) ? ["tcp", "udp"] : ["tcp"] {
                        let key = "\(proto)/\(p)"
                        var entry = byPort[key] ?? ShieldedPort(port: p, proto: proto, package: name, findings: [])
                        if !entry.findings.contains(f.advisory) { entry.findings.append(f.advisory) }
                        byPort[key] = entry
                    }
                }
            }
        }
        return byPort.values.sorted { ($0.port, $0.proto) < ($1.port, $1.proto) }
    }

    /// Per VM: its state, reason, interfaces, closed ports and what was dropped.
    public struct Status: Codable, Sendable {
        public var vm: String
        public var name: String
        public var state: NetState
        public var reason: String
        public var since: Date
        public var interfaces: [String]
        public var ports: [ShieldedPort]
        /// Packets dropped from the VM and to it, per interface (nil when not enforced now).
        public var dropped: [String: Dropped]
        public struct Dropped: Codable, Sendable { public var fromVM: Int64; public var toVM: Int64 }
        /// Whether the kernel holds the rules the ledger says it should.
        public var enforced: Bool
    }

    public func status() throws -> [Status] {
        let counters = nft.available ? ((try? nft.counters()) ?? [:]) : [:]
        return try states().map { n in
            var dropped: [String: Status.Dropped] = [:]
            var enforced = n.state == .open
            for iface in n.interfaces where n.state != .open {
                // (an interface absent now has no chain: not enforced, and said so)
                let names = NFTRules.counterNames(n, iface)
                if let a = counters[names.fromVM], let b = counters[names.toVM] {
                    dropped[iface] = .init(fromVM: a, toVM: b)
                    enforced = true
                } else {
                    enforced = false
                }
            }
            return Status(vm: n.vm.description, name: n.name, state: n.state, reason: n.reason, since: n.since, interfaces: n.interfaces,
                          ports: n.ports, dropped: dropped, enforced: enforced)
        }
    }

    // MARK: Driven by starts

    /// Before a VM's guest runs on `interfaces` (its tap, a libvirt domain's `vnetN`): a
    /// `quarantine` decision for this start (newer than the VM's last network state)
    /// quarantines them; a VM already quarantined or shielded gets its state on these
    /// interfaces (their names change from start to start). Nil when the VM stays open. Throws
    /// when the state cannot be enforced: the caller must not let the guest run.
    @discardableResult
    public func enforceAtStart(_ vm: VMRecord, interfaces: [String], actor: String = NewEvent.defaultActor) throws -> VMNetwork? {
        guard !interfaces.isEmpty else { return nil }
        let events = try ledger.events(of: vm.id)
        let lastState = events.last { $0.kind == .networkState }
        let lastStart = events.last { $0.kind == .policyDecision && $0.payload["op"] == .string("start") }
        if let d = lastStart, d.payload["effect"] == .string("quarantine"), d.seq > (lastState?.seq ?? 0) {
            var reason = "quarantine decision"
            if let id = d.payload["decision"]?.stringValue { reason += " " + id }
            return try set(vm, to: .quarantined, reason: reason, interfaces: interfaces, actor: actor)
        }
        guard let e = lastState, let current = VMNetwork.from(e, name: vm.name), current.state != .open else { return nil }
        if Set(current.interfaces) == Set(interfaces) {
            // The same interfaces (a libvirt restart keeps a fixed tap name): this VM's chains again.
            try nft.apply(NFTRules.change(from: current, to: current, config: try config()))
            return current
        }
        return try set(vm, to: current.state, reason: current.reason, interfaces: interfaces, ports: current.ports, actor: actor)
    }

    // MARK: Driven by assessments

    /// After a fresh assessment of `vm`: a quarantine is lifted when it has no open finding at
    /// or above the shield severity (the assessment is the "fresh assessment" that may lift
    /// it). Returns the new state, or nil when nothing changed.
    @discardableResult
    public func liftIfClean(_ vm: VMRecord, advisories: any AdvisoryFacts, actor: String = NewEvent.defaultActor) throws -> VMNetwork? {
        guard let current = try state(of: vm.id), current.state == .quarantined else { return nil }
        let severity = try config().shieldSeverity
        let open: [Finding]
        do { open = try advisories.openFindings(disks: try ledger.disks(of: vm.id)).findings } catch let e as WardenError where e.code == .unavailable {
            return nil   // unknown is not clean: it stays quarantined
        }
        let blocking = open.filter { $0.status == .vulnerable && $0.severity >= severity }
        guard blocking.isEmpty else { return nil }
        return try set(vm, to: .open, reason: "assessed: no open finding at or above \(severity)", interfaces: current.interfaces, actor: actor)
    }

    /// After a rescan found new findings: a VM running on this host (its state, or an open
    /// `ran` interval here) that is open is shielded from its services with findings at the
    /// shield severity, on its recorded interfaces or, when none were recorded, the ones
    /// `discover` finds (libvirt's live domain). Returns the new state, or nil when nothing
    /// changed.
    @discardableResult
    public func shieldIfExposed(_ vm: VMRecord, advisories: any AdvisoryFacts, host: HostName = .current,
                                discover: ((VMRecord) -> [String]?)? = nil, guestPorts: ((VMRecord) -> [String: [UInt16]])? = nil,
                                actor: String = NewEvent.defaultActor) throws -> VMNetwork? {
        let openHere = try ledger.residency(of: vm.id).contains { $0.kind == .ran && $0.to == nil && $0.host == host }
        let runningHere = vm.state == .running || openHere
        guard runningHere else { return nil }
        let current = try state(of: vm.id)
        guard current == nil || current?.state == .open else { return nil }
        var interfaces = current?.interfaces ?? []
        if interfaces.isEmpty { interfaces = discover?(vm) ?? [] }
        guard !interfaces.isEmpty else { return nil }
        let ports = try shieldPorts(for: vm, advisories: advisories, guestPorts: guestPorts?(vm) ?? [:])
        guard !ports.isEmpty else { return nil }
        let reason = "new findings: " + ports.map { "\($0.port)/\($0.proto) (\($0.package): \($0.findings.joined(separator: ", ")))" }.joined(separator: "; ")
        return try set(vm, to: .shielded, reason: String(reason.prefix(1000)), interfaces: interfaces, ports: ports, actor: actor)
    }
}
