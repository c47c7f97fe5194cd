import ArgumentParser
import Foundation
import Ledger
import Policy
import WardenCore
import Storage

extension PolicyCommand {
    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "check",
            abstract: "Decide an operation on a VM and explain it (the decision is recorded in the ledger).",
            discussion: """
                Exits 0 for allow and for quarantine (the effect is printed), 3 for deny.
                
                Example:
                  warden policy check --op copy web --dest /media/usb
                """
        )
        @Option(help: ArgumentHelp("The operation.", valueName: VMOperation.allCases.map(\.rawValue).joined(separator: "|")))
        var op: VMOperation
        @Argument(help: "The VM: a UUID, a unique UUID prefix, or a unique name.") var vm: String
        @Option(help: "The host it would run on (default: this host).") var host: String?
        @Option(help: "When (RFC 3339, e.g. 2026-03-29T08:30:00+02:00; default: now).") var at: String?
        @Option(help: "The destination path (export, copy, clone).") var dest: String?
        @Option(help: ArgumentHelp("The patch's mirror (patch): dir:/PATH or its http:// URL.", valueName: "mirror")) var mirror: String?
        @Option(help: "The policy directory (default: $WARDEN_POLICY, $WARDEN_HOME/policy, ~/.local/share/warden/policy).") var policy: String?
        @Option(help: "The ledger database.") var db: String?
        @Flag(help: "JSON output (docs/json-schemas/policy-check.v1.json).") var json = false

        func validate() throws {
            if let host, HostName(host) == nil { throw ValidationError("--host '\(host)' is not a host name") }
            if let at, PolicyTestRunner.parseDate(at) == nil { throw ValidationError("--at '\(at)' is not an RFC 3339 time like 2026-03-29T08:30:00+02:00") }
        }

        struct Report: Encodable {
            var schema = "warden.policy.check/v1"
            var decision: String
            var operation: String
            var vm: String?
            var vmName: String?
            var host: String?
            var time: String
            var effect: String
            var reasons: [String]
            var rules: [String]
            var outcomes: [RuleOutcome]
            var revision: String
            var failedClosed: Bool
            var recordedSeq: Int64?
        }

        func run() throws {
            var request = PolicyRequest(operation: op, host: host.flatMap(HostName.init) ?? .current,
                                        time: at.flatMap(PolicyTestRunner.parseDate) ?? Date(), destination: dest)
            request.mirror = mirror
            let source: PolicyGate.Source = policy.map { .explicit($0) } ?? .defaultDirectory
            var decision: Decision
            var seq: Int64? = nil
            do {
                let store = try SQLiteLedger.open(WardenDatabase.defaultPath(explicit: db), .existing)
                let record = try store.resolveVM(vm)
                (decision, seq) = PolicyGate.evaluate(request, vm: record, store: store, source: source)
            } catch let e as WardenError where e.code == .unavailable || e.code == .io {
                decision = PolicyEngine.failClosed(op, vm: nil, reason: "ledger unavailable: \(e.description)",
                                                   context: PolicyContext(decisionID: request.decisionID, time: request.time,
                                                                          host: .known(HostFacts(name: request.host.value, labels: [:]))))
            }
            let time = ISO8601DateFormatter().string(from: decision.time)
            try Output.render(Report(decision: decision.id.uuidString.lowercased(), operation: op.rawValue,
                                                      vm: decision.vm?.description, vmName: decision.vmName, host: decision.host,
                                                      time: time, effect: decision.effect.rawValue, reasons: decision.reasons,
                                                      rules: decision.rules, outcomes: decision.outcomes, revision: decision.revision,
                                                      failedClosed: decision.failedClosed, recordedSeq: seq), json: json) {
                let who = decision.vmName ?? vm
                Output.stdout.line("\(decision.effect.rawValue)  \(op.rawValue) \(who) on \(decision.host ?? request.host.value) at \(time)  (revision \(decision.revision))")
                for r in decision.reasons { Output.stdout.line("  \(r)") }
                if !decision.outcomes.isEmpty {
                    Output.stdout.line("applicable rules:")
                    for o in decision.outcomes {
                        let result = o.result == .fired ? "fired \(o.effect?.rawValue ?? "")" : o.result.rawValue
                        Output.stdout.line("  \(o.rule) (\(o.source)): \(result)")
                    }
                }
                if seq == nil { Output.stdout.line("  (not recorded: the ledger is unavailable)") }
            }
            Output.stdout.flush()
            if decision.effect == .deny { throw ExitCode(3) }
        }
    }
}
