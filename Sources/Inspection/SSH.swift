import WardenCore
import GuestFS

/// SSH server identity and access: host keys, authorized keys and effective sshd settings.
public struct SSHInfo: Codable, Sendable, Equatable {
    public var hostKeys: [SSHHostKey]
    public var authorizedKeys: [AuthorizedKeysFile]
    public var sshd: SSHDSettings
    public var warnings: [String]
}

public struct SSHHostKey: Codable, Sendable, Equatable {
    /// The `.pub` path, or the private key path when there is no public half.
    public var path: String
    public var publicKey: Fact<SSHPublicKey>
    public var privateKey: SSHPrivateKeyFile
}

/// Presence and mode of a private key file; its content is never read.
public struct SSHPrivateKeyFile: Codable, Sendable, Equatable {
    public var path: String
    public var present: Bool
    /// Permission bits as octal text, e.g. `0600`.
    public var mode: String?
    public var uid: UInt32?
    public var gid: UInt32?
}

public struct AuthorizedKeysFile: Codable, Sendable, Equatable {
    /// Account whose home holds the file.
    public var user: String
    public var path: String
    public var keys: [AuthorizedKey]
    /// Lines that are neither comments nor parsable keys (line numbers with a reason).
    public var invalidLines: [String]
}

public struct AuthorizedKey: Codable, Sendable, Equatable {
    public var line: Int
    public var key: SSHPublicKey
    public var options: [SSHKeyOption]
    /// True when the key is restricted or redirected by options such as command= or from=.
    public var hasCommand: Bool
    public var hasFrom: Bool
}

public struct SSHDSetting: Codable, Sendable, Equatable {
    public var value: String
    /// True when the value is OpenSSH's built-in default (not set in the configuration).
    public var isDefault: Bool
    /// `path:line` that set it.
    public var source: String?
}

public struct SSHDSettings: Codable, Sendable, Equatable {
    public var configPath: String
    public var permitRootLogin: Fact<SSHDSetting>
    public var passwordAuthentication: Fact<SSHDSetting>
    public var permitEmptyPasswords: Fact<SSHDSetting>
    /// Files read, in order.
    public var filesRead: [String]
    /// True when `Match` blocks exist; they may override the global values for some connections.
    public var hasMatchBlocks: Bool
    public var warnings: [String]
    /// The TCP ports sshd listens on, as sshd works them out: every `ListenAddress` with a port,
    /// plus the `Port` values (default 22) for the addresses without one (or when there is no
    /// `ListenAddress`). Empty when there is no sshd_config.
    public var ports: [Int] = []
}

extension Inspection {
    /// SSH facts. `accounts` supplies the home directories searched for authorized_keys;
    /// when nil, /etc/passwd is read.
    public static func ssh(_ g: GuestFiles, accounts: AccountsInfo? = nil) -> SSHInfo {
        var warnings: [String] = []
        let hostKeys = sshHostKeys(g, &warnings)
        let acc = accounts ?? Inspection.accounts(g)
        let auth = authorizedKeys(g, accounts: acc.accounts.value ?? [], &warnings)
        return SSHInfo(hostKeys: hostKeys, authorizedKeys: auth, sshd: sshdSettings(g), warnings: warnings)
    }

    static func privateKeyFile(_ g: GuestFiles, _ path: String) -> SSHPrivateKeyFile {
        guard let st = (try? GuestPathResolver(g.fs).resolve(path))?.stat else {
            return SSHPrivateKeyFile(path: path, present: false)
        }
        return SSHPrivateKeyFile(path: path, present: true, mode: octalMode(st.permissions), uid: st.uid, gid: st.gid)
    }

    /// The SSH host keys in /etc/ssh alone (what ``ssh(_:accounts:)`` reports as `hostKeys`),
    /// without reading accounts, authorized keys or sshd_config.
    public static func sshHostKeys(_ g: GuestFiles) -> [SSHHostKey] {
        var warnings: [String] = []
        return sshHostKeys(g, &warnings)
    }

    static func sshHostKeys(_ g: GuestFiles, _ warnings: inout [String]) -> [SSHHostKey] {
        let names = g.names(in: "/etc/ssh", limit: 4096)
        let nameSet = Set(names)
        var out: [SSHHostKey] = []
        for n in names where n.hasPrefix("ssh_host_") {
            let path = "/etc/ssh/" + n
            if n.hasSuffix("_key.pub") {
                let priv = privateKeyFile(g, String(path.dropLast(4)))
                let pk: Fact<SSHPublicKey>
                switch g.load(path, maxBytes: 256 * 1024) {
                case .absent: pk = .unknown(reason: "\(path) absent")
                case .failed(let r): pk = .unknown(reason: r)
                case .bytes(let b):
                    let line = boundedLines(String(decoding: b, as: UTF8.self)).map { $0.trimmedWS }
                        .first { !$0.isEmpty && !$0.hasPrefix("#") } ?? ""
                    pk = parsePublicKeyLine(line, context: path)
                }
                out.append(SSHHostKey(path: path, publicKey: pk, privateKey: priv))
            } else if n.hasSuffix("_key"), !nameSet.contains(n + ".pub") {
                out.append(SSHHostKey(path: path, publicKey: .unknown(reason: "no \(path).pub"),
                                      privateKey: privateKeyFile(g, path)))
            }
        }
        return out
    }

    static func parsePublicKeyLine(_ line: String, context: String) -> Fact<SSHPublicKey> {
        guard let parts = AuthorizedKeysLine.split(line) else {
            return .unknown(reason: "\(context): not an OpenSSH public key line")
        }
        do {
            return .known(try SSHKeyParser.parse(keyType: parts.keyType, base64: parts.base64, comment: parts.comment,
                                                       leadingField: parts.optionsField))
        } catch {
            return .unknown(reason: "\(context): \(error)")
        }
    }

    static func authorizedKeys(_ g: GuestFiles, accounts: [Account], _ warnings: inout [String]) -> [AuthorizedKeysFile] {
        var out: [AuthorizedKeysFile] = []
        var seen = Set<String>()
        for a in accounts.prefix(10_000) {
            guard a.home.hasPrefix("/") else { continue }
            let home = a.home.hasSuffix("/") ? String(a.home.dropLast()) : a.home
            for f in ["authorized_keys", "authorized_keys2"] {
                let path = home + "/.ssh/" + f
                guard !seen.contains(a.name + "\u{0}" + path) else { continue }
                seen.insert(a.name + "\u{0}" + path)
                let text: String
                switch g.load(path, maxBytes: 4 << 20) {
                case .absent: continue
                case .failed(let r): warnings.append(r); continue
                case .bytes(let b): text = String(decoding: b, as: UTF8.self)
                }
                var file = AuthorizedKeysFile(user: a.name, path: path, keys: [], invalidLines: [])
                for (i, raw) in boundedLines(text).enumerated() {
                    let line = raw.trimmedWS
                    if line.isEmpty || line.hasPrefix("#") { continue }
                    guard file.keys.count < 10_000 else { break }
                    guard let parts = AuthorizedKeysLine.split(line) else {
                        if file.invalidLines.count < 100 { file.invalidLines.append("line \(i + 1): not a key line") }
                        continue
                    }
                    do {
                        let key = try SSHKeyParser.parse(keyType: parts.keyType, base64: parts.base64, comment: parts.comment,
                                                       leadingField: parts.optionsField)
                        file.keys.append(AuthorizedKey(line: i + 1, key: key, options: parts.options,
                                                       hasCommand: parts.options.contains { $0.name == "command" },
                                                       hasFrom: parts.options.contains { $0.name == "from" }))
                    } catch {
                        if file.invalidLines.count < 100 { file.invalidLines.append("line \(i + 1): \(error)") }
                    }
                }
                out.append(file)
            }
        }
        return out
    }

    // MARK: sshd_config

    static let sshdMaxDepth = 16
    static let sshdMaxFiles = 256

    public static func sshdSettings(_ g: GuestFiles, configPath: String = "/etc/ssh/sshd_config") -> SSHDSettings {
        var s = SSHDConfigScan()
        var settings = SSHDSettings(configPath: configPath, permitRootLogin: .unknown(reason: ""),
                                    passwordAuthentication: .unknown(reason: ""), permitEmptyPasswords: .unknown(reason: ""),
                                    filesRead: [], hasMatchBlocks: false, warnings: [])
        switch g.load(configPath, maxBytes: 4 << 20) {
        case .absent:
            let r = "\(configPath) absent (OpenSSH server not configured)"
            settings.permitRootLogin = .unknown(reason: r)
            settings.passwordAuthentication = .unknown(reason: r)
            settings.permitEmptyPasswords = .unknown(reason: r)
            return settings
        case .failed(let r):
            settings.permitRootLogin = .unknown(reason: r)
            settings.passwordAuthentication = .unknown(reason: r)
            settings.permitEmptyPasswords = .unknown(reason: r)
            return settings
        case .bytes(let b):
            s.scan(g, path: configPath, text: String(decoding: b, as: UTF8.self), depth: 0, stack: [])
        }
        func setting(_ key: String, _ def: String) -> Fact<SSHDSetting> {
            if let (v, src) = s.values[key] { return .known(SSHDSetting(value: v, isDefault: false, source: src)) }
            return .known(SSHDSetting(value: def, isDefault: true, source: nil))
        }
        settings.permitRootLogin = setting("permitrootlogin", "prohibit-password")
        settings.passwordAuthentication = setting("passwordauthentication", "yes")
        settings.permitEmptyPasswords = setting("permitemptypasswords", "no")
        settings.filesRead = s.filesRead
        settings.hasMatchBlocks = s.sawMatch
        var ports = Set(s.listenPorts)
        if s.bareListen || s.listenPorts.isEmpty { ports.formUnion(s.portValues.isEmpty ? [22] : s.portValues) }
        settings.ports = ports.sorted()
        settings.warnings = s.warnings
        return settings
    }
}

/// Walks sshd_config and its includes in order, recording the first global value of each keyword.
struct SSHDConfigScan {
    /// The port of a `ListenAddress` value (`host:port`, `[v6]:port`), nil when it names none.
    static func listenPort(_ value: String) -> Int? {
        let tail: Substring
        if value.hasPrefix("[") {
            guard let close = value.firstIndex(of: "]") else { return nil }
            let rest = value[value.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            tail = rest.dropFirst()
        } else {
            // A bare IPv6 address has several colons and no port.
            guard value.filter({ $0 == ":" }).count == 1, let colon = value.lastIndex(of: ":") else { return nil }
            tail = value[value.index(after: colon)...]
        }
        guard let p = Int(tail), (1...65535).contains(p) else { return nil }
        return p
    }

    static let tracked: Set<String> = ["permitrootlogin", "passwordauthentication", "permitemptypasswords"]
    var values: [String: (String, String)] = [:]
    /// `Port` values (they add up) and `ListenAddress` ports.
    var portValues: [Int] = []
    var listenPorts: [Int] = []
    var bareListen = false
    var filesRead: [String] = []
    var warnings: [String] = []
    var sawMatch = false

    mutating func scan(_ g: GuestFiles, path: String, text: String, depth: Int, stack: [String]) {
        filesRead.append(path)
        var inMatch = false
        for (i, raw) in boundedLines(text).enumerated() {
            let words = Self.words(raw)
            guard let kw = words.first?.lowercased() else { continue }
            if kw == "match" { inMatch = true; sawMatch = true; continue }
            if kw == "include" {
                // Directives in an included file inherit the Match context of the Include line.
                if inMatch { continue }
                for pattern in words.dropFirst() {
                    let full = pattern.hasPrefix("/") ? pattern : "/etc/ssh/" + pattern
                    let matches = Self.glob(g, full)
                    for m in matches {
                        guard depth + 1 <= Inspection.sshdMaxDepth else {
                            warnings.append("\(path):\(i + 1): Include depth limit reached at \(m)")
                            continue
                        }
                        guard !stack.contains(m), m != path else {
                            warnings.append("\(path):\(i + 1): Include loop on \(m) ignored")
                            continue
                        }
                        guard filesRead.count < Inspection.sshdMaxFiles else {
                            warnings.append("too many included files; stopped at \(m)")
                            return
                        }
                        switch g.load(m, maxBytes: 4 << 20) {
                        case .absent: continue
                        case .failed(let r): warnings.append(r)
                        case .bytes(let b):
                            scan(g, path: m, text: String(decoding: b, as: UTF8.self), depth: depth + 1, stack: stack + [path])
                        }
                    }
                }
                continue
            }
            if inMatch { continue }
            if kw == "port", words.count >= 2, portValues.count < 64, let p = Int(words[1]), (1...65535).contains(p) {
                portValues.append(p)
            }
            if kw == "listenaddress", words.count >= 2, listenPorts.count < 64 {
                if let p = Self.listenPort(words[1]) { listenPorts.append(p) } else { bareListen = true }
            }
            if Self.tracked.contains(kw), values[kw] == nil, words.count >= 2 {
                // sshd compares these values case-insensitively; report them lowercased.
                values[kw] = (words[1].lowercased(), "\(path):\(i + 1)")
            }
        }
    }

    /// Splits a config line into words: whitespace separated, optional `=` after the keyword,
    /// double quotes group, `#` starts a comment at a word boundary.
    static func words(_ line: Substring) -> [String] {
        var out: [String] = []
        var cur = "", inQuote = false, hasWord = false
        var sawEquals = false
        for c in line {
            if inQuote {
                if c == "\"" { inQuote = false } else { cur.append(c) }
                continue
            }
            if c == "\"" { inQuote = true; hasWord = true; continue }
            if c == "#" && !hasWord { break }
            let isSep = c == " " || c == "\t" || (c == "=" && out.count == 0 && !sawEquals)
            if isSep {
                if c == "=" { sawEquals = true }
                if hasWord { out.append(cur); cur = ""; hasWord = false }
                if out.count > 64 { break }
                continue
            }
            cur.append(c); hasWord = true
        }
        if hasWord { out.append(cur) }
        return out
    }

    /// Expands a glob path against the guest (`*`, `?`, `[...]` per component), sorted like glob(3).
    static func glob(_ g: GuestFiles, _ pattern: String) -> [String] {
        let comps = pattern.split(separator: "/").map(String.init)
        var current = [""]
        for (idx, comp) in comps.enumerated() {
            var next: [String] = []
            let isLast = idx == comps.count - 1
            if comp.contains(where: { "*?[".contains($0) }) {
                for base in current {
                    for n in g.names(in: base.isEmpty ? "/" : base, limit: 4096) where globMatch(comp, n) {
                        if n.hasPrefix("."), !comp.hasPrefix(".") { continue }
                        next.append(base + "/" + n)
                    }
                }
            } else {
                next = current.map { $0 + "/" + comp }
            }
            current = next.filter { isLast ? g.resolvedType($0) != nil : g.resolvedType($0) == .directory }
            if current.count > 1024 { current = Array(current.prefix(1024)) }
        }
        return current.filter { g.resolvedType($0) == .regular }
    }
}
