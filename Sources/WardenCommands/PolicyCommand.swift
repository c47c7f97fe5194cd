import ArgumentParser
import Foundation
import Ledger
import Policy
import WardenCore

extension VMOperation: ExpressibleByArgument {}

/// `warden policy lint|check|test`.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Check, explain and test Warden policy (docs/policy.md).",
        subcommands: [Lint.self, Check.self, Test.self, BenchDecide.self]
    )

    struct Lint: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "lint",
            abstract: "Validate a policy directory; print every problem as FILE:LINE:COLUMN.",
            discussion: """
                Exits 0 when there is no error (warnings are printed), 2 when there is one.
                
                Example:
                  warden policy lint /etc/warden/policy
                """
        )
        @Argument(help: "The policy directory (or one file).") var directory: String
        @Flag(help: "JSON output (docs/json-schemas/policy-lint.v1.json).") var json = false

        struct Report: Encodable {
            var schema = "warden.policy.lint/v1"
            var directory: String
            var files: [String]
            var rules: Int
            var revision: String?
            var defaultEffect: String?
            var ok: Bool
            var diagnostics: [PolicyDiagnostic]
        }

        func run() throws {
            let files = try PolicySet.files(in: directory)
            let (docs, diags) = try PolicySet.lint(directory: directory)
            let ok = !diags.contains { $0.level == .error }
            let set = ok ? PolicySet(documents: docs, origin: directory) : nil
            try Output.render(Report(directory: directory, files: files, rules: docs.reduce(0) { $0 + $1.rules.count },
                                                      revision: set?.revision, defaultEffect: set?.defaultEffect.rawValue, ok: ok, diagnostics: diags), json: json) {
                for d in diags { Output.stdout.line(oneLine(d.description)) }
                if let set {
                    Output.stdout.line("\(files.count) file\(files.count == 1 ? "" : "s"), \(set.rules.count) rule\(set.rules.count == 1 ? "" : "s"), default \(set.defaultEffect.rawValue), revision \(set.revision)")
                }
            }
            if !ok {
                Output.stdout.flush()
                throw ExitCode(2)
            }
        }
    }

    struct Test: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "test",
            abstract: "Run table-driven policy tests (*_test.yaml) against the policy beside them.",
            discussion: """
                Exits 0 when every case passes, 1 when a case fails, 2 when a file is malformed.
                
                Example:
                  warden policy test /etc/warden/policy
                """
        )
        @Argument(help: "The directory holding the policy and its *_test.yaml files.") var directory: String
        @Flag(help: "JSON output (docs/json-schemas/policy-test.v1.json).") var json = false

        struct Report: Encodable {
            var schema = "warden.policy.test/v1"
            var directory: String
            var revision: String?
            var passed: Int
            var failed: Int
            var results: [PolicyTestRunner.Result]
            var diagnostics: [PolicyDiagnostic]
        }

        func run() throws {
            let (results, diags, revision) = try PolicyTestRunner.run(directory: directory)
            let failed = results.filter { !$0.passed }.count
            try Output.render(Report(directory: directory, revision: revision, passed: results.count - failed,
                                                      failed: failed, results: results, diagnostics: diags), json: json) {
                for d in diags { Output.stdout.line(oneLine(d.description)) }
                for r in results {
                    let where_ = "\((r.file as NSString).lastPathComponent):\(r.line)"
                    if r.passed {
                        Output.stdout.line(oneLine("PASS \(where_) \(r.name)"))
                    } else {
                        Output.stdout.line(oneLine("FAIL \(where_) \(r.name): \(r.failure ?? "")"))
                        for reason in r.reasons { Output.stdout.line(oneLine("     \(reason)")) }
                    }
                }
                Output.stdout.line("\(results.count - failed) passed, \(failed) failed")
            }
            Output.stdout.flush()
            if diags.contains(where: { $0.level == .error }) { throw ExitCode(2) }
            if failed > 0 { throw ExitCode(1) }
        }
    }
}
