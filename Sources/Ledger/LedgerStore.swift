import Foundation
import WardenCore
import AdvisoryStorage

/// All ledger storage goes through this protocol, so that a PostgreSQL backend can follow
/// the SQLite one (``SQLiteLedger``) for multi-host fleets. Implementations are `Sendable`
/// and safe to share between threads; every mutating call is one transaction that also
/// appends its event(s) to the Merkle log, so an acknowledged event is never lost.
///
/// VM references given by users (`VM` arguments) resolve through ``resolveVM(_:)``:
/// a full UUID, a unique UUID prefix (≥ 4 hex digits), or a unique name.
public protocol LedgerStore: Sendable {
    // MARK: Transactions
    /// Runs `body` so that every call it makes on this store is one transaction: a decision
    /// that reads ledger state (a replica count, a disk-path uniqueness check) commits
    /// together with the change it allows, or neither does. `family` is any VM of the lineage
    /// family the decision reads (the store resolves the family's root itself, so callers
    /// starting from different members still meet on one lock); `nil` serialises against
    /// every writer. SQLite holds its one write lock (`BEGIN IMMEDIATE`); a PostgreSQL store
    /// holds an advisory lock on the family's root for the transaction.
    func atomically<T>(family: VMID?, _ body: () throws -> T) throws -> T

    // MARK: VMs
    /// Creates a VM with its disks and appends `event` (registered, discovered, cloned, copied…)
    /// in the same transaction. The event's `vm` and `generationAfter` are filled in.
    func createVM(_ vm: VMRecord, disks: [DiskRecord], event: NewEvent) throws -> (VMRecord, EventRecord)
    func vm(_ id: VMID) throws -> VMRecord?
    func resolveVM(_ reference: String) throws -> VMRecord
    func listVMs() throws -> [VMRecord]
    func disks(of vm: VMID) throws -> [DiskRecord]
    /// Applies `change` to the VM and appends `event` atomically; returns the updated VM and event.
    /// Set `vm.generation` in `change` to rotate the generation (the event records before/after).
    func updateVM(_ id: VMID, event: NewEvent, _ change: (inout VMRecord) throws -> Void) throws -> (VMRecord, EventRecord)
    func replaceDisks(of vm: VMID, with disks: [DiskRecord]) throws
    /// The VMs (live and retired) with a disk at `path`, or at the same file (device and inode).
    func vms(withDisk path: String, file: DiskRecord.FileID?) throws -> [VMRecord]

    // MARK: Hosts and residency
    func addHost(_ host: HostRecord) throws
    func host(_ name: HostName) throws -> HostRecord?
    func listHosts() throws -> [HostRecord]
    /// Opens a residency interval (no-op if the same one is already open).
    func openResidency(vm: VMID, host: HostName, kind: ResidencyRecord.Kind, at: Date) throws
    /// Closes the open interval of that kind, if any.
    func closeResidency(vm: VMID, host: HostName, kind: ResidencyRecord.Kind, at: Date) throws
    func residency(of vm: VMID) throws -> [ResidencyRecord]

    // MARK: Snapshots
    func addSnapshot(_ snapshot: SnapshotRecord) throws
    func snapshots(of vm: VMID) throws -> [SnapshotRecord]

    // MARK: Events and the log
    /// Appends one event (its own transaction). Returns it with its sequence number.
    func append(_ event: NewEvent) throws -> EventRecord
    func events(of vm: VMID) throws -> [EventRecord]
    /// Each VM's latest event of `kind` (one per VM that has one), in any order; with
    /// `mentioning`, only those whose payload text contains it (a quoted name, say).
    func latestEvents(kind: EventKind, mentioning: String?) throws -> [EventRecord]
    func event(seq: Int64) throws -> EventRecord?
    /// The host's latest event of `kind` that names no VM (enrolments, attestations); nil when none.
    func latestHostEvent(kind: EventKind, host: HostName) throws -> EventRecord?
    /// The number of events (the Merkle tree size).
    func eventCount() throws -> Int64
    /// Appends the events a host reported, in order, each under the id the host gave it (its
    /// agent's outbox id), in one transaction: an id already recorded for that host is not
    /// appended again, and its first sequence number is returned. Every event is recorded as
    /// from `host`, whatever its `host` field says.
    func ingest(_ events: [IngestedEvent], from host: HostName) throws -> [IngestOutcome]
    /// Up to `limit` events after `seq`, in log order.
    func events(after seq: Int64, limit: Int) throws -> [EventRecord]
    /// Records a VM as another ledger holds it (an agent's push, a server's pull), without an
    /// event: the events travel through ``ingest(_:from:)``. Inserts it when unknown, else
    /// replaces its fields and labels. Its parent must be known.
    func upsertVM(_ vm: VMRecord) throws
    /// Replaces the residency intervals of `vm` on `host` (what that host reports of itself).
    func replaceResidency(vm: VMID, host: HostName, with intervals: [ResidencyRecord]) throws

    // MARK: Queries
    /// The VM's descendants by clone/copy lineage (children, grandchildren…), not including itself.
    func descendants(of vm: VMID) throws -> [VMRecord]
    /// Live (not retired) VMs in the same lineage family as `vm` (its root ancestor and all
    /// descendants), including itself. Policy counts replicas with this.
    func liveReplicas(of vm: VMID) throws -> [VMRecord]
    /// The time of the VM's most recent `scanned` event, if any.
    func lastScan(of vm: VMID) throws -> Date?

    // MARK: Fleet facts
    /// How fresh this host's copy of the fleet's facts is, when the ledger is one host's of a
    /// fleet (an enrolled agent beside it); nil when it is the whole truth (a lone host, or the
    /// fleet's own ledger on the server).
    func fleetFreshness() throws -> FleetFreshness?

    // MARK: Advisory facts
    /// The advisory store that shares this ledger's database (findings of stored inventories,
    /// advisory imports), or nil when the backend has none: policy facts that need it are then
    /// unknown, and rules that need them fail closed.
    var advisoryFacts: (any AdvisoryFacts)? { get }
}

/// An event a host reports, with the id that makes reporting it again harmless.
public struct IngestedEvent: Sendable {
    /// 1–128 characters of `A–Z a–z 0–9 . _ : -`, unique per host.
    public var id: String
    public var event: NewEvent
    public init(id: String, event: NewEvent) { self.id = id; self.event = event }

    /// Throws `.invalidArgument` naming the first malformed id (stores check before writing anything).
    public static func requireValidIDs(_ events: [IngestedEvent]) throws {
        if let bad = events.first(where: { !isValidID($0.id) }) {
            throw WardenError(.invalidArgument, "event id \(TerminalText.line(String(bad.id.prefix(64)))) is not 1-128 of A-Z a-z 0-9 . _ : -")
        }
    }

    public static func isValidID(_ id: String) -> Bool {
        let b = Array(id.utf8)
        return (1...128).contains(b.count) && b.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x3A || c == 0x2D
        }
    }
}

/// What became of one reported event: its place in the log, and whether it was already there.
public struct IngestOutcome: Codable, Sendable, Equatable {
    public var id: String
    public var seq: Int64
    public var duplicate: Bool
    public init(id: String, seq: Int64, duplicate: Bool) { self.id = id; self.seq = seq; self.duplicate = duplicate }
}

extension LedgerStore {
    /// Each VM's latest event of `kind` (one per VM that has one), in any order.
    public func latestEvents(kind: EventKind) throws -> [EventRecord] { try latestEvents(kind: kind, mentioning: nil) }
}
