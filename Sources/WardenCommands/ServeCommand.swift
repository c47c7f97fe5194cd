import ArgumentParser
import Foundation
import Ledger
import Logging
import Server
import Storage
import WardenCore
import Yams
import Agent
import Policy

/// `warden serve`: the fleet API over the ledger (docs/fleet.md).
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Serve the fleet API over the ledger (SQLite here, or PostgreSQL).",
        discussion: """
        Settings come from --config (YAML: listen, database, db, tokens, log_level, tls,
        tls_names, policy), then the environment ($WARDEN_DATABASE_URL; the PostgreSQL password from
        $PGPASSWORD), then flags. With --tls the server is its own CA: hosts enrol with a
        one-time host token and then report with the client certificate it issues.
        Stops gracefully on SIGTERM or SIGINT.
        """,
        subcommands: [ServeRun.self, ServeToken.self, ServeCA.self, ServeCerts.self, ServeLoginLink.self], defaultSubcommand: ServeRun.self)
}

/// What `warden serve` reads from its config file; every key is optional.
struct ServeSettings: Decodable {
    var listen: String?
    var database: String?
    var db: String?
    var tokens: String?
    var logLevel: String?
    var tls: Bool?
    var tlsNames: [String]?
    var policy: String?
    enum CodingKeys: String, CodingKey { case listen, database, db, tokens, logLevel = "log_level", tls, tlsNames = "tls_names", policy }

    static func load(_ path: String?) throws -> ServeSettings {
        guard let path else { return ServeSettings() }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw WardenError(.invalidArgument, "cannot read the config file", file: path)
        }
        guard text.utf8.count <= 1 << 20 else { throw WardenError(.invalidArgument, "the config file is larger than 1 MiB", file: path) }
        do { try YAMLNesting.check(text) } catch {
            throw WardenError(.invalidArgument, "the config file nests deeper than \(YAMLNesting.maxDepth) levels", file: path)
        }
        do { return try YAMLDecoder().decode(ServeSettings.self, from: text) } catch {
            throw WardenError(.invalidArgument, "the config file is not a warden serve configuration (listen, database, db, tokens, log_level, tls, tls_names, policy)", file: path)
        }
    }
    init() {}
}

/// Where the server keeps its token list unless told otherwise: `server/tokens.json` beside the database.
func defaultTokensPath(db: String?) -> String {
    let dir = (WardenDatabase.defaultPath(explicit: db) as NSString).deletingLastPathComponent
    return (dir.isEmpty ? "." : dir) + "/server/tokens.json"
}

struct ServeRun: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the server (the default).",
        discussion: """
            Examples:
              warden serve run --listen 127.0.0.1:8480
              warden serve run --tls --database postgres://warden@db/fleet
            """)
    @Option(help: ArgumentHelp("A YAML config file.", valueName: "path")) var config: String?
    @Option(help: ArgumentHelp("Address and port to listen on (default 127.0.0.1:8480).", valueName: "host:port")) var listen: String?
    @Option(help: ArgumentHelp("A postgres:// URL; without it the SQLite database at --db is the ledger.", valueName: "url"))
    var database: String?
    @Option(help: ArgumentHelp("The SQLite database (default as for every command).", valueName: "path")) var db: String?
    @Option(help: ArgumentHelp("The token list (default: server/tokens.json beside the database).", valueName: "path")) var tokens: String?
    @Flag(help: "Serve HTTPS as the fleet's CA; hosts enrol and report with client certificates (mutual TLS).") var tls = false
    @Option(name: .customLong("tls-name"), help: ArgumentHelp("A DNS name or IP address for the server's certificate (repeatable; default: the listen address, this host's name, loopback).", valueName: "name"))
    var tlsNames: [String] = []
    @Option(help: ArgumentHelp("The fleet policy folder agents pull (default: none served).", valueName: "dir")) var policy: String?

    func run() throws {
        let file = try ServeSettings.load(config)
        let env = ProcessInfo.processInfo.environment
        let listenText = listen ?? file.listen ?? "127.0.0.1:8480"
        guard let colon = listenText.lastIndex(of: ":"), let port = Int(listenText[listenText.index(after: colon)...]),
              (0...65535).contains(port), colon > listenText.startIndex else {
            throw ValidationError("--listen takes host:port, e.g. 127.0.0.1:8480")
        }
        // --log-level is global (GlobalOptions): it beats this file, which beats $WARDEN_LOG.
        let globalLevel = env["WARDEN_LOG"].flatMap { $0.isEmpty ? nil : $0 }
        let levelText = (GlobalOptions.fromFlags.contains("log_level") ? globalLevel : nil) ?? file.logLevel ?? globalLevel ?? "info"
        guard let level = Logger.Level(rawValue: levelText) else { throw ValidationError("unknown log level \(oneLine(levelText))") }
        let dbPath = WardenDatabase.defaultPath(explicit: db ?? file.db)
        let url = database ?? file.database ?? env["WARDEN_DATABASE_URL"]
        let store = try FleetStores.open(database: url, path: dbPath, keysDirectory: nil)
        let server = try FleetServer(configuration: .init(host: String(listenText[..<colon]), port: port,
                                                      tokensFile: tokens ?? file.tokens ?? defaultTokensPath(db: db ?? file.db),
                                                      logLevel: level, tls: tls || (file.tls ?? false),
                                                      tlsNames: tlsNames.isEmpty ? (file.tlsNames ?? []) : tlsNames,
                                                      policyDirectory: policy ?? file.policy),
                                 store: store)
        if let pki = server.pki {
            Output.stdout.line("warden serve: https with mutual TLS for hosts; CA \(pki.caFingerprint) (warden serve ca prints it)")
        } else if !["127.0.0.1", "::1", "localhost"].contains(String(listenText[..<colon])) {
            Output.note("warden serve: plain HTTP off loopback: tokens cross the network in clear, and no host can report (use --tls)")
        }
        let app = try server.application { port in
            // One line when the server is up, for scripts and tests (the port matters with :0).
            Output.stdout.line("warden serve: listening on \(listenText[..<colon]):\(port)")
            Output.stdout.flush()
        }
        // The command is synchronous; the server runs on its event loops until a signal stops it.
        do { try runAsync { try await app.runService() } } catch {
            throw WardenError(.unavailable, "the server stopped: \(error)")
        }
    }
}

struct ServeToken: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Make, list and revoke the server's bearer tokens.",
        subcommands: [ServeTokenAdd.self, ServeTokenList.self, ServeTokenRevoke.self])
}

struct TokenFileOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The token list (default: server/tokens.json beside the database).", valueName: "path")) var tokens: String?
    @Option(help: ArgumentHelp("The database whose folder holds the default token list.", valueName: "path")) var db: String?
    var path: String { tokens ?? defaultTokensPath(db: db) }
    var store: TokenStore { TokenStore(path: path) }
}

struct ServeTokenAdd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Make a token and print it once (only its hash is kept).",
            discussion: """
                Example:
                  warden serve token add ops-bot --role operator --owner ops
                """)
    @OptionGroup var file: TokenFileOptions
    @Argument(help: "A name for the token (who or what uses it).") var name: String
    @Option(help: "admin, operator, auditor or host.") var role: String
    @Option(help: "For operator tokens: the owner whose VMs it may act on.") var owner: String?
    @Option(help: "For host tokens (one-time enrolment tokens): the host it enrols.") var host: String?

    func run() throws {
        guard let r = Role(rawValue: role) else { throw ValidationError("--role is admin, operator, auditor or host") }
        var hostName: HostName?
        if let host { guard let h = HostName(host) else { throw ValidationError("not a host name: \(oneLine(host))") }; hostName = h }
        let token = try file.store.add(name: name, role: r, owner: owner, host: hostName)
        Output.stdout.line(token)
    }
}

struct ServeTokenList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the tokens (names and roles, never secrets).",
        discussion: """
            Example:
              warden serve token list
            """, aliases: ["ls"])
    @OptionGroup var file: TokenFileOptions
    @Flag(help: "Print JSON.") var json = false

    struct Doc: Encodable { var schema = "warden.token-list/v1"; var tokens: [TokenStore.Listed] }

    func run() throws {
        let list = try file.store.list()
        try Output.render(Doc(tokens: list), json: json, style: .ledger) {
            var rows = [["NAME", "ROLE", "OWNER", "HOST", "STATE"]]
            for t in list {
                rows.append([t.name, t.role.rawValue, t.owner ?? "-", t.host ?? "-", t.revoked != nil ? "revoked" : t.used != nil ? "spent" : "live"])
            }
            for line in table(rows) { Output.stdout.line(line) }
        }
    }
}

struct ServeTokenRevoke: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a token; the server refuses it from the next request on.",
        discussion: """
            Example:
              warden serve token revoke ops-bot
            """)
    @OptionGroup var file: TokenFileOptions
    @Argument(help: "The token's name.") var name: String
    func run() throws {
        try file.store.revoke(name: name)
        Output.stdout.line("revoked \(name)")
    }
}

struct ServeCA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "Print the fleet CA's certificate (PEM), to hand to hosts as their --ca-file; makes the CA if there is none.",
            discussion: """
                Example:
                  warden serve ca > fleet-ca.pem
                """)
    @OptionGroup var file: TokenFileOptions
    @Flag(help: "Print only its SHA-256 fingerprint.") var fingerprint = false
    func run() throws {
        let pki = try FleetPKI(directory: FleetPKI.directory(tokensFile: file.path))
        Output.stdout.line(fingerprint ? pki.caFingerprint : pki.caPEM.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

struct ServeCerts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs", abstract: "List and revoke the host certificates the server issued.",
        subcommands: [ServeCertsList.self, ServeCertsRevoke.self])
}

struct ServeCertsList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the host certificates issued.",
        discussion: """
            Example:
              warden serve certs list
            """, aliases: ["ls"])
    @OptionGroup var file: TokenFileOptions
    @Flag(help: "Print JSON.") var json = false
    struct Doc: Encodable { var schema = "warden.host-certificates/v1"; var certificates: [FleetPKI.Issued] }
    func run() throws {
        let list = try FleetPKI(directory: FleetPKI.directory(tokensFile: file.path), create: false).listIssued()
        try Output.render(Doc(certificates: list), json: json, style: .ledger) {
            var rows = [["HOST", "SERIAL", "NOT AFTER", "STATE"]]
            for c in list {
                rows.append([c.host, String(c.serial.prefix(16)), LedgerTime.rfc3339(LedgerTime.micros(c.notAfter)),
                             c.revoked != nil ? "revoked" : c.notAfter < Date() ? "expired" : "live"])
            }
            for line in table(rows) { Output.stdout.line(line) }
        }
    }
}

struct ServeCertsRevoke: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke", abstract: "Revoke every certificate of a host; the server refuses them from the next request on.",
            discussion: """
                Example:
                  warden serve certs revoke hv2
                """)
    @OptionGroup var file: TokenFileOptions
    @Argument(help: "The host.") var host: String
    func run() throws {
        guard let h = HostName(host) else { throw ValidationError("not a host name: \(oneLine(host))") }
        let n = try FleetPKI(directory: FleetPKI.directory(tokensFile: file.path), create: false).revoke(host: h)
        Output.stdout.line("revoked \(n) certificate\(n == 1 ? "" : "s") of \(h)")
    }
}

struct ServeLoginLink: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login-link", abstract: "Print a one-time dashboard link (valid 60 s) for the token in $WARDEN_TOKEN.",
            discussion: """
                Example:
                  WARDEN_TOKEN=… warden serve login-link --server http://127.0.0.1:8480
                """)
    @Option(help: ArgumentHelp("The server, e.g. http://127.0.0.1:8480.", valueName: "url")) var server: String
    @Option(help: ArgumentHelp("The page to open after signing in.", valueName: "path")) var next: String = "/"
    @Option(help: ArgumentHelp("The CA to trust for an https server (warden serve ca); default: the system's.", valueName: "path")) var caFile: String?

    func run() throws {
        guard let token = ProcessInfo.processInfo.environment["WARDEN_TOKEN"], !token.isEmpty else {
            throw ValidationError("set $WARDEN_TOKEN to an admin, operator or auditor token")
        }
        let client = FleetClient(server: server, token: token, tls: try caFile.map { try FleetClient.trusting(caFile: $0) })
        struct Link: Decodable { var path: String }
        let link: Link = try runAsync {
            defer { Task { await client.shutdown() } }
            return try await client.call(.POST, "/v1/login-links", body: Optional<Int>.none)
        }
        let nextParam = next.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "/-_.~"))) ?? "/"
        Output.stdout.line(client.server + link.path + "&next=" + nextParam)
    }
}
