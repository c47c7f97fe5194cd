import Foundation
import WardenCore
import Yams

/// A problem found in a policy (or policy test) file, with its position.
public struct PolicyDiagnostic: Sendable, Hashable, Codable, CustomStringConvertible {
    public enum Level: String, Sendable, Codable { case error, warning }
    public var file: String
    public var line: Int
    public var column: Int
    public var level: Level
    public var message: String
    public init(file: String, line: Int, column: Int, level: Level = .error, message: String) {
        self.file = file; self.line = line; self.column = column; self.level = level; self.message = message
    }
    /// `file:line:column: error: message`.
    public var description: String { "\(file):\(line):\(column): \(level.rawValue): \(message)" }
}

/// Reads YAML nodes strictly: unknown or duplicate keys, wrong types and bad values become
/// diagnostics with the line they are on. Values are read from the scalar text, not from
/// YAML 1.1 type guessing (so the key `on` stays the string "on", and `no` is not false).
struct NodeReader {
    let file: String
    var diagnostics: [PolicyDiagnostic] = []

    init(file: String) { self.file = file }

    mutating func error(_ node: Node?, _ message: String) {
        let mark = node?.mark
        diagnostics.append(PolicyDiagnostic(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1, message: message))
    }
    mutating func warning(_ node: Node?, _ message: String) {
        let mark = node?.mark
        diagnostics.append(PolicyDiagnostic(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1, level: .warning, message: message))
    }

    /// A mapping with string keys from `allowed`; unknown and duplicate keys are errors.
    /// Returns the values and the key nodes (for positions).
    mutating func mapping(_ node: Node, _ what: String, allowed: [String]) -> [String: (key: Node, value: Node)]? {
        guard case .mapping(let m) = node else {
            error(node, "\(what) must be a mapping")
            return nil
        }
        var out: [String: (key: Node, value: Node)] = [:]
        for (k, v) in m {
            guard case .scalar(let s) = k else {
                error(k, "\(what): keys must be plain strings")
                continue
            }
            if out[s.string] != nil {
                error(k, "\(what): duplicate key '\(s.string)'")
                continue
            }
            if !allowed.contains(s.string) {
                let hint = allowed.isEmpty ? "" : " (expected one of: \(allowed.joined(separator: ", ")))"
                error(k, "\(what): unknown key '\(s.string)'\(hint)")
                continue
            }
            out[s.string] = (k, v)
        }
        return out
    }

    /// A mapping from string keys to string values (labels).
    mutating func stringMap(_ node: Node, _ what: String) -> [String: String]? {
        guard case .mapping(let m) = node else {
            error(node, "\(what) must be a mapping of strings")
            return nil
        }
        var out: [String: String] = [:]
        for (k, v) in m {
            guard let key = scalar(k, "\(what) key"), let value = scalar(v, "\(what).\(k.scalar?.string ?? "?")") else { continue }
            if out[key] != nil { error(k, "\(what): duplicate key '\(key)'"); continue }
            if key.isEmpty { error(k, "\(what): empty key"); continue }
            out[key] = value
        }
        return out
    }

    mutating func scalar(_ node: Node, _ what: String) -> String? {
        guard case .scalar(let s) = node else {
            error(node, "\(what) must be a single value")
            return nil
        }
        if s.style == .plain && (s.string.isEmpty || s.string == "~" || s.string == "null") {
            error(node, "\(what) is empty")
            return nil
        }
        return s.string
    }

    /// A scalar or a sequence of scalars.
    mutating func stringList(_ node: Node, _ what: String) -> [String]? {
        switch node {
        case .scalar:
            return scalar(node, what).map { [$0] }
        case .sequence(let seq):
            var out: [String] = []
            for item in seq { if let s = scalar(item, "\(what) item") { out.append(s) } }
            if out.isEmpty { error(node, "\(what) is an empty list") ; return nil }
            return out
        default:
            error(node, "\(what) must be a value or a list of values")
            return nil
        }
    }

    mutating func bool(_ node: Node, _ what: String) -> Bool? {
        guard let s = scalar(node, what) else { return nil }
        switch s {
        case "true": return true
        case "false": return false
        default:
            error(node, "\(what) must be true or false, not '\(s)'")
            return nil
        }
    }

    mutating func int(_ node: Node, _ what: String, min: Int, max: Int) -> Int? {
        guard let s = scalar(node, what) else { return nil }
        guard let v = Int(s), v >= min, v <= max else {
            error(node, "\(what) must be a whole number from \(min) to \(max), not '\(s)'")
            return nil
        }
        return v
    }
}

/// Parses policy files into ``PolicyDocument``s, collecting every problem it can find.
public enum PolicyParser {
    public static let apiVersion = "warden/v1"

    /// Parses one policy file's text. Returns the document (nil if it could not be read at all)
    /// and all diagnostics; a document with errors must not be used for decisions.
    public static func parse(_ text: String, file: String) -> (PolicyDocument?, [PolicyDiagnostic]) {
        var r = NodeReader(file: file)
        if let deep = YAMLNesting.tooDeep(text, file: file) { return (nil, [deep]) }
        let root: Node
        do {
            guard let n = try Yams.compose(yaml: text) else {
                r.error(nil, "the file is empty")
                return (nil, r.diagnostics)
            }
            root = n
        } catch let e as YamlError {
            return (nil, [yamlDiagnostic(e, file: file)])
        } catch {
            return (nil, [PolicyDiagnostic(file: file, line: 1, column: 1, message: "not YAML: \(error)")])
        }
        guard let top = r.mapping(root, "policy", allowed: ["apiVersion", "kind", "name", "description", "defaultEffect", "rules"]) else {
            return (nil, r.diagnostics)
        }
        checkHeader(&r, top, root: root, kind: "Policy")
        var doc = PolicyDocument(file: file, name: nil, defaultEffect: nil, rules: [])
        if let n = top["name"] { doc.name = r.scalar(n.value, "name") }
        if let n = top["description"] { _ = r.scalar(n.value, "description") }
        if let n = top["defaultEffect"], let s = r.scalar(n.value, "defaultEffect") {
            switch s {
            case "allow": doc.defaultEffect = .allow
            case "deny": doc.defaultEffect = .deny
            default: r.error(n.value, "defaultEffect must be allow or deny, not '\(s)'")
            }
        }
        guard let rulesNode = top["rules"]?.value else {
            r.error(root, "missing 'rules' (a list; it may be empty: rules: [])")
            return (doc, r.diagnostics)
        }
        guard case .sequence(let seq) = rulesNode else {
            r.error(rulesNode, "rules must be a list")
            return (doc, r.diagnostics)
        }
        var names: [String: Int] = [:]
        for item in seq {
            if let rule = parseRule(&r, item) {
                if let first = names[rule.name] {
                    r.error(item, "rule '\(rule.name)' is already defined on line \(first)")
                } else {
                    names[rule.name] = item.mark?.line ?? 0
                    doc.rules.append(rule)
                }
            }
        }
        return (doc, r.diagnostics)
    }

    static func checkHeader(_ r: inout NodeReader, _ top: [String: (key: Node, value: Node)], root: Node, kind: String) {
        if let n = top["apiVersion"] {
            if let s = r.scalar(n.value, "apiVersion"), s != apiVersion {
                r.error(n.value, "apiVersion must be \(apiVersion), not '\(s)'")
            }
        } else {
            r.error(root, "missing 'apiVersion: \(apiVersion)'")
        }
        if let n = top["kind"] {
            if let s = r.scalar(n.value, "kind"), s != kind {
                r.error(n.value, "kind must be \(kind), not '\(s)'")
            }
        } else {
            r.error(root, "missing 'kind: \(kind)'")
        }
    }

    static func yamlDiagnostic(_ e: YamlError, file: String) -> PolicyDiagnostic {
        switch e {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return PolicyDiagnostic(file: file, line: mark.line, column: mark.column, message: "YAML: \(problem)")
        default:
            return PolicyDiagnostic(file: file, line: 1, column: 1, message: "YAML: \(e)")
        }
    }

    static func isValidName(_ s: String) -> Bool {
        guard let f = s.unicodeScalars.first, s.count <= 128 else { return false }
        let ok = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        return CharacterSet.alphanumerics.contains(f) && s.unicodeScalars.allSatisfy { ok.contains($0) }
    }

    static let destinationOps: Set<VMOperation> = [.export, .copy, .clone]

    static func parseRule(_ r: inout NodeReader, _ node: Node) -> Rule? {
        guard let m = r.mapping(node, "rule", allowed: ["name", "description", "match", "on", "require", "deny", "quarantine", "allow", "otherwise"]) else {
            return nil
        }
        let before = r.diagnostics.filter { $0.level == .error }.count
        guard let nameNode = m["name"], let name = r.scalar(nameNode.value, "rule name") else {
            r.error(node, "rule without a name")
            return nil
        }
        if !isValidName(name) {
            r.error(nameNode.value, "rule name '\(name)' must be letters, digits, '.', '_' or '-', starting with a letter or digit")
        }
        let what = "rule '\(name)'"
        var ops: [VMOperation] = []
        if let on = m["on"] {
            for op in r.stringList(on.value, "\(what): on") ?? [] {
                if let o = VMOperation(rawValue: op) {
                    if !ops.contains(o) { ops.append(o) }
                } else {
                    r.error(on.value, "\(what): unknown operation '\(op)' (operations: \(VMOperation.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
            }
        } else {
            r.error(node, "\(what): missing 'on' (the operations it applies to)")
        }
        var match = VMMatch()
        if let mn = m["match"] { match = parseMatch(&r, mn.value, what) ?? match }
        let kinds = ["require", "deny", "quarantine", "allow"].filter { m[$0] != nil }
        guard kinds.count == 1, let kindName = kinds.first, let kind = Rule.Kind(rawValue: kindName), let body = m[kindName] else {
            r.error(node, "\(what): needs exactly one of require, deny, quarantine, allow" + (kinds.isEmpty ? "" : " (has \(kinds.joined(separator: ", ")))"))
            return nil
        }
        var conditions = Conditions()
        if case .mapping(let bm) = body.value, bm.count == 0 {
            if kind == .require { r.error(body.value, "\(what): require needs at least one condition") }
        } else if case .scalar(let s) = body.value, s.string.isEmpty || s.string == "{}", kind != .require {
            // `deny:` with nothing: unconditional.
        } else {
            conditions = parseConditions(&r, body.value, "\(what): \(kindName)", ops: ops) ?? conditions
        }
        var otherwise = Effect.deny
        if let o = m["otherwise"] {
            if kind != .require {
                r.error(o.key, "\(what): otherwise is only meaningful with require")
            } else if let s = r.scalar(o.value, "\(what): otherwise") {
                switch s {
                case "deny": otherwise = .deny
                case "quarantine": otherwise = .quarantine
                default: r.error(o.value, "\(what): otherwise must be deny or quarantine, not '\(s)'")
                }
            }
        }
        var description: String? = nil
        if let d = m["description"] { description = r.scalar(d.value, "\(what): description") }
        let line = node.mark?.line ?? 0
        let rule = Rule(name: name, description: description, match: match, on: ops, kind: kind, conditions: conditions,
                        otherwise: otherwise, source: "\(r.file):\(line)")
        return r.diagnostics.filter { $0.level == .error }.count == before ? rule : nil
    }

    static func parseMatch(_ r: inout NodeReader, _ node: Node, _ what: String) -> VMMatch? {
        guard let m = r.mapping(node, "\(what): match", allowed: ["labels", "names", "owners", "states"]) else { return nil }
        var match = VMMatch()
        if let l = m["labels"] {
            if case .mapping(let lm) = l.value {
                for (k, v) in lm {
                    guard let key = r.scalar(k, "\(what): match.labels key"), let values = r.stringList(v, "\(what): match.labels.\(key)") else { continue }
                    if match.labels[key] != nil { r.error(k, "\(what): match.labels: duplicate key '\(key)'"); continue }
                    match.labels[key] = values
                }
            } else {
                r.error(l.value, "\(what): match.labels must be a mapping")
            }
        }
        if let n = m["names"] { match.names = r.stringList(n.value, "\(what): match.names") }
        if let n = m["owners"] { match.owners = r.stringList(n.value, "\(what): match.owners") }
        if let n = m["states"] {
            match.states = r.stringList(n.value, "\(what): match.states")
            let known = ["registered", "discovered", "stopped", "running", "retired"]
            for s in match.states ?? [] where !known.contains(s) {
                r.error(n.value, "\(what): match.states: unknown state '\(s)' (states: \(known.joined(separator: ", ")))")
            }
        }
        return match
    }

    static func parseSeverity(_ r: inout NodeReader, _ node: Node, _ what: String) -> SeverityCondition? {
        guard let m = r.mapping(node, what, allowed: ["severity", "count"]) else { return nil }
        guard let sn = m["severity"] else { r.error(node, "\(what): missing severity"); return nil }
        guard let s = r.scalar(sn.value, "\(what).severity") else { return nil }
        guard let sev = Severity(word: s), ["critical", "high", "medium", "low", "negligible"].contains(s) else {
            r.error(sn.value, "\(what): severity must be critical, high, medium, low or negligible, not '\(s)'")
            return nil
        }
        var count = 1
        if let c = m["count"] { count = r.int(c.value, "\(what).count", min: 1, max: 1_000_000) ?? 1 }
        return SeverityCondition(severity: sev, count: count)
    }

    static func parseWindow(_ r: inout NodeReader, _ node: Node, _ what: String) -> TimeWindow? {
        guard let m = r.mapping(node, what, allowed: ["days", "hours", "timezone"]) else { return nil }
        var mask: UInt8 = 0b1111_1110
        if let d = m["days"] {
            if let items = r.stringList(d.value, "\(what).days") {
                if let parsed = TimeWindow.parseDays(items) { mask = parsed } else {
                    r.error(d.value, "\(what): days '\(items.joined(separator: ","))' is not a day list like Mon-Fri or [Sat, Sun]")
                }
            }
        }
        var start = 0, end = 1440
        if let h = m["hours"], let s = r.scalar(h.value, "\(what).hours") {
            if let (a, b) = TimeWindow.parseHours(s) { start = a; end = b } else {
                r.error(h.value, "\(what): hours '\(s)' must be HH:MM-HH:MM (24-hour clock, end may be 24:00, start ≠ end)")
            }
        }
        if m["days"] == nil && m["hours"] == nil {
            r.error(node, "\(what): a window needs days, hours or both")
        }
        var zone = "UTC"
        if let z = m["timezone"] {
            if let s = r.scalar(z.value, "\(what).timezone") {
                // Only IANA names (Area/Location) and UTC: abbreviations like CET or EST are ambiguous.
                if s == "UTC" || (s.contains("/") && TimeZone(identifier: s) != nil) {
                    zone = s
                } else {
                    r.error(z.value, "\(what): unknown time zone '\(s)' (use an IANA name like Europe/Berlin, or UTC)")
                }
            }
        } else {
            r.warning(node, "\(what): no timezone given; the window is in UTC")
        }
        return TimeWindow(dayMask: mask, startMinute: start, endMinute: end, timeZone: zone)
    }

    static func parseConditions(_ r: inout NodeReader, _ node: Node, _ what: String, ops: [VMOperation]) -> Conditions? {
        let keys = ["host", "window", "maxReplicas", "destination", "scanAge", "scanCurrent", "findings", "reexposes", "ownerPresent", "attested", "malware", "mirrors", "registries", "signature", "keepIdentity", "encrypted"]
        guard let m = r.mapping(node, what, allowed: keys) else { return nil }
        var c = Conditions()
        if let h = m["host"], let hm = r.mapping(h.value, "\(what).host", allowed: ["names", "labels"]) {
            var hc = HostCondition()
            if let n = hm["names"] {
                hc.names = r.stringList(n.value, "\(what).host.names")
                for name in hc.names ?? [] where HostName(name) == nil {
                    r.error(n.value, "\(what).host.names: '\(name)' is not a host name")
                }
            }
            if let l = hm["labels"] { hc.labels = r.stringMap(l.value, "\(what).host.labels") }
            if hc.names == nil && hc.labels == nil { r.error(h.value, "\(what).host needs names or labels") }
            c.host = hc
        }
        if let w = m["window"] {
            if case .sequence(let seq) = w.value {
                let windows = seq.compactMap { parseWindow(&r, $0, "\(what).window") }
                if seq.isEmpty { r.error(w.value, "\(what).window is an empty list") }
                c.window = windows
            } else if let one = parseWindow(&r, w.value, "\(what).window") {
                c.window = [one]
            }
        }
        if let n = m["maxReplicas"] { c.maxReplicas = r.int(n.value, "\(what).maxReplicas", min: 1, max: 1_000_000) }
        if let d = m["destination"], let dm = r.mapping(d.value, "\(what).destination", allowed: ["removable", "roots"]) {
            var dc = DestinationCondition()
            if let rm = dm["removable"] { dc.removable = r.bool(rm.value, "\(what).destination.removable") }
            if let rt = dm["roots"] {
                dc.roots = r.stringList(rt.value, "\(what).destination.roots")
                for root in dc.roots ?? [] where !root.hasPrefix("/") {
                    r.error(rt.value, "\(what).destination.roots: '\(root)' must be an absolute path")
                }
            }
            if dc.removable == nil && dc.roots == nil { r.error(d.value, "\(what).destination needs removable or roots") }
            let bad = ops.filter { !destinationOps.contains($0) }
            if !bad.isEmpty {
                r.error(d.key, "\(what).destination: operations \(bad.map(\.rawValue).joined(separator: ", ")) have no destination (only export, copy, clone do)")
            }
            c.destination = dc
        }
        if let s = m["scanAge"], let text = r.scalar(s.value, "\(what).scanAge") {
            if let d = PolicyDuration(text) { c.scanAge = d } else {
                r.error(s.value, "\(what).scanAge: '\(text)' is not a duration like 7d, 12h, 1d12h, 90m")
            }
        }
        if let s = m["scanCurrent"] { c.scanCurrent = r.bool(s.value, "\(what).scanCurrent") }
        if let f = m["findings"] { c.findings = parseSeverity(&r, f.value, "\(what).findings") }
        if let f = m["reexposes"] {
            c.reexposes = parseSeverity(&r, f.value, "\(what).reexposes")
            let bad = ops.filter { $0 != .rollback }
            if !bad.isEmpty {
                r.error(f.key, "\(what).reexposes: only rollback has a re-exposure to check, not \(bad.map(\.rawValue).joined(separator: ", "))")
            }
        }
        if let o = m["ownerPresent"] { c.ownerPresent = r.bool(o.value, "\(what).ownerPresent") }
        if let o = m["malware"] { c.malware = r.bool(o.value, "\(what).malware") }
        if let o = m["mirrors"] {
            c.mirrors = r.stringList(o.value, "\(what).mirrors")
            if c.mirrors?.isEmpty == true { r.error(o.value, "\(what).mirrors is an empty list") }
            let bad = ops.filter { $0 != .patch }
            if !bad.isEmpty {
                r.error(o.key, "\(what).mirrors: only patch has a mirror, not \(bad.map(\.rawValue).joined(separator: ", "))")
            }
        }
        if let o = m["registries"] {
            c.registries = r.stringList(o.value, "\(what).registries")
            if c.registries?.isEmpty == true { r.error(o.value, "\(what).registries is an empty list") }
            let bad = ops.filter { $0 != .push && $0 != .pull }
            if !bad.isEmpty {
                r.error(o.key, "\(what).registries: only push and pull have a registry, not \(bad.map(\.rawValue).joined(separator: ", "))")
            }
        }
        if let o = m["signature"] {
            c.signature = r.stringList(o.value, "\(what).signature")
            if c.signature?.isEmpty == true { r.error(o.value, "\(what).signature is an empty list") }
            for v in c.signature ?? [] where !["trusted", "unsigned", "invalid"].contains(v) {
                r.error(o.value, "\(what).signature: \(v) is not trusted, unsigned or invalid")
            }
            let bad = ops.filter { $0 != .pull }
            if !bad.isEmpty {
                r.error(o.key, "\(what).signature: only pull has a signature to check, not \(bad.map(\.rawValue).joined(separator: ", "))")
            }
        }
        if let o = m["encrypted"] {
            c.encrypted = r.bool(o.value, "\(what).encrypted")
            let bad = ops.filter { $0 != .push && $0 != .pull }
            if !bad.isEmpty { r.error(o.key, "\(what).encrypted: only push and pull move images, not \(bad.map(\.rawValue).joined(separator: ", "))") }
        }
        if let o = m["keepIdentity"] {
            c.keepIdentity = r.bool(o.value, "\(what).keepIdentity")
            let bad = ops.filter { $0 != .pull }
            if !bad.isEmpty { r.error(o.key, "\(what).keepIdentity: only pull keeps or refreshes an identity, not \(bad.map(\.rawValue).joined(separator: ", "))") }
        }
        if let a = m["attested"] {
            if case .mapping = a.value {
                if let am = r.mapping(a.value, "\(what).attested", allowed: ["maxAge"]) {
                    var ac = AttestedCondition()
                    if let s = am["maxAge"], let text = r.scalar(s.value, "\(what).attested.maxAge") {
                        if let d = PolicyDuration(text) { ac.maxAge = d } else {
                            r.error(s.value, "\(what).attested.maxAge: '\(text)' is not a duration like 8h, 30m, 1d")
                        }
                    } else {
                        r.error(a.value, "\(what).attested is true, false, or a mapping with maxAge")
                    }
                    c.attested = ac
                }
            } else if let b = r.bool(a.value, "\(what).attested") {
                c.attested = AttestedCondition(expected: b)
            }
        }
        return c
    }
}
