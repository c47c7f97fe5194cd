import ArgumentParser
import Foundation
import Hypervisor
import Ledger
import Policy
import Storage
import Vault
import WardenConfig
import WardenCore

/// `warden config show|check`: the effective configuration and where each value came from.
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Show Warden's effective configuration, or check a configuration file.",
        discussion: """
        Settings come from, highest first: a command's flags, WARDEN_* environment variables, \
        $XDG_CONFIG_HOME/warden/config.yaml (else ~/.config/warden/config.yaml), \
        /etc/warden/config.yaml, built-in defaults. $WARDEN_CONFIG names one file to read \
        instead of both (empty: none). Unknown keys and bad values are errors naming file:line \
        (docs/configuration.md).
        """,
        subcommands: [Show.self, Check.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Print every setting's value and its source (flag, environment, file:line or default).",
            discussion: """
            Passwords in URLs are shown as ***.

            Examples:
              warden config show
              WARDEN_HOME=/srv/warden warden config show --json
            """)
        @Flag(help: "Print JSON (schema warden.config/v1).") var json = false

        struct Setting: Encodable {
            var key: String
            var environment: String
            var value: String?
            var source: String
        }
        struct Doc: Encodable {
            var schema = "warden.config/v1"
            var files: [String]
            var settings: [Setting]
        }

        func run() throws {
            let env = ProcessInfo.processInfo.environment
            let config = try Configuration.load(environment: env)
            // The values in effect: the environment now holds flags and file values alike.
            let db = WardenDatabase.defaultPath(environment: env)
            let computed: [String: String] = [
                "home": RunDirectory.home(environment: env),
                "db": db,
                "policy": PolicySet.defaultDirectory(environment: env),
                "keys": HostKey.directory(databasePath: db, environment: env),
                "vault": Vault.beside(database: db, environment: env).directory,
            ]
            let settings = ConfigKey.all.map { key -> Setting in
                let set = config.values[key.name]
                let source: String
                if GlobalOptions.fromFlags.contains(key.name) { source = "flag" }
                else if let set { source = set.source.description }
                else { source = "default" }
                let value = set?.text ?? computed[key.name] ?? key.defaultValue
                return Setting(key: key.name, environment: key.environment,
                               value: value.map { Configuration.shown(key, $0) }, source: source)
            }
            try Output.render(Doc(files: config.files, settings: settings), json: json) {
                Output.stdout.line("files read: \(config.files.isEmpty ? "none" : config.files.joined(separator: ", "))")
                let w = settings.map(\.key.count).max() ?? 0
                let v = min(60, settings.map { ($0.value ?? "-").count }.max() ?? 0)
                for s in settings {
                    let value = s.value ?? "-"
                    Output.stdout.line(s.key.padding(toLength: w, withPad: " ", startingAt: 0) + "  "
                                       + value.padding(toLength: max(v, value.count), withPad: " ", startingAt: 0) + "  " + s.source)
                }
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Check configuration files: exit 0 when valid, 2 with file:line:column of the first problem.",
            discussion: """
            With no file, checks the files Warden reads (as `config show` lists them).

            Example:
              warden config check /etc/warden/config.yaml
            """)
        @Argument(help: "Files to check.") var files: [String] = []

        func run() throws {
            if files.isEmpty {
                let config = try Configuration.load()
                Output.stdout.line(config.files.isEmpty ? "no configuration file" : config.files.map { "\($0): ok" }.joined(separator: "\n"))
                return
            }
            for f in files {
                guard let data = FileManager.default.contents(atPath: f) else {
                    throw WardenError(.invalidArgument, "cannot read the configuration file", file: f)
                }
                guard data.count <= Configuration.maxFileSize, let text = String(data: data, encoding: .utf8) else {
                    throw WardenError(.invalidArgument, "the configuration file is over 1 MiB or not UTF-8", file: f)
                }
                _ = try Configuration.parse(text, file: f)
                Output.stdout.line("\(f): ok")
            }
        }
    }
}
