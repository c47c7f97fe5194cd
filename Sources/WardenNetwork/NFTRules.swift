import Foundation
import WardenCore

/// The nftables rule set for every VM that is not open, as one script (docs/network.md):
///
/// - one Warden-owned table, `netdev warden`;
/// - what quarantine lets through (DHCP, DNS to the resolvers, the mirrors) once, in two
///   regular chains, `quarantine_from_vm` and `quarantine_to_vm`;
/// - per VM interface, a base chain on its **ingress** hook (packets from the VM, `out_…`) and
///   one on its **egress** hook (packets to the VM, `in_…`), so the rules hold whatever bridge or
///   route the interface is on and nothing inside the guest can change them. A quarantined VM's
///   chains jump to the shared chains and count and drop what comes back; a shielded VM's `in_`
///   chain drops its closed ports;
/// - a named counter per VM interface and direction for what was dropped.
///
/// The whole-table script first creates the table (so the delete cannot fail), deletes it, and
/// defines it anew; a change touches one VM's chains and the shared chains. Either is applied as
/// one netlink batch, so packets see the old rules or the new, never a half-applied set.
public enum NFTRules {
    public static let table = "warden"
    static let fromVMChain = "quarantine_from_vm"
    static let toVMChain = "quarantine_to_vm"
    /// UDP services among the shielded ports (the others are TCP).
    static let udpServices: Set<UInt16> = [53, 67, 69, 123, 137, 138, 161, 500, 514, 1900, 5353]

    /// A chain- and counter-safe token for a VM and interface.
    static func tag(_ vm: VMNetwork, _ iface: String) -> String {
        let id = String(vm.vm.description.replacingOccurrences(of: "-", with: "").prefix(12))
        let safe = iface.map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
        return "\(id)_\(safe)"
    }

    public static func counterNames(_ vm: VMNetwork, _ iface: String) -> (fromVM: String, toVM: String) {
        let t = tag(vm, iface)
        return ("drop_out_\(t)", "drop_in_\(t)")
    }

    /// The base chains of an interface: from the VM (ingress) and to it (egress).
    static func chainNames(_ vm: VMNetwork, _ iface: String) -> (fromVM: String, toVM: String) {
        let t = tag(vm, iface)
        return ("out_\(t)", "in_\(t)")
    }

    /// The whole script for `vms` (open ones contribute nothing). Interfaces for which
    /// `present` is false (not on this host now: a stopped VM's vnet) are left out — a chain
    /// cannot hang on a device that does not exist — and reported as not enforced.
    public static func script(_ vms: [VMNetwork], config: NetworkConfig, present: (String) -> Bool = Interface.exists) -> String {
        var out = "table netdev \(table) {\n}\ndelete table netdev \(table)\ntable netdev \(table) {\n"
        out += sharedChains(config: config)
        for vm in vms.sorted(by: { $0.vm.description < $1.vm.description }) where vm.state != .open {
            for iface in vm.interfaces where Interface.isValid(iface) && present(iface) {
                let (o, i) = counterNames(vm, iface)
                out += "  counter \(o) {\n  }\n  counter \(i) {\n  }\n"
                for (name, hook, rules) in chains(vm, iface) { out += chain(name, hook: hook, iface: iface, rules: rules) }
            }
        }
        out += "}\n"
        return out
    }

    /// One VM's change as one transaction that leaves every other VM's rules alone: the shared
    /// chains are refreshed from the configuration, the VM's chains that its new state keeps are
    /// declared, flushed and refilled, and the ones it no longer needs (an interface it left, or
    /// all of them when it opens) are declared and deleted, so neither step can fail on what is
    /// or is not there.
    public static func change(from old: VMNetwork?, to new: VMNetwork, config: NetworkConfig, present: (String) -> Bool = Interface.exists) -> String {
        var out = "table netdev \(table) {\n  chain \(fromVMChain) {\n  }\n  chain \(toVMChain) {\n  }\n}\n"
        out += "flush chain netdev \(table) \(fromVMChain)\nflush chain netdev \(table) \(toVMChain)\n"
        out += "table netdev \(table) {\n" + sharedChains(config: config) + "}\n"
        let ifaces = Set((old?.interfaces ?? []) + new.interfaces).filter { Interface.isValid($0) && present($0) }.sorted()
        for iface in ifaces {
            let keep = new.state != .open && new.interfaces.contains(iface) ? chains(new, iface) : []
            let (fromName, toName) = chainNames(new, iface)
            let (o, i) = counterNames(new, iface)
            // Counters exist before the rules that name them, and go after the rules that did.
            if !keep.isEmpty { for c in [o, i] { out += "add counter netdev \(table) \(c)\n" } }
            for (name, hook) in [(fromName, "ingress"), (toName, "egress")] {
                out += "add chain netdev \(table) \(name) { type filter hook \(hook) device \"\(iface)\" priority -100; policy accept; }\n"
                if let kept = keep.first(where: { $0.name == name }) {
                    out += "flush chain netdev \(table) \(name)\n"
                    for r in kept.rules { out += "add rule netdev \(table) \(name) \(r)\n" }
                } else {
                    out += "delete chain netdev \(table) \(name)\n"
                }
            }
            if keep.isEmpty { for c in [o, i] { out += "add counter netdev \(table) \(c)\ndelete counter netdev \(table) \(c)\n" } }
        }
        return out
    }

    /// The regular chains quarantined VMs jump to: what may pass from and to them. Nothing
    /// VM-specific, so every quarantined VM shares them and a change never rewrites them per VM.
    static func sharedChains(config: NetworkConfig) -> String {
        // From the VM: ARP, DHCP, DNS to the resolvers, the mirrors; whatever does not match
        // returns to the VM's own chain, which counts and drops it.
        var fromVM = ["ether type arp accept"]
        var toVM = ["ether type arp accept"]
        if config.dhcp {
            fromVM.append("udp sport 68 udp dport 67 accept")
            toVM.append("udp sport 67 udp dport 68 accept")
        }
        for r in config.resolvers {
            let fam = r.isV6 ? "ip6" : "ip"
            fromVM.append("\(fam) daddr \(r) udp dport 53 accept")
            fromVM.append("\(fam) daddr \(r) tcp dport 53 accept")
            toVM.append("\(fam) saddr \(r) udp sport 53 accept")
            toVM.append("\(fam) saddr \(r) tcp sport 53 accept")
        }
        for m in config.mirrors {
            let fam = m.address.isV6 ? "ip6" : "ip"
            let ports = m.ports.map(String.init).joined(separator: ", ")
            fromVM.append("\(fam) daddr \(m.address) \(m.proto) dport { \(ports) } accept")
            toVM.append("\(fam) saddr \(m.address) \(m.proto) sport { \(ports) } accept")
        }
        if config.resolvers.contains(where: \.isV6) || config.mirrors.contains(where: { $0.address.isV6 }) {
            // IPv6 needs neighbour discovery to reach anything at all.
            fromVM.append("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept")
            toVM.append("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept")
        }
        func regular(_ name: String, _ rules: [String]) -> String {
            "  chain \(name) {\n" + rules.map { "    \($0)\n" }.joined() + "  }\n"
        }
        return regular(fromVMChain, fromVM) + regular(toVMChain, toVM)
    }

    /// A non-open VM's base chains on `iface`, with their rules.
    static func chains(_ vm: VMNetwork, _ iface: String) -> [(name: String, hook: String, rules: [String])] {
        let (fromName, toName) = chainNames(vm, iface)
        let (outCounter, inCounter) = counterNames(vm, iface)
        switch vm.state {
        case .open:
            return []
        case .quarantined:
            return [(fromName, "ingress", ["jump \(fromVMChain)", "counter name \"\(outCounter)\" drop"]),
                    (toName, "egress", ["jump \(toVMChain)", "counter name \"\(inCounter)\" drop"])]
        case .shielded:
            // To the VM: the closed services' ports are dropped (both ways of a connection to
            // them die: the VM never sees the SYN); everything else passes.
            var toVM: [String] = []
            let tcp = Set(vm.ports.filter { $0.proto == "tcp" }.map(\.port)).sorted()
            let udp = Set(vm.ports.filter { $0.proto == "udp" }.map(\.port)).sorted()
            if !tcp.isEmpty { toVM.append("tcp dport { \(tcp.map(String.init).joined(separator: ", ")) } counter name \"\(inCounter)\" drop") }
            if !udp.isEmpty { toVM.append("udp dport { \(udp.map(String.init).joined(separator: ", ")) } counter name \"\(inCounter)\" drop") }
            return [(toName, "egress", toVM)]
        }
    }

    static func chain(_ name: String, hook: String, iface: String, rules: [String]) -> String {
        var s = "  chain \(name) {\n    type filter hook \(hook) device \"\(iface)\" priority -100; policy accept;\n"
        for r in rules { s += "    \(r)\n" }
        return s + "  }\n"
    }

    /// The libvirt nwfilter XML with the same effect, for users who prefer libvirt's filters.
    public static func nwfilter(_ vm: VMNetwork, config: NetworkConfig) -> String {
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: "\"", with: "&quot;")
        }
        var rules: [String] = []
        var priority = 100
        func rule(_ action: String, _ direction: String, _ body: String) {
            rules.append("  <rule action='\(action)' direction='\(direction)' priority='\(priority)'>\n    \(body)\n  </rule>")
            priority += 10
        }
        switch vm.state {
        case .open: break
        case .quarantined:
            rule("accept", "inout", "<arp/>")
            if config.dhcp {
                rule("accept", "out", "<udp srcportstart='68' dstportstart='67'/>")
                rule("accept", "in", "<udp srcportstart='67' dstportstart='68'/>")
            }
            for r in config.resolvers {
                let el = r.isV6 ? ("udp-ipv6", "tcp-ipv6") : ("udp", "tcp")
                rule("accept", "out", "<\(el.0) dstipaddr='\(esc(r.description))' dstportstart='53'/>")
                rule("accept", "out", "<\(el.1) dstipaddr='\(esc(r.description))' dstportstart='53'/>")
            }
            for m in config.mirrors {
                let el = m.address.isV6 ? "\(m.proto)-ipv6" : m.proto
                let mask = m.address.isHost ? "" : " dstipmask='\(m.address.length)'"
                let addr = IPPrefix(m.address.description.split(separator: "/").first.map(String.init) ?? "")?.description ?? ""
                for p in m.ports { rule("accept", "out", "<\(el) dstipaddr='\(esc(addr))'\(mask) dstportstart='\(p)'/>") }
            }
            rule("drop", "inout", "<all/>")
            rule("drop", "inout", "<all-ipv6/>")
        case .shielded:
            for p in vm.ports { rule("drop", "in", "<\(p.proto) dstportstart='\(p.port)'/>") }
        }
        return "<filter name='warden-\(vm.vm.description)' chain='root'>\n" + rules.joined(separator: "\n") + (rules.isEmpty ? "" : "\n") + "</filter>\n"
    }
}
