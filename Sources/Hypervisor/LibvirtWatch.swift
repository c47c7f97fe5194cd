import Foundation
import Ledger
import WardenNetwork
import WardenCore

/// What `warden libvirt watch` records for each lifecycle event: what the hook cannot see.
///
/// | libvirt event | ledger |
/// |---|---|
/// | started/, stopped/ or defined/from-snapshot (snapshot revert) | `rolled-back`, new generation id (once per revert, see ``RevertDeduplicator``) |
/// | started/restored (restore of a saved state) | `rolled-back` (`via: restore`), new generation id; residency opened |
/// | stopped/saved (save) | `stopped` (`saved: true`); residency closed |
/// | defined/added | an unknown domain is registered as `discovered` |
/// | undefined | a note on the VM (the VM and its disks stay in the ledger) |
/// | device-added (a hot-plugged NIC) | a quarantined or shielded VM's state extended to the new interface (``enforceOnHotplug(_:store:policyDirectory:host:)``) |
///
/// Other events (boot, shutdown, pause) are the hook's business and are ignored here.
public enum LibvirtWatch {
    public enum Action: Equatable, Sendable {
        case rotate(via: String)
        case saved
        case defined
        case undefined
        case deviceAdded
        case none
    }

    public static func action(for e: LibvirtLifecycleEvent) -> Action {
        switch (e.event, e.detail) {
        case (2, 3), (5, 6), (0, 3): .rotate(via: "snapshot")   // started/, stopped/, defined/from-snapshot
        case (2, 2): .rotate(via: "restore")            // started/restored
        case (5, 4): .saved                             // stopped/saved
        case (0, 0), (0, 2): .defined                   // defined/added, defined/renamed
        case (1, _): .undefined
        case (LibvirtLifecycleEvent.deviceAdded, _): .deviceAdded
        default: .none
        }
    }

    /// One snapshot revert produces several events (a running domain's revert restarts QEMU:
    /// stopped/from-snapshot, started/from-snapshot, defined/from-snapshot, within about a second).
    /// The generation is rotated on the first of them; further from-snapshot events of the same
    /// domain within `window` seconds are part of the same revert.
    public struct RevertDeduplicator: Sendable {
        public var window: TimeInterval = 10
        var last: [String: Date] = [:]
        public init(window: TimeInterval = 10) { self.window = window }

        /// Whether `event` starts a new revert (and remembers it).
        public mutating func isNewRevert(_ event: LibvirtLifecycleEvent, at time: Date) -> Bool {
            guard case .rotate(via: "snapshot") = LibvirtWatch.action(for: event) else { return true }
            let key = event.uuid?.uuidString ?? event.domain
            if let t = last[key], time.timeIntervalSince(t) < window, time >= t { return false }
            last[key] = time
            return true
        }
    }

    /// Records `event` in the ledger; returns a one-line description of what was done (nil: nothing).
    public static func record(_ event: LibvirtLifecycleEvent, domainXML: String?, store: any LedgerStore, host: HostName,
                              time: Date = Date(),
                              findVM: ((any LedgerStore, LibvirtDomain) throws -> VMRecord?)? = nil) throws -> String? {
        let action = action(for: event)
        if action == .none { return nil }
        var domain = LibvirtDomain(name: event.domain, uuid: event.uuid, diskPaths: [])
        if let xml = domainXML, let parsed = try? LibvirtDomain.parse(Data(xml.utf8)) { domain = parsed }
        let payloadBase: [String: JSONValue] = ["source": .string("libvirt-watch"), "libvirt_event": .string(event.name),
                                                "domain": .string(event.domain)]
        if action == .undefined {
            // Undefining removes libvirt's configuration, not the VM or its disks: noted on the VM, state unchanged.
            guard let uuid = event.uuid, let vm = try store.vm(VMID(uuid)) ?? findVM?(store, domain) else { return nil }
            _ = try store.append(NewEvent(kind: .discovered, vm: vm.id, host: host, time: time,
                                          payload: payloadBase.merging(["undefined": .bool(true)]) { a, _ in a }))
            return "\(event.domain): \(event.name) noted on VM \(vm.id)"
        }
        let vm = try LibvirtHook.resolveOrDiscover(domain, store: store, host: host, time: time, findVM: findVM)
        switch action {
        case .rotate(let via):
            var payload = payloadBase
            payload["via"] = .string(via)
            let newGeneration = UUID()
            let (after, _) = try store.updateVM(vm.id, event: NewEvent(kind: .rolledBack, vm: vm.id, host: host, time: time,
                                                                       generationBefore: vm.generation, generationAfter: newGeneration,
                                                                       payload: payload)) { $0.generation = newGeneration }
            if via == "restore" { try store.openResidency(vm: vm.id, host: host, kind: .ran, at: time) }
            return "\(event.domain): \(event.name): generation \(vm.generation.uuidString.lowercased()) → \(after.generation.uuidString.lowercased())"
        case .saved:
            _ = try store.append(NewEvent(kind: .stopped, vm: vm.id, host: host, time: time,
                                          payload: payloadBase.merging(["saved": .bool(true)]) { a, _ in a }))
            try store.closeResidency(vm: vm.id, host: host, kind: .ran, at: time)
            return "\(event.domain): \(event.name): recorded"
        case .defined:
            return vm.state == .discovered ? "\(event.domain): \(event.name): VM \(vm.id) (discovered)" : nil
        case .undefined, .deviceAdded, .none:
            return nil
        }
    }

    /// A device hot-plugged into a running domain (`virsh attach-interface`): when the VM is
    /// quarantined or shielded and the domain now has interfaces its state does not cover, the
    /// state is extended to all of them (one change, recorded). Returns a line saying what was
    /// done (nil: nothing to do); throws when the state cannot be enforced, and the caller pauses
    /// the domain. libvirt has no hook for attaching devices, so between the attach and this
    /// event (milliseconds) the new interface carries no rules: docs/network.md.
    public static func enforceOnHotplug(_ event: LibvirtLifecycleEvent, store: any LedgerStore, policyDirectory: String,
                                        host: HostName) throws -> String? {
        guard let xml = event.xml, let domain = try? LibvirtDomain.parse(Data(xml.utf8)), !domain.interfaces.isEmpty,
              let uuid = event.uuid ?? domain.uuid, let vm = try store.vm(VMID(uuid)) else { return nil }
        let net = NetworkService(ledger: store, policyDirectory: policyDirectory)
        guard let current = try net.state(of: vm.id), current.state != .open,
              !Set(domain.interfaces).isSubset(of: current.interfaces) else { return nil }
        let n = try net.set(vm, to: current.state, reason: current.reason, interfaces: domain.interfaces, ports: current.ports,
                            actor: "libvirt-watch@\(host.value)")
        return "\(event.domain): \(event.name): network \(n.state.rawValue) on \(n.interfaces.joined(separator: ", "))"
    }
}
