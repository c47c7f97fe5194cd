import WardenCore
import GuestFS

/// Broad distribution family, used to pick package and configuration conventions.
public enum OSFamily: String, Codable, Sendable, Equatable {
    case debian, rhel, suse, alpine, arch, windows
}

public enum InitSystem: String, Codable, Sendable, Equatable {
    case systemd, openrc, sysvinit
}

/// The guest operating system, from os-release, a core binary's ELF header and the init layout.
public struct OSInfo: Codable, Sendable, Equatable {
    /// The os-release file that was used.
    public var osReleasePath: Fact<String>
    public var id: Fact<String>
    public var versionId: Fact<String>
    public var prettyName: Fact<String>
    public var idLike: Fact<[String]>
    public var family: Fact<OSFamily>
    public var architecture: Fact<ELFArchitecture>
    public var initSystem: Fact<InitSystem>
    /// Why the init system was chosen (the path that decided it).
    public var initEvidence: String?
    /// os-release's `SUPPORT_END` (YYYY-MM-DD), when the guest states it.
    public var supportEnd: Fact<String>?
}

/// os-release(5) parsing: `KEY=value` lines with shell-style quoting and escapes.
public enum OSRelease {
    public static let paths = ["/etc/os-release", "/usr/lib/os-release"]
    static let maxBytes = 256 * 1024

    /// Parses os-release text into a dictionary. Invalid lines are skipped.
    public static func parse(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for raw in boundedLines(text) {
            let line = raw.trimmedWS
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let eq = line.firstIndex(of: "=") else { continue }
            let key = String(line[..<eq])
            guard isValidKey(key) else { continue }
            guard let value = unquote(line[line.index(after: eq)...]) else { continue }
            if out.count < 1000 { out[key] = value }
        }
        return out
    }

    static func isValidKey(_ k: String) -> Bool {
        guard let f = k.unicodeScalars.first, f == "_" || (f.isASCII && f.properties.isAlphabetic) else { return false }
        return k.unicodeScalars.allSatisfy { $0 == "_" || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) }
    }

    /// Shell-like unquoting of a single value: '...' literal, "..." with \-escapes of
    /// `$ " \ `` ` and backslash escapes outside quotes. Returns nil for unterminated quotes.
    static func unquote(_ s: Substring) -> String? {
        var out = ""
        var it = Array(s)
        // Trailing whitespace outside quotes is not part of the value.
        while let l = it.last, l == " " || l == "\t" { it.removeLast() }
        var i = 0
        while i < it.count {
            let c = it[i]
            switch c {
            case "'":
                i += 1
                while i < it.count, it[i] != "'" { out.append(it[i]); i += 1 }
                guard i < it.count else { return nil }
                i += 1
            case "\"":
                i += 1
                while i < it.count, it[i] != "\"" {
                    if it[i] == "\\", i + 1 < it.count, "$\"\\`".contains(it[i + 1]) {
                        out.append(it[i + 1]); i += 2
                    } else {
                        out.append(it[i]); i += 1
                    }
                }
                guard i < it.count else { return nil }
                i += 1
            case "\\":
                if i + 1 < it.count { out.append(it[i + 1]); i += 2 } else { i += 1 }
            case " ", "\t":
                // Unquoted whitespace ends the assignment in a shell; the rest is not the value.
                return out
            default:
                out.append(c); i += 1
            }
        }
        return out
    }

    /// The family for an os-release `ID` and `ID_LIKE` list.
    public static func family(id: String?, idLike: [String]) -> OSFamily? {
        for candidate in [id].compactMap({ $0 }) + idLike {
            let c = candidate.lowercased()
            switch c {
            case "debian", "ubuntu", "linuxmint", "raspbian", "kali", "pop", "elementary", "devuan": return .debian
            case "rhel", "centos", "fedora", "rocky", "almalinux", "ol", "amzn", "scientific", "cloudlinux": return .rhel
            case "sles", "sled", "suse": return .suse
            case "alpine", "postmarketos": return .alpine
            case "arch", "archarm", "manjaro", "endeavouros": return .arch
            default:
                if c.hasPrefix("opensuse") { return .suse }
            }
        }
        return nil
    }
}

extension Inspection {
    /// The guest OS. Never throws: anything that cannot be read is an unknown with a reason.
    public static func operatingSystem(_ g: GuestFiles) -> OSInfo {
        var fields: [String: String]? = nil
        var path: Fact<String> = .unknown(reason: "no /etc/os-release or /usr/lib/os-release")
        var failures: [String] = []
        for p in OSRelease.paths {
            switch g.load(p, maxBytes: OSRelease.maxBytes) {
            case .absent: continue
            case .failed(let r): failures.append(r); continue
            case .bytes(let b):
                fields = OSRelease.parse(String(decoding: b, as: UTF8.self))
                path = .known(p)
            }
            break
        }
        if fields == nil, !failures.isEmpty { path = .unknown(reason: failures.joined(separator: "; ")) }
        func field(_ k: String) -> Fact<String> {
            guard let fields else { return .unknown(reason: path.unknownReason ?? "no os-release") }
            guard let v = fields[k], !v.isEmpty else { return .unknown(reason: "\(k) not set in os-release") }
            return .known(v)
        }
        let id = field("ID")
        let idLikeField = field("ID_LIKE")
        let idLike: Fact<[String]> = idLikeField.value.map { .known($0.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)) }
            ?? .unknown(reason: idLikeField.unknownReason ?? "")
        let family: Fact<OSFamily>
        if fields == nil {
            family = .unknown(reason: "no os-release to derive the family from")
        } else if let f = OSRelease.family(id: id.value, idLike: idLike.value ?? []) {
            family = .known(f)
        } else {
            family = .unknown(reason: "ID '\(id.value ?? "")' and ID_LIKE '\((idLike.value ?? []).joined(separator: " "))' match no known family")
        }
        let (initSystem, evidence) = detectInit(g)
        var info = OSInfo(osReleasePath: path, id: id, versionId: field("VERSION_ID"), prettyName: field("PRETTY_NAME"),
                          idLike: idLike, family: family, architecture: ELF.guestArchitecture(g),
                          initSystem: initSystem, initEvidence: evidence)
        if let end = fields?["SUPPORT_END"], !end.isEmpty { info.supportEnd = .known(end) }
        return info
    }

    static func detectInit(_ g: GuestFiles) -> (Fact<InitSystem>, String?) {
        // /sbin/init pointing at systemd (directly or through a chain of guest links).
        if let target = try? g.readLink("/sbin/init"), target.contains("systemd") {
            return (.known(.systemd), "/sbin/init -> \(target)")
        }
        if let canon = g.canonical("/sbin/init"), canon.contains("systemd") {
            return (.known(.systemd), "/sbin/init resolves to \(canon)")
        }
        for p in ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"] where g.resolvedType(p) == .regular {
            return (.known(.systemd), "\(p) exists")
        }
        if g.resolvedType("/sbin/openrc") == .regular {
            return (.known(.openrc), "/sbin/openrc exists")
        }
        if g.resolvedType("/etc/init.d") == .directory, g.resolvedType("/etc/runlevels") == .directory {
            return (.known(.openrc), "/etc/init.d and /etc/runlevels exist")
        }
        if g.resolvedType("/etc/inittab") == .regular {
            return (.known(.sysvinit), "/etc/inittab exists")
        }
        return (.unknown(reason: "no systemd, openrc or sysvinit markers found"), nil)
    }
}
