import Foundation
import Policy
import WardenCore
import Yams

/// One setting Warden reads from its configuration file and from the environment.
public struct ConfigKey: Sendable, Hashable {
    /// The key in the file, dotted for nested mappings (`advisories.osv_url`).
    public var name: String
    /// The environment variable that carries the same setting.
    public var environment: String
    /// One line for `warden config show` and docs/configuration.md.
    public var summary: String
    /// The values accepted, when the setting is a choice.
    public var choices: [String]?
    /// Values that may hold a secret (a password in a URL) are shown redacted.
    public var mayHoldSecret: Bool
    /// The built-in default when it is a constant (paths derive from `home` and are computed
    /// where they are used).
    public var defaultValue: String?

    public init(_ name: String, _ environment: String, _ summary: String, choices: [String]? = nil,
                mayHoldSecret: Bool = false, default defaultValue: String? = nil) {
        self.name = name; self.environment = environment; self.summary = summary
        self.choices = choices; self.mayHoldSecret = mayHoldSecret; self.defaultValue = defaultValue
    }

    /// The value in effect for a constant-default key: its environment variable (which the
    /// configuration file fills at start-up), else the default. Trailing slashes trimmed for URLs.
    public func value(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        var v = environment[self.environment].flatMap { $0.isEmpty ? nil : $0 } ?? defaultValue
        if name.hasSuffix("_url") { while v?.hasSuffix("/") == true { v?.removeLast() } }
        return v
    }

    /// Every key the file may hold (docs/configuration.md). A key not listed is an error.
    public static let all: [ConfigKey] = [
        ConfigKey("home", "WARDEN_HOME", "Warden's state folder: ledger, keys, policy and run files."),
        ConfigKey("db", "WARDEN_DB", "The SQLite ledger."),
        ConfigKey("database_url", "WARDEN_DATABASE_URL", "A postgres:// URL: the fleet ledger for `warden serve`.", mayHoldSecret: true),
        ConfigKey("policy", "WARDEN_POLICY", "The policy folder."),
        ConfigKey("keys", "WARDEN_KEYS", "The ledger's signing keys."),
        ConfigKey("vault", "WARDEN_VAULT", "The vault's key folder."),
        ConfigKey("log_level", "WARDEN_LOG", "The least severe log message written.",
                  choices: ["trace", "debug", "info", "notice", "warning", "error", "critical"], default: "notice"),
        ConfigKey("progress", "WARDEN_PROGRESS", "Progress of long work on standard error.", choices: ["auto", "always", "never"], default: "auto"),
        ConfigKey("advisories.osv_url", "WARDEN_OSV_URL", "Base URL of the OSV feed.",
                  default: "https://osv-vulnerabilities.storage.googleapis.com"),
        ConfigKey("advisories.debian_tracker_url", "WARDEN_DEBIAN_TRACKER_URL", "URL of the Debian security tracker's JSON.",
                  default: "https://security-tracker.debian.org/tracker/data/json"),
        ConfigKey("advisories.alpine_secdb_url", "WARDEN_ALPINE_SECDB_URL", "Base URL of Alpine's secdb.",
                  default: "https://secdb.alpinelinux.org"),
    ]

    public static func named(_ name: String) -> ConfigKey? { all.first { $0.name == name } }

    public static let osvURL = named("advisories.osv_url")!
    public static let debianTrackerURL = named("advisories.debian_tracker_url")!
    public static let alpineSecdbURL = named("advisories.alpine_secdb_url")!
}

/// Where the effective value of a setting came from.
public enum ConfigSource: Sendable, Equatable, CustomStringConvertible {
    case flag
    case environment(String)
    case file(path: String, line: Int)
    case `default`

    public var description: String {
        switch self {
        case .flag: return "flag"
        case .environment(let name): return "environment \(name)"
        case .file(let path, let line): return "\(path):\(line)"
        case .default: return "default"
        }
    }
}

/// Warden's configuration: `/etc/warden/config.yaml`, then `$XDG_CONFIG_HOME/warden/config.yaml`
/// (or `~/.config/warden/config.yaml`), or the one file `$WARDEN_CONFIG` names (empty: none).
///
/// Precedence, highest first: a command's flags, `WARDEN_*` environment variables, the user's
/// file, the system file, built-in defaults. Every part of Warden already reads its
/// environment variable, so ``exportToEnvironment()`` puts the file's values there (only where
/// the variable is unset) at start-up, and flags keep winning where each command reads them.
public struct Configuration: Sendable {
    public struct Value: Sendable, Equatable {
        public var text: String
        public var source: ConfigSource
        public init(text: String, source: ConfigSource) { self.text = text; self.source = source }
    }
    /// The value of each key set by the environment or a file.
    public private(set) var values: [String: Value] = [:]
    /// The files read, lowest precedence first.
    public private(set) var files: [String] = []

    public static let systemFile = "/etc/warden/config.yaml"
    /// Configuration files are small; anything larger is refused before parsing.
    public static let maxFileSize = 1 << 20

    public init() {}

    /// The files to read, lowest precedence first, and whether each must exist.
    public static func candidateFiles(environment: [String: String]) -> [(path: String, required: Bool)] {
        if let named = environment["WARDEN_CONFIG"] {
            return named.isEmpty ? [] : [(named, true)]
        }
        let base: String
        if let x = environment["XDG_CONFIG_HOME"], x.hasPrefix("/") {
            base = x
        } else {
            let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
            base = home + "/.config"
        }
        return [(systemFile, false), (base + "/warden/config.yaml", false)]
    }

    /// Reads the files and the environment. A file that exists but cannot be read, or holds
    /// an unknown key or a bad value, is an error naming `file:line:column`.
    public static func load(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Configuration {
        var config = Configuration()
        for (path, required) in candidateFiles(environment: environment) {
            guard FileManager.default.fileExists(atPath: path) else {
                if required { throw WardenError(.invalidArgument, "no such configuration file ($WARDEN_CONFIG)", file: path) }
                continue
            }
            guard let data = FileManager.default.contents(atPath: path) else {
                throw WardenError(.invalidArgument, "cannot read the configuration file", file: path)
            }
            guard data.count <= maxFileSize else {
                throw WardenError(.invalidArgument, "the configuration file is larger than 1 MiB", file: path)
            }
            guard let text = String(data: data, encoding: .utf8) else {
                throw WardenError(.invalidArgument, "the configuration file is not UTF-8", file: path)
            }
            for (key, entry) in try parse(text, file: path) {
                config.values[key] = Value(text: entry.value, source: .file(path: path, line: entry.line))
            }
            config.files.append(path)
        }
        let exported = exportedKeys.withLock { $0 }
        for key in ConfigKey.all where !exported.contains(key.name) {
            if let v = environment[key.environment], !v.isEmpty {
                config.values[key.name] = Value(text: v, source: .environment(key.environment))
            }
        }
        return config
    }

    /// The settings in one file's text: key → (value, line). Strict: a mapping of the known
    /// keys (nested under `advisories:`), scalar values, each checked.
    public static func parse(_ text: String, file: String) throws -> [String: (value: String, line: Int)] {
        func bad(_ node: Node?, _ message: String) -> WardenError {
            let line = node?.mark?.line ?? 1, column = node?.mark?.column ?? 1
            return WardenError(.invalidArgument, "\(file):\(line):\(column): \(message)")
        }
        guard text.utf8.count <= maxFileSize else { throw WardenError(.invalidArgument, "the configuration file is larger than 1 MiB", file: file) }
        guard let root = try YAMLNesting.compose(text, file: file) else { return [:] } // empty file
        if case .scalar(let s) = root, s.string.isEmpty || s.tag == Tag(.null) { return [:] }
        guard case .mapping(let top) = root else { throw bad(root, "the configuration is a mapping of settings (\(keyList(prefix: "")))") }
        var out: [String: (value: String, line: Int)] = [:]
        func take(_ mapping: Node.Mapping, prefix: String) throws {
            for (k, v) in mapping {
                guard case .scalar(let ks) = k else { throw bad(k, "keys are plain words") }
                let name = prefix + ks.string
                if ConfigKey.named(name) == nil {
                    let section = ConfigKey.all.contains { $0.name.hasPrefix(name + ".") }
                    if section, case .mapping(let inner) = v {
                        try take(inner, prefix: name + ".")
                        continue
                    }
                    if section { throw bad(v, "\(name) is a mapping (\(keyList(prefix: name + ".")))") }
                    throw bad(k, "unknown key '\(TerminalText.line(name))' (\(keyList(prefix: prefix)))")
                }
                guard out[name] == nil else { throw bad(k, "\(name) is set twice") }
                guard case .scalar(let vs) = v else { throw bad(v, "\(name) takes one value") }
                let key = ConfigKey.named(name)!
                let value = vs.string
                if let message = check(key, value) { throw bad(v, message) }
                out[name] = (value, k.mark?.line ?? 1)
            }
        }
        try take(top, prefix: "")
        return out
    }

    /// Why `value` is not acceptable for `key`, or nil.
    public static func check(_ key: ConfigKey, _ value: String) -> String? {
        if value.isEmpty { return "\(key.name) is empty" }
        if value.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) { return "\(key.name) holds a control character" }
        if let choices = key.choices, !choices.contains(value) {
            return "\(key.name) is one of \(choices.joined(separator: ", ")), not '\(TerminalText.line(value))'"
        }
        if key.name.hasSuffix("_url") && key.name != "database_url" && !(value.hasPrefix("https://") || value.hasPrefix("http://")) {
            return "\(key.name) is an http:// or https:// URL"
        }
        if key.name == "database_url" && !(value.hasPrefix("postgres://") || value.hasPrefix("postgresql://")) {
            return "database_url is a postgres:// URL"
        }
        return nil
    }

    static func keyList(prefix: String) -> String {
        var seen: [String] = []
        for k in ConfigKey.all where k.name.hasPrefix(prefix) {
            let rest = k.name.dropFirst(prefix.count)
            let word = String(rest.split(separator: ".").first ?? Substring(rest))
            if !seen.contains(word) { seen.append(word) }
        }
        return seen.joined(separator: ", ")
    }

    /// Puts each value read from a file into its environment variable, unless the variable is
    /// already set: every part of Warden (and the processes it starts) then sees the file.
    public func exportToEnvironment() {
        for key in ConfigKey.all {
            guard let v = values[key.name], case .file = v.source else { continue }
            let unset = ProcessInfo.processInfo.environment[key.environment].map(\.isEmpty) ?? true
            guard unset else { continue }
            setenv(key.environment, v.text, 1)
            Self.exportedKeys.withLock { _ = $0.insert(key.name) }
        }
    }

    /// The keys whose environment variable this process set from a file (a later ``load``
    /// reports them as coming from the file, not the environment).
    static let exportedKeys = Locked<Set<String>>([])

    /// `value` as it may be shown: a password in a URL replaced by `***`.
    public static func shown(_ key: ConfigKey, _ value: String) -> String {
        guard key.mayHoldSecret, let scheme = value.range(of: "://") else { return value }
        let rest = value[scheme.upperBound...]
        guard let at = rest.firstIndex(of: "@") else { return value }
        let userinfo = rest[..<at]
        guard let colon = userinfo.firstIndex(of: ":") else { return value }
        return String(value[..<scheme.upperBound]) + userinfo[..<colon] + ":***" + rest[at...]
    }
}
