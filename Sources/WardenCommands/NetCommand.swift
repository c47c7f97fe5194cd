import ArgumentParser
import Foundation
import Ledger
import WardenNetwork
import Policy
import WardenCore
import WardenServices

/// `warden net`: VM network states enforced with nftables (docs/network.md).
struct NetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "net", abstract: "Quarantine, shield or open VMs' network at the host (nftables).",
        discussion: """
        States are recorded in the ledger (network-state events with their reasons) and enforced on
        the VM's host interfaces in Warden's own nftables table, one transaction per change. The
        network configuration (resolvers, patch mirrors, shield severity) is network/network.yaml in
        the policy directory.
        """,
        subcommands: [NetStatus.self, NetQuarantine.self, NetShield.self, NetOpen.self, NetSync.self, NetNWFilter.self])
}

struct NetOptions: ParsableArguments {
    @OptionGroup var database: DatabaseOptions
    @Option(help: ArgumentHelp("The policy directory (default: $WARDEN_POLICY, $WARDEN_HOME/policy…).", valueName: "dir")) var policy: String?

    func service(create: Bool = false) throws -> (NetworkService, SQLiteLedger) {
        let ledger = try database.open(create: create)
        return (NetworkService(ledger: ledger, policyDirectory: PolicySet.defaultDirectory(explicit: policy)), ledger)
    }
}

struct NetStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Each VM's network state, reason, interfaces, closed ports and drops.",
        discussion: """
            Example:
              warden net status
            """)
    @OptionGroup var options: NetOptions
    @Flag(help: "Print JSON.") var json = false
    struct Doc: Encodable { var schema = "warden.net-status/v1"; var vms: [NetworkService.Status] }
    func run() throws {
        let (svc, _) = try options.service()
        let list = try svc.status()
        try Output.render(Doc(vms: list), json: json, style: .ledger) {
            var rows = [["VM", "STATE", "INTERFACES", "PORTS", "DROPPED", "REASON"]]
            for s in list {
                let dropped = s.dropped.values.reduce(0) { $0 + $1.fromVM + $1.toVM }
                rows.append([s.name, s.state.rawValue + (s.enforced ? "" : " (not enforced)"), s.interfaces.joined(separator: ","),
                             s.ports.map { "\($0.port)/\($0.proto)" }.joined(separator: ","), s.state == .open ? "-" : String(dropped),
                             String(s.reason.prefix(60))])
            }
            for line in table(rows) { Output.stdout.line(line) }
        }
    }
}

struct NetQuarantine: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "quarantine", abstract: "Let the VM reach only DHCP, its resolvers and its patch mirrors.",
        discussion: """
            Example:
              warden net quarantine web --reason "suspected compromise"
            """)
    @OptionGroup var options: NetOptions
    @Argument(help: "The VM.") var vm: String
    @Option(name: .customLong("interface"), help: ArgumentHelp("A host interface of the VM (repeatable; default: the last recorded).", valueName: "name"))
    var interfaces: [String] = []
    @Option(help: "Why (recorded).") var reason: String = "quarantined by hand"
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        let (svc, ledger) = try options.service()
        let vm = try ledger.resolveVM(vm)
        let n = try svc.set(vm, to: .quarantined, reason: reason, interfaces: interfaces.isEmpty ? nil : interfaces)
        try Output.render(n, json: json, style: .ledger) { Output.stdout.line("\(vm.name): quarantined on \(n.interfaces.joined(separator: ", "))") }
    }
}

struct NetShield: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shield", abstract: "Block inbound connections to the VM's services that carry open findings at the shield severity.",
            discussion: """
                Example:
                  warden net shield web
                """)
    @OptionGroup var options: NetOptions
    @Argument(help: "The VM.") var vm: String
    @Option(name: .customLong("interface"), help: ArgumentHelp("A host interface of the VM (repeatable; default: the last recorded).", valueName: "name"))
    var interfaces: [String] = []
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        let (svc, ledger) = try options.service()
        let vm = try ledger.resolveVM(vm)
        guard let facts = ledger.advisoryFacts else { throw WardenError(.unavailable, "this ledger has no advisory store") }
        let ports = try svc.shieldPorts(for: vm, advisories: facts, guestPorts: GuestServicePorts.of(disks: try ledger.disks(of: vm.id)))
        let reason = "open findings: " + ports.map { "\($0.port)/\($0.proto) (\($0.package): \($0.findings.joined(separator: ", ")))" }.joined(separator: "; ")
        let n = try svc.set(vm, to: .shielded, reason: String(reason.prefix(1000)), interfaces: interfaces.isEmpty ? nil : interfaces, ports: ports)
        try Output.render(n, json: json, style: .ledger) {
            Output.stdout.line("\(vm.name): shielded on \(n.interfaces.joined(separator: ", ")); closed " + n.ports.map { "\($0.port)/\($0.proto) for \($0.findings.joined(separator: ", "))" }.joined(separator: "; "))
        }
    }
}

struct NetOpen: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "open", abstract: "Lift quarantine or shield (the reason is recorded).",
        discussion: """
            Example:
              warden net open web --reason "patched, rescanned"
            """)
    @OptionGroup var options: NetOptions
    @Argument(help: "The VM.") var vm: String
    @Option(help: "Why it may be open again (required; recorded).") var reason: String
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        let (svc, ledger) = try options.service()
        let vm = try ledger.resolveVM(vm)
        let n = try svc.set(vm, to: .open, reason: reason, interfaces: nil)
        try Output.render(n, json: json, style: .ledger) { Output.stdout.line("\(vm.name): open") }
    }
}

struct NetSync: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sync", abstract: "Re-derive every VM's rules from the ledger and apply them (one transaction).",
        discussion: """
            Example:
              warden net sync
            """)
    @OptionGroup var options: NetOptions
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        let (svc, _) = try options.service()
        let r = try svc.sync()
        try Output.render(r, json: json, style: .ledger) { Output.stdout.line("enforced \(r.enforced) VMs on \(r.interfaces) interfaces (\(r.rules) rules)") }
    }
}

struct NetNWFilter: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "nwfilter", abstract: "Print the libvirt nwfilter XML equivalent to the VM's current state.",
        discussion: """
            Example:
              warden net nwfilter web > web-filter.xml
            """)
    @OptionGroup var options: NetOptions
    @Argument(help: "The VM.") var vm: String
    func run() throws {
        let (svc, ledger) = try options.service()
        let vm = try ledger.resolveVM(vm)
        let n = try svc.state(of: vm.id) ?? VMNetwork(vm: vm.id, name: vm.name, state: .open, reason: "", interfaces: [], ports: [], since: Date(), seq: 0)
        try Output.stdout.write(Array(NFTRules.nwfilter(n, config: try svc.config()).utf8))
    }
}
