import Foundation
import Ledger
import WardenCore
import Yams

/// Table-driven policy tests (`warden policy test DIR`), like `opa test`: every `*_test.yaml`
/// in DIR is a list of cases, each an input (operation, VM, host, time, facts) and the expected
/// effect; the policy is the other `*.yaml` files of DIR (or `policy:` in the test file).
/// Facts a case does not give are unknown, exactly as when the ledger cannot answer.
public enum PolicyTestRunner {
    public struct Expectation: Sendable, Codable, Equatable {
        public var effect: Effect
        /// When given, the decision's rules must be exactly these (any order).
        public var rules: [String]?
        /// When given, some reason must contain this text.
        public var reason: String?
    }

    public struct Case: Sendable {
        public var name: String
        public var file: String
        public var line: Int
        public var operation: VMOperation
        public var vm: VMRecord
        public var request: PolicyRequest
        public var context: PolicyContext
        public var expect: Expectation
    }

    public struct Result: Sendable, Codable {
        public var file: String
        public var line: Int
        public var name: String
        public var passed: Bool
        public var expected: Expectation
        public var effect: Effect
        public var rules: [String]
        public var reasons: [String]
        /// What differs, when failed.
        public var failure: String?
    }

    /// The fixed time a case without `at` runs at (a Monday noon, UTC), so results never depend on the clock.
    public static let defaultTime = Date(timeIntervalSince1970: 1_767_614_400) // 2026-01-05T12:00:00Z

    public static func testFiles(in directory: String) throws -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) else {
            throw WardenError(.notFound, "no such directory", file: directory)
        }
        if !isDir.boolValue { return [directory] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { !$0.hasPrefix(".") && PolicySet.isTestFile($0) }.sorted().map { directory + "/" + $0 }
    }

    /// Runs every test file in `directory` against the policy in the same directory (or the one
    /// the test file names). Returns results and diagnostics (bad test files, bad policy).
    public static func run(directory: String) throws -> (results: [Result], diagnostics: [PolicyDiagnostic], revision: String?) {
        var results: [Result] = []
        var diags: [PolicyDiagnostic] = []
        var sets: [String: PolicySet] = [:]
        var revision: String? = nil
        let files = try testFiles(in: directory)
        if files.isEmpty {
            diags.append(PolicyDiagnostic(file: directory, line: 1, column: 1, message: "no test files (*_test.yaml)"))
        }
        for file in files {
            let text: String
            do { text = try PolicySet.readText(file) } catch let e as WardenError {
                diags.append(PolicyDiagnostic(file: file, line: 1, column: 1, message: e.message)); continue
            }
            let (policyRef, cases, d) = parse(text, file: file)
            diags += d
            if d.contains(where: { $0.level == .error }) { continue }
            let base = (file as NSString).deletingLastPathComponent
            let policyDir = policyRef.map { $0.hasPrefix("/") ? $0 : base + "/" + $0 } ?? base
            let set: PolicySet
            if let s = sets[policyDir] { set = s } else {
                let (docs, pd) = try PolicySet.lint(directory: policyDir)
                diags += pd.filter { $0.level == .error }
                if pd.contains(where: { $0.level == .error }) { continue }
                set = PolicySet(documents: docs, origin: policyDir)
                sets[policyDir] = set
            }
            revision = set.revision
            for c in cases {
                let decision = PolicyEngine.decide(set, c.operation, vm: c.vm, context: c.context)
                var failure: String? = nil
                if decision.effect != c.expect.effect {
                    failure = "expected \(c.expect.effect.rawValue), got \(decision.effect.rawValue)"
                } else if let rules = c.expect.rules, Set(rules) != Set(decision.rules) {
                    failure = "expected rules [\(rules.sorted().joined(separator: ", "))], got [\(decision.rules.sorted().joined(separator: ", "))]"
                } else if let reason = c.expect.reason, !decision.reasons.contains(where: { $0.contains(reason) }) {
                    failure = "no reason contains '\(reason)'"
                }
                results.append(Result(file: file, line: c.line, name: c.name, passed: failure == nil, expected: c.expect,
                                      effect: decision.effect, rules: decision.rules, reasons: decision.reasons, failure: failure))
            }
        }
        return (results, diags, revision)
    }

    public static func parseDate(_ s: String) -> Date? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        if let d = f.date(from: s) { return d }
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.date(from: s)
    }

    /// Parses a test file: the optional policy directory and the cases.
    public static func parse(_ text: String, file: String) -> (String?, [Case], [PolicyDiagnostic]) {
        var r = NodeReader(file: file)
        let root: Node
        do {
            if let deep = YAMLNesting.tooDeep(text, file: file) { return (nil, [], [deep]) }
            guard let n = try Yams.compose(yaml: text) else { r.error(nil, "the file is empty"); return (nil, [], r.diagnostics) }
            root = n
        } catch let e as YamlError {
            return (nil, [], [PolicyParser.yamlDiagnostic(e, file: file)])
        } catch {
            return (nil, [], [PolicyDiagnostic(file: file, line: 1, column: 1, message: "not YAML: \(error)")])
        }
        guard let top = r.mapping(root, "policy test", allowed: ["apiVersion", "kind", "policy", "tests"]) else { return (nil, [], r.diagnostics) }
        PolicyParser.checkHeader(&r, top, root: root, kind: "PolicyTest")
        let policy = top["policy"].flatMap { r.scalar($0.value, "policy") }
        guard let testsNode = top["tests"]?.value, case .sequence(let seq) = testsNode else {
            r.error(top["tests"]?.value ?? root, "tests must be a list of cases")
            return (policy, [], r.diagnostics)
        }
        var cases: [Case] = []
        for (i, item) in seq.enumerated() {
            if let c = parseCase(&r, item, index: i, file: file) { cases.append(c) }
        }
        return (policy, cases, r.diagnostics)
    }

    static func parseCase(_ r: inout NodeReader, _ node: Node, index: Int, file: String) -> Case? {
        guard let m = r.mapping(node, "test", allowed: ["name", "op", "vm", "host", "at", "facts", "expect"]) else { return nil }
        let before = r.diagnostics.count
        let name = m["name"].flatMap { r.scalar($0.value, "test name") } ?? "case \(index + 1)"
        let what = "test '\(name)'"
        var op = VMOperation.start
        if let o = m["op"], let s = r.scalar(o.value, "\(what): op") {
            if let parsed = VMOperation(rawValue: s) { op = parsed } else { r.error(o.value, "\(what): unknown operation '\(s)'") }
        } else { r.error(node, "\(what): missing op") }
        var vm = VMRecord(id: VMID(UUID(uuidString: "00000000-0000-4000-8000-000000000001")!), name: "test-vm", owner: "tester",
                          createdAt: defaultTime, updatedAt: defaultTime)
        if let v = m["vm"], let vmap = r.mapping(v.value, "\(what): vm", allowed: ["name", "owner", "labels", "state"]) {
            if let n = vmap["name"] { vm.name = r.scalar(n.value, "\(what): vm.name") ?? vm.name }
            if let n = vmap["owner"] {
                if case .scalar(let s) = n.value, s.string.isEmpty { vm.owner = "" } else { vm.owner = r.scalar(n.value, "\(what): vm.owner") ?? vm.owner }
            }
            if let n = vmap["labels"] { vm.labels = r.stringMap(n.value, "\(what): vm.labels") ?? [:] }
            if let n = vmap["state"], let s = r.scalar(n.value, "\(what): vm.state") {
                if let st = VMState(rawValue: s) { vm.state = st } else { r.error(n.value, "\(what): unknown state '\(s)'") }
            }
        }
        var ctx = PolicyContext(decisionID: UUID(uuidString: "00000000-0000-4000-8000-000000000000")!, time: defaultTime)
        ctx.host = .known(HostFacts(name: "test-host", labels: [:]))
        if let h = m["host"] {
            if case .scalar = h.value, let s = r.scalar(h.value, "\(what): host") {
                ctx.host = .known(HostFacts(name: s, labels: [:]))
            } else if let hm = r.mapping(h.value, "\(what): host", allowed: ["name", "labels"]) {
                let name = hm["name"].flatMap { r.scalar($0.value, "\(what): host.name") } ?? "test-host"
                let labels = hm["labels"].flatMap { r.stringMap($0.value, "\(what): host.labels") } ?? [:]
                ctx.host = .known(HostFacts(name: name, labels: labels))
            }
        }
        if let a = m["at"], let s = r.scalar(a.value, "\(what): at") {
            if let d = parseDate(s) { ctx.time = d } else { r.error(a.value, "\(what): at '\(s)' is not an RFC 3339 time like 2026-03-29T09:30:00+02:00") }
        }
        let missing = "not given in the test"
        ctx.replicas = .unknown(missing); ctx.lastScan = .unknown(missing); ctx.openFindings = .unknown(missing)
        ctx.advisoriesSinceScan = .unknown(missing); ctx.reexposure = .unknown(missing); ctx.ownerPresent = .unknown(missing)
        ctx.attestation = .unknown(missing)
        ctx.malwareScan = .unknown(missing)
        if let f = m["facts"], let fm = r.mapping(f.value, "\(what): facts",
                                                   allowed: ["replicas", "lastScan", "findings", "advisoriesSinceScan", "reexposes", "destination",
                                                             "ownerPresent", "attested", "malware", "mirror", "registry", "signature", "keepIdentity", "encrypted"]) {
            if let n = fm["replicas"], let v = r.int(n.value, "\(what): facts.replicas", min: 0, max: 10_000_000) { ctx.replicas = .known(v) }
            if let n = fm["lastScan"], let s = r.scalar(n.value, "\(what): facts.lastScan") {
                if s == "never" { ctx.lastScan = .known(nil) }
                else if let d = parseDate(s) { ctx.lastScan = .known(d) }
                else { r.error(n.value, "\(what): facts.lastScan must be an RFC 3339 time or never") }
            }
            if let n = fm["findings"], let counts = r.stringMap(n.value, "\(what): facts.findings") {
                var out: [Severity: Int] = [:]
                for (k, v) in counts {
                    guard let sev = Severity(word: k), let c = Int(v), c >= 0 else { r.error(n.value, "\(what): facts.findings: '\(k): \(v)' is not severity: count"); continue }
                    out[sev, default: 0] += c
                }
                ctx.openFindings = .known(out)
            }
            if let n = fm["advisoriesSinceScan"], let v = r.int(n.value, "\(what): facts.advisoriesSinceScan", min: 0, max: 100_000_000) { ctx.advisoriesSinceScan = .known(v) }
            if let n = fm["reexposes"] {
                if case .sequence(let items) = n.value {
                    var list: [ReexposedFinding] = []
                    for item in items {
                        guard let im = r.mapping(item, "\(what): facts.reexposes item", allowed: ["id", "severity", "package"]),
                              let id = im["id"].flatMap({ r.scalar($0.value, "id") }),
                              let s = im["severity"].flatMap({ r.scalar($0.value, "severity") }), let sev = Severity(word: s) else {
                            r.error(item, "\(what): facts.reexposes items need id and severity"); continue
                        }
                        list.append(ReexposedFinding(id: id, severity: sev, package: im["package"].flatMap { r.scalar($0.value, "package") }))
                    }
                    ctx.reexposure = .known(list)
                } else { r.error(n.value, "\(what): facts.reexposes must be a list (may be empty: [])") }
            }
            if let n = fm["destination"], let dm = r.mapping(n.value, "\(what): facts.destination", allowed: ["path", "removable"]) {
                let path = dm["path"].flatMap { r.scalar($0.value, "path") } ?? "/dev/null"
                var removable: Fact<Bool> = .unknown(missing)
                if let rm = dm["removable"], let b = r.bool(rm.value, "removable") { removable = .known(b) }
                ctx.destination = DestinationFacts(path: path, resolved: path, removable: removable)
            }
            if let n = fm["ownerPresent"], let b = r.bool(n.value, "\(what): facts.ownerPresent") { ctx.ownerPresent = .known(b) }
            if let n = fm["mirror"], let s = r.scalar(n.value, "\(what): facts.mirror") { ctx.mirror = s }
            if let n = fm["encrypted"], let b = r.bool(n.value, "\(what): facts.encrypted") { ctx.encrypted = b }
            if let n = fm["keepIdentity"], let b = r.bool(n.value, "\(what): facts.keepIdentity") { ctx.keepIdentity = b }
            if let n = fm["registry"], let s = r.scalar(n.value, "\(what): facts.registry") { ctx.registry = s }
            if let n = fm["signature"], let s = r.scalar(n.value, "\(what): facts.signature") {
                if ["trusted", "unsigned", "invalid"].contains(s) { ctx.signature = s } else { r.error(n.value, "\(what): facts.signature is trusted, unsigned or invalid") }
            }
            // `malware: never`, or the latest scan: `{at: TIME, detections: 2, signatures: [Eicar-Test-Signature]}`.
            if let n = fm["malware"] {
                if case .scalar = n.value, let s = r.scalar(n.value, "\(what): facts.malware") {
                    if s == "never" { ctx.malwareScan = .known(nil) } else { r.error(n.value, "\(what): facts.malware is never or a mapping (at, detections, signatures)") }
                } else if let mm = r.mapping(n.value, "\(what): facts.malware", allowed: ["at", "detections", "signatures"]) {
                    let at = mm["at"].flatMap { r.scalar($0.value, "\(what): facts.malware.at") }.flatMap(parseDate) ?? ctx.time
                    let count = mm["detections"].flatMap { r.int($0.value, "\(what): facts.malware.detections", min: 0, max: 1_000_000) } ?? 0
                    var sigs: [String] = []
                    if let sv = mm["signatures"], case .sequence(let items) = sv.value {
                        sigs = items.compactMap { r.scalar($0, "\(what): facts.malware.signatures") }
                    }
                    ctx.malwareScan = .known(MalwareScanFact(time: at, detections: count, infectedFiles: count, signatures: sigs))
                }
            }
            // `attested: never`, or the host's latest attestation: `{at: TIME, trusted: true,
            // validFor: 8h, reason: "PCR 7 …"}` (trusted defaults to true, validFor to 8h).
            if let n = fm["attested"] {
                let hostName = ctx.host.value?.name ?? "test-host"
                if case .scalar = n.value, let s = r.scalar(n.value, "\(what): facts.attested") {
                    if s == "never" { ctx.attestation = .known(nil) } else { r.error(n.value, "\(what): facts.attested is never or a mapping (at, trusted, validFor, reason)") }
                } else if let am = r.mapping(n.value, "\(what): facts.attested", allowed: ["at", "trusted", "validFor", "reason"]) {
                    let at = am["at"].flatMap { r.scalar($0.value, "\(what): facts.attested.at") }.flatMap(parseDate)
                    if at == nil { r.error(n.value, "\(what): facts.attested.at is an RFC 3339 time") }
                    let trusted = am["trusted"].flatMap { r.bool($0.value, "\(what): facts.attested.trusted") } ?? true
                    var validFor = PolicyDuration(seconds: 8 * 3600)
                    if let v = am["validFor"], let t = r.scalar(v.value, "\(what): facts.attested.validFor") {
                        if let d = PolicyDuration(t) { validFor = d } else { r.error(v.value, "\(what): facts.attested.validFor is a duration like 8h") }
                    }
                    let reason = am["reason"].flatMap { r.scalar($0.value, "\(what): facts.attested.reason") }
                    if let at {
                        ctx.attestation = .known(HostAttestationFact(host: hostName, time: at, trusted: trusted,
                                                                     reasons: trusted ? [] : [reason ?? "the quote did not match a baseline"],
                                                                     baseline: trusted ? "test" : nil, validFor: validFor))
                    }
                }
            }
        }
        var expect = Expectation(effect: .allow)
        if let e = m["expect"] {
            if case .scalar = e.value, let s = r.scalar(e.value, "\(what): expect") {
                if let eff = Effect(rawValue: s) { expect.effect = eff } else { r.error(e.value, "\(what): expect must be allow, deny or quarantine") }
            } else if let em = r.mapping(e.value, "\(what): expect", allowed: ["effect", "rules", "reason"]) {
                if let n = em["effect"], let s = r.scalar(n.value, "effect") {
                    if let eff = Effect(rawValue: s) { expect.effect = eff } else { r.error(n.value, "\(what): expect.effect must be allow, deny or quarantine") }
                } else { r.error(e.value, "\(what): expect needs effect") }
                if let n = em["rules"] {
                    if case .sequence(let s) = n.value, s.isEmpty { expect.rules = [] } else { expect.rules = r.stringList(n.value, "expect.rules") }
                }
                if let n = em["reason"] { expect.reason = r.scalar(n.value, "expect.reason") }
            }
        } else { r.error(node, "\(what): missing expect") }
        guard r.diagnostics.count == before else { return nil }
        let request = PolicyRequest(operation: op, host: HostName(ctx.host.value?.name ?? "test-host") ?? HostName("test-host")!,
                                    time: ctx.time, destination: ctx.destination?.path, decisionID: ctx.decisionID)
        return Case(name: name, file: file, line: node.mark?.line ?? 0, operation: op, vm: vm, request: request, context: ctx, expect: expect)
    }
}
