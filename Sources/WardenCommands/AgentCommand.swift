import Agent
import Attestation
import Policy
import WardenServices
import Storage
import AdvisoryStorage
import ArgumentParser
import Foundation
import Ledger
import WardenCore

/// `warden agent`: this host's link to the fleet server (docs/fleet.md).
struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent", abstract: "Ship this host's ledger to the fleet server and pull the fleet's VMs.",
        subcommands: [AgentEnrol.self, AgentRun.self, AgentStatus.self, AgentAttest.self])
}

struct AgentEnrol: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enrol", abstract: "Set this host up to report to a server.",
        discussion: """
        The token is a one-time host token made on the server (warden serve token add NAME --role host --host HOST); \
        the CA file is the fleet CA printed by warden serve ca, handed over out of band. The host makes its key, \
        sends a certificate request with the token, and keeps the client certificate the server issues (0600, in \
        agent/ beside the database). Pass the token in $WARDEN_AGENT_TOKEN rather than --token to keep it out of \
        the process list.
        
        Example:
          warden agent enrol https://fleet.example:8480 --token … --ca-file fleet-ca.pem
        """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The server, e.g. https://fleet.example:8480.") var url: String
    @Option(help: "The one-time host token (default: $WARDEN_AGENT_TOKEN).") var token: String?
    @Option(help: ArgumentHelp("The fleet CA's certificate (warden serve ca).", valueName: "path")) var caFile: String
    @Option(help: "The name this host reports as (default: this host's name).") var host: String?
    @Option(help: "Seconds the fleet's facts pulled here stay good; older, maxReplicas fails closed (default 300).") var maxStaleness: Double?

    func run() throws {
        guard let token = token ?? ProcessInfo.processInfo.environment["WARDEN_AGENT_TOKEN"] else {
            throw ValidationError("give the host token with --token or $WARDEN_AGENT_TOKEN")
        }
        let name = try host.map { h -> HostName in
            guard let n = HostName(h) else { throw ValidationError("not a host name: \(oneLine(h))") }
            return n
        } ?? .current
        let dir = AgentConfiguration.directory(databasePath: database.path)
        let (url, caFile, maxStaleness) = (self.url, self.caFile, self.maxStaleness)
        // The host's ledger signing key (made now if it has none): the server pins it to the name.
        let signingKey = try HostKey.loadOrCreate(directory: HostKey.directory(databasePath: database.path)).publicKey
        let config = try runAsync {
            try await AgentConfiguration.enrol(server: url, host: name, token: token, caFile: caFile, maxStalenessSeconds: maxStaleness,
                                               directory: dir, signingKey: signingKey)
        }
        Output.stdout.line("enrolled \(name) with \(config.server)")
    }
}

/// Bridges the synchronous command to the agent's async work.
func runAsync<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let done = DispatchSemaphore(value: 0)
    let result = Locked<Result<T, Error>?>(nil)
    Task {
        let r: Result<T, Error>
        do { r = .success(try await body()) } catch { r = .failure(error) }
        result.withLock { $0 = r }
        done.signal()
    }
    done.wait()
    return try result.withLock { $0! }.get()
}

struct AgentRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Sync with the server: once, or every --interval seconds until stopped.",
            discussion: """
                Examples:
                  warden agent run --once
                  warden agent run --interval 60
                """)
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "One round, then exit (non-zero when the server could not be reached).") var once = false
    @Option(help: "Seconds between rounds.") var interval: Double = 10
    @Flag(help: "Print each round as JSON.") var json = false

    func validate() throws {
        guard interval >= 0.1, interval <= 86_400 else { throw ValidationError("--interval is 0.1 to 86400 seconds") }
    }

    func run() throws {
        let dir = AgentConfiguration.directory(databasePath: database.path)
        let config = try AgentConfiguration.load(directory: dir)
        let local = try database.open(create: true)
        let agent = try Agent(local: local, configuration: config, directory: dir, scanner: Self.scanner(database),
                              policyDirectory: PolicySet.defaultDirectory())
        let json = self.json
        @Sendable func show(_ r: Agent.Round) {
            if json, let text = try? Output.ledgerJSON(r) {
                Output.stdout.line(text.replacingOccurrences(of: "\n", with: "").replacingOccurrences(of: "  ", with: ""))
                Output.stdout.flush()
            } else {
                defer { Output.stdout.flush() }
                Output.stdout.line("sent \(r.eventsSent) events (\(r.eventsNew) new), reported \(r.vmsReported) VMs (\(r.vmsRefused) refused), pulled \(r.vmsPulled), scan jobs \(r.jobsDone) done \(r.jobsFailed) failed; acknowledged up to \(r.acked), \(r.pending) pending")
            }
        }
        if once {
            let r = try runAsync { defer { Task { await agent.shutdown() } }; return try await agent.syncOnce() }
            show(r)
            return
        }
        let seconds = interval
        try runAsync {
            // SIGTERM/SIGINT end the loop after the current round.
            let stop = Locked(false)
            signal(SIGTERM, SIG_IGN); signal(SIGINT, SIG_IGN)
            let sources = [SIGTERM, SIGINT].map { sig -> DispatchSourceSignal in
                let s = DispatchSource.makeSignalSource(signal: sig)
                s.setEventHandler { stop.withLock { $0 = true } }
                s.resume()
                return s
            }
            defer { sources.forEach { $0.cancel() } }
            while !stop.withLock({ $0 }) {
                do { show(try await agent.syncOnce()) } catch let e as WardenError {
                    Output.note("agent: \(e.message)")
                } catch {
                    Output.note("agent: \(error)")
                }
                var waited = 0.0
                while waited < seconds, !stop.withLock({ $0 }) {
                    try await Task.sleep(for: .milliseconds(100)); waited += 0.1
                }
            }
            await agent.shutdown()
        }
    }
}

extension AgentRun {
    /// Scan jobs run the same scan as `warden scan` on this host (inventory and findings
    /// stored here, `scanned` events in the local ledger, shipped next round).
    static func scanner(_ database: DatabaseOptions) -> Agent.Scanner {
        let path = database.path
        return { image in
            let db = try WardenDatabase(path: path)
            let outcome = try ScanService(database: db).scan(images: [image])
            if let failure = outcome.failures.first { throw failure }
            guard let r = outcome.results.first, let key = Digest(r.inventory), let inv = try SQLiteAdvisoryStore(db).inventory(key) else {
                throw WardenError(.internal, "the scan of \(image) stored no inventory")
            }
            return NewInventory(key: key, image: image, osID: inv.osID, versionID: inv.versionID, packages: inv.packages)
        }
    }
}

struct AgentStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the server, the host and what is still to send.",
        discussion: """
            Example:
              warden agent status
            """)
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "Print JSON.") var json = false

    struct Doc: Encodable {
        var schema = "warden.agent-status/v1"; var server: String; var host: String; var acked: Int64; var pending: Int64
        @ExplicitNull var lastPull: Date?
        var factsFresh: Bool
        /// When the host certificate ends (re-enrol before then).
        @ExplicitNull var certificateNotAfter: Date?
        /// The fleet policy revision installed here.
        @ExplicitNull var policyRevision: String?
    }

    func run() throws {
        let dir = AgentConfiguration.directory(databasePath: database.path)
        let config = try AgentConfiguration.load(directory: dir)
        let local = try database.open(create: false, readOnly: true)
        let agent = try Agent(local: local, configuration: config, directory: dir)
        defer { try? runAsync { await agent.shutdown() } }
        let acked = agent.acked()
        let fleet = try local.fleetFreshness()
        let fresh = fleet.map { f in (try? f.requireFresh()) != nil } ?? false
        let notAfter = AgentConfiguration.certificateNotAfter(directory: dir)
        let doc = Doc(server: config.server, host: config.host, acked: acked, pending: max(0, try local.eventCount() - acked),
                      lastPull: fleet?.lastPull, factsFresh: fresh, certificateNotAfter: notAfter,
                      policyRevision: FleetSyncState.read(directory: dir)?.policyRevision)
        try Output.render(doc, json: json, style: .ledger) {
            Output.stdout.line("server:   \(doc.server)\nhost:     \(doc.host)\nacked:    \(doc.acked)\npending:  \(doc.pending)")
            Output.stdout.line("pulled:   \(doc.lastPull.map { LedgerTime.rfc3339(LedgerTime.micros($0)) } ?? "never")\(fresh ? "" : " (stale: maxReplicas fails closed here)")")
            Output.stdout.line("policy:   \(doc.policyRevision ?? "none from the server")")
            let soon = notAfter.map { $0.timeIntervalSinceNow < 30 * 86_400 } ?? true
            Output.stdout.line("cert:     \(notAfter.map { "good until " + LedgerTime.rfc3339(LedgerTime.micros($0)) } ?? "unreadable")\(soon ? " (re-enrol with a new host token)" : "")")
        }
    }
}

/// `warden agent attest`: prove this host's boot state to the fleet server.
struct AgentAttest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attest", abstract: "Attest this host to the fleet server: its nonce, a quote by this host's TPM, its verdict.",
        discussion: """
        Run `warden host init --tpm` first and let a sync round ship the enrolment. The server verifies the \
        quote against that enrolment and its own hosts/trust.yaml and records the verdict in the fleet ledger \
        (docs/attestation.md). Exit 0 trusted, 3 not trusted.
        
        Example:
          warden agent attest
        """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var tpmOptions: TPMOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let dir = AgentConfiguration.directory(databasePath: database.path)
        let config = try AgentConfiguration.load(directory: dir)
        guard let tpm = try tpmOptions.tpm() else { throw WardenError(.unavailable, "this host has no TPM (no --tcti, $TPM2TOOLS_TCTI or /dev/tpmrm0)") }
        let local = try database.open(create: true)
        let agent = try Agent(local: local, configuration: config, directory: dir)
        let answer = try runAsync { defer { Task { await agent.shutdown() } }; return try await agent.attest(tpm: tpm) }
        try Output.render(answer, json: json) {
            Output.stdout.line("host \(answer.host): \(answer.trusted ? "trusted" : "NOT trusted") by the server" + (answer.baseline.map { " (baseline \($0))" } ?? ""))
            for r in answer.reasons { Output.stdout.line("  " + oneLine(r)) }
        }
        if !answer.trusted { throw ExitCode(3) }
    }
}
