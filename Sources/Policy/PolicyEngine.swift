import Foundation
import Ledger
import WardenCore

// A fact the engine may need is a WardenCore `Fact`: known, or unknown with the reason
// (which fails closed).

/// What the engine knows about the host the operation runs on (for migrate: the destination).
public struct HostFacts: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
    public init(name: String, labels: [String: String]) { self.name = name; self.labels = labels }
}

/// What the engine knows about a destination path (export, copy, clone).
public struct DestinationFacts: Sendable, Equatable {
    /// The path as given.
    public var path: String
    /// The path with symlinks of its existing part resolved (what `roots` are compared with).
    public var resolved: String
    public var removable: Fact<Bool>
    /// The block device behind it (`sdb`), when found.
    public var device: String?
    public init(path: String, resolved: String, removable: Fact<Bool>, device: String? = nil) {
        self.path = path; self.resolved = resolved; self.removable = removable; self.device = device
    }
}

/// A finding the rollback target would re-open.
public struct ReexposedFinding: Sendable, Equatable, Codable {
    public var id: String
    public var severity: Severity
    public var package: String?
    public init(id: String, severity: Severity, package: String? = nil) { self.id = id; self.severity = severity; self.package = package }
}

/// An open finding of the VM (named in the `findings` condition's reason).
public struct OpenFinding: Sendable, Equatable, Codable {
    public var id: String
    public var aliases: [String]
    public var severity: Severity
    public var package: String
    public var version: String?
    public var fixedVersion: String?
    public init(id: String, aliases: [String] = [], severity: Severity, package: String, version: String? = nil, fixedVersion: String? = nil) {
        self.id = id; self.aliases = aliases; self.severity = severity; self.package = package
        self.version = version; self.fixedVersion = fixedVersion
    }
    /// `DSA-5678-1 (CVE-2024-1234) in openssl 3.0.11-1~deb12u2`.
    public var label: String {
        id + (aliases.isEmpty ? "" : " (\(aliases.prefix(3).joined(separator: ", "))\(aliases.count > 3 ? ", …" : ""))")
            + " in \(package)" + (version.map { " \($0)" } ?? "")
    }
}

/// Everything a decision depends on besides the rule set and the VM. Gathered beforehand
/// (``PolicyFacts``), so that ``PolicyEngine/decide(_:vm:context:)`` is pure.
public struct PolicyContext: Sendable {
    /// The decision's id (the caller makes it; ledger events carry it).
    public var decisionID: UUID
    /// When the operation happens (time windows, scan age).
    public var time: Date
    /// The host the operation runs on.
    public var host: Fact<HostFacts>
    /// Live members of the VM's lineage family, itself included, before the operation.
    public var replicas: Fact<Int>
    /// The VM's last scan (`.known(nil)`: never scanned).
    public var lastScan: Fact<Date?>
    /// Open findings of the VM's latest inventory, counted per severity.
    public var openFindings: Fact<[Severity: Int]>
    /// The open findings themselves when the facts name them (empty otherwise).
    public var openFindingList: [OpenFinding] = []
    /// How many advisories were imported after the VM's last scan.
    public var advisoriesSinceScan: Fact<Int>
    /// Findings the rollback target would re-open (rollback only; the caller computes it).
    public var reexposure: Fact<[ReexposedFinding]>
    /// The destination (export, copy, clone); nil when the operation has none.
    public var destination: DestinationFacts?
    /// Whether the VM's owner is recorded and present.
    public var ownerPresent: Fact<Bool>
    /// The host's latest attestation (`.known(nil)`: never attested).
    public var attestation: Fact<HostAttestationFact?> = .unknown("attestation not read")
    /// The VM's latest malware scan (`.known(nil)`: never scanned for malware).
    public var malwareScan: Fact<MalwareScanFact?> = .unknown("malware scans not read")
    /// The patch's mirror (patch only); nil when the operation has none.
    public var mirror: String?
    /// The registry repository (push, pull): `host[:port]/repository`.
    public var registry: String?
    /// The pulled image's signature verdict (pull): `trusted`, `unsigned` or `invalid`.
    public var signature: String?
    /// The pull keeps the pushed VM's identity (pull).
    public var keepIdentity = false
    /// The image is encrypted (push, pull); nil for other operations.
    public var encrypted: Bool?

    public init(decisionID: UUID = UUID(), time: Date = Date(),
                host: Fact<HostFacts> = .unknown("no host given"),
                replicas: Fact<Int> = .unknown("replicas not counted"),
                lastScan: Fact<Date?> = .unknown("scan history not read"),
                openFindings: Fact<[Severity: Int]> = .unknown("findings not read"),
                advisoriesSinceScan: Fact<Int> = .unknown("advisories not read"),
                reexposure: Fact<[ReexposedFinding]> = .unknown("re-exposure not computed"),
                destination: DestinationFacts? = nil,
                ownerPresent: Fact<Bool> = .unknown("owner not checked")) {
        self.decisionID = decisionID; self.time = time; self.host = host; self.replicas = replicas
        self.lastScan = lastScan; self.openFindings = openFindings; self.advisoriesSinceScan = advisoriesSinceScan
        self.reexposure = reexposure; self.destination = destination; self.ownerPresent = ownerPresent
    }
}

/// How one applicable rule came out.
public struct RuleOutcome: Sendable, Equatable, Codable {
    public enum Result: String, Sendable, Codable {
        /// The rule's effect applies (deny, quarantine, or allow for `allow` rules).
        case fired
        /// A `require` rule whose conditions all hold: it grants the operation.
        case satisfied
        /// A deny/quarantine/allow rule whose conditions do not all hold.
        case notFired = "not-fired"
    }
    public var rule: String
    public var result: Result
    /// The effect this rule contributes (nil for not-fired).
    public var effect: Effect?
    /// Why, one line per condition that decided it.
    public var reasons: [String]
    /// `file:line`.
    public var source: String
}

/// The engine's answer.
public struct Decision: Sendable, Equatable, Codable {
    public var id: UUID
    public var operation: VMOperation
    public var vm: VMID?
    public var vmName: String?
    public var host: String?
    public var time: Date
    public var effect: Effect
    /// Why, most important first.
    public var reasons: [String]
    /// The rules that produced the effect.
    public var rules: [String]
    /// Every rule that applied to this operation and VM, and how it came out.
    public var outcomes: [RuleOutcome]
    /// The policy revision (`sha256:…`), or `unavailable` when the policy could not be loaded.
    public var revision: String
    /// Set when the decision was forced by a failure (unreadable policy, unreachable database).
    public var failedClosed: Bool

    /// The payload of the ledger's `policy-decision` event.
    public var ledgerPayload: [String: JSONValue] {
        var p: [String: JSONValue] = [
            "decision": .string(id.uuidString.lowercased()),
            "op": .string(operation.rawValue),
            "effect": .string(effect.rawValue),
            "rules": .array(rules.map { .string($0) }),
            "reasons": .array(reasons.map { .string($0) }),
            "revision": .string(revision),
        ]
        if failedClosed { p["failed_closed"] = .bool(true) }
        if let host { p["on_host"] = .string(host) }
        return p
    }

    /// One line for stderr and virsh: `denied start of web1: rule x: …`.
    public var summary: String {
        let what = "\(operation.rawValue) of \(vmName ?? vm?.description ?? "an unknown VM")"
        switch effect {
        case .allow: return "allowed \(what)" + (reasons.first.map { ": \($0)" } ?? "")
        case .quarantine: return "quarantined \(what): " + reasons.joined(separator: "; ")
        case .deny: return "denied \(what) by Warden policy: " + reasons.joined(separator: "; ")
        }
    }
}

/// The evaluator: pure and deterministic. The same set, operation, VM and context give the
/// same decision.
///
/// Precedence: deny > quarantine > allow. Every applicable rule (operation listed in `on`,
/// VM matched by `match`) is evaluated. If any fires deny, the decision is deny; else if any
/// fires quarantine, quarantine; else if any grants (a satisfied `require`, a fired `allow`),
/// allow; else the set's `defaultEffect` (allow unless a file says `defaultEffect: deny`).
/// A fact that is unknown never helps the VM: a `require` condition on it fails, and a
/// deny/quarantine condition on it holds.
public enum PolicyEngine {
    public static func decide(_ set: PolicySet, _ operation: VMOperation, vm: VMRecord, context: PolicyContext) -> Decision {
        var outcomes: [RuleOutcome] = []
        for index in set.rulesByOperation[operation] ?? [] {
            let rule = set.rules[index]
            guard matches(rule.match, vm) else { continue }
            outcomes.append(evaluate(rule, set: set, operation: operation, vm: vm, context: context))
        }
        var effect: Effect
        var deciding: [RuleOutcome]
        let fired = outcomes.filter { $0.result == .fired && $0.effect != .allow }
        if let strongest = fired.map({ $0.effect ?? .deny }).max() {
            effect = strongest
            deciding = fired.filter { $0.effect == strongest }
        } else {
            deciding = outcomes.filter { $0.result == .satisfied || ($0.result == .fired && $0.effect == .allow) }
            effect = deciding.isEmpty ? set.defaultEffect : .allow
        }
        var reasons = deciding.flatMap { o in o.reasons.map { "rule \(o.rule): \($0)" } }
        if deciding.isEmpty {
            if outcomes.isEmpty {
                reasons = ["no rule applies to \(operation.rawValue) of this VM; default \(set.defaultEffect.rawValue)"]
            } else {
                reasons = ["no rule allows \(operation.rawValue) of this VM; default \(set.defaultEffect.rawValue)"]
            }
        }
        // Pulls fail closed on signatures: an image without a trusted signature is refused
        // unless an allow rule that names its verdict (`signature: [unsigned]`) fires.
        if operation == .pull, effect != .deny, context.signature != "trusted" {
            let verdict = context.signature ?? "unknown"
            let opted = outcomes.contains { o in
                o.result == .fired && o.effect == .allow
                    && set.rules.contains { $0.name == o.rule && ($0.conditions.signature ?? []).contains(verdict) }
            }
            if !opted {
                effect = .deny
                reasons = ["the image's signature is \(verdict): a pull needs a signature by a trusted key (policy trusted-keys/), or an allow rule with signature: [\(verdict)]"] + reasons
                deciding = []
            }
        }
        if operation == .pull, effect != .deny, context.keepIdentity {
            let opted = outcomes.contains { o in
                o.result == .fired && o.effect == .allow && set.rules.contains { $0.name == o.rule && $0.conditions.keepIdentity == true }
            }
            if !opted {
                effect = .deny
                reasons = ["the pull keeps the VM's identity (--keep-identity), which needs an allow rule with keepIdentity: true"] + reasons
                deciding = []
            }
        }
        return Decision(id: context.decisionID, operation: operation, vm: vm.id, vmName: vm.name,
                        host: context.host.value?.name, time: context.time, effect: effect,
                        reasons: reasons, rules: deciding.map(\.rule), outcomes: outcomes,
                        revision: set.revision, failedClosed: false)
    }

    /// A deny decision forced by a failure (policy unreadable or invalid, database unreachable).
    public static func failClosed(_ operation: VMOperation, vm: VMRecord?, reason: String, context: PolicyContext,
                                  revision: String = "unavailable") -> Decision {
        Decision(id: context.decisionID, operation: operation, vm: vm?.id, vmName: vm?.name,
                 host: context.host.value?.name, time: context.time, effect: .deny,
                 reasons: ["failing closed: \(reason)"], rules: [], outcomes: [], revision: revision, failedClosed: true)
    }

    // MARK: Matching

    static func matches(_ m: VMMatch, _ vm: VMRecord) -> Bool {
        for (key, values) in m.labels {
            guard let v = vm.labels[key], values.contains("*") || values.contains(v) else { return false }
        }
        if let names = m.names, !names.contains(where: { glob($0, vm.name) }) { return false }
        if let owners = m.owners, !owners.contains(vm.owner) { return false }
        if let states = m.states, !states.contains(vm.state.rawValue) { return false }
        return true
    }

    static func glob(_ pattern: String, _ name: String) -> Bool {
        if !pattern.contains(where: { "*?[".contains($0) }) { return pattern == name }
        return fnmatch(pattern, name, 0) == 0
    }

    // MARK: Conditions

    /// One condition's truth, with its explanation.
    enum Truth {
        case yes(String), no(String), unknown(String)
        var text: String {
            switch self { case .yes(let s), .no(let s): s; case .unknown(let s): "unknown: \(s)" }
        }
    }

    static func evaluate(_ rule: Rule, set: PolicySet, operation: VMOperation, vm: VMRecord, context: PolicyContext) -> RuleOutcome {
        let truths = conditionTruths(rule.conditions, set: set, operation: operation, vm: vm, context: context)
        switch rule.kind {
        case .require:
            let failing = truths.filter { if case .yes = $0 { false } else { true } }
            if failing.isEmpty {
                return RuleOutcome(rule: rule.name, result: .satisfied, effect: .allow,
                                   reasons: truths.isEmpty ? ["no conditions"] : truths.map(\.text), source: rule.source)
            }
            return RuleOutcome(rule: rule.name, result: .fired, effect: rule.otherwise, reasons: failing.map(\.text), source: rule.source)
        case .deny, .quarantine, .allow:
            let holds = truths.allSatisfy { if case .no = $0 { false } else { true } }
            if holds {
                // An unknown fact makes a deny/quarantine fire, but never makes an allow fire.
                if rule.kind == .allow, truths.contains(where: { if case .unknown = $0 { true } else { false } }) {
                    return RuleOutcome(rule: rule.name, result: .notFired, effect: nil,
                                       reasons: truths.filter { if case .unknown = $0 { true } else { false } }.map(\.text), source: rule.source)
                }
                return RuleOutcome(rule: rule.name, result: .fired, effect: rule.firingEffect,
                                   reasons: truths.isEmpty ? ["applies unconditionally"] : truths.map(\.text), source: rule.source)
            }
            return RuleOutcome(rule: rule.name, result: .notFired, effect: nil,
                               reasons: truths.compactMap { if case .no(let s) = $0 { s } else { nil } }, source: rule.source)
        }
    }

    static func conditionTruths(_ c: Conditions, set: PolicySet, operation: VMOperation, vm: VMRecord, context: PolicyContext) -> [Truth] {
        var out: [Truth] = []
        if let h = c.host { out.append(hostTruth(h, context.host)) }
        if let windows = c.window { out.append(windowTruth(windows, set: set, at: context.time)) }
        if let max = c.maxReplicas {
            switch context.replicas {
            case .unknown(let why): out.append(.unknown("replica count: \(why)"))
            case .known(let n):
                let adds = operation == .copy || operation == .clone || operation == .pull
                let after = adds ? n + 1 : n
                let text = "\(after) live cop\(after == 1 ? "y" : "ies") in the lineage\(adds ? " after this \(operation.rawValue)" : ""), at most \(max) allowed"
                out.append(after <= max ? .yes(text) : .no(text))
            }
        }
        if let d = c.destination { out.append(destinationTruth(d, context.destination)) }
        if let age = c.scanAge {
            switch context.lastScan {
            case .unknown(let why): out.append(.unknown("last scan: \(why)"))
            case .known(nil): out.append(.no("never scanned (scans must be at most \(age) old)"))
            case .known(let date?):
                let elapsed = context.time.timeIntervalSince(date)
                let text = "last scanned \(describe(seconds: elapsed)) ago, at most \(age) allowed"
                out.append(elapsed <= Double(age.seconds) ? .yes(text) : .no(text))
            }
        }
        if let want = c.scanCurrent {
            let t: Truth
            switch (context.lastScan, context.advisoriesSinceScan) {
            case (.unknown(let why), _): t = .unknown("last scan: \(why)")
            case (.known(nil), _): t = .no("never scanned, so the scan is not current")
            case (_, .unknown(let why)): t = .unknown("advisories since the last scan: \(why)")
            case (.known(.some), .known(let n)):
                t = n == 0 ? .yes("no advisories imported since the last scan")
                           : .no("\(n) advisor\(n == 1 ? "y" : "ies") imported since the last scan")
            }
            out.append(want ? t : negate(t))
        }
        if let f = c.findings {
            switch context.openFindings {
            case .unknown(let why): out.append(.unknown("open findings: \(why)"))
            case .known(let counts):
                let n = counts.filter { $0.key >= f.severity }.reduce(0) { $0 + $1.value }
                let named = context.openFindingList.filter { $0.severity >= f.severity }
                let list = named.isEmpty ? "" : ": " + named.prefix(5).map(\.label).joined(separator: "; ") + (named.count > 5 ? "; …" : "")
                let text = "\(n) open finding\(n == 1 ? "" : "s") at or above \(f.severity)" + list
                out.append(n >= f.count ? .yes(text) : .no(text))
            }
        }
        if let f = c.reexposes {
            switch context.reexposure {
            case .unknown(let why): out.append(.unknown("re-exposure: \(why)"))
            case .known(let list):
                let hits = list.filter { $0.severity >= f.severity }
                let ids = hits.prefix(5).map(\.id).joined(separator: ", ") + (hits.count > 5 ? ", …" : "")
                let text = hits.isEmpty ? "re-opens no finding at or above \(f.severity)"
                                        : "re-opens \(hits.count) finding\(hits.count == 1 ? "" : "s") at or above \(f.severity) (\(ids))"
                out.append(hits.count >= f.count ? .yes(text) : .no(text))
            }
        }
        if let want = c.ownerPresent {
            let t: Truth
            switch context.ownerPresent {
            case .unknown(let why): t = .unknown("owner: \(why)")
            case .known(true): t = .yes("owner '\(vm.owner)' is present")
            case .known(false): t = .no(vm.owner.isEmpty ? "the VM has no owner" : "owner '\(vm.owner)' is not present")
            }
            out.append(want ? t : negate(t))
        }
        if let patterns = c.mirrors {
            if let mirror = context.mirror {
                out.append(patterns.contains(where: { glob($0, mirror) })
                           ? .yes("mirror \(mirror) is allowed")
                           : .no("mirror \(mirror) is not one of \(patterns.joined(separator: ", "))"))
            } else {
                out.append(.unknown("no mirror given"))
            }
        }
        if let patterns = c.registries {
            if let registry = context.registry {
                out.append(patterns.contains(where: { glob($0, registry) })
                           ? .yes("registry \(registry) is allowed")
                           : .no("registry \(registry) is not one of \(patterns.joined(separator: ", "))"))
            } else {
                out.append(.unknown("no registry given"))
            }
        }
        if let verdicts = c.signature {
            if let s = context.signature {
                out.append(verdicts.contains(s) ? .yes("the image's signature is \(s)") : .no("the image's signature is \(s), not \(verdicts.joined(separator: " or "))"))
            } else {
                out.append(.unknown("no signature verdict given"))
            }
        }
        if let want = c.encrypted {
            if let e = context.encrypted {
                let t: Truth = e ? .yes("the image is encrypted") : .no("the image is not encrypted")
                out.append(want ? t : negate(t))
            } else {
                out.append(.unknown("not a push or pull"))
            }
        }
        if let want = c.keepIdentity {
            let t: Truth = context.keepIdentity ? .yes("the pull keeps the VM's identity") : .no("the pull refreshes the VM's identity")
            out.append(want ? t : negate(t))
        }
        if let want = c.malware {
            let t: Truth
            switch context.malwareScan {
            case .unknown(let why): t = .unknown("malware scan: \(why)")
            case .known(nil): t = .unknown("never scanned for malware (warden malware scan)")
            case .known(let m?):
                let age = describe(seconds: max(0, context.time.timeIntervalSince(m.time)))
                if m.detections > 0 {
                    let names = m.signatures.prefix(3).joined(separator: ", ") + (m.signatures.count > 3 ? ", …" : "")
                    t = .yes("malware found \(age) ago: \(m.detections) detection\(m.detections == 1 ? "" : "s") in \(m.infectedFiles) file\(m.infectedFiles == 1 ? "" : "s") (\(names))")
                } else {
                    t = .no("no malware found by the scan \(age) ago")
                }
            }
            out.append(want ? t : negate(t))
        }
        if let a = c.attested {
            let t: Truth
            switch context.attestation {
            case .unknown(let why): t = .unknown("attestation: \(why)")
            case .known(nil): t = .no("host \(hostName(context)) has never been attested")
            case .known(let f?):
                let age = context.time.timeIntervalSince(f.time)
                let limit = min(f.validFor.seconds, a.maxAge?.seconds ?? Int64.max)
                if !f.trusted {
                    t = .no("host \(f.host)'s last attestation, \(describe(seconds: age)) ago, failed: " + f.reasons.prefix(3).joined(separator: "; "))
                } else if age < -300 {
                    t = .no("host \(f.host)'s last attestation is dated in the future")
                } else if age > Double(limit) {
                    t = .no("host \(f.host) was attested \(describe(seconds: age)) ago, at most \(PolicyDuration(seconds: limit)) allowed")
                } else {
                    t = .yes("host \(f.host) attested \(describe(seconds: max(0, age))) ago" + (f.baseline.map { " (baseline \($0))" } ?? ""))
                }
            }
            out.append(a.expected ? t : negate(t))
        }
        return out
    }

    static func hostName(_ context: PolicyContext) -> String {
        if case .known(let h) = context.host { return h.name }
        return "(unknown)"
    }

    static func negate(_ t: Truth) -> Truth {
        switch t {
        case .yes(let s): .no(s)
        case .no(let s): .yes(s)
        case .unknown: t
        }
    }

    static func hostTruth(_ h: HostCondition, _ fact: Fact<HostFacts>) -> Truth {
        guard case .known(let host) = fact else {
            if case .unknown(let why) = fact { return .unknown("host: \(why)") }
            return .unknown("host")
        }
        if let names = h.names, !names.contains(host.name) {
            return .no("host \(host.name) is not one of \(names.joined(separator: ", "))")
        }
        for (k, v) in (h.labels ?? [:]).sorted(by: { $0.key < $1.key }) {
            guard let have = host.labels[k] else { return .no("host \(host.name) has no label \(k) (needs \(k)=\(v))") }
            if v != "*" && have != v { return .no("host \(host.name) has \(k)=\(have), needs \(k)=\(v)") }
        }
        var parts: [String] = []
        if let names = h.names { parts.append("is one of \(names.joined(separator: ", "))") }
        if let labels = h.labels, !labels.isEmpty {
            parts.append("has " + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))
        }
        return .yes("host \(host.name) " + parts.joined(separator: " and "))
    }

    static func windowTruth(_ windows: [TimeWindow], set: PolicySet, at: Date) -> Truth {
        for w in windows {
            guard let cal = set.calendars[w.timeZone] else { return .unknown("time zone \(w.timeZone) is not available") }
            if w.contains(at, calendar: cal) {
                return .yes("\(localTime(at, cal)) is inside the window \(w.description)")
            }
        }
        let cal = set.calendars[windows.first?.timeZone ?? "UTC"] ?? Calendar(identifier: .gregorian)
        return .no("\(localTime(at, cal)) is outside the window \(windows.map(\.description).joined(separator: " or "))")
    }

    static func localTime(_ date: Date, _ cal: Calendar) -> String {
        let c = cal.dateComponents([.year, .month, .day, .hour, .minute, .weekday], from: date)
        let day = TimeWindow.dayNames[((c.weekday ?? 1) + 5) % 7]
        return String(format: "%@ %04d-%02d-%02d %02d:%02d %@", day, c.year ?? 0, c.month ?? 0, c.day ?? 0, c.hour ?? 0, c.minute ?? 0,
                      cal.timeZone.identifier)
    }

    static func destinationTruth(_ d: DestinationCondition, _ fact: DestinationFacts?) -> Truth {
        guard let dest = fact else { return .unknown("no destination given") }
        var texts: [String] = []
        if let want = d.removable {
            switch dest.removable {
            case .unknown(let why): return .unknown("whether \(dest.path) is on removable media: \(why)")
            case .known(let isRemovable):
                let text = "\(dest.path) is \(isRemovable ? "" : "not ")on removable media" + (dest.device.map { " (\($0))" } ?? "")
                if isRemovable != want { return .no(text) }
                texts.append(text)
            }
        }
        if let roots = d.roots {
            let inside = roots.contains { root in
                let r = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
                return dest.resolved == r || dest.resolved.hasPrefix(r == "/" ? "/" : r + "/")
            }
            let text = "\(dest.resolved) is \(inside ? "" : "not ")under \(roots.joined(separator: ", "))"
            if !inside { return .no(text) }
            texts.append(text)
        }
        return .yes(texts.joined(separator: "; "))
    }

    static func describe(seconds: TimeInterval) -> String {
        let s = Int64(max(0, seconds))
        if s < 60 { return "\(s)s" }
        return PolicyDuration(seconds: s - s % 60).description
    }
}
