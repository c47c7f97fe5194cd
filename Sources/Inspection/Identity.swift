import WardenCore
import GuestFS

/// Per-machine identity that clones of one image must not share.
public struct IdentityInfo: Codable, Sendable, Equatable {
    public var hostname: Fact<String>
    /// The file the hostname came from.
    public var hostnameSource: Fact<String>
    public var machineId: Fact<String>
    public var dbusMachineId: Fact<String>
    /// True when `/var/lib/dbus/machine-id` is a symlink resolving to `/etc/machine-id`.
    public var dbusMachineIdLinksToEtc: Bool
    public var randomSeed: RandomSeedInfo
    public var cloudInitInstanceId: Fact<String>
    /// MAC-bound interface names from udev persistent-net rules.
    public var persistentNetRules: [UdevNetRule]
    /// NetworkManager connection profiles that pin a MAC address (secrets never read out).
    public var networkManagerConnections: [NMConnection]
    /// DHCP lease files (paths only).
    public var dhcpLeases: [String]
    /// Non-fatal problems while reading.
    public var warnings: [String]
}

public struct RandomSeedInfo: Codable, Sendable, Equatable {
    public var path: String
    public var present: Bool
    /// Size in bytes (content is never read).
    public var size: UInt64?
}

public struct UdevNetRule: Codable, Sendable, Equatable {
    public var path: String
    public var line: Int
    public var macAddress: String
    /// The `NAME=` the rule assigns, if any.
    public var name: String?
}

public struct NMConnection: Codable, Sendable, Equatable {
    public var path: String
    public var id: String?
    public var type: String?
    public var macAddresses: [NMMACAddress]
}

public struct NMMACAddress: Codable, Sendable, Equatable {
    /// Section the key is in (`ethernet`, `wifi`, ...).
    public var section: String
    public var key: String
    public var value: String
}

extension Inspection {
    static let smallFile = 64 * 1024

    /// Identity facts. Never throws; unreadable items are unknowns or warnings.
    public static func identity(_ g: GuestFiles) -> IdentityInfo {
        var warnings: [String] = []

        // Hostname.
        var hostname: Fact<String> = .unknown(reason: "no /etc/hostname or /etc/HOSTNAME")
        var hostnameSource: Fact<String> = .unknown(reason: "no hostname file")
        for p in ["/etc/hostname", "/etc/HOSTNAME"] {
            switch g.load(p, maxBytes: smallFile) {
            case .absent: continue
            case .failed(let r): hostname = .unknown(reason: r); continue
            case .bytes(let b):
                hostnameSource = .known(p)
                let first = boundedLines(String(decoding: b, as: UTF8.self)).lazy
                    .map { $0.trimmedWS }.first { !$0.isEmpty && !$0.hasPrefix("#") }
                if let h = first {
                    hostname = h.utf8.count <= 253 ? .known(h) : .unknown(reason: "\(p): hostname longer than 253 bytes")
                } else {
                    hostname = .unknown(reason: "\(p) is empty")
                }
            }
            break
        }

        let machineId = readMachineID(g, "/etc/machine-id")
        let dbusPath = "/var/lib/dbus/machine-id"
        var dbusLinks = false
        if let st = try? g.lstat(dbusPath), st.type == .symlink {
            dbusLinks = g.canonical(dbusPath) == "/etc/machine-id"
        }
        var dbusId = readMachineID(g, dbusPath)
        if dbusLinks, case .unknown(let r) = dbusId { dbusId = .unknown(reason: "symlink to /etc/machine-id: " + r) }

        // Random seed: size only, content never read.
        let seedPath = "/var/lib/systemd/random-seed"
        var seed = RandomSeedInfo(path: seedPath, present: false, size: nil)
        if let st = try? GuestPathResolver(g.fs).resolve(seedPath).stat {
            seed.present = true
            seed.size = st.type == .regular ? st.size : nil
        }

        // cloud-init instance id.
        let cloud: Fact<String>
        switch g.load("/var/lib/cloud/data/instance-id", maxBytes: smallFile) {
        case .absent: cloud = .unknown(reason: "/var/lib/cloud/data/instance-id absent (cloud-init has not run or is not installed)")
        case .failed(let r): cloud = .unknown(reason: r)
        case .bytes(let b):
            let v = String(decoding: b, as: UTF8.self).trimmedWS
            cloud = v.isEmpty ? .unknown(reason: "instance-id file is empty") : .known(String(v.prefix(256)))
        }

        let udev = udevRules(g, &warnings)
        let nm = networkManagerConnections(g, &warnings)
        let leases = dhcpLeases(g)

        return IdentityInfo(hostname: hostname, hostnameSource: hostnameSource, machineId: machineId,
                            dbusMachineId: dbusId, dbusMachineIdLinksToEtc: dbusLinks, randomSeed: seed,
                            cloudInitInstanceId: cloud, persistentNetRules: udev,
                            networkManagerConnections: nm, dhcpLeases: leases, warnings: warnings)
    }

    /// Reads and validates a machine-id file (32 lowercase hex characters).
    static func readMachineID(_ g: GuestFiles, _ path: String) -> Fact<String> {
        switch g.load(path, maxBytes: 4096) {
        case .absent: return .unknown(reason: "\(path) absent")
        case .failed(let r): return .unknown(reason: r)
        case .bytes(let b):
            let v = String(decoding: b, as: UTF8.self).trimmedWS
            if v.isEmpty { return .unknown(reason: "\(path) is empty (generated on first boot)") }
            if v == "uninitialized" { return .unknown(reason: "\(path) is 'uninitialized' (generated on first boot)") }
            let ok = v.utf8.count == 32 && v.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
            return ok ? .known(v) : .unknown(reason: "\(path) is not 32 lowercase hexadecimal characters")
        }
    }

    static let udevRulesPath = "/etc/udev/rules.d/70-persistent-net.rules"

    static func udevRules(_ g: GuestFiles, _ warnings: inout [String]) -> [UdevNetRule] {
        let text: String
        switch g.load(udevRulesPath, maxBytes: 1 << 20) {
        case .absent: return []
        case .failed(let r): warnings.append(r); return []
        case .bytes(let b): text = String(decoding: b, as: UTF8.self)
        }
        var out: [UdevNetRule] = []
        for (i, raw) in boundedLines(text).enumerated() {
            let line = raw.trimmedWS
            if line.isEmpty || line.hasPrefix("#") { continue }
            var mac: String?, name: String?
            for (key, op, value) in udevPairs(line) {
                if key == "ATTR{address}" && op == "==" { mac = value }
                if key == "NAME" && (op == "=" || op == ":=") { name = value }
            }
            if let mac, out.count < TextLimits.maxEntries {
                out.append(UdevNetRule(path: udevRulesPath, line: i + 1, macAddress: mac, name: name))
            }
        }
        return out
    }

    /// Splits a udev rule into (key, operator, value) triples: `KEY op "value"` separated by commas.
    static func udevPairs(_ line: String) -> [(String, String, String)] {
        var out: [(String, String, String)] = []
        let c = Array(line)
        var i = 0
        while i < c.count {
            while i < c.count, c[i] == " " || c[i] == "\t" || c[i] == "," { i += 1 }
            var key = ""
            while i < c.count, !"=!+-:".contains(c[i]), c[i] != " ", c[i] != "\t" { key.append(c[i]); i += 1 }
            while i < c.count, c[i] == " " || c[i] == "\t" { i += 1 }
            var op = ""
            while i < c.count, "=!+-:".contains(c[i]), op.count < 2 { op.append(c[i]); i += 1 }
            while i < c.count, c[i] == " " || c[i] == "\t" { i += 1 }
            guard !key.isEmpty, !op.isEmpty, i < c.count, c[i] == "\"" else {
                // Malformed: skip to the next comma.
                while i < c.count, c[i] != "," { i += 1 }
                continue
            }
            i += 1
            var value = ""
            while i < c.count, c[i] != "\"" {
                if c[i] == "\\", i + 1 < c.count { value.append(c[i + 1]); i += 2; continue }
                value.append(c[i]); i += 1
            }
            i += 1
            out.append((key, op, value))
        }
        return out
    }

    static let nmDir = "/etc/NetworkManager/system-connections"
    static let nmMACSections: Set<String> = ["ethernet", "wifi", "802-3-ethernet", "802-11-wireless", "wimax", "infiniband"]
    static let nmMACKeys: Set<String> = ["mac-address", "cloned-mac-address"]

    static func networkManagerConnections(_ g: GuestFiles, _ warnings: inout [String]) -> [NMConnection] {
        var out: [NMConnection] = []
        for name in g.names(in: nmDir, limit: 4096) {
            let path = nmDir + "/" + name
            guard g.resolvedType(path) == .regular else { continue }
            let text: String
            switch g.load(path, maxBytes: 1 << 20) {
            case .absent: continue
            case .failed(let r): warnings.append(r); continue
            case .bytes(let b): text = String(decoding: b, as: UTF8.self)
            }
            var conn = NMConnection(path: path, id: nil, type: nil, macAddresses: [])
            var section = ""
            for raw in boundedLines(text) {
                let line = raw.trimmedWS
                if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
                if line.hasPrefix("["), line.hasSuffix("]") {
                    section = String(line.dropFirst().dropLast()).trimmedWS.lowercased()
                    continue
                }
                guard let eq = line.firstIndex(of: "=") else { continue }
                let key = line[..<eq].trimmedWS.lowercased()
                // Only the keys below are ever kept: secrets (psk, password, ...) are never copied.
                if section == "connection" && (key == "id" || key == "type") {
                    let v = String(line[line.index(after: eq)...].trimmedWS.prefix(256))
                    if key == "id" { conn.id = v } else { conn.type = v }
                } else if nmMACSections.contains(section) && nmMACKeys.contains(key) {
                    let v = line[line.index(after: eq)...].trimmedWS
                    // Keep only MAC-shaped values (hex digits and separators) to avoid leaking anything else.
                    if !v.isEmpty, v.count <= 64, v.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "-" || $0 == ";" }) {
                        conn.macAddresses.append(NMMACAddress(section: section, key: key, value: v))
                    }
                }
            }
            if !conn.macAddresses.isEmpty { out.append(conn) }
        }
        return out
    }

    static func dhcpLeases(_ g: GuestFiles) -> [String] {
        var out: [String] = []
        for dir in ["/var/lib/dhcp", "/var/lib/dhclient", "/var/lib/systemd/netif/leases"] {
            for n in g.names(in: dir, limit: 4096) {
                let p = dir + "/" + n
                if (try? g.lstat(p))??.type == .regular { out.append(p) }
            }
        }
        for n in g.names(in: "/var/lib/NetworkManager", limit: 4096) where n.hasSuffix(".lease") {
            let p = "/var/lib/NetworkManager/" + n
            if (try? g.lstat(p))??.type == .regular { out.append(p) }
        }
        return out
    }
}
