import ArgumentParser
import Crypto
import Foundation
import WardenConfig
import Ledger
import LedgerPostgres
import WardenCore
import Storage

/// `warden ledger …`: the tamper-evident log.
struct LedgerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger",
        abstract: "The ledger's tamper-evident log: verify it, prove inclusion and consistency, sign checkpoints, export it, copy it to PostgreSQL.",
        subcommands: [LedgerInit.self, LedgerVerify.self, LedgerProof.self, LedgerConsistency.self,
                      LedgerCheckpoint.self, LedgerExport.self, LedgerCopy.self]
    )
}

/// The JSON form of a checkpoint with the signer's public key.
struct CheckpointJSON: Encodable {
    var checkpoint: SignedCheckpoint.JSONForm
    init(_ cp: SignedCheckpoint, key: Data?) { checkpoint = cp.jsonForm(publicKey: key) }
    func encode(to encoder: Encoder) throws { try checkpoint.encode(to: encoder) }
}

struct LedgerInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create the database and this host's signing key, and sign a first checkpoint.",
        discussion: """
            Example:
              warden ledger init
            """)
    @OptionGroup var options: LedgerLogOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let ledger = try options.open(create: true)
        let cp = try ledger.initialize()
        let key = try ledger.signingKey()
        struct Out: Encodable {
            var database: String; var keyFile: String; var host: String; var publicKeyHex: String
            var checkpoint: SignedCheckpoint.JSONForm
        }
        try Output.render(Out(database: ledger.database.path,
                                               keyFile: HostKey.path(directory: ledger.keysDirectory, host: key.host),
                                               host: key.host.value, publicKeyHex: key.publicKey.hexEncoded,
                                               checkpoint: cp.jsonForm(publicKey: key.publicKey)), json: json) {
            Output.stdout.line("database: \(ledger.database.path)")
            Output.stdout.line("host: \(key.host)")
            Output.stdout.line("signing key: \(HostKey.path(directory: ledger.keysDirectory, host: key.host))")
            Output.stdout.line("public key: \(key.publicKey.hexEncoded)")
            Output.stdout.line("checkpoint: size \(cp.treeSize), root \(cp.root.hexEncoded)")
        }
    }
}

struct LedgerVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Recompute every leaf, subtree and checkpoint root, check every signature and the witness.",
        discussion: """
            Exit 0 when the log is intact, 1 when it was tampered with (the first bad entry is named).
            
            Examples:
              warden ledger verify
              warden ledger verify --database postgres://warden@db/fleet
            """)
    @OptionGroup var options: LedgerLogOptions
    @Option(help: ArgumentHelp("Verify the fleet ledger on PostgreSQL at this postgres:// URL instead (password from $PGPASSWORD); checkpoints are checked against the hosts table's keys.", valueName: "url"))
    var database: String?
    @Flag(help: "Print the report as JSON (docs/json-schemas/ledger-verify.v1.json).") var json = false

    func run() throws {
        var path = options.path
        var report: VerifyReport
        do {
            let verifier: LedgerVerifier
            var pg: PostgresStore?
            defer { pg?.close() }
            if let database {
                let store = try PostgresStore(url: database, migrate: false)
                pg = store
                path = store.location
                verifier = LedgerVerifier(storage: PostgresLedger(store: store, keysDirectory: nil), keysDirectory: "/nonexistent", witness: nil)
            } else {
                verifier = LedgerVerifier(database: try WardenDatabase(path: path, create: false, readOnly: true))
            }
            let meter = ProgressMeter("verify", unit: .items("entries"))
            report = try verifier.verify { done, total in
                meter.setTotal(UInt64(max(0, total)))
                meter.set(done: UInt64(max(0, done)))
            }
            meter.finish()
        } catch let e as WardenError where e.code == .corrupt {
            report = VerifyReport()
            report.problems = [.init(kind: "damaged", seq: nil, lastSeq: nil, message: "the database file is damaged or truncated: \(e.message)")]
        }
        if database == nil { VerifyStamp(ok: report.ok, treeSize: report.treeSize).write(besideDatabase: path) }
        try Output.render(report, json: json) {
            if report.ok {
                Output.stdout.line("ledger intact: \(report.treeSize) entries, root \(report.rootHex)")
                Output.stdout.line("checked: \(report.entriesChecked) entries, \(report.subtreesChecked) stored subtrees, \(report.checkpointsChecked) signed checkpoints, witness at size \(report.witnessTreeSize.map(String.init) ?? "none")")
                if report.pendingEntries > 0 {
                    Output.stdout.line("pending: the last \(report.pendingEntries) entries were recorded by the libvirt hook and await a signed checkpoint (warden ledger checkpoint signs them)")
                }
            } else {
                Output.stdout.line("ledger TAMPERED: \(report.problems.count) problem(s)")
                for p in report.problems { Output.stdout.line("  \(p.kind): \(p.message)") }
            }
        }
        if !report.ok {
            Output.stdout.flush()
            let first = report.firstBad.map { "first bad entry: \($0.seq!): \($0.message)" } ?? report.problems[0].message
            Output.error("\(path): the ledger was tampered with; \(first)")
            throw ExitCode(1)
        }
    }
}

struct LedgerProof: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proof",
        abstract: "Print an RFC 9162 inclusion proof of one event against the latest signed checkpoint.",
        discussion: """
            Example:
              warden ledger proof --event 42 > proof.json
            """)
    @OptionGroup var options: LedgerLogOptions
    @Option(help: "The event's sequence number.") var event: Int64
    @Flag(help: "Print JSON (docs/json-schemas/ledger-proof.v1.json).") var json = false

    struct Out: Encodable {
        var schema = "warden.ledger.proof/v1"
        var seq: Int64
        var leafIndex: Int64
        var treeSize: Int64
        var entry: String
        var leafHashHex: String
        var pathHex: [String]
        var rootHex: String
        var checkpoint: SignedCheckpoint.JSONForm
    }

    func run() throws {
        let ledger = try options.open(create: false, readOnly: true)
        guard let cp = try ledger.latestCheckpoint() else {
            throw WardenError(.notFound, "the ledger has no signed checkpoint yet", file: ledger.database.path)
        }
        guard event >= 1, event <= cp.treeSize else {
            throw WardenError(.notFound, "event \(event) is not covered by the latest checkpoint (size \(cp.treeSize))", file: ledger.database.path)
        }
        let p = try ledger.inclusionProof(seq: event, treeSize: cp.treeSize)
        guard p.root == cp.root else {
            throw WardenError(.corrupt, "the tree does not match the latest checkpoint; run warden ledger verify", file: ledger.database.path)
        }
        let out = Out(seq: p.seq, leafIndex: p.seq - 1, treeSize: p.treeSize, entry: String(decoding: p.entry, as: UTF8.self),
                      leafHashHex: p.leafHash.hexEncoded, pathHex: p.path.map(\.hexEncoded), rootHex: p.root.hexEncoded,
                      checkpoint: cp.jsonForm(publicKey: try ledger.publicKey(of: cp.host)))
        try Output.render(out, json: json) {
            Output.stdout.line("event \(out.seq) (leaf \(out.leafIndex)) in the tree of \(out.treeSize) entries")
            Output.stdout.line("entry: \(oneLine(out.entry))")
            Output.stdout.line("leaf hash: \(out.leafHashHex)")
            for (i, h) in out.pathHex.enumerated() { Output.stdout.line("path[\(i)]: \(h)") }
            Output.stdout.line("root: \(out.rootHex) (signed by \(cp.host) at \(out.checkpoint.time))")
        }
    }
}

struct LedgerConsistency: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consistency",
        abstract: "Print an RFC 9162 consistency proof between two tree sizes.",
        discussion: """
            Example:
              warden ledger consistency --from 100 --to 200
            """)
    @OptionGroup var options: LedgerLogOptions
    @Option(help: "The older tree size.") var from: Int64
    @Option(help: "The newer tree size (default: the latest checkpoint's).") var to: Int64?
    @Flag(help: "Print JSON (docs/json-schemas/ledger-consistency.v1.json).") var json = false

    struct Out: Encodable {
        var schema = "warden.ledger.consistency/v1"
        var from: Int64
        var to: Int64
        var oldRootHex: String
        var newRootHex: String
        var proofHex: [String]
        var oldCheckpoint: SignedCheckpoint.JSONForm?
        var newCheckpoint: SignedCheckpoint.JSONForm?
    }

    func run() throws {
        let ledger = try options.open(create: false, readOnly: true)
        let latest = try ledger.latestCheckpoint()
        guard let to = to ?? latest?.treeSize else {
            throw WardenError(.notFound, "the ledger has no signed checkpoint yet; give --to", file: ledger.database.path)
        }
        let p = try ledger.consistencyProof(from: from, to: to)
        func signed(_ size: Int64, _ root: Data) throws -> SignedCheckpoint.JSONForm? {
            guard let cp = try ledger.checkpoint(treeSize: size) else { return nil }
            guard cp.root == root else {
                throw WardenError(.corrupt, "the tree of \(size) entries does not match its signed checkpoint; run warden ledger verify", file: ledger.database.path)
            }
            return cp.jsonForm(publicKey: try ledger.publicKey(of: cp.host))
        }
        let out = Out(from: p.from, to: p.to, oldRootHex: p.oldRoot.hexEncoded, newRootHex: p.newRoot.hexEncoded,
                      proofHex: p.proof.map(\.hexEncoded), oldCheckpoint: try signed(p.from, p.oldRoot),
                      newCheckpoint: try signed(p.to, p.newRoot))
        try Output.render(out, json: json) {
            Output.stdout.line("consistency of the tree of \(out.from) entries with the tree of \(out.to)")
            Output.stdout.line("old root: \(out.oldRootHex)\(out.oldCheckpoint == nil ? " (no checkpoint of this size)" : " (signed)")")
            Output.stdout.line("new root: \(out.newRootHex)\(out.newCheckpoint == nil ? " (no checkpoint of this size)" : " (signed)")")
            for (i, h) in out.proofHex.enumerated() { Output.stdout.line("proof[\(i)]: \(h)") }
        }
    }
}

struct LedgerCheckpoint: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Sign a checkpoint over entries not yet covered by one (the libvirt hook's), then print the latest.",
        discussion: """
            The libvirt hook records its decisions without signing (docs/ledger-log.md); this, or any later warden write, signs them. With nothing pending it only reads.
            
            Example:
              warden ledger checkpoint
            """)
    @OptionGroup var options: LedgerLogOptions
    @Flag(help: "Print JSON (docs/json-schemas/ledger-checkpoint.v1.json).") var json = false

    func run() throws {
        var ledger = try options.open(create: false, readOnly: true)
        if try ledger.unsignedTail().entries > 0 {
            // Entries recorded without a checkpoint (the hook's): sign them now, but never
            // entries that something else added (verify reports those as tampering).
            ledger = try options.open(create: false)
            let tail = try ledger.unsignedTail()
            if tail.notByHook > 0 {
                throw WardenError(.corrupt, "\(tail.notByHook) unsigned entries were not recorded by warden; run warden ledger verify", file: ledger.database.path)
            }
            if tail.entries > 0 { _ = try ledger.initialize() }
        }
        guard let cp = try ledger.latestCheckpoint() else {
            throw WardenError(.notFound, "the ledger has no signed checkpoint yet", file: ledger.database.path)
        }
        let key = try ledger.publicKey(of: cp.host)
        try Output.render(cp.jsonForm(publicKey: key), json: json) {
            Output.stdout.line("tree size: \(cp.treeSize)")
            Output.stdout.line("root: \(cp.root.hexEncoded)")
            Output.stdout.line("time: \(LedgerTime.rfc3339(cp.timeMicros))")
            Output.stdout.line("host: \(cp.host)")
            Output.stdout.line("public key: \(key?.hexEncoded ?? "unknown")")
            Output.stdout.line("signature: \(cp.signature.hexEncoded)")
        }
    }
}

struct LedgerExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write every event as an in-toto Statement v1, one JSON object per line.",
        discussion: """
            Subjects: the VM (uri urn:uuid:…, digest sha256 of that URI) and its disks' content fingerprints. Predicate type \(LedgerExporter.predicateType).
            
            Example:
              warden ledger export --vm web > web.intoto.jsonl
            """)
    @OptionGroup var options: LedgerLogOptions
    @Option(help: "Only this VM's events.") var vm: String?
    @Option(help: "Only events from this sequence number on.") var fromSeq: Int64 = 1

    func run() throws {
        let ledger = try options.open(create: false, readOnly: true)
        let only = try vm.map { try ledger.resolveVM($0).id }
        try LedgerExporter(ledger: ledger).export(vm: only, fromSeq: fromSeq) { line in
            try Output.stdout.write(line)
        }
    }
}

/// `warden ledger copy --database postgres://…`: a one-machine ledger moves to PostgreSQL.
struct LedgerCopy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Copy this SQLite ledger, as it is, into an empty PostgreSQL ledger (events, proofs and checkpoints included).",
        discussion: """
            The password comes from $PGPASSWORD. Afterwards `warden ledger verify --database URL` checks the copy.
            
            Example:
              warden ledger copy --database postgres://warden@db/fleet
            """)
    @OptionGroup var options: LedgerLogOptions
    @Option(help: ArgumentHelp("The PostgreSQL ledger, postgres://user@host:port/database (empty).", valueName: "url")) var database: String
    @Flag(help: "Print the counts as JSON.") var json = false

    func run() throws {
        let source = try WardenDatabase(path: options.path, create: false, readOnly: true)
        let store = try PostgresStore(url: database)
        defer { store.close() }
        let meter = ProgressMeter("copy", unit: .items("rows"))
        let counts = try PostgresImport.copy(from: source, to: PostgresLedger(store: store, keysDirectory: nil)) { _, n in
            meter.set(done: UInt64(max(0, n)))
        }
        meter.finish()
        try Output.render(counts, json: json) {
            Output.stdout.line("copied \(counts.vms) VMs, \(counts.events) events, \(counts.checkpoints) checkpoints to \(store.location)")
        }
    }
}

/// When the SQLite ledger was last verified and whether it was intact: `verified-DB.json` in
/// the keys folder beside it (0600 in 0700; beside its signing keys, which verification is
/// about), written by `ledger verify`, read by `warden doctor`.
struct VerifyStamp: Codable {
    var at = Date()
    var ok: Bool
    var treeSize: Int64

    static func path(besideDatabase db: String) -> String {
        HostKey.directory(databasePath: db) + "/verified-\((db as NSString).lastPathComponent).json"
    }

    /// Best effort: a ledger on a read-only medium is still verified.
    func write(besideDatabase db: String) {
        let enc = JSONEncoder()
        enc.dateEncodingStrategy = .iso8601
        guard let data = try? enc.encode(self) else { return }
        let p = Self.path(besideDatabase: db)
        // Only where the keys folder exists (a ledger with checkpoints); verify makes nothing else.
        guard FileManager.default.fileExists(atPath: (p as NSString).deletingLastPathComponent) else { return }
        let tmp = p + ".tmp\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: data, attributes: [.posixPermissions: 0o600]) else { return }
        if rename(tmp, p) != 0 { unlink(tmp) }
    }

    static func read(besideDatabase db: String) -> VerifyStamp? {
        guard let data = FileManager.default.contents(atPath: path(besideDatabase: db)), data.count < 4096 else { return nil }
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .iso8601
        return try? dec.decode(VerifyStamp.self, from: data)
    }
}
