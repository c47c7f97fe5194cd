import WardenCore
import GuestFS

/// Local accounts, groups and sudo rights. Password hashes are never copied out.
public struct AccountsInfo: Codable, Sendable, Equatable {
    public var accounts: Fact<[Account]>
    public var groups: Fact<[Group]>
    /// Whether /etc/shadow was read (password states are `none` for everyone otherwise).
    public var shadow: Fact<String>
    public var sudoRules: [SudoRule]
    /// sudoers files read, in order.
    public var sudoersFiles: [String]
    public var warnings: [String]
}

public struct Account: Codable, Sendable, Equatable {
    public var name: String
    public var uid: UInt32
    public var gid: UInt32
    public var gecos: String
    public var home: String
    public var shell: String
    /// `locked`, `empty`, `hash:<scheme>` or `none` (no shadow entry).
    public var passwordState: String
    /// Shell is not nologin/false and the password is not locked.
    public var canLogIn: Bool
    /// Primary group name (if known) followed by supplementary groups.
    public var groups: [String]
    public var isAdmin: Bool
    /// Why the account is considered an admin: `uid 0`, `group:sudo`, `sudoers:/etc/sudoers:12`.
    public var adminVia: [String]
    /// True if any sudoers rule matching this account has NOPASSWD.
    public var sudoNoPassword: Bool
}

public struct Group: Codable, Sendable, Equatable {
    public var name: String
    public var gid: UInt32
    public var members: [String]
}

public struct SudoRule: Codable, Sendable, Equatable {
    /// `path:line`.
    public var source: String
    /// The user list as written (`alice`, `%wheel`, `ADMINS`, `ALL`, ...).
    public var users: [String]
    /// Users after simple User_Alias expansion.
    public var expandedUsers: [String]
    public var hosts: [String]
    public var runAs: String?
    public var commands: [String]
    /// The command list includes ALL (after simple Cmnd_Alias expansion).
    public var allCommands: Bool
    public var noPassword: Bool
}

enum PasswordState {
    /// Classifies a password field without ever returning any part of it.
    static func classify(_ field: Substring) -> String {
        if field.isEmpty { return "empty" }
        if field.hasPrefix("!") || field.hasPrefix("*") { return "locked" }
        let schemes: [(String, String)] = [("$1$", "md5"), ("$5$", "sha256"), ("$6$", "sha512"), ("$y$", "yescrypt"),
                                           ("$2b$", "bcrypt"), ("$2a$", "bcrypt"), ("$2y$", "bcrypt"),
                                           ("$gy$", "gost-yescrypt"), ("$7$", "scrypt")]
        for (p, name) in schemes where field.hasPrefix(p) { return "hash:" + name }
        return "hash:unknown"
    }
}

extension Inspection {
    static let adminGroups: Set<String> = ["sudo", "wheel", "admin"]

    public static func accounts(_ g: GuestFiles) -> AccountsInfo {
        var warnings: [String] = []
        // /etc/shadow: name -> state (the field itself is dropped immediately).
        var shadowStates: [String: String] = [:]
        let shadowFact: Fact<String>
        switch g.load("/etc/shadow") {
        case .absent: shadowFact = .unknown(reason: "/etc/shadow absent")
        case .failed(let r): shadowFact = .unknown(reason: r)
        case .bytes(let b):
            shadowFact = .known("/etc/shadow")
            for line in boundedLines(String(decoding: b, as: UTF8.self)) {
                let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard f.count >= 2, !f[0].isEmpty, shadowStates.count < TextLimits.maxEntries else { continue }
                if shadowStates[String(f[0])] == nil { shadowStates[String(f[0])] = PasswordState.classify(f[1]) }
            }
        }

        // /etc/group.
        var groups: [Group] = []
        let groupsFact: Fact<[Group]>
        switch g.load("/etc/group") {
        case .absent: groupsFact = .unknown(reason: "/etc/group absent")
        case .failed(let r): groupsFact = .unknown(reason: r)
        case .bytes(let b):
            for line in boundedLines(String(decoding: b, as: UTF8.self)) {
                let f = line.split(separator: ":", omittingEmptySubsequences: false)
                guard f.count >= 3, !f[0].isEmpty, let gid = UInt32(f[2]), groups.count < TextLimits.maxEntries else { continue }
                let members = f.count >= 4 ? f[3].split(separator: ",").map { $0.trimmedWS }.filter { !$0.isEmpty } : []
                groups.append(Group(name: String(f[0]), gid: gid, members: Array(members.prefix(10_000))))
            }
            groupsFact = .known(groups)
        }

        let sudo = SudoersScan.read(g)
        warnings += sudo.warnings

        // /etc/passwd.
        let accountsFact: Fact<[Account]>
        switch g.load("/etc/passwd") {
        case .absent: accountsFact = .unknown(reason: "/etc/passwd absent")
        case .failed(let r): accountsFact = .unknown(reason: r)
        case .bytes(let b):
            var list: [Account] = []
            // Indexes so hostile sizes stay linear: gid -> name, user -> supplementary groups.
            var gidName: [UInt32: String] = [:]
            var memberOfIndex: [String: [String]] = [:]
            for gr in groups {
                if gidName[gr.gid] == nil { gidName[gr.gid] = gr.name }
                for m in gr.members where (memberOfIndex[m]?.count ?? 0) < 1024 { memberOfIndex[m, default: []].append(gr.name) }
            }
            let gidsByName = Dictionary(groups.map { ($0.name, $0.gid) }, uniquingKeysWith: { a, _ in a })
            // Total sudo rule/user comparisons allowed, so many rules times many users cannot stall.
            var sudoBudget = 20_000_000
            var budgetWarned = false
            for (i, line) in boundedLines(String(decoding: b, as: UTF8.self)).enumerated() {
                if line.isEmpty || line.hasPrefix("#") { continue }
                let f = line.split(separator: ":", omittingEmptySubsequences: false)
                guard f.count == 7, !f[0].isEmpty, let uid = UInt32(f[2]), let gid = UInt32(f[3]) else {
                    if warnings.count < 100 { warnings.append("/etc/passwd:\(i + 1): malformed entry") }
                    continue
                }
                guard list.count < TextLimits.maxEntries else { break }
                let name = String(f[0])
                let state: String
                if f[1] == "x" {
                    state = shadowStates[name] ?? "none"
                } else {
                    state = PasswordState.classify(f[1])
                }
                let shell = String(f[6])
                let shellBase = shell.split(separator: "/").last.map(String.init) ?? ""
                let loginShell = !["nologin", "false"].contains(shellBase)
                var memberOf: [String] = []
                if let primary = gidName[gid] { memberOf.append(primary) }
                for gname in memberOfIndex[name] ?? [] where !memberOf.contains(gname) { memberOf.append(gname) }
                let memberGids = memberOf.compactMap { gidsByName[$0] }
                var via: [String] = []
                if uid == 0 { via.append("uid 0") }
                for gname in memberOf where adminGroups.contains(gname) { via.append("group:" + gname) }
                var nopasswd = false
                for rule in sudo.rules {
                    sudoBudget -= rule.expandedUsers.count + 1
                    if sudoBudget < 0 {
                        if !budgetWarned { warnings.append("sudoers: too many rules x accounts; sudo rights not evaluated for the remaining accounts"); budgetWarned = true }
                        break
                    }
                    guard SudoersScan.matches(rule, user: name, uid: uid, groups: memberOf, gids: memberGids) else { continue }
                    if rule.allCommands { via.append("sudoers:" + rule.source) }
                    if rule.noPassword { nopasswd = true }
                }
                list.append(Account(name: name, uid: uid, gid: gid, gecos: String(f[4]), home: String(f[5]), shell: shell,
                                    passwordState: state, canLogIn: loginShell && state != "locked",
                                    groups: memberOf, isAdmin: !via.isEmpty, adminVia: via, sudoNoPassword: nopasswd))
            }
            accountsFact = .known(list)
        }
        return AccountsInfo(accounts: accountsFact, groups: groupsFact, shadow: shadowFact,
                            sudoRules: sudo.rules, sudoersFiles: sudo.files, warnings: warnings)
    }
}

/// A bounded sudoers(5) reader: includes, continuations, comments, aliases and user specs.
struct SudoersScan {
    static let maxDepth = 8
    static let maxFiles = 256
    static let tags: Set<String> = ["NOPASSWD", "PASSWD", "NOEXEC", "EXEC", "SETENV", "NOSETENV", "LOG_INPUT",
                                    "NOLOG_INPUT", "LOG_OUTPUT", "NOLOG_OUTPUT", "MAIL", "NOMAIL", "FOLLOW",
                                    "NOFOLLOW", "INTERCEPT", "NOINTERCEPT"]

    var rules: [SudoRule] = []
    var files: [String] = []
    var warnings: [String] = []
    var userAliases: [String: [String]] = [:]
    var cmndAliases: [String: [String]] = [:]

    static func read(_ g: GuestFiles) -> SudoersScan {
        var s = SudoersScan()
        s.file(g, "/etc/sudoers", depth: 0, stack: [])
        // Expand user aliases now that all are known (one level plus nested, bounded).
        for i in s.rules.indices {
            s.rules[i].expandedUsers = s.expand(s.rules[i].users, in: s.userAliases)
            let cmds = s.expand(s.rules[i].commands, in: s.cmndAliases)
            s.rules[i].allCommands = cmds.contains("ALL")
        }
        return s
    }

    func expand(_ items: [String], in aliases: [String: [String]], depth: Int = 0) -> [String] {
        var out: [String] = []
        for it in items {
            if let a = aliases[it], depth < 8 { out += expand(a, in: aliases, depth: depth + 1) } else { out.append(it) }
            if out.count > 10_000 { break }
        }
        return out
    }

    mutating func file(_ g: GuestFiles, _ path: String, depth: Int, stack: [String]) {
        guard files.count < Self.maxFiles else { warnings.append("sudoers: too many files; skipped \(path)"); return }
        let text: String
        switch g.load(path, maxBytes: 4 << 20) {
        case .absent: if depth > 0 { warnings.append("sudoers: included \(path) absent") }; return
        case .failed(let r): warnings.append(r); return
        case .bytes(let b): text = String(decoding: b, as: UTF8.self)
        }
        files.append(path)
        let dir = path.split(separator: "/").dropLast().joined(separator: "/")
        for (lineNo, line) in Self.logicalLines(text) {
            let t = line.trimmedWS
            for (prefix, isDir) in [("#includedir", true), ("@includedir", true), ("#include", false), ("@include", false)] {
                guard t.hasPrefix(prefix), t.dropFirst(prefix.count).first == " " || t.dropFirst(prefix.count).first == "\t" else { continue }
                var target = t.dropFirst(prefix.count).trimmedWS
                if target.hasPrefix("\""), target.hasSuffix("\""), target.count >= 2 { target = String(target.dropFirst().dropLast()) }
                if !target.hasPrefix("/") { target = "/" + dir + "/" + target }
                let targets: [String]
                if isDir {
                    targets = g.names(in: target, limit: 4096)
                        .filter { !$0.hasSuffix("~") && !$0.contains(".") }
                        .map { target + "/" + $0 }
                        .filter { g.resolvedType($0) == .regular }
                } else {
                    targets = [target]
                }
                for tp in targets {
                    if stack.contains(tp) || tp == path {
                        warnings.append("sudoers: include loop on \(tp) from \(path):\(lineNo) ignored")
                    } else if depth + 1 > Self.maxDepth {
                        warnings.append("sudoers: include depth limit reached at \(tp)")
                    } else {
                        file(g, tp, depth: depth + 1, stack: stack + [path])
                    }
                }
                break
            }
            let body = Self.stripComment(t).trimmedWS
            if body.isEmpty { continue }
            parseEntry(body, source: "\(path):\(lineNo)")
        }
    }

    /// Joins backslash-continued lines; returns (first line number, text).
    static func logicalLines(_ text: String) -> [(Int, String)] {
        var out: [(Int, String)] = []
        var cur = "", start = 0, building = false
        for (i, raw) in boundedLines(text).enumerated() {
            if !building { start = i + 1; cur = "" }
            if raw.hasSuffix("\\") {
                cur += raw.dropLast(); building = true
                if cur.utf8.count > TextLimits.maxLineLength { out.append((start, cur)); building = false }
            } else {
                cur += raw; building = false
                out.append((start, cur))
            }
        }
        if building { out.append((start, cur)) }
        return out
    }

    /// Removes a `#` comment, keeping `#123` uid/gid references and `\#`.
    static func stripComment(_ s: String) -> String {
        let c = Array(s)
        var out = ""
        var i = 0
        while i < c.count {
            if c[i] == "\\", i + 1 < c.count { out.append(c[i]); out.append(c[i + 1]); i += 2; continue }
            if c[i] == "#" {
                let prevOK = i == 0 || c[i - 1] == " " || c[i - 1] == "\t" || c[i - 1] == "," || c[i - 1] == "%" || c[i - 1] == "(" || c[i - 1] == ":"
                if prevOK, i + 1 < c.count, c[i + 1].isNumber { out.append(c[i]); i += 1; continue }
                break
            }
            out.append(c[i]); i += 1
        }
        return out
    }

    /// Drops whitespace next to commas so `a, b  host` splits into `a,b` and `host`.
    static func squeezeCommas(_ s: Substring) -> String {
        var out: [Character] = []
        var pendingSpace = false
        for c in s {
            if c == " " || c == "\t" { pendingSpace = true; continue }
            if c == "," { pendingSpace = false; out.append(c); continue }
            if pendingSpace, let l = out.last, l != "," { out.append(" ") }
            pendingSpace = false
            out.append(c)
        }
        return String(out)
    }

    static func splitList(_ s: some StringProtocol) -> [String] {
        s.split(separator: ",").map { $0.trimmedWS }.filter { !$0.isEmpty }
    }

    mutating func parseEntry(_ body: String, source: String) {
        let first = body.prefix(while: { $0 != " " && $0 != "\t" })
        switch first {
        case "User_Alias", "Cmnd_Alias", "Cmd_Alias":
            // NAME = a, b : NAME2 = c
            for def in body.dropFirst(first.count).split(separator: ":") {
                guard let eq = def.firstIndex(of: "=") else { continue }
                let name = def[..<eq].trimmedWS
                let members = Self.splitList(def[def.index(after: eq)...])
                if first == "User_Alias" { userAliases[name] = members } else { cmndAliases[name] = members }
            }
            return
        case "Host_Alias", "Runas_Alias": return
        default:
            if first.hasPrefix("Defaults") { return }
        }
        guard let eq = body.firstIndex(of: "="), rules.count < 10_000 else { return }
        // LHS: user list and host list, separated by whitespace not adjacent to a comma.
        let lhs = Self.squeezeCommas(body[..<eq])
        let lw = lhs.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard lw.count >= 2 else { return }
        let users = Self.splitList(lw[0])
        let hosts = Self.splitList(lw[1])
        var rhs = body[body.index(after: eq)...].trimmedWS
        var runAs: String?
        if rhs.hasPrefix("("), let close = rhs.firstIndex(of: ")") {
            runAs = String(rhs[rhs.index(after: rhs.startIndex)..<close])
            rhs = rhs[rhs.index(after: close)...].trimmedWS
        }
        var noPassword = false
        var commands: [String] = []
        for item in Self.splitList(rhs) {
            var cmd = Substring(item)
            if cmd.hasPrefix("("), let close = cmd.firstIndex(of: ")") { cmd = cmd[cmd.index(after: close)...].drop(while: { $0 == " " }) }
            // Leading tags like NOPASSWD: SETENV:
            while let colon = cmd.firstIndex(of: ":"), Self.tags.contains(String(cmd[..<colon]).trimmedWS) {
                if cmd[..<colon].trimmedWS == "NOPASSWD" { noPassword = true }
                if cmd[..<colon].trimmedWS == "PASSWD" { noPassword = false }
                cmd = cmd[cmd.index(after: colon)...].drop(while: { $0 == " " || $0 == "\t" })
            }
            let c = cmd.trimmedWS
            if !c.isEmpty && commands.count < 1000 { commands.append(c) }
        }
        rules.append(SudoRule(source: source, users: users, expandedUsers: users, hosts: hosts, runAs: runAs,
                              commands: commands, allCommands: commands.contains("ALL"), noPassword: noPassword))
    }

    static func matches(_ rule: SudoRule, user: String, uid: UInt32, groups: [String], gids: [UInt32]) -> Bool {
        var matched = false
        for u in rule.expandedUsers {
            let neg = u.hasPrefix("!")
            let x = neg ? String(u.dropFirst()) : u
            var hit = false
            if x == "ALL" || x == user || x == "#\(uid)" { hit = true }
            if x.hasPrefix("%#"), let gid = UInt32(x.dropFirst(2)), gids.contains(gid) { hit = true }
            else if x.hasPrefix("%"), !x.hasPrefix("%:"), groups.contains(String(x.dropFirst())) { hit = true }
            if hit { if neg { return false } else { matched = true } }
        }
        return matched
    }
}
