import WardenCore
import GuestFS

/// Secrets at rest in a guest, by path and kind only.
///
/// Nothing of a secret's content is ever reported: no key bytes, no credential text and
/// no hash of either. A finding says what kind of secret a file holds, where it is, how
/// large it is, and who owns it with which mode.
public struct SecretsReport: Codable, Sendable, Equatable {
    /// Findings sorted by path, then kind.
    public var findings: [SecretFinding]
    /// True when a cap of the private key search was hit, so findings may be missing.
    public var truncated: Bool
    /// Which cap was hit first, when ``truncated``.
    public var truncatedReason: String?
    /// The directories the private key search started from (those present in the guest).
    public var searchedRoots: [String]
    /// Entries the private key search looked at.
    public var filesVisited: Int
    /// Non-fatal problems (unreadable directories and the like), capped.
    public var warnings: [String]

    public init(findings: [SecretFinding] = [], truncated: Bool = false, truncatedReason: String? = nil,
                searchedRoots: [String] = [], filesVisited: Int = 0, warnings: [String] = []) {
        self.findings = findings
        self.truncated = truncated
        self.truncatedReason = truncatedReason
        self.searchedRoots = searchedRoots
        self.filesVisited = filesVisited
        self.warnings = warnings
    }
}

/// One file that holds a secret.
public struct SecretFinding: Codable, Sendable, Equatable {
    public var path: String
    public var kind: SecretKind
    public var size: UInt64
    public var uid: UInt32
    /// Permission bits in octal, like `0600`.
    public var mode: String

    public init(path: String, kind: SecretKind, size: UInt64, uid: UInt32, mode: String) {
        self.path = path
        self.kind = kind
        self.size = size
        self.uid = uid
        self.mode = mode
    }
}

/// The PEM label family of a private key.
public enum PrivateKeyFormat: String, Codable, Sendable, Equatable {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----`
    case openssh
    /// PKCS#1 `RSA PRIVATE KEY`
    case rsa
    /// SEC1 `EC PRIVATE KEY`
    case ec
    /// `DSA PRIVATE KEY`
    case dsa
    /// PKCS#8 `PRIVATE KEY`
    case pkcs8
    /// PKCS#8 `ENCRYPTED PRIVATE KEY`
    case encryptedPkcs8 = "encrypted_pkcs8"
    /// `PGP PRIVATE KEY BLOCK`
    case pgp
    /// Any other `… PRIVATE KEY` label.
    case other
}

/// Providers (or tools) whose credential files are recognised.
public enum CredentialProvider: String, Codable, Sendable, Equatable {
    case aws, gcp, azure, docker, kubernetes, netrc, git, postgresql
}

/// What kind of secret a file holds.
///
/// Encodes as `{"type": "private_key", "format": "openssh", "passphrase_protected": true}`,
/// `{"type": "cloud_credentials", "provider": "aws"}` or `{"type": "shell_history", "shell": "bash"}`.
public enum SecretKind: Codable, Sendable, Equatable {
    /// A PEM private key; `passphraseProtected` is nil when the header does not tell.
    case privateKey(PrivateKeyFormat, passphraseProtected: Bool?)
    case cloudCredentials(CredentialProvider)
    /// A shell or REPL history file (`bash`, `zsh`, `ash`, `python`, `mysql`, `psql`).
    case shellHistory(String)

    private enum CodingKeys: String, CodingKey { case type, format, passphraseProtected, provider, shell }

    var sortKey: String {
        switch self {
        case .privateKey(let f, _): return "0" + f.rawValue
        case .cloudCredentials(let p): return "1" + p.rawValue
        case .shellHistory(let s): return "2" + s
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .privateKey(let f, let p):
            try c.encode("private_key", forKey: .type)
            try c.encode(f, forKey: .format)
            try c.encodeIfPresent(p, forKey: .passphraseProtected)
        case .cloudCredentials(let p):
            try c.encode("cloud_credentials", forKey: .type)
            try c.encode(p, forKey: .provider)
        case .shellHistory(let s):
            try c.encode("shell_history", forKey: .type)
            try c.encode(s, forKey: .shell)
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        switch try c.decode(String.self, forKey: .type) {
        case "private_key":
            self = .privateKey(try c.decode(PrivateKeyFormat.self, forKey: .format),
                               passphraseProtected: try c.decodeIfPresent(Bool.self, forKey: .passphraseProtected))
        case "cloud_credentials":
            self = .cloudCredentials(try c.decode(CredentialProvider.self, forKey: .provider))
        case "shell_history":
            self = .shellHistory(try c.decode(String.self, forKey: .shell))
        case let t:
            throw DecodingError.dataCorruptedError(forKey: .type, in: c, debugDescription: "unknown secret type \(t)")
        }
    }
}

/// Caps of the secrets search (guest trees are hostile and may be huge).
public struct SecretsLimits: Sendable {
    /// Deepest directory level below a search root that is entered.
    public var maxDepth = 12
    /// Most directory entries looked at by the private key search, all roots together.
    public var maxFilesVisited = 50_000
    /// Bytes read from the start of each candidate file.
    public var headBytes = 4096
    /// Files larger than this are not read by the private key search.
    public var maxCandidateSize: UInt64 = 1 << 20
    /// Most home directories taken from /etc/passwd.
    public var maxHomes = 10_000
    /// Largest credential file read to decide whether it holds credentials (`~/.aws/config`, docker).
    public var maxCredentialFileSize = 1 << 20

    public init() {}
}

extension Inspection {
    /// Roots walked for private keys, besides the homes of accounts (see ``passwdHomes``).
    static let secretSearchRoots = ["/root", "/etc", "/opt", "/srv", "/var/lib", "/usr/local"]

    /// Package-manager state, caches and indexes under the roots: files the package manager
    /// or a tool writes, never a place a key is deployed to. Not walked (issue 17: the cost of
    /// the search follows where secrets live, not how many files a guest has).
    static let secretSkippedDirectories: Set<String> = [
        "/var/lib/dpkg", "/var/lib/apt", "/var/lib/aptitude", "/var/lib/rpm", "/var/lib/dnf", "/var/lib/yum",
        "/var/lib/apk", "/var/lib/ucf", "/var/lib/pam", "/var/lib/man-db", "/var/lib/mlocate", "/var/lib/plocate",
        "/var/lib/texmf", "/var/lib/docker", "/var/lib/containers", "/var/lib/snapd", "/var/lib/flatpak",
        "/var/lib/systemd/deb-systemd-helper-enabled", "/var/lib/systemd/deb-systemd-user-helper-enabled",
        "/usr/local/share/man", "/usr/local/lib/python3", "/etc/alternatives",
    ]

    /// Directory names that hold vendored or generated code wherever they are (a node_modules
    /// tree of 200,000 files under /srv costs nothing): dependency trees, VCS metadata, caches.
    static let secretSkippedNames: Set<String> = [
        "node_modules", ".git", ".hg", ".svn", "__pycache__", "site-packages", "dist-packages", ".npm", ".cache",
        ".cargo", ".rustup", ".m2", ".gradle", ".venv", "vendor",
    ]

    /// Whether the secrets walk skips a directory (by path, or by name anywhere).
    static func skipsForSecrets(_ path: String) -> Bool {
        if secretSkippedDirectories.contains(path) { return true }
        let name = path.split(separator: "/").last.map(String.init) ?? path
        return secretSkippedNames.contains(name)
    }

    static let historyFiles: [(String, String)] = [
        (".bash_history", "bash"), (".zsh_history", "zsh"), (".ash_history", "ash"),
        (".python_history", "python"), (".mysql_history", "mysql"), (".psql_history", "psql"),
    ]

    /// Credential files relative to a home; `needs` is a content test (presence of keys)
    /// when the file alone does not imply credentials.
    static let credentialFiles: [(String, CredentialProvider, CredentialTest)] = [
        (".aws/credentials", .aws, .always),
        (".aws/config", .aws, .awsKeys),
        (".config/gcloud/credentials.db", .gcp, .always),
        (".config/gcloud/application_default_credentials.json", .gcp, .always),
        (".azure/accessTokens.json", .azure, .always),
        (".azure/msal_token_cache.json", .azure, .always),
        (".docker/config.json", .docker, .dockerAuths),
        (".kube/config", .kubernetes, .always),
        (".netrc", .netrc, .always),
        (".git-credentials", .git, .always),
        (".pgpass", .postgresql, .always),
    ]

    enum CredentialTest { case always, awsKeys, dockerAuths }

    /// Secrets at rest: private keys (outside `/etc/ssh/ssh_host_*_key`), cloud and tool
    /// credential files, and shell histories, for every home in /etc/passwd plus /root.
    public static func secrets(_ g: GuestFiles) -> SecretsReport {
        secrets(g, limits: SecretsLimits())
    }

    public static func secrets(_ g: GuestFiles, limits: SecretsLimits) -> SecretsReport {
        var scan = SecretScan(g: g, limits: limits)
        let homes = passwdHomes(g, limit: limits.maxHomes, warnings: &scan.warnings)
        for home in homes {
            for (rel, shell) in historyFiles {
                scan.checkFile(home + "/" + rel, kind: .shellHistory(shell))
            }
            for (rel, provider, test) in credentialFiles {
                scan.checkCredential(home + "/" + rel, provider: provider, test: test)
            }
            // gcloud keeps one directory per account under legacy_credentials.
            let legacy = home + "/.config/gcloud/legacy_credentials"
            for account in g.names(in: legacy, limit: 1000) {
                for file in g.names(in: legacy + "/" + account, limit: 100) {
                    scan.checkFile(legacy + "/" + account + "/" + file, kind: .cloudCredentials(.gcp))
                }
            }
        }
        var roots = secretSearchRoots + homes
        roots = roots.filter { isSearchableRoot($0) }
        var seenRoots = Set<String>()
        for root in roots where seenRoots.insert(root).inserted {
            if scan.stopped { break }
            scan.walk(root)
        }
        var report = SecretsReport()
        var seen = Set<String>()
        report.findings = scan.findings.filter { seen.insert($0.path + "\u{0}" + $0.kind.sortKey).inserted }
            .sorted { ($0.path, $0.kind.sortKey) < ($1.path, $1.kind.sortKey) }
        report.truncated = scan.truncatedReason != nil
        report.truncatedReason = scan.truncatedReason
        report.searchedRoots = scan.walkedRoots
        report.filesVisited = scan.visited
        report.warnings = scan.warnings.all
        return report
    }

    /// A home worth walking: absolute, not `/`, not a pseudo filesystem.
    static func isSearchableRoot(_ p: String) -> Bool {
        guard p.hasPrefix("/"), p != "/" else { return false }
        for bad in ["/proc", "/sys", "/dev", "/run"] where p == bad || p.hasPrefix(bad + "/") { return false }
        return true
    }

    /// Shells that do not log in: accounts with these are services, not people.
    static let nologinShells: Set<String> = ["nologin", "false", "sync", "shutdown", "halt"]

    /// Where service accounts keep state worth searching; a service account whose home is a
    /// system directory (`/usr/sbin`, `/var/mail`, `/nonexistent`…) holds no deployed secrets.
    static let serviceHomePrefixes = ["/home/", "/var/lib/", "/srv/", "/opt/"]

    /// `/root` plus every distinct absolute home in /etc/passwd, normalised (no trailing slash):
    /// every account that can log in, and service accounts whose home is under `/home`,
    /// `/var/lib`, `/srv` or `/opt`.
    static func passwdHomes(_ g: GuestFiles, limit: Int, warnings: inout CappedWarnings) -> [String] {
        var homes = ["/root"]
        var seen: Set<String> = ["/root"]
        switch g.load("/etc/passwd", maxBytes: 16 << 20) {
        case .absent: break
        case .failed(let r): warnings.add(r)
        case .bytes(let b):
            for line in boundedLines(String(decoding: b, as: UTF8.self)) {
                if homes.count >= limit { warnings.add("more than \(limit) homes in /etc/passwd; the rest are not searched"); break }
                let f = line.split(separator: ":", omittingEmptySubsequences: false)
                guard f.count >= 7 else { continue }
                var home = String(f[5])
                while home.count > 1, home.hasSuffix("/") { home.removeLast() }
                let shell = f[6].split(separator: "/").last.map(String.init) ?? ""
                let logsIn = !nologinShells.contains(shell)
                guard logsIn || serviceHomePrefixes.contains(where: { home.hasPrefix($0) }) else { continue }
                guard home.hasPrefix("/"), home != "/", seen.insert(home).inserted else { continue }
                homes.append(home)
            }
        }
        return homes
    }
}

/// PEM private key recognition in the first bytes of a file.
enum PrivateKeyHeader {
    /// The first private key PEM block in `head`: its format and, when the header tells,
    /// whether it is passphrase-protected. Nil when there is none.
    static func detect(_ head: [UInt8]) -> (PrivateKeyFormat, Bool?)? {
        let begin = Array("-----BEGIN ".utf8)
        var i = 0
        let n = head.count
        while i + begin.count <= n {
            guard head[i] == 0x2D, head[i..<(i + begin.count)].elementsEqual(begin) else { i += 1; continue }
            // Label: up to the next "-----" on the same line, at most 64 bytes.
            let start = i + begin.count
            var j = start
            while j < n, j - start <= 64, head[j] != 0x2D, head[j] != 0x0A { j += 1 }
            let label = String(decoding: head[start..<j], as: UTF8.self)
            guard j + 5 <= n, head[j..<(j + 5)].elementsEqual(Array("-----".utf8)) else { i = start; continue }
            let bodyStart = j + 5
            let format: PrivateKeyFormat
            switch label {
            case "OPENSSH PRIVATE KEY": format = .openssh
            case "RSA PRIVATE KEY": format = .rsa
            case "EC PRIVATE KEY": format = .ec
            case "DSA PRIVATE KEY": format = .dsa
            case "PRIVATE KEY": format = .pkcs8
            case "ENCRYPTED PRIVATE KEY": format = .encryptedPkcs8
            case "PGP PRIVATE KEY BLOCK": format = .pgp
            default:
                guard label.hasSuffix(" PRIVATE KEY") else { i = bodyStart; continue }
                format = .other
            }
            let body = Array(head[bodyStart...])
            return (format, passphrase(format, body: body))
        }
        return nil
    }

    /// Whether the key after the BEGIN line is encrypted, when its header tells.
    static func passphrase(_ format: PrivateKeyFormat, body: [UInt8]) -> Bool? {
        switch format {
        case .encryptedPkcs8: return true
        case .pkcs8: return false
        case .pgp: return nil
        case .openssh: return opensshCipher(body).map { $0 != "none" }
        case .rsa, .ec, .dsa, .other:
            // Traditional PEM: RFC 1421 headers right after the BEGIN line, before a blank line.
            let text = String(decoding: body.prefix(1024), as: UTF8.self)
            var sawLine = false
            for raw in text.split(separator: "\n", omittingEmptySubsequences: false).prefix(8) {
                let line = raw.trimmedWS
                if line.isEmpty { if sawLine { break } else { continue } }
                sawLine = true
                if line.hasPrefix("Proc-Type:") { return line.contains("ENCRYPTED") }
                if line.hasPrefix("-----END") { break }
                if !line.contains(":") { break }
            }
            // The whole body was available and had no Proc-Type header.
            return format == .other ? nil : false
        }
    }

    /// The cipher name of an `openssh-key-v1` key, decoded from the start of its base64 body.
    static func opensshCipher(_ body: [UInt8]) -> String? {
        // 15 bytes of magic + 4 bytes length + cipher name (< 64): 128 base64 chars are plenty.
        var b64: [UInt8] = []
        for c in body {
            if c == 0x2D { break } // "-----END"
            if c == 0x0A || c == 0x0D || c == 0x20 || c == 0x09 { continue }
            b64.append(c)
            if b64.count >= 128 { break }
        }
        b64 = Array(b64.prefix(b64.count / 4 * 4))
        guard let raw = base64Decode(b64) else { return nil }
        let magic = Array("openssh-key-v1".utf8) + [0]
        guard raw.count >= magic.count + 4, raw.prefix(magic.count).elementsEqual(magic) else { return nil }
        let p = magic.count
        let len = Int(raw[p]) << 24 | Int(raw[p + 1]) << 16 | Int(raw[p + 2]) << 8 | Int(raw[p + 3])
        guard len > 0, len <= 64, p + 4 + len <= raw.count else { return nil }
        let name = raw[(p + 4)..<(p + 4 + len)]
        guard name.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
        return String(decoding: name, as: UTF8.self)
    }

    static func base64Decode(_ s: [UInt8]) -> [UInt8]? {
        func v(_ c: UInt8) -> UInt32? {
            switch c {
            case 0x41...0x5A: return UInt32(c - 0x41)
            case 0x61...0x7A: return UInt32(c - 0x61 + 26)
            case 0x30...0x39: return UInt32(c - 0x30 + 52)
            case 0x2B: return 62
            case 0x2F: return 63
            default: return nil
            }
        }
        var out: [UInt8] = []
        var i = 0
        while i + 4 <= s.count {
            let q = s[i..<(i + 4)]
            var acc: UInt32 = 0
            var pad = 0
            for c in q {
                if c == 0x3D { pad += 1; acc <<= 6; continue }
                guard pad == 0, let x = v(c) else { return nil }
                acc = acc << 6 | x
            }
            out.append(UInt8(acc >> 16 & 0xFF))
            if pad < 2 { out.append(UInt8(acc >> 8 & 0xFF)) }
            if pad < 1 { out.append(UInt8(acc & 0xFF)) }
            if pad > 0 { break }
            i += 4
        }
        return out
    }
}

/// State of one secrets scan.
struct SecretScan {
    let g: GuestFiles
    let limits: SecretsLimits
    var findings: [SecretFinding] = []
    var warnings = CappedWarnings()
    var visited = 0
    var truncatedReason: String?
    var walkedRoots: [String] = []
    /// Directories already walked, by filesystem object and inode (mounts share inode numbers).
    var seenDirs = Set<DirKey>()
    var stopped: Bool { visited >= limits.maxFilesVisited }
    /// Mount points of the view: only these need a path lookup; every other entry is stat'ed
    /// by its inode in the directory's own filesystem (no walk from the root per file).
    lazy var mountPoints: Set<String> = Set(g.view?.mounts.map(\.path) ?? [])

    struct DirKey: Hashable {
        var fs: ObjectIdentifier
        var inode: UInt64
    }

    init(g: GuestFiles, limits: SecretsLimits) {
        self.g = g
        self.limits = limits
    }

    mutating func truncate(_ why: String) {
        if truncatedReason == nil { truncatedReason = why }
    }

    /// Records `path` as `kind` when it is a regular file (symlinks followed inside the guest).
    mutating func checkFile(_ path: String, kind: SecretKind) {
        let r: (fs: any FileSystem, inode: UInt64, stat: FileStat)?
        do { r = try g.resolve(path) } catch {
            warnings.add("\(path): \(error)")
            return
        }
        guard let r, r.stat.type == .regular else { return }
        findings.append(SecretFinding(path: path, kind: kind, size: r.stat.size, uid: r.stat.uid,
                                      mode: octalMode(r.stat.permissions)))
    }

    mutating func checkCredential(_ path: String, provider: CredentialProvider, test: Inspection.CredentialTest) {
        if case .always = test {
            checkFile(path, kind: .cloudCredentials(provider))
            return
        }
        guard let r = (try? g.resolve(path)) ?? nil, r.stat.type == .regular else { return }
        guard r.stat.size <= UInt64(limits.maxCredentialFileSize) else {
            // Too large to check cheaply: report it, it is a credential location either way.
            checkFile(path, kind: .cloudCredentials(provider))
            return
        }
        let bytes: [UInt8]
        do { bytes = try r.fs.read(r.inode, at: 0, count: Int(r.stat.size)) } catch {
            warnings.add("\(path): \(error)")
            return
        }
        let holds: Bool
        switch test {
        case .always: holds = true
        case .awsKeys: holds = Self.containsAny(bytes, ["aws_access_key_id", "aws_secret_access_key", "aws_session_token"])
        case .dockerAuths: holds = Self.dockerHasAuth(bytes)
        }
        if holds { checkFile(path, kind: .cloudCredentials(provider)) }
    }

    static func containsAny(_ hay: [UInt8], _ needles: [String]) -> Bool {
        needles.contains { find(hay, Array($0.utf8), from: 0) != nil }
    }

    static func find(_ hay: [UInt8], _ needle: [UInt8], from: Int) -> Int? {
        guard !needle.isEmpty, hay.count >= needle.count else { return nil }
        var i = from
        while i + needle.count <= hay.count {
            if hay[i] == needle[0], hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    /// True when a docker config has an `"auths"` section with at least one non-empty
    /// `"auth"` or `"identitytoken"` value (credential helpers keep nothing in the file).
    static func dockerHasAuth(_ b: [UInt8]) -> Bool {
        guard find(b, Array("\"auths\"".utf8), from: 0) != nil else { return false }
        for key in ["\"auth\"", "\"identitytoken\"", "\"password\""] {
            var from = 0
            while let at = find(b, Array(key.utf8), from: from) {
                var i = at + key.utf8.count
                while i < b.count, b[i] == 0x20 || b[i] == 0x09 || b[i] == 0x0A || b[i] == 0x0D { i += 1 }
                if i < b.count, b[i] == UInt8(ascii: ":") {
                    i += 1
                    while i < b.count, b[i] == 0x20 || b[i] == 0x09 || b[i] == 0x0A || b[i] == 0x0D { i += 1 }
                    if i + 1 < b.count, b[i] == UInt8(ascii: "\""), b[i + 1] != UInt8(ascii: "\"") { return true }
                }
                from = at + 1
            }
        }
        return false
    }

    static func isHostKey(_ path: String) -> Bool {
        guard path.hasPrefix("/etc/ssh/") else { return false }
        let name = path.dropFirst("/etc/ssh/".count)
        return !name.contains("/") && globMatch("ssh_host_*_key", String(name))
    }

    /// Depth-first walk of `root` for private keys, within the caps; symlinks are not followed.
    mutating func walk(_ root: String) {
        guard let r = (try? g.resolve(root, followFinal: false)) ?? nil, r.stat.type == .directory else { return }
        walkedRoots.append(root)
        // Explicit stack: (path, depth). Bounded by the visit cap.
        var stack: [(String, Int)] = [(root, 0)]
        while let (dir, depth) = stack.popLast() {
            if stopped {
                truncate("stopped after visiting \(limits.maxFilesVisited) entries")
                return
            }
            let d: (fs: any FileSystem, inode: UInt64, stat: FileStat)
            do {
                guard let x = try g.resolve(dir, followFinal: false), x.stat.type == .directory else { continue }
                d = x
            } catch {
                warnings.add("\(dir): \(error)")
                continue
            }
            guard seenDirs.insert(DirKey(fs: ObjectIdentifier(d.fs), inode: d.inode)).inserted else { continue }
            let entries: [DirectoryEntry]
            do { entries = try d.fs.readDirectory(d.inode) } catch {
                warnings.add("cannot list \(dir): \(error)")
                continue
            }
            let sorted = entries.sorted { $0.nameBytes.lexicographicallyPrecedes($1.nameBytes) }
            var subdirs: [String] = []
            for e in sorted {
                if visited >= limits.maxFilesVisited {
                    truncate("stopped after visiting \(limits.maxFilesVisited) entries")
                    return
                }
                visited += 1
                // Names with a slash or NUL cannot be addressed by path; skip them.
                if e.nameBytes.contains(0x2F) || e.nameBytes.contains(0) { continue }
                let path = (dir == "/" ? "" : dir) + "/" + e.name
                if e.type == .symlink || e.type == .characterDevice || e.type == .blockDevice
                    || e.type == .fifo || e.type == .socket { continue }
                let st: (fs: any FileSystem, inode: UInt64, stat: FileStat)
                do {
                    if mountPoints.contains(path) {
                        guard let x = try g.resolve(path, followFinal: false) else { continue }
                        st = x
                    } else {
                        st = (d.fs, e.inode, try d.fs.stat(e.inode))
                    }
                } catch {
                    warnings.add("\(path): \(error)")
                    continue
                }
                switch st.stat.type {
                case .directory:
                    if Inspection.skipsForSecrets(path) {
                        continue
                    } else if depth + 1 > limits.maxDepth {
                        truncate("directories deeper than \(limits.maxDepth) levels below \(root) were not searched")
                    } else {
                        subdirs.append(path)
                    }
                case .regular:
                    examine(path, st)
                default:
                    continue
                }
            }
            // Push in reverse so the walk visits names in order.
            for s in subdirs.reversed() { stack.append((s, depth + 1)) }
        }
    }

    mutating func examine(_ path: String, _ r: (fs: any FileSystem, inode: UInt64, stat: FileStat)) {
        guard r.stat.size >= 30, r.stat.size <= limits.maxCandidateSize, !Self.isHostKey(path) else { return }
        let head: [UInt8]
        do { head = try r.fs.read(r.inode, at: 0, count: Int(min(UInt64(limits.headBytes), r.stat.size))) } catch {
            warnings.add("\(path): \(error)")
            return
        }
        guard let (format, enc) = PrivateKeyHeader.detect(head) else { return }
        findings.append(SecretFinding(path: path, kind: .privateKey(format, passphraseProtected: enc),
                                      size: r.stat.size, uid: r.stat.uid, mode: octalMode(r.stat.permissions)))
    }
}
