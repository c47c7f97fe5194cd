import Foundation
import Testing
import WardenTestSupport

/// One of the paper's problems told end to end (docs/scenarios.md): a "without Warden" arm that
/// shows the harm with plain tools, and a "with Warden" arm that shows the defence. Every command
/// is run for real and recorded with its output; each arm ends in an asserted outcome.
///
/// With `WARDEN_SCENARIOS_DIR` set (scripts/scenarios sets it), a scenario that finishes writes
/// its Markdown section to `<dir>/<id>.md`; a scenario whose assertions fail writes nothing, so
/// the document never shows an outcome that did not hold.
final class Scenario: @unchecked Sendable {
    enum Arm: String { case without = "Without Warden", with = "With Warden" }

    let id: String
    let title: String
    let section: String
    /// The scenario's working folder, `$W` in the recorded commands.
    let dir: String
    private var markdown: [String] = []
    private var substitutions: [(String, String)] = []
    private var arms: Set<String> = []
    private var pendingOutcome: String?
    private var started = Date()

    /// `problem` is the paper's claim in one or two sentences.
    init(_ id: String, _ title: String, section: String, problem: String) throws {
        self.id = id
        self.title = title
        self.section = section
        dir = "/tmp/wsc-\(id.lowercased())-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir + "/home", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/policy", withIntermediateDirectories: true)
        substitutions = [(Fixtures.wardenBinary, "warden"), (dir, "$W"), (Self.repository + "/", "")]
        markdown.append("<a id=\"\(id.lowercased())\"></a>")
        markdown.append("")
        markdown.append("## \(id) · \(title)")
        markdown.append("")
        markdown.append("*Paper: \(section).* \(problem)")
        markdown.append("")
    }

    /// The repository's root (scripts/verify-proof.py, the demo feeds).
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    /// Shows `path` as `name` in the recorded commands (a cached fixture, the test guest's kernel).
    func alias(_ path: String, as name: String) { substitutions.insert((path, name), at: 0) }

    /// The environment every `warden` command of the scenario gets.
    var wardenEnvironment: [String: String] {
        ["WARDEN_HOME": dir + "/home", "WARDEN_DB": "", "WARDEN_POLICY": dir + "/policy"]
    }

    func display(_ text: String) -> String {
        var t = text
        for (from, to) in substitutions { t = t.replacingOccurrences(of: from, with: to) }
        return t
    }

    /// Runs one arm: `claim` says what the arm is about to show.
    func arm(_ arm: Arm, _ claim: String, _ body: () throws -> Void) throws {
        markdown.append("### \(arm.rawValue)")
        markdown.append("")
        markdown.append(claim)
        markdown.append("")
        try body()
        guard let outcome = pendingOutcome else {
            throw TestGuestError("\(id) \(arm.rawValue): the arm recorded no asserted outcome")
        }
        markdown.append("**Outcome (asserted):** \(outcome)")
        markdown.append("")
        pendingOutcome = nil
        arms.insert(arm.rawValue)
    }

    /// Records the arm's outcome; call it after the assertions that establish it.
    func outcome(_ text: String) { pendingOutcome = text }

    func note(_ text: String) {
        markdown.append(display(text))
        markdown.append("")
    }

    func evidence(_ items: [String]) {
        markdown.append("Evidence:")
        markdown.append("")
        for i in items { markdown.append("- " + display(i)) }
        markdown.append("")
    }

    /// Runs a command and records it with the first `show` lines of its output (0: none).
    @discardableResult
    func run(_ args: [String], environment: [String: String] = [:], check: Bool = true, show: Int = 12,
             shown: String? = nil, timeout: Double = 300) throws -> ToolResult {
        let r = try Tool.run(args, environment: environment, check: false, timeout: timeout)
        record(shown ?? args.map(Self.quote).joined(separator: " "), r, show: show)
        if check && r.status != 0 {
            throw TestGuestError("\(id): \(display(shown ?? args.joined(separator: " "))) exited \(r.status): \(display(String(r.stderr.prefix(1000))))")
        }
        return r
    }

    /// Runs a shell script (recorded as written; `$W` is the scenario's folder, and `warden` is
    /// the built one with the scenario's home).
    @discardableResult
    func sh(_ script: String, check: Bool = true, show: Int = 12, timeout: Double = 300) throws -> ToolResult {
        var env = wardenEnvironment
        env["W"] = dir
        env["PATH"] = (Fixtures.wardenBinary as NSString).deletingLastPathComponent + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        return try run(["bash", "-euo", "pipefail", "-c", script], environment: env, check: check, show: show,
                shown: script.trimmingCharacters(in: .whitespacesAndNewlines), timeout: timeout)
    }

    /// Runs `warden ARGS` with the scenario's home and policy folder.
    @discardableResult
    func warden(_ args: [String], check: Bool = true, show: Int = 12, prefix: [String] = [], timeout: Double = 300) throws -> ToolResult {
        try run(prefix + [Fixtures.wardenBinary] + args, environment: wardenEnvironment, check: check, show: show,
                shown: (["warden"] + args).map(Self.quote).joined(separator: " "), timeout: timeout)
    }

    /// Writes a file the scenario needs (a policy, a feed) and records it.
    func file(_ path: String, _ text: String, show: Bool = true) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        guard show else { return }
        markdown.append("`\(display(path))`:")
        markdown.append("")
        markdown.append("```yaml")
        markdown.append(display(text.trimmingCharacters(in: .newlines)))
        markdown.append("```")
        markdown.append("")
    }

    private func record(_ command: String, _ r: ToolResult, show: Int) {
        var lines = ["$ " + display(command).replacingOccurrences(of: "\n", with: "\n  ")]
        let output = (r.stdoutText + (r.stderr.isEmpty ? "" : (r.stdoutText.isEmpty || r.stdoutText.hasSuffix("\n") ? "" : "\n") + r.stderr))
            .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let body = output.last == "" ? Array(output.dropLast()) : output
        if show > 0 {
            for l in body.prefix(show) { lines.append(String(display(l).prefix(200))) }
            if body.count > show { lines.append("… (\(body.count - show) more lines)") }
        } else if !body.isEmpty {
            lines.append("… (\(body.count) lines, read by the scenario)")
        }
        if r.status != 0 { lines.append("[exit \(r.status)]") }
        markdown.append("```console")
        markdown.append(contentsOf: lines)
        markdown.append("```")
        markdown.append("")
    }

    static func quote(_ s: String) -> String {
        if s.isEmpty { return "''" }
        let plain = s.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "-_./=:,@%+$".unicodeScalars.contains($0) }
        return plain ? s : "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// Writes the section (both arms must have run) and removes the working folder.
    func finish() throws {
        defer { cleanUp() }
        guard arms.count == 2 else { throw TestGuestError("\(id): both arms must run (ran: \(arms.sorted()))") }
        let seconds = Int(Date().timeIntervalSince(started).rounded())
        markdown.append("*Ran in \(seconds) s.*")
        markdown.append("")
        if let out = ProcessInfo.processInfo.environment["WARDEN_SCENARIOS_DIR"], !out.isEmpty {
            try markdown.joined(separator: "\n").write(toFile: out + "/\(id).md", atomically: true, encoding: .utf8)
        }
    }

    func cleanUp() { try? FileManager.default.removeItem(atPath: dir) }
}
