import Crypto
import Foundation
import WardenCore

/// All policy files of a directory, validated, with their revision hash.
///
/// Loading never half-succeeds: any error in any file makes ``load(directory:)`` throw, and
/// callers that decide must then fail closed (``PolicyEngine/failClosed(_:_:reason:context:)``).
public struct PolicySet: Sendable {
    public let documents: [PolicyDocument]
    public let rules: [Rule]
    /// `sha256:` + SHA-256 over the canonical content of every file, in file-name order.
    public let revision: String
    /// `deny` if any file says `defaultEffect: deny`, else `allow`.
    public let defaultEffect: Effect
    /// Where the files came from (a directory), for messages.
    public let origin: String
    /// Warnings from parsing (errors make loading fail).
    public let warnings: [PolicyDiagnostic]

    let rulesByOperation: [VMOperation: [Int]]
    let calendars: [String: Calendar]

    /// Files larger than this are refused (a policy is hand-written text).
    public static let maxFileSize = 1 << 20
    /// Directories with more policy files than this are refused.
    public static let maxFiles = 1000

    public init(documents: [PolicyDocument], origin: String = "", warnings: [PolicyDiagnostic] = []) {
        let docs = documents.sorted { ($0.file as NSString).lastPathComponent < ($1.file as NSString).lastPathComponent }
        self.documents = docs
        self.origin = origin
        self.warnings = warnings
        rules = docs.flatMap(\.rules)
        defaultEffect = docs.contains { $0.defaultEffect == .deny } ? .deny : .allow
        var byOp: [VMOperation: [Int]] = [:]
        var cals: [String: Calendar] = [:]
        for (i, rule) in rules.enumerated() {
            for op in rule.on { byOp[op, default: []].append(i) }
            for w in rule.conditions.window ?? [] where cals[w.timeZone] == nil {
                if let c = w.makeCalendar() { cals[w.timeZone] = c }
            }
        }
        rulesByOperation = byOp
        calendars = cals
        revision = Self.revision(of: docs)
    }

    /// The canonical content: per file (sorted by base name), the name, a NUL, the document as
    /// sorted-key JSON without source positions, and a NUL. Comments, key order, quoting and
    /// layout do not change the revision; any change in meaning does.
    static func revision(of docs: [PolicyDocument]) -> String {
        var hasher = SHA256()
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        for doc in docs {
            var d = doc
            d.file = (doc.file as NSString).lastPathComponent
            d.rules = doc.rules.map { var r = $0; r.source = ""; return r }
            hasher.update(data: Data(d.file.utf8))
            hasher.update(data: Data([0]))
            hasher.update(data: (try? enc.encode(d)) ?? Data())
            hasher.update(data: Data([0]))
        }
        return "sha256:" + hasher.finalize().hexString
    }

    /// The policy files of `directory`: `*.yaml` and `*.yml`, not hidden, sorted by name.
    public static func files(in directory: String) throws -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) else {
            throw WardenError(.notFound, "no such policy directory", file: directory)
        }
        guard isDir.boolValue else {
            // A single file is accepted too.
            return [directory]
        }
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw WardenError(.io, "cannot read the policy directory: \(error.localizedDescription)", file: directory)
        }
        let files = names.filter { !$0.hasPrefix(".") && ($0.hasSuffix(".yaml") || $0.hasSuffix(".yml")) && !isTestFile($0) }.sorted()
        guard files.count <= maxFiles else {
            throw WardenError(.limitExceeded, "more than \(maxFiles) policy files", file: directory)
        }
        return files.map { (directory as NSString).appendingPathComponent($0) }
    }

    /// `*_test.yaml` / `*_test.yml` hold policy tests (``PolicyTestRunner``), not policy.
    public static func isTestFile(_ name: String) -> Bool {
        name.hasSuffix("_test.yaml") || name.hasSuffix("_test.yml")
    }

    /// Reads a policy file as UTF-8 text, capped at ``maxFileSize``.
    public static func readText(_ path: String) throws -> String {
        guard let fh = FileHandle(forReadingAtPath: path) else {
            throw WardenError(.io, "cannot read: \(String(cString: strerror(errno)))", file: path)
        }
        defer { try? fh.close() }
        let data = (try? fh.read(upToCount: maxFileSize + 1)) ?? Data()
        guard data.count <= maxFileSize else { throw WardenError(.limitExceeded, "larger than \(maxFileSize) bytes", file: path) }
        guard let text = String(data: data, encoding: .utf8) else { throw WardenError(.corrupt, "not UTF-8 text", file: path) }
        return text
    }

    /// Parses every file and returns documents and all diagnostics (for lint).
    public static func lint(directory: String) throws -> (documents: [PolicyDocument], diagnostics: [PolicyDiagnostic]) {
        var docs: [PolicyDocument] = []
        var diags: [PolicyDiagnostic] = []
        let files = try files(in: directory)
        var seen: [String: String] = [:]
        for path in files {
            let text: String
            do { text = try readText(path) } catch let e as WardenError {
                diags.append(PolicyDiagnostic(file: path, line: 1, column: 1, message: e.message))
                continue
            }
            let (doc, d) = PolicyParser.parse(text, file: path)
            diags += d
            guard var doc else { continue }
            // Rule names are unique across the whole set (decisions name rules).
            doc.rules = doc.rules.filter { rule in
                if let other = seen[rule.name] {
                    let line = Int(rule.source.split(separator: ":").last ?? "1") ?? 1
                    diags.append(PolicyDiagnostic(file: path, line: line, column: 1, message: "rule '\(rule.name)' is already defined at \(other)"))
                    return false
                }
                seen[rule.name] = rule.source
                return true
            }
            docs.append(doc)
        }
        if files.isEmpty {
            diags.append(PolicyDiagnostic(file: directory, line: 1, column: 1, level: .warning,
                                          message: "no policy files (*.yaml, *.yml): every operation is allowed"))
        }
        return (docs, diags)
    }

    /// Loads a directory for deciding: throws on the first error (naming file and line).
    public static func load(directory: String) throws -> PolicySet {
        let (docs, diags) = try lint(directory: directory)
        if let first = diags.first(where: { $0.level == .error }) {
            let more = diags.filter { $0.level == .error }.count - 1
            throw WardenError(.invalidArgument, "line \(first.line): \(first.message)" + (more > 0 ? " (and \(more) more error(s); run warden policy lint)" : ""),
                              file: first.file)
        }
        return PolicySet(documents: docs, origin: directory, warnings: diags)
    }

    /// Parses policy text directly (tests, `policy test` inline policies).
    public static func parse(_ text: String, file: String = "policy.yaml") throws -> PolicySet {
        let (doc, diags) = PolicyParser.parse(text, file: file)
        if let first = diags.first(where: { $0.level == .error }) {
            throw WardenError(.invalidArgument, "line \(first.line): \(first.message)", file: file)
        }
        guard let doc else { throw WardenError(.invalidArgument, "not a policy", file: file) }
        return PolicySet(documents: [doc], origin: file, warnings: diags)
    }

    /// Whether `name` is a policy file name safe to write into a policy folder from elsewhere
    /// (the fleet server's set): letters, digits and `._-`, ending in .yaml or .yml, no leading dot.
    public static func isSafeFileName(_ name: String) -> Bool {
        (6...100).contains(name.utf8.count) && (name.hasSuffix(".yaml") || name.hasSuffix(".yml")) && !name.hasPrefix(".")
            && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0) }
    }

    /// The default policy directory: `$WARDEN_POLICY`, else `$WARDEN_HOME/policy`, else
    /// `~/.local/share/warden/policy` (beside the default database).
    public static func defaultDirectory(explicit: String? = nil,
                                        environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let explicit, !explicit.isEmpty { return explicit }
        if let p = environment["WARDEN_POLICY"], !p.isEmpty { return p }
        if let home = environment["WARDEN_HOME"], !home.isEmpty { return home + "/policy" }
        let userHome = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return userHome + "/.local/share/warden/policy"
    }
}
