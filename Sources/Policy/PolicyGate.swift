import Foundation
import Ledger
import WardenCore

/// The one door every VM-changing Warden operation goes through before it changes anything.
///
/// `check` loads the policy, gathers the facts from the ledger, decides, records the decision
/// in the ledger as a `policy-decision` event, and throws `WardenError(.denied, …)` (exit 3)
/// unless the effect is allow or quarantine. It fails closed: an unreadable or invalid policy,
/// a fact query that fails where a rule needs it, or a decision that cannot be recorded all deny.
public enum PolicyGate {
    /// Where the policy comes from and whether its absence is allowed.
    public enum Source: Sendable {
        /// An explicit directory (`--policy`): it must exist.
        case explicit(String)
        /// The default directory: `$WARDEN_POLICY` (which must exist), else `$WARDEN_HOME/policy`
        /// or `~/.local/share/warden/policy`; when that implied default does not exist there is no
        /// policy (everything is allowed).
        case defaultDirectory
        /// An already loaded set.
        case loaded(PolicySet)

        /// The directory other policy-directory files come from (the network configuration):
        /// the explicit one, else the default (a loaded set names none).
        public var directory: String {
            if case .explicit(let d) = self { return d }
            return PolicySet.defaultDirectory()
        }
    }

    /// The revision recorded when no policy directory exists.
    public static let emptySet = PolicySet(documents: [], origin: "(no policy)")

    /// Loads the policy for a decision; the error message says why it failed (for fail-closed reasons).
    public static func load(_ source: Source, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> PolicySet {
        switch source {
        case .loaded(let set):
            return set
        case .explicit(let dir):
            return try PolicySet.load(directory: dir)
        case .defaultDirectory:
            // $WARDEN_POLICY is an explicit choice: a misspelt or missing location must not
            // turn policy off, so it has to exist. Only the implied default may be absent.
            if let named = environment["WARDEN_POLICY"], !named.isEmpty {
                return try PolicySet.load(directory: named)
            }
            let dir = PolicySet.defaultDirectory(environment: environment)
            if !FileManager.default.fileExists(atPath: dir) { return emptySet }
            return try PolicySet.load(directory: dir)
        }
    }

    /// Decides without recording (for `policy check`, which records too, and for tests).
    public static func decide(_ request: PolicyRequest, vm: VMRecord, policy: Result<PolicySet, Error>,
                              facts: PolicyFacts, probe: DestinationProbe = DestinationProbe()) -> Decision {
        switch policy {
        case .failure(let error):
            let reason = "policy unavailable: " + ((error as? WardenError)?.description ?? "\(error)")
            return PolicyEngine.failClosed(request.operation, vm: vm, reason: reason,
                                           context: PolicyContext(decisionID: request.decisionID, time: request.time,
                                                                  host: .known(HostFacts(name: request.host.value, labels: [:]))))
        case .success(let set):
            let ctx = set.gather(request, vm: vm, facts: facts, probe: probe)
            return PolicyEngine.decide(set, request.operation, vm: vm, context: ctx)
        }
    }

    /// Records `decision` as a `policy-decision` event. Returns the stored event.
    @discardableResult
    public static func record(_ decision: Decision, store: any LedgerStore, host: HostName, actor: String = NewEvent.defaultActor) throws -> EventRecord {
        try store.append(NewEvent(kind: .policyDecision, vm: decision.vm, actor: actor, host: host, time: decision.time,
                                  payload: decision.ledgerPayload))
    }

    /// Records that a denied `decision` was overridden by an operator (`warden vm stop --force`):
    /// a second `policy-decision` event with effect allow, `override: true` and the id of the
    /// denied decision. It throws when the override cannot be recorded (no unrecorded override).
    @discardableResult
    public static func recordOverride(_ decision: Decision, store: any LedgerStore, host: HostName, why: String,
                                      actor: String = NewEvent.defaultActor) throws -> EventRecord {
        var p: [String: JSONValue] = [
            "decision": .string(UUID().uuidString.lowercased()),
            "op": .string(decision.operation.rawValue),
            "effect": .string(Effect.allow.rawValue),
            "override": .bool(true),
            "overrides": .string(decision.id.uuidString.lowercased()),
            "rules": .array(decision.rules.map { .string($0) }),
            "reasons": .array([.string("denial overridden: \(why)")] + decision.reasons.map { .string($0) }),
            "revision": .string(decision.revision),
        ]
        p["on_host"] = .string(host.value)
        return try store.append(NewEvent(kind: .policyDecision, vm: decision.vm, actor: actor, host: host, payload: p))
    }

    /// Decide and record, without throwing: a decision that cannot be recorded becomes a
    /// fail-closed deny. Returns the decision and the recorded event's sequence number.
    public static func evaluate(_ request: PolicyRequest, vm: VMRecord, store: any LedgerStore,
                                source: Source = .defaultDirectory, facts: PolicyFacts? = nil,
                                actor: String = NewEvent.defaultActor) -> (Decision, Int64?) {
        let policy = Result { try load(source) }
        var decision = decide(request, vm: vm, policy: policy, facts: facts ?? LedgerPolicyFacts.wired(store))
        do {
            let event = try record(decision, store: store, host: request.host, actor: actor)
            return (decision, event.seq)
        } catch {
            let why = (error as? WardenError)?.description ?? "\(error)"
            decision = PolicyEngine.failClosed(request.operation, vm: vm, reason: "cannot record the decision in the ledger: \(why)",
                                               context: PolicyContext(decisionID: request.decisionID, time: request.time,
                                                                      host: .known(HostFacts(name: request.host.value, labels: [:]))),
                                               revision: decision.revision)
            return (decision, nil)
        }
    }

    /// Decide, record, and throw `WardenError(.denied)` unless allowed (quarantine is allowed:
    /// the caller records the network restriction). Returns the decision.
    @discardableResult
    public static func check(_ request: PolicyRequest, vm: VMRecord, store: any LedgerStore,
                             source: Source = .defaultDirectory, facts: PolicyFacts? = nil,
                             actor: String = NewEvent.defaultActor) throws -> Decision {
        let (decision, _) = evaluate(request, vm: vm, store: store, source: source, facts: facts, actor: actor)
        if decision.effect == .deny {
            throw WardenError(.denied, decision.summary)
        }
        return decision
    }

    /// Convenience for commands: `check` for an operation on `vm` now, on this host.
    @discardableResult
    public static func check(_ operation: VMOperation, vm: VMRecord, store: any LedgerStore, destination: String? = nil,
                             source: Source = .defaultDirectory) throws -> Decision {
        try check(PolicyRequest(operation: operation, destination: destination), vm: vm, store: store, source: source)
    }
}
