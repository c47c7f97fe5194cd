import Foundation
import Ledger
import WardenCore

/// A VM's network state (docs/network.md).
public enum NetState: String, Codable, Sendable, CaseIterable {
    /// Everything passes.
    case open
    /// Only DHCP, DNS to the configured resolvers and the configured patch mirrors pass.
    case quarantined
    /// Inbound connections to the services with open findings are dropped; the rest passes.
    case shielded
}

/// A port a shield closes, and the findings that closed it.
public struct ShieldedPort: Codable, Sendable, Equatable, Hashable {
    public var port: UInt16
    public var proto: String
    /// The package whose service listens there.
    public var package: String
    /// Advisory ids of the findings that closed it.
    public var findings: [String]
    public init(port: UInt16, proto: String, package: String, findings: [String]) {
        self.port = port; self.proto = proto; self.package = package; self.findings = findings
    }
}

/// A VM's network state as recorded in the ledger: the last `network-state` event of the VM.
public struct VMNetwork: Codable, Sendable, Equatable {
    public var vm: VMID
    public var name: String
    public var state: NetState
    public var reason: String
    /// The host interfaces that carry the VM's traffic (its tap, a libvirt `vnetN`).
    public var interfaces: [String]
    public var ports: [ShieldedPort]
    public var since: Date
    public var seq: Int64

    public init(vm: VMID, name: String, state: NetState, reason: String, interfaces: [String], ports: [ShieldedPort], since: Date, seq: Int64) {
        self.vm = vm; self.name = name; self.state = state; self.reason = reason; self.interfaces = interfaces; self.ports = ports
        self.since = since; self.seq = seq
    }

    /// The event payload that records this state.
    public var payload: [String: JSONValue] {
        var p: [String: JSONValue] = ["state": .string(state.rawValue), "reason": .string(reason),
                                      "interfaces": .array(interfaces.map { .string($0) })]
        if !ports.isEmpty {
            p["ports"] = .array(ports.map { .object(["port": .number(Double($0.port)), "protocol": .string($0.proto), "package": .string($0.package),
                                                     "findings": .array($0.findings.map { .string($0) })]) })
        }
        return p
    }

    /// The state an event records; nil when the payload is not one Warden wrote.
    public static func from(_ e: EventRecord, name: String) -> VMNetwork? {
        guard e.kind == .networkState, let vm = e.vm, let s = e.payload["state"]?.stringValue, let state = NetState(rawValue: s),
              case .array(let ifs)? = e.payload["interfaces"] else { return nil }
        let interfaces = ifs.compactMap(\.stringValue).filter(Interface.isValid)
        var ports: [ShieldedPort] = []
        if case .array(let list)? = e.payload["ports"] {
            for item in list {
                guard case .object(let o) = item, case .number(let n)? = o["port"], n >= 1, n <= 65535,
                      let proto = o["protocol"]?.stringValue, ["tcp", "udp"].contains(proto) else { continue }
                var ids: [String] = []
                if case .array(let f)? = o["findings"] { ids = f.compactMap(\.stringValue) }
                ports.append(ShieldedPort(port: UInt16(n), proto: proto, package: o["package"]?.stringValue ?? "", findings: ids))
            }
        }
        return VMNetwork(vm: vm, name: name, state: state, reason: e.payload["reason"]?.stringValue ?? "", interfaces: interfaces,
                         ports: ports, since: e.time, seq: e.seq)
    }
}

/// Host interface names as the kernel takes them (IFNAMSIZ): 1-15 bytes of letters, digits,
/// `_ . -`, never `.`/`..`. Anything else — shell metacharacters, quotes, spaces — is refused
/// before it could reach an nft script.
public enum Interface {
    public static func isValid(_ name: String) -> Bool {
        (1...15).contains(name.utf8.count) && name != "." && name != ".."
            && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "_.-".unicodeScalars.contains($0) }
    }

    /// Whether the interface exists in this network namespace now.
    public static func exists(_ name: String) -> Bool { isValid(name) && if_nametoindex(name) != 0 }

    public static func check(_ name: String) throws -> String {
        guard isValid(name) else {
            throw WardenError(.invalidArgument, "not an interface name: \(TerminalText.line(String(name.prefix(40)))) (1-15 letters, digits, _ . -)")
        }
        return name
    }
}

/// The package → ports table shields use: which service a package runs, where it listens by
/// default. Binary or source package names; extended by `shield.servicePorts`.
public enum ServicePorts {
    public static let builtIn: [String: [UInt16]] = [
        "openssh": [22], "openssh-server": [22], "dropbear": [22], "dropbear-bin": [22],
        "apache2": [80, 443], "httpd": [80, 443], "nginx": [80, 443], "nginx-core": [80, 443], "lighttpd": [80, 443],
        "postfix": [25, 465, 587], "exim4": [25, 465, 587], "exim4-daemon-light": [25, 465, 587], "sendmail": [25],
        "dovecot-core": [110, 143, 993, 995], "dovecot": [110, 143, 993, 995],
        "bind9": [53], "unbound": [53], "dnsmasq": [53],
        "samba": [139, 445], "nfs-kernel-server": [2049], "rpcbind": [111], "vsftpd": [21], "proftpd-basic": [21],
        "mariadb-server": [3306], "mysql-server": [3306], "postgresql": [5432], "redis-server": [6379], "redis": [6379],
        "memcached": [11211], "mongodb-server": [27017], "openldap": [389, 636], "slapd": [389, 636],
        "squid": [3128], "haproxy": [80, 443], "tomcat9": [8080], "jenkins": [8080], "docker.io": [2375, 2376],
        "xrdp": [3389], "tigervnc-standalone-server": [5900], "cups": [631], "snmpd": [161], "ntp": [123], "chrony": [123],
    ]
}
