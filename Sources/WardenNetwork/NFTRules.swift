import Foundation
import WardenCore

/// The nftables rule set for every VM that is not open, as one script (docs/network.md):
///
/// - one Warden-owned table, `netdev warden`;
/// - per VM interface, a chain on its **ingress** hook (packets from the VM) and one on its
///   **egress** hook (packets to the VM), so the rules hold whatever bridge or route the
///   interface is on, and nothing inside the guest can change them;
/// - a named counter per VM and direction for what was dropped.
///
/// The script first creates the table (so the delete cannot fail), deletes it, and defines it
/// anew: `nft -f` applies a file as one transaction, so packets see the old rules or the new,
/// never a half-applied set, and rules of VMs that are gone disappear with the old table.
public enum NFTRules {
    public static let table = "warden"
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

    /// The whole script for `vms` (open ones contribute nothing). Interfaces for which
    /// `present` is false (not on this host now: a stopped VM's vnet) are left out — a chain
    /// cannot hang on a device that does not exist — and reported as not enforced.
    public static func script(_ vms: [VMNetwork], config: NetworkConfig, present: (String) -> Bool = Interface.exists) -> String {
        var out = "table netdev \(table) {\n}\ndelete table netdev \(table)\ntable netdev \(table) {\n"
        for vm in vms.sorted(by: { $0.vm.description < $1.vm.description }) where vm.state != .open {
            for iface in vm.interfaces where Interface.isValid(iface) && present(iface) {
                out += chains(vm, iface, config: config)
            }
        }
        out += "}\n"
        return out
    }

    /// One VM's change as one transaction that leaves every other VM's rules alone: its old and
    /// new interfaces' chains and counters are declared (so deleting them cannot fail) and
    /// deleted, then its new rules are added.
    public static func change(from old: VMNetwork?, to new: VMNetwork, config: NetworkConfig, present: (String) -> Bool = Interface.exists) -> String {
        var out = "table netdev \(table) {\n}\n"
        let ifaces = Set((old?.interfaces ?? []) + new.interfaces).filter { Interface.isValid($0) && present($0) }.sorted()
        for iface in ifaces {
            let t = tag(new, iface)
            let (o, i) = counterNames(new, iface)
            for (name, hook) in [("q_out_\(t)", "ingress"), ("q_in_\(t)", "egress"), ("s_in_\(t)", "egress")] {
                out += "add chain netdev \(table) \(name) { type filter hook \(hook) device \"\(iface)\" priority -100; policy accept; }\n"
                out += "delete chain netdev \(table) \(name)\n"
            }
            for c in [o, i] { out += "add counter netdev \(table) \(c)\ndelete counter netdev \(table) \(c)\n" }
        }
        if new.state != .open {
            out += "table netdev \(table) {\n"
            for iface in new.interfaces where Interface.isValid(iface) && present(iface) { out += chains(new, iface, config: config) }
            out += "}\n"
        }
        return out
    }

    static func chains(_ vm: VMNetwork, _ iface: String, config: NetworkConfig) -> String {
        let t = tag(vm, iface)
        let (outCounter, inCounter) = counterNames(vm, iface)
        var s = "  counter \(outCounter) {\n  }\n  counter \(inCounter) {\n  }\n"
        switch vm.state {
        case .open:
            return ""
        case .quarantined:
            // From the VM: ARP, DHCP, DNS to the resolvers, the mirrors; nothing else.
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
            fromVM.append("counter name \"\(outCounter)\" drop")
            toVM.append("counter name \"\(inCounter)\" drop")
            s += chain("q_out_\(t)", hook: "ingress", iface: iface, rules: fromVM)
            s += chain("q_in_\(t)", hook: "egress", iface: iface, rules: toVM)
        case .shielded:
            // To the VM: the closed services' ports are dropped (both ways of a connection to
            // them die: the VM never sees the SYN); everything else passes.
            var toVM: [String] = []
            let tcp = Set(vm.ports.filter { $0.proto == "tcp" }.map(\.port)).sorted()
            let udp = Set(vm.ports.filter { $0.proto == "udp" }.map(\.port)).sorted()
            if !tcp.isEmpty { toVM.append("tcp dport { \(tcp.map(String.init).joined(separator: ", ")) } counter name \"\(inCounter)\" drop") }
            if !udp.isEmpty { toVM.append("udp dport { \(udp.map(String.init).joined(separator: ", ")) } counter name \"\(inCounter)\" drop") }
            s += chain("s_in_\(t)", hook: "egress", iface: iface, rules: toVM)
        }
        return s
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
