import WardenCore
import GuestFS

/// A systemd socket unit that is enabled and listens on network ports, and the package that
/// ships it (from dpkg's file lists).
public struct SocketListener: Codable, Sendable, Hashable {
    /// The unit (`ssh.socket`).
    public var unit: String
    /// The unit file read (a guest path).
    public var path: String
    /// The package whose file list holds the unit file; nil when no list names it.
    public var package: String?
    /// Ports it listens on: TCP from `ListenStream=`, UDP from `ListenDatagram=`. Loopback
    /// addresses, Unix sockets, netlink and vsock are left out: they are not reachable from the
    /// network.
    public var tcp: [UInt16]
    public var udp: [UInt16]
}

extension Inspection {
    /// Enabled systemd socket units (a `*.wants`/`*.requires` link, not masked) that listen
    /// on network ports, with drop-ins (`UNIT.d/*.conf`, in name order; an empty `ListenStream=`
    /// clears the list as systemd does) applied. Reads at most 256 socket units of 64 KiB each.
    public static func socketListeners(_ g: GuestFiles, services: ServiceInventory) -> [SocketListener] {
        let masked = Set(services.masked.map(\.unit))
        let units = Set(services.enabled.map(\.unit).filter { $0.hasSuffix(".socket") && !$0.contains("/") && !masked.contains($0) })
        var out: [SocketListener] = []
        var small = g
        small.maxFileSize = 64 << 10
        for unit in units.sorted().prefix(256) {
            // The unit file: the first directory that has it (/etc overrides the vendor's).
            guard let path = systemdUnitDirs.map({ $0 + "/" + unit }).first(where: { g.resolvedType($0) == .regular }),
                  let main = try? small.text(path) else { continue }
            var texts = [main]
            var dropIns: [String: String] = [:]
            for dir in systemdUnitDirs.reversed() {
                for name in g.names(in: dir + "/" + unit + ".d", limit: 64) where name.hasSuffix(".conf") { dropIns[name] = dir + "/" + unit + ".d/" + name }
            }
            for name in dropIns.keys.sorted() { if let t = try? small.text(dropIns[name]!) { texts.append(t) } }
            var stream: [UInt16] = [], datagram: [UInt16] = []
            for text in texts {
                var inSocket = false
                for raw in boundedLines(text) {
                    let line = raw.trimmingCharacters(in: .whitespaces)
                    if line.hasPrefix("[") { inSocket = line == "[Socket]"; continue }
                    guard inSocket, let eq = line.firstIndex(of: "=") else { continue }
                    let key = line[..<eq].trimmingCharacters(in: .whitespaces)
                    let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
                    switch key {
                    case "ListenStream":
                        if value.isEmpty { stream = [] } else if let p = networkPort(value) { stream.append(p) }
                    case "ListenDatagram":
                        if value.isEmpty { datagram = [] } else if let p = networkPort(value) { datagram.append(p) }
                    default: break
                    }
                }
            }
            guard !stream.isEmpty || !datagram.isEmpty else { continue }
            out.append(SocketListener(unit: unit, path: path, package: nil, tcp: Array(Set(stream)).sorted(), udp: Array(Set(datagram)).sorted()))
        }
        guard !out.isEmpty else { return [] }
        // Owners, from dpkg's file lists: read until every unit file has one.
        var wanted = Dictionary(uniqueKeysWithValues: out.enumerated().flatMap { i, l in
            systemdUnitDirs.map { ($0 + "/" + l.unit, i) }
        })
        let info = "/var/lib/dpkg/info"
        var lists = g
        lists.maxFileSize = 8 << 20
        for name in g.names(in: info) where name.hasSuffix(".list") && !wanted.isEmpty {
            guard let text = try? lists.text(info + "/" + name) else { continue }
            let package = String(name.dropLast(5).split(separator: ":").first ?? "")
            for line in boundedLines(text) where line.hasSuffix(".socket") {
                if let i = wanted[String(line)] {
                    out[i].package = package
                    for d in systemdUnitDirs { wanted[d + "/" + out[i].unit] = nil }
                }
            }
        }
        return out
    }

    /// The port of a systemd listen address that the network can reach: `22`, `0.0.0.0:22`,
    /// `[::]:22`, `192.0.2.1:22`; nil for loopback, Unix, abstract, netlink and vsock sockets.
    static func networkPort(_ value: String) -> UInt16? {
        if value.hasPrefix("/") || value.hasPrefix("@") || value.hasPrefix("vsock:") || value.contains(" ") { return nil }
        let host: String, port: String
        if let n = UInt16(value) { return n == 0 ? nil : n }
        if value.hasPrefix("["), let close = value.firstIndex(of: "]") {
            host = String(value[value.index(after: value.startIndex)..<close])
            port = String(value[close...].dropFirst().drop { $0 == ":" })
        } else if let colon = value.lastIndex(of: ":") {
            host = String(value[..<colon]); port = String(value[value.index(after: colon)...])
        } else {
            return nil
        }
        if host == "::1" || host.hasPrefix("127.") || host == "localhost" { return nil }
        guard let n = UInt16(port), n != 0 else { return nil }
        return n
    }
}
