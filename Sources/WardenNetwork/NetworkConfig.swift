import Foundation
import Policy
import WardenCore
import Yams

/// What quarantine lets through and what shields block (docs/network.md): `network/network.yaml`
/// in the policy directory, parsed strictly (unknown keys, malformed addresses or ports are
/// errors naming the file and the line), and failing closed — a configuration that cannot be
/// read quarantines with nothing allowed but DHCP, never opens.
public struct NetworkConfig: Sendable, Equatable {
    /// A destination a quarantined VM may reach: an address or prefix, a protocol, ports.
    public struct Endpoint: Sendable, Equatable, Codable {
        public var address: IPPrefix
        public var proto: String
        public var ports: [UInt16]
        public init(address: IPPrefix, proto: String, ports: [UInt16]) { self.address = address; self.proto = proto; self.ports = ports }
    }
    /// DNS servers a quarantined VM may ask (UDP and TCP 53).
    public var resolvers: [IPPrefix] = []
    /// Patch mirrors a quarantined VM may reach.
    public var mirrors: [Endpoint] = []
    /// Whether a quarantined VM may run DHCP (default yes: it needs an address to be patched).
    public var dhcp = true
    /// Shields block the services of findings at or above this severity (default high).
    public var shieldSeverity: Severity = .high
    /// Extra package → ports entries for shields (added to the built-in table).
    public var servicePorts: [String: [UInt16]] = [:]

    public init() {}

    /// `network/network.yaml` in the policy directory.
    public static func path(policyDirectory: String) -> String { policyDirectory + "/network/network.yaml" }

    /// The configuration in `policyDirectory`; the defaults when the file does not exist.
    public static func load(policyDirectory: String) throws -> NetworkConfig {
        let path = Self.path(policyDirectory: policyDirectory)
        guard FileManager.default.fileExists(atPath: path) else { return NetworkConfig() }
        guard let data = FileManager.default.contents(atPath: path), data.count <= 1 << 20,
              let text = String(data: data, encoding: .utf8) else {
            throw WardenError(.invalidArgument, "cannot read the network configuration (or it is over 1 MiB)", file: path)
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws -> NetworkConfig {
        func bad(_ message: String, _ node: Node? = nil) -> WardenError {
            let line = node.map { " line \($0.mark?.line ?? 0):" } ?? ""
            return WardenError(.invalidArgument, "\(line.isEmpty ? "" : String(line.dropFirst()) + " ")\(message)", file: file)
        }
        let root: Node?
        root = try YAMLNesting.compose(text, file: file)
        guard let root, case .mapping(let top) = root else { throw bad("the network configuration is a mapping (apiVersion, kind, quarantine, shield)") }
        var config = NetworkConfig()
        for (k, v) in top {
            guard let key = k.string else { throw bad("keys are strings", k) }
            switch key {
            case "apiVersion": guard v.string == "warden/v1" else { throw bad("apiVersion must be warden/v1", v) }
            case "kind": guard v.string == "Network" else { throw bad("kind must be Network", v) }
            case "quarantine":
                guard case .mapping(let q) = v else { throw bad("quarantine is a mapping (resolvers, mirrors, dhcp)", v) }
                for (qk, qv) in q {
                    switch qk.string {
                    case "resolvers":
                        guard case .sequence(let seq) = qv, seq.count <= 64 else { throw bad("quarantine.resolvers is a list of up to 64 addresses", qv) }
                        config.resolvers = try seq.map { n in
                            guard let s = n.string, let p = IPPrefix(s), p.isHost else { throw bad("a resolver is one IP address", n) }
                            return p
                        }
                    case "mirrors":
                        guard case .sequence(let seq) = qv, seq.count <= 256 else { throw bad("quarantine.mirrors is a list of up to 256 mirrors", qv) }
                        config.mirrors = try seq.map { n in
                            guard case .mapping(let m) = n else { throw bad("a mirror is {address, ports, protocol}", n) }
                            var address: IPPrefix?, ports: [UInt16] = [80, 443], proto = "tcp"
                            for (mk, mv) in m {
                                switch mk.string {
                                case "address":
                                    guard let s = mv.string, let p = IPPrefix(s) else { throw bad("a mirror's address is an IP address or prefix (192.0.2.10, 2001:db8::/64)", mv) }
                                    address = p
                                case "ports": ports = try Self.ports(mv, bad)
                                case "protocol":
                                    guard let s = mv.string, ["tcp", "udp"].contains(s) else { throw bad("a mirror's protocol is tcp or udp", mv) }
                                    proto = s
                                default: throw bad("unknown key \(mk.string ?? "?") in a mirror (address, ports, protocol)", mk)
                                }
                            }
                            guard let address else { throw bad("a mirror needs an address", n) }
                            return Endpoint(address: address, proto: proto, ports: ports)
                        }
                    case "dhcp":
                        guard let b = qv.bool else { throw bad("quarantine.dhcp is true or false", qv) }
                        config.dhcp = b
                    default: throw bad("unknown key \(qk.string ?? "?") in quarantine (resolvers, mirrors, dhcp)", qk)
                    }
                }
            case "shield":
                guard case .mapping(let s) = v else { throw bad("shield is a mapping (severity, servicePorts)", v) }
                for (sk, sv) in s {
                    switch sk.string {
                    case "severity":
                        guard let w = sv.string, let sev = Severity(word: w), sev != .unknown else { throw bad("shield.severity is low, medium, high or critical", sv) }
                        config.shieldSeverity = sev
                    case "servicePorts":
                        guard case .mapping(let m) = sv, m.count <= 1024 else { throw bad("shield.servicePorts maps package names to port lists", sv) }
                        for (pk, pv) in m {
                            guard let name = pk.string, (1...128).contains(name.utf8.count) else { throw bad("a package name is 1-128 bytes", pk) }
                            config.servicePorts[name] = try Self.ports(pv, bad)
                        }
                    default: throw bad("unknown key \(sk.string ?? "?") in shield (severity, servicePorts)", sk)
                    }
                }
            default: throw bad("unknown key \(key) (apiVersion, kind, quarantine, shield)", k)
            }
        }
        return config
    }

    static func ports(_ node: Node, _ bad: (String, Node?) -> WardenError) throws -> [UInt16] {
        guard case .sequence(let seq) = node, (1...64).contains(seq.count) else { throw bad("ports is a list of 1-64 port numbers", node) }
        return try seq.map { n in
            guard let s = n.string, let p = UInt16(s), p > 0 else { throw bad("a port is 1-65535", n) }
            return p
        }
    }
}

/// An IPv4 or IPv6 address with an optional prefix length, checked (never passed on as text
/// that was not parsed).
public struct IPPrefix: Sendable, Equatable, Codable, CustomStringConvertible {
    public let bytes: [UInt8]
    public let length: Int
    public var isV6: Bool { bytes.count == 16 }
    public var isHost: Bool { length == bytes.count * 8 }

    public init?(_ text: String) {
        guard text.utf8.count <= 64, !text.isEmpty else { return nil }
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        var v4 = in_addr(), v6 = in6_addr()
        let addr = String(parts[0])
        if inet_pton(AF_INET, addr, &v4) == 1 {
            bytes = withUnsafeBytes(of: &v4) { Array($0) }
        } else if inet_pton(AF_INET6, addr, &v6) == 1 {
            bytes = withUnsafeBytes(of: &v6) { Array($0) }
        } else { return nil }
        if parts.count == 2 {
            guard let n = Int(parts[1]), n >= 0, n <= bytes.count * 8, parts[1].allSatisfy(\.isNumber) else { return nil }
            length = n
        } else {
            length = bytes.count * 8
        }
    }

    /// The canonical text (`inet_ntop`), with `/len` unless a single address.
    public var description: String {
        var buf = [CChar](repeating: 0, count: 64)
        _ = bytes.withUnsafeBytes { inet_ntop(isV6 ? AF_INET6 : AF_INET, $0.baseAddress, &buf, socklen_t(buf.count)) }
        let a = String(cString: buf)
        return isHost ? a : "\(a)/\(length)"
    }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let p = IPPrefix(s) else { throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an IP address")) }
        self = p
    }
    public func encode(to encoder: Encoder) throws { var c = encoder.singleValueContainer(); try c.encode(description) }
}
