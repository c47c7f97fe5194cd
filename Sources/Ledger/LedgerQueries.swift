import AdvisoryStorage
import Foundation
import WardenCore

// Queries over the ledger: lineage, exposure and census.
//
// A backend provides a few primitives (``LedgerQueries``); the algorithms that turn them
// into answers live here, once, so every backend answers with the same semantics
// (docs/ledger.md, sections "Lineage", "Exposure" and "Census").

/// The primitives the queries need beyond ``LedgerStore``.
public protocol LedgerQueries: LedgerStore {
    /// The advisory store in the same database (advisories, inventories, assessments).
    var advisories: any AdvisoryStore { get }
    /// The fleet's job queue in the same database.
    var jobs: any JobQueue { get }
    /// Residency intervals on `host` that overlap the closed window `[from, to]`:
    /// `interval.from <= to && (interval.to ?? now) > from`, empty intervals excluded.
    func residencies(on host: HostName, overlapping from: Date, _ to: Date, now: Date) throws -> [ResidencyRecord]
    /// The VMs whose `parent` is one of `parents` (labels need not be loaded).
    func children(of parents: [VMID]) throws -> [VMRecord]
    /// The VMs with these ids, in any order; unknown ids are left out (labels need not be loaded).
    func vms(withIDs ids: [VMID]) throws -> [VMRecord]
    /// Every member of `id`'s lineage family (its root ancestor and all the root's
    /// descendants), in any order; nil when there is no VM `id`. Throws
    /// ``WardenError/Code/limitExceeded`` when the family has more than `limit` members.
    func family(of id: VMID, limit: Int) throws -> [FamilyMember]?
    /// For each VM, the events that set a new generation (its creation included), in log order;
    /// for a rollback, `snapshot` holds the payload's `snapshot` when it is a string.
    func generationEvents(of vms: [VMID]) throws -> [VMID: [GenerationStep]]
    /// The snapshots of these VMs.
    func snapshots(ofVMs vms: [VMID]) throws -> [SnapshotRecord]
    /// One row of facts per VM, for the census.
    func censusFacts() throws -> [CensusFacts]
    /// Disks (of any VM) whose content fingerprint is `fingerprint`.
    func disks(withFingerprint fingerprint: Digest) throws -> [DiskRecord]
    /// The disk registered at exactly `path`, if any.
    func disk(atPath path: String) throws -> DiskRecord?
    /// Every VM exposed to a compromise of `host` during the closed window `[from, to]`
    /// (docs/ledger.md, section Exposure). A backend may answer in one query; the default is
    /// ``referenceExposure(host:from:to:now:)``.
    func exposure(host: HostName, from: Date, to: Date, now: Date) throws -> ExposureReport
}
