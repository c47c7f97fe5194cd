import ArgumentParser
import Foundation
import Ledger
import WardenCore
import Attestation
import Policy
import WardenServices

/// `warden host …`: the hosts VMs run and are stored on.
struct HostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host", abstract: "Hosts: their identity, enrolment and TPM attestation.",
        discussion: """
        A host's identity is its Ed25519 signing key (made by `warden host init`, public part in the \
        ledger). With a TPM 2.0, `host init --tpm` enrols it and `host attest` proves its measured \
        boot state to policy (`attested: true`); docs/attestation.md.
        """,
        subcommands: [HostInit.self, HostAdd.self, HostList.self, HostAttest.self, HostVerifyQuote.self, HostBaseline.self, HostStatus.self, HostBenchVerify.self])
}

struct HostAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Add a host to the ledger.",
        discussion: """
            Example:
              warden host add hv2 --label rack=b4
            """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The host's name (one token, no spaces or '/').") var name: String
    @Option(name: .customLong("label"), help: ArgumentHelp("A label KEY=VALUE (repeatable).", valueName: "key=value"))
    var labels: [String] = []
    @Option(help: ArgumentHelp("The host's Ed25519 public key (64 hex digits, as `warden host init` prints it): its checkpoints are accepted only when signed by this key.", valueName: "hex"))
    var publicKey: String?

    func validate() throws {
        guard HostName(name) != nil else { throw ValidationError("not a host name: \(oneLine(name))") }
        _ = try LabelArgument.parse(labels)
        if let k = publicKey, Data(hexEncoded: k)?.count != 32 { throw ValidationError("--public-key is 64 hex digits (an Ed25519 public key)") }
    }

    func run() throws {
        let store = try database.open(create: true)
        let host = HostName(name)!
        if let existing = try store.host(host) {
            if let k = publicKey, let had = existing.publicKey, had != Data(hexEncoded: k) {
                throw WardenError(.conflict, "host \(host) is in the ledger with a different public key (\(had.hexEncoded.prefix(16))…): refused")
            }
            throw WardenError(.conflict, "host \(host) is already in the ledger")
        }
        try store.addHost(HostRecord(name: host, labels: try LabelArgument.parse(labels), publicKey: publicKey.flatMap { Data(hexEncoded: $0) }))
        Output.stdout.line(host.value)
    }
}

struct HostList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the hosts.",
        discussion: """
            Example:
              warden host list
            """, aliases: ["ls"])
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "Print JSON (docs/json-schemas/host-list.v1.json).") var json = false

    struct HostJSON: Encodable {
        var name: String
        var labels: [String: String]
        var publicKey: String?
        var addedAt: Date
        var attestation: Attestation?
        struct Attestation: Encodable {
            var trusted: Bool
            var at: Date
            var validUntil: Date
            var current: Bool
        }
        func encode(to encoder: Encoder) throws {
            enum K: String, CodingKey { case name, labels, publicKey, addedAt, attestation }
            var c = encoder.container(keyedBy: K.self)
            try c.encode(name, forKey: .name); try c.encode(labels, forKey: .labels)
            try c.encode(publicKey, forKey: .publicKey); try c.encode(addedAt, forKey: .addedAt)
            try c.encode(attestation, forKey: .attestation)
        }
    }
    struct Doc: Encodable { var schema = "warden.host-list/v1"; var hosts: [HostJSON] }

    func run() throws {
        let store = try database.open(create: false)
        let hosts = try store.listHosts().sorted { $0.name < $1.name }
        let facts = LedgerPolicyFacts(store: store)
        let now = Date()
        let docs = try hosts.map { h -> HostJSON in
            let a = try facts.hostAttestation(h.name).map {
                HostJSON.Attestation(trusted: $0.trusted, at: $0.time, validUntil: $0.validUntil, current: $0.isCurrent(at: now))
            }
            return HostJSON(name: h.name.value, labels: h.labels, publicKey: h.publicKey?.base64EncodedString(), addedAt: h.addedAt, attestation: a)
        }
        try Output.render(Doc(hosts: docs), json: json, style: .ledger) {
            var rows = [["NAME", "ADDED", "KEY", "ATTESTED", "LABELS"]]
            for (h, d) in zip(hosts, docs) {
                let attested = d.attestation.map { $0.current ? "yes, until \(TimeArgument.format($0.validUntil))" : $0.trusted ? "expired" : "failed" } ?? "never"
                rows.append([h.name.value, TimeArgument.format(h.addedAt), h.publicKey == nil ? "-" : "ed25519", attested,
                             oneLine(h.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))])
            }
            for l in table(rows) { Output.stdout.line(l) }
        }
    }
}

/// `--tcti` and `--ak-handle`: which TPM, and where Warden keeps its attestation key in it.
struct TPMOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The TPM to use, as a tpm2-tools TCTI (default: $TPM2TOOLS_TCTI, else device:/dev/tpmrm0 when present). swtpm: swtpm:path=/run/swtpm/sock or swtpm:host=127.0.0.1,port=2321.", valueName: "tcti"))
    var tcti: String?
    @Option(help: ArgumentHelp("The persistent handle of Warden's attestation key (default 0x81010020).", valueName: "handle"))
    var akHandle: String?

    func validate() throws { _ = try handle() }

    func handle() throws -> UInt32 {
        guard let h = akHandle else { return HostTPM.defaultAKHandle }
        let digits = h.hasPrefix("0x") ? String(h.dropFirst(2)) : h
        guard let v = UInt32(digits, radix: 16), v >> 24 == 0x81 else { throw ValidationError("--ak-handle is a persistent handle 0x81000000-0x81ffffff") }
        return v
    }

    func tpm() throws -> HostTPM? { HostTPM.find(tcti: tcti, akHandle: try handle()) }
}

struct HostInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init", abstract: "Make this host's signing key and, with --tpm, enrol its TPM.",
        discussion: """
        The signing key (Ed25519, 0600 in the keys folder) signs the ledger's checkpoints; its public \\
        part goes in the hosts table (a different key there is refused). With --tpm, Warden makes an \\
        attestation key under the TPM's endorsement key, proves by credential activation that both \\
        live in the same TPM, and records their public parts (event host-enrolled).
        
        Examples:
          warden host init
          warden host init --tpm
        """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var tpmOptions: TPMOptions
    @Flag(help: "Enrol the host's TPM too (fails when there is none).") var tpm = false
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let ledger = try database.open(create: true)
        _ = try ledger.initialize()
        let key = try ledger.signingKey()
        struct Out: Encodable {
            var host: String; var publicKey: String
            var endorsementKeySha256: String?; var attestationKeySha256: String?; var attestationKeyHandle: String?
        }
        var out = Out(host: key.host.value, publicKey: key.publicKey.hexEncoded)
        if tpm || tpmOptions.tcti != nil {
            guard let device = try tpmOptions.tpm() else {
                throw WardenError(.unavailable, "this host has no TPM (no --tcti, $TPM2TOOLS_TCTI or /dev/tpmrm0)")
            }
            let e = try HostTrustService(store: ledger, host: key.host, policyDirectory: nil).enrol(device)
            out.endorsementKeySha256 = e.endorsementKey.fingerprint
            out.attestationKeySha256 = e.attestationKey.fingerprint
            out.attestationKeyHandle = String(format: "0x%08x", device.akHandle)
        }
        try Output.render(out, json: json) {
            Output.stdout.line("host: \(out.host)")
            Output.stdout.line("public key: \(out.publicKey)")
            if let ek = out.endorsementKeySha256, let ak = out.attestationKeySha256 {
                Output.stdout.line("endorsement key: sha256 \(ek)")
                Output.stdout.line("attestation key: sha256 \(ak) at \(out.attestationKeyHandle ?? "")")
            }
        }
    }
}

/// The JSON form of a verdict.
struct VerdictJSON: Encodable {
    var schema = "warden.host-attestation/v1"
    var host: String
    var trusted: Bool
    var reasons: [String]
    var baseline: String?
    var mismatchedPcrs: [String]
    var pcrs: [String: String]
    var resetCount: UInt32?
    var attestationKeySha256: String
    var nonce: String?

    init(host: HostName, _ v: AttestationVerdict, nonce: [UInt8]?) {
        self.host = host.value; trusted = v.trusted; reasons = v.reasons; baseline = v.baseline
        mismatchedPcrs = v.mismatchedPCRs; pcrs = v.pcrs; resetCount = v.resetCount; attestationKeySha256 = v.attestationKey
        self.nonce = nonce.map { Data($0).hexEncoded }
    }

    func printHuman() {
        Output.stdout.line("host \(host): \(trusted ? "trusted" : "NOT trusted")" + (baseline.map { " (baseline \($0))" } ?? ""))
        for r in reasons { Output.stdout.line("  " + oneLine(r)) }
    }
}

struct HostAttest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attest", abstract: "Quote this host's PCRs with its TPM, verify the quote and record the verdict.",
        discussion: """
        A fresh nonce, a quote by the enrolled attestation key over the PCRs of the host trust policy \\
        (hosts/trust.yaml in the policy directory), checked for signature, signer, nonce, PCR digest \\
        and baseline. The verdict is a host-attested event that `attested: true` in policy reads. \\
        Exit 0 trusted, 3 not trusted (no TPM, no enrolment, no trust policy, or a PCR that differs).
        
        Example:
          warden host attest --save-evidence /var/lib/warden/evidence
        """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var policy: PolicyOptions
    @OptionGroup var tpmOptions: TPMOptions
    @Option(help: ArgumentHelp("Also write the evidence (quote, signature, pcrs, nonce) into this new folder.", valueName: "dir"))
    var saveEvidence: String?
    @Flag(help: "Print JSON (schema warden.host-attestation/v1).") var json = false

    func run() throws {
        let ledger = try database.open(create: true)
        let dir = PolicySet.defaultDirectory(explicit: policy.policy)
        let service = HostTrustService(store: ledger, host: .current, policyDirectory: dir)
        let (verdict, evidence, nonce) = try service.attest(try tpmOptions.tpm())
        if let saveEvidence, let evidence {
            try FileManager.default.createDirectory(atPath: saveEvidence, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            for (name, bytes) in [("quote", evidence.quote), ("signature", evidence.signature), ("pcrs", evidence.pcrValues), ("nonce", nonce)] {
                guard FileManager.default.createFile(atPath: saveEvidence + "/" + name, contents: Data(bytes)) else {
                    throw WardenError(.io, "cannot write the evidence", file: saveEvidence + "/" + name)
                }
            }
        }
        let out = VerdictJSON(host: .current, verdict, nonce: nonce)
        try Output.render(out, json: json) { out.printHuman() }
        if !verdict.trusted { throw ExitCode(3) }
    }
}

struct HostVerifyQuote: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify-quote", abstract: "Verify a TPM quote collected elsewhere against a host's enrolment and the nonce you issued.",
        discussion: """
        The files are tpm2_quote's outputs: -m (TPMS_ATTEST), -s (TPMT_SIGNATURE) and -o with -F values \\
        (the PCR values). The verdict is recorded for the host. Exit 0 trusted, 3 not trusted, 2 for \\
        a malformed quote, signature or PCR file.
        
        Example:
          warden host verify-quote --host hv2 --quote q.bin --signature sig.bin --pcrs pcrs.bin --nonce 00112233
        """)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var policy: PolicyOptions
    @Option(help: ArgumentHelp("The host the quote is from (default: this host).", valueName: "name")) var host: String?
    @Option(help: ArgumentHelp("The quote (TPMS_ATTEST) file.", valueName: "file")) var quote: String
    @Option(help: ArgumentHelp("The signature (TPMT_SIGNATURE) file.", valueName: "file")) var signature: String
    @Option(help: ArgumentHelp("The PCR values file.", valueName: "file")) var pcrs: String
    @Option(help: ArgumentHelp("The nonce you issued, in hex.", valueName: "hex")) var nonce: String
    @Flag(help: "Print JSON (schema warden.host-attestation/v1).") var json = false

    func validate() throws {
        if let host, HostName(host) == nil { throw ValidationError("not a host name: \(oneLine(host))") }
        guard let n = Data(hexEncoded: nonce), (1...64).contains(n.count) else { throw ValidationError("--nonce is 1-64 bytes in hex") }
    }

    func run() throws {
        func read(_ path: String, max: Int) throws -> [UInt8] {
            guard let fh = FileHandle(forReadingAtPath: path) else { throw WardenError(.notFound, "cannot read", file: path) }
            defer { try? fh.close() }
            let d = (try? fh.read(upToCount: max + 1)) ?? Data()
            guard d.count <= max else { throw WardenError(.corrupt, "larger than \(max) bytes: not TPM evidence", file: path) }
            return Array(d)
        }
        let evidence = QuoteEvidence(quote: try read(quote, max: TPMSAttest.maxSize), signature: try read(signature, max: 1024),
                                     pcrValues: try read(pcrs, max: 64 * 64))
        let ledger = try database.open(create: false)
        let name = host.flatMap(HostName.init) ?? .current
        let service = HostTrustService(store: ledger, host: .current, policyDirectory: PolicySet.defaultDirectory(explicit: policy.policy))
        let verdict: AttestationVerdict
        do { verdict = try service.verify(evidence, nonce: Array(Data(hexEncoded: nonce)!), for: name) } catch let e as WardenError where e.code == .corrupt {
            throw e.message.hasPrefix("quote") ? e.inFile(quote) : e.message.hasPrefix("signature") ? e.inFile(signature) : e.message.hasPrefix("PCR") ? e.inFile(pcrs) : e
        }
        let out = VerdictJSON(host: name, verdict, nonce: nil)
        try Output.render(out, json: json) { out.printHuman() }
        if !verdict.trusted { throw ExitCode(3) }
    }
}

struct HostBaseline: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baseline", abstract: "Print this host's current PCR values as a host trust policy (hosts/trust.yaml).",
        discussion: """
            Run it on a host known to be good; review the output, then install it in the policy directory.
            
            Example:
              warden host baseline --name hv1 > /etc/warden/policy/hosts/trust.yaml
            """)
    @OptionGroup var tpmOptions: TPMOptions
    @Option(help: ArgumentHelp("The baseline's name.", valueName: "name")) var name = "known-good"
    @Option(help: ArgumentHelp("The PCRs, comma-separated (default 0,1,2,3,4,5,7: firmware, boot loader, Secure Boot).", valueName: "list"))
    var pcrs = "0,1,2,3,4,5,7"
    @Option(help: ArgumentHelp("The PCR bank.", valueName: "sha1|sha256|sha384|sha512")) var bank = "sha256"

    func run() throws {
        guard let b = TPMAlg.hash(named: bank) else { throw ValidationError("--bank is sha1, sha256, sha384 or sha512") }
        let list = pcrs.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !list.isEmpty, list.allSatisfy({ $0 != nil && (0...23).contains($0!) }) else { throw ValidationError("--pcrs is a list of PCR numbers 0-23") }
        guard let device = try tpmOptions.tpm() else { throw WardenError(.unavailable, "this host has no TPM (no --tcti, $TPM2TOOLS_TCTI or /dev/tpmrm0)") }
        let values = try device.readPCRs(bank: b, pcrs: list.compactMap { $0 })
        // Validated by the parser that will read it.
        let text = HostTrustPolicy.yaml(name: name, bank: b, values: values)
        _ = try HostTrustPolicy.parse(text, file: "baseline")
        try Output.stdout.write(Array(text.utf8))
    }
}

struct HostStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show a host's enrolment and latest attestation, as policy sees them.",
            discussion: """
                Example:
                  warden host status hv2
                """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The host (default: this host).") var host: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let ledger = try database.open(create: false)
        guard let name = host.map({ HostName($0) }) ?? HostName.current else { throw ValidationError("not a host name: \(oneLine(host ?? ""))") }
        let service = HostTrustService(store: ledger, host: name, policyDirectory: nil)
        let enrolment = try service.enrolment()
        let fact = try service.status()
        struct Out: Encodable {
            var host: String; var enrolled: Bool; var attestationKeySha256: String?
            var attested: Bool; var lastAttestation: Date?; var trusted: Bool?; var reasons: [String]; var baseline: String?; var validUntil: Date?
        }
        let out = Out(host: name.value, enrolled: enrolment != nil, attestationKeySha256: enrolment?.attestationKey.fingerprint,
                      attested: fact?.isCurrent(at: Date()) ?? false,
                      lastAttestation: fact?.time, trusted: fact?.trusted, reasons: fact?.reasons ?? [], baseline: fact?.baseline,
                      validUntil: fact?.validUntil)
        try Output.render(out, json: json, style: .ledger) {
            Output.stdout.line("host: \(out.host)")
            Output.stdout.line("TPM enrolled: \(out.enrolled ? "yes (attestation key sha256 \(out.attestationKeySha256 ?? ""))" : "no")")
            if let f = fact {
                Output.stdout.line("last attestation: \(TimeArgument.format(f.time)) \(f.trusted ? "trusted" : "NOT trusted")" + (f.baseline.map { " (baseline \($0))" } ?? ""))
                for r in f.reasons { Output.stdout.line("  " + oneLine(r)) }
                Output.stdout.line("attested now: \(out.attested ? "yes, until \(TimeArgument.format(out.validUntil!))" : "no")")
            } else {
                Output.stdout.line("last attestation: never (unattested)")
            }
        }
    }
}

/// `warden host bench-verify`: the time one quote verification takes (scripts/bench-attest).
struct HostBenchVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-verify", abstract: "Time quote verification in-process (parse, signature, digest, baseline); nothing is recorded.",
            discussion: """
                Example:
                  warden host bench-verify --evidence /var/lib/warden/evidence --rounds 1000
                """,
        shouldDisplay: false)
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var policy: PolicyOptions
    @Option(help: "The evidence folder `host attest --save-evidence` wrote.") var evidence: String
    @Option(help: "Rounds.") var rounds = 2000

    func run() throws {
        let ledger = try database.open(create: false)
        let service = HostTrustService(store: ledger, host: .current, policyDirectory: PolicySet.defaultDirectory(explicit: policy.policy))
        guard let enrolment = try service.enrolment() else { throw WardenError(.notFound, "this host has no enrolled TPM") }
        let trust = try HostTrustPolicy.load(policyDirectory: service.policyDirectory)
        func read(_ n: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: evidence + "/" + n))) }
        let e = QuoteEvidence(quote: try read("quote"), signature: try read("signature"), pcrValues: try read("pcrs"))
        let nonce = try read("nonce")
        var times: [UInt64] = []
        var trusted = 0
        for _ in 0..<max(1, rounds) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            if try QuoteVerifier().verify(e, enrolment: enrolment, nonce: nonce, policy: trust).trusted { trusted += 1 }
            times.append(DispatchTime.now().uptimeNanoseconds - t0)
        }
        let s = times.sorted()
        Output.stdout.line(String(format: "%d verifications (%d trusted): p50 %.3f ms, p90 %.3f ms, p99 %.3f ms", rounds, trusted,
                                  Double(s[s.count / 2]) / 1e6, Double(s[s.count * 9 / 10]) / 1e6, Double(s[s.count * 99 / 100]) / 1e6))
    }
}
