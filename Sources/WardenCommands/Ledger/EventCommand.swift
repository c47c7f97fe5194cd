import ArgumentParser
import Foundation
import Ledger
import WardenCore

/// `warden event record`: events reported by external tools (orchestrators, backup systems).
struct EventCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "event", abstract: "Record events reported by external tools.",
        subcommands: [EventRecord_.self])
}

extension EventKind: ExpressibleByArgument {}

struct EventRecord_: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record", abstract: "Record an event about a VM, marked as reported by the caller.",
        discussion: """
        started, stopped, migrated and moved-storage also open and close residency intervals: started and \
        migrated close the VM's open ran-on interval elsewhere and open one on --host; stopped closes the \
        open ran-on interval; moved-storage closes open stored-on intervals elsewhere and opens one on --host. \
        snapshotted needs --payload '{"snapshot":"NAME"}'; rolled-back names an existing snapshot the same way \
        and gives the VM a new generation. VMs are created and changed through `warden vm`, not here.
        
        Example:
          warden event record --vm web --kind exported --payload '{"tool":"restic"}'
        """)
    @OptionGroup var database: DatabaseOptions
    @Option(help: "The VM.") var vm: String
    @Option(help: "started, stopped, migrated, moved-storage, snapshotted, rolled-back, exported, scanned, patched.")
    var kind: EventKind
    @Option(help: "The host it happened on (for started/migrated/moved-storage: where the VM is afterwards). Default: this host.")
    var host: String?
    @Option(help: "When it happened (RFC 3339 with a zone, a date, @EPOCH or now). Default: now.") var at: String?
    @Option(help: "Details as a JSON object (at most 64 KiB). Never put secrets here: the ledger is evidence, kept forever.")
    var payload: String?
    @Option(help: "Who caused it, user@host (default: the caller).") var actor: String?

    static let allowed: Set<EventKind> = [.started, .stopped, .migrated, .movedStorage, .snapshotted, .rolledBack,
                                          .exported, .scanned, .patched]

    func validate() throws {
        guard Self.allowed.contains(kind) else {
            let hint: String
            switch kind {
            case .registered, .created: hint = "use `warden vm register`"
            case .discovered: hint = "use `warden discover --register`"
            case .copied, .cloned: hint = "use `warden vm copy`"
            case .ownershipTransferred: hint = "use `warden vm transfer`"
            case .retired: hint = "use `warden vm retire`"
            case .networkState: hint = "use `warden net quarantine|shield|open` (the rules are applied first)"
            case .encrypted: hint = "use `warden vm encrypt`"
            case .keysShredded: hint = "use `warden vault shred`"
            case .rekeyed: hint = "use `warden vault rekey`"
            case .breakGlassApproval: hint = "use `warden vault approve`"
            case .malwareScanned: hint = "use `warden malware scan` (a recorded verdict must come from the engines)"
            default: hint = "only the policy engine records these"
            }
            throw ValidationError("\(kind.rawValue) events cannot be recorded here: \(hint)")
        }
        if let host, HostName(host) == nil { throw ValidationError("not a host name: \(oneLine(host))") }
        if let actor { _ = try NameArgument.check(actor, what: "--actor") }
        if let payload, payload.utf8.count > 65_536 { throw ValidationError("--payload is larger than 64 KiB") }
    }

    static func parsePayload(_ text: String?) throws -> [String: JSONValue] {
        guard let text else { return [:] }
        guard let v = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)), case .object(let o) = v else {
            throw WardenError(.invalidArgument, "--payload must be a JSON object")
        }
        return o
    }

    func run() throws {
        let payload = try Self.parsePayload(payload)
        let now = Date()
        let at = try self.at.map { try TimeArgument.parse($0, now: now) } ?? now
        let host = host.flatMap(HostName.init) ?? .current
        let store = try database.open(create: false)
        let v = try store.resolveVM(vm)
        guard v.state != .retired else { throw WardenError(.conflict, "VM \(v.id) is retired") }
        var event = NewEvent(kind: kind, vm: v.id, actor: actor ?? NewEvent.defaultActor, host: host, time: at,
                             generationBefore: v.generation, generationAfter: v.generation,
                             payload: payload, reportedByCaller: true)
        let open = try store.residency(of: v.id).filter { $0.to == nil }
        func close(_ r: ResidencyRecord) throws {
            guard at >= r.from else {
                throw WardenError(.conflict, "the \(r.kind.rawValue)-on interval on \(r.host) began at \(TimeArgument.format(r.from)), after \(TimeArgument.format(at))")
            }
            try store.closeResidency(vm: v.id, host: r.host, kind: r.kind, at: at)
        }
        let recorded: EventRecord
        switch kind {
        case .started, .migrated:
            if kind == .migrated, event.payload["from"] == nil, let src = open.first(where: { $0.kind == .ran && $0.host != host }) {
                event.payload["from"] = .string(src.host.value)
            }
            for r in open where r.kind == .ran && r.host != host { try close(r) }
            (_, recorded) = try store.updateVM(v.id, event: event) { $0.state = .running }
            if !open.contains(where: { $0.kind == .ran && $0.host == host }) {
                try store.openResidency(vm: v.id, host: host, kind: .ran, at: at)
            }
        case .stopped:
            let ran = open.filter { $0.kind == .ran }
            let target = ran.filter { $0.host == host }
            for r in (target.isEmpty && self.host == nil ? ran : target) { try close(r) }
            (_, recorded) = try store.updateVM(v.id, event: event) { $0.state = .stopped }
        case .movedStorage:
            for r in open where r.kind == .stored && r.host != host { try close(r) }
            recorded = try store.append(event)
            if !open.contains(where: { $0.kind == .stored && $0.host == host }) {
                try store.openResidency(vm: v.id, host: host, kind: .stored, at: at)
            }
        case .snapshotted:
            guard let name = payload["snapshot"]?.stringValue, !name.isEmpty else {
                throw WardenError(.invalidArgument, "snapshotted needs --payload '{\"snapshot\":\"NAME\"}'")
            }
            recorded = try store.append(event)
            try store.addSnapshot(SnapshotRecord(vm: v.id, name: name, generation: v.generation, createdAt: at))
        case .rolledBack:
            guard let name = payload["snapshot"]?.stringValue else {
                throw WardenError(.invalidArgument, "rolled-back needs --payload '{\"snapshot\":\"NAME\"}'")
            }
            guard try store.snapshots(of: v.id).contains(where: { $0.name == name }) else {
                throw WardenError(.notFound, "VM \(v.id) has no snapshot \(oneLine(name))")
            }
            let gen = UUID()
            event.generationAfter = gen
            (_, recorded) = try store.updateVM(v.id, event: event) { $0.generation = gen }
        default:
            recorded = try store.append(event)
        }
        Output.stdout.line("\(recorded.seq)")
    }
}
