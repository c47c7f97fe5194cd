import Foundation
import GRDB
import Crypto

import WardenCore
import Advisories
import Storage

/// Counts of one import.
public struct ImportCounts: Codable, Sendable, Equatable {
    public var seen = 0
    public var added = 0
    /// Replaced by a different record (newer `modified`, or changed content without `modified`).
    public var replaced = 0
    /// Identical to the stored record (re-import).
    public var unchanged = 0
    /// Older than the stored record (`modified` earlier): kept the stored one.
    public var older = 0
    public init() {}
    public static func + (a: ImportCounts, b: ImportCounts) -> ImportCounts {
        var c = a
        c.seen += b.seen; c.added += b.added; c.replaced += b.replaced; c.unchanged += b.unchanged; c.older += b.older
        return c
    }
}

/// One advisory source as `warden advisories status` shows it.
public struct AdvisorySourceStatus: Codable, Sendable {
    public var name: String
    public var format: String
    public var location: String
    public var importedAt: Date
    public var records: Int
    public var withdrawn: Int
    public var lastImport: ImportCounts
    public init(name: String, format: String, location: String, importedAt: Date, records: Int, withdrawn: Int, lastImport: ImportCounts) {
        self.name = name; self.format = format; self.location = location; self.importedAt = importedAt
        self.records = records; self.withdrawn = withdrawn; self.lastImport = lastImport
    }
}

/// A stored inventory: what the matcher needs of a guest, keyed by image content identity.
public struct StoredInventory: Sendable {
    public var key: WardenCore.Digest
    public var osID: String?
    public var versionID: String?
    public var packages: [MatchPackage]
    public var inspectedAt: Date
    public init(key: WardenCore.Digest, osID: String?, versionID: String?, packages: [MatchPackage], inspectedAt: Date) {
        self.key = key; self.osID = osID; self.versionID = versionID; self.packages = packages; self.inspectedAt = inspectedAt
    }
    public var ecosystem: GuestEcosystem? {
        osID.flatMap { GuestEcosystem.from(osID: $0, versionID: versionID) }
    }
}

/// The last assessment of an inventory.
public struct Assessment: Sendable {
    public var inventory: WardenCore.Digest
    public var assessedAt: Date
    /// Vulnerable findings only.
    public var findings: [Finding]
    public init(inventory: WardenCore.Digest, assessedAt: Date, findings: [Finding]) {
        self.inventory = inventory; self.assessedAt = assessedAt; self.findings = findings
    }
}

/// An advisory stored after a given time (for the policy engine's "new advisories since").
public struct ImportedAdvisory: Codable, Sendable, Equatable {
    public var source: String
    public var id: String
    public var severity: Severity
    public var importedAt: Date
    public init(source: String, id: String, severity: Severity, importedAt: Date) {
        self.source = source; self.id = id; self.severity = severity; self.importedAt = importedAt
    }
}

/// A position in a store's advisories (import time, then row key): opaque to clients, which
/// hand back the text the server gave them.
public struct AdvisoryCursor: Sendable, Equatable {
    public var importedAt: Double
    public var pk: Int64
    public init(importedAt: Double, pk: Int64) { self.importedAt = importedAt; self.pk = pk }
    /// `<seconds>:<row>`.
    public var text: String { "\(importedAt.bitPattern):\(pk)" }
    public init?(text: String) {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let bits = UInt64(parts[0]), let pk = Int64(parts[1]), pk >= 0 else { return nil }
        let t = Double(bitPattern: bits)
        guard t.isFinite else { return nil }
        self.importedAt = t; self.pk = pk
    }
}

/// One inventory to store with ``AdvisoryStore/storeInventories(_:at:)``.
public struct NewInventory: Sendable {
    public var key: WardenCore.Digest
    public var image: String
    public var osID: String?
    public var versionID: String?
    public var packages: [MatchPackage]
    public init(key: WardenCore.Digest, image: String, osID: String?, versionID: String?, packages: [MatchPackage]) {
        self.key = key; self.image = image; self.osID = osID; self.versionID = versionID; self.packages = packages
    }
}

/// One distinct installed package of one OS release, as the fleet's inventories hold it: the
/// unit a rescan matches (once for the whole fleet) and stores findings for. An inventory's
/// findings are the findings of its package versions.
public struct PackageVersion: Sendable {
    public var id: Int64
    /// The inventory's os-release, ``PackageVersion/release(osID:versionID:)``.
    public var release: String
    public var package: MatchPackage
    /// The hash of its stored findings; nil when it was never assessed.
    public var findingsHash: String?
    public var vulnerable: Int
    public init(id: Int64, release: String, package: MatchPackage, findingsHash: String?, vulnerable: Int) {
        self.id = id; self.release = release; self.package = package; self.findingsHash = findingsHash; self.vulnerable = vulnerable
    }

    /// The release key of an inventory's os-release (ID, VERSION_ID).
    public static func release(osID: String?, versionID: String?) -> String { "\(osID ?? "")\u{1F}\(versionID ?? "")" }

    /// The advisory ecosystem of a release key; nil when no feed covers it.
    public static func ecosystem(ofRelease release: String) -> GuestEcosystem? {
        let parts = release.split(separator: "\u{1F}", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty else { return nil }
        return GuestEcosystem.from(osID: String(parts[0]), versionID: parts[1].isEmpty ? nil : String(parts[1]))
    }
}

/// The findings of one package version to store (``AdvisoryCoding/encodeFindings(_:)``).
public struct PackageVersionWrite: Sendable {
    public var id: Int64
    public var findingsHash: String
    public var vulnerable: Int
    public var findings: Data
    public init(id: Int64, findingsHash: String, vulnerable: Int, findings: Data) {
        self.id = id; self.findingsHash = findingsHash; self.vulnerable = vulnerable; self.findings = findings
    }
}

/// A package version's findings hash as a computation read it (nil: never assessed). A save
/// computed from it stands only while the version still has that hash: a rescan's relative
/// counts, or a scan's total, would otherwise count a change twice when another rescan or scan
/// stored it in between (``AdvisoryStore/saveRescan(packageVersions:inventories:through:redateAll:basis:at:)``).
public struct PackageVersionBasis: Sendable, Hashable {
    public var id: Int64
    public var findingsHash: String?
    public init(id: Int64, findingsHash: String?) { self.id = id; self.findingsHash = findingsHash }

    /// What a save throws when a version no longer has its basis hash.
    public static let changed = WardenError(.conflict, "stored assessments changed while this one was computed")

    /// Throws ``changed`` unless every version of `basis` is among `stored` (id, hash as stored
    /// now) with the hash it was read with.
    public static func verify(_ basis: [PackageVersionBasis], stored: [(id: Int64, hash: String?)]) throws {
        var expected = Dictionary(basis.map { ($0.id, $0.findingsHash) }, uniquingKeysWith: { a, _ in a })
        for (id, hash) in stored {
            if let want = expected.removeValue(forKey: id), want != hash { throw changed }
        }
        if !expected.isEmpty { throw changed }
    }

    /// Runs `body` again (at most `attempts` times) while it throws ``changed``: each run reads
    /// what is stored then, so the last one saves a consistent answer.
    public static func retrying<T>(attempts: Int = 8, _ body: () throws -> T) throws -> T {
        var left = attempts
        while true {
            do { return try body() } catch let e as WardenError where e == changed && left > 1 { left -= 1 }
        }
    }
}

/// An inventory's assessment to store, as of `assessedAt`: its vulnerable count, or (with
/// `relative`) the change to the stored count.
public struct InventoryAssessmentWrite: Sendable {
    public var inventory: String
    public var vulnerable: Int
    public var relative: Bool
    public var assessedAt: Date
    public init(inventory: String, vulnerable: Int, relative: Bool = false, assessedAt: Date) {
        self.inventory = inventory; self.vulnerable = vulnerable; self.relative = relative; self.assessedAt = assessedAt
    }
}

/// Advisory changes not yet rescanned: the (ecosystem, package) keys whose entries imports
/// since the last rescan added, replaced or withdrew, up to change `through`.
public struct PendingAdvisoryChanges: Sendable {
    public var through: Int64
    public var keys: [String: Set<String>]
    /// When the oldest of them was stored.
    public var since: Date?
    public init(through: Int64, keys: [String: Set<String>], since: Date?) { self.through = through; self.keys = keys; self.since = since }
    public var isEmpty: Bool { keys.isEmpty }
}

/// Advisories, inventories and assessments: the repository every backend implements (SQLite
/// beside a host's ledger, PostgreSQL for the fleet), with one test suite over both.
///
/// Import is idempotent: a record identical to the stored one (same source, id and content)
/// changes nothing; a record with a newer `modified` replaces the older one; an older one is
/// ignored. Every write is one transaction per batch; SQL uses bound parameters only. What is
/// built on these (matching a VM's disks, a fleet rescan) is written once, in extensions.
public protocol AdvisoryStore: AdvisoryFacts {
    // Import and status
    func importRecords(_ records: [AdvisoryRecord], at now: Date, file: String) throws -> ImportCounts
    func recordSource(name: String, format: AdvisoryFormat, location: String, counts: ImportCounts, at now: Date) throws
    func sources() throws -> [AdvisorySourceStatus]
    /// Distinct advisories per ecosystem.
    func ecosystemCounts() throws -> [(ecosystem: String, advisories: Int)]
    func advisoryCount() throws -> Int
    /// Advisories stored (added or replaced) after `time`, oldest first.
    func advisoriesImported(after time: Date) throws -> [ImportedAdvisory]
    /// When an advisory was last stored (added or replaced); nil when there are none.
    func lastAdvisoryImport() throws -> Date?
    /// Whether any advisory entry is stored for one of these ecosystems (without one, "no
    /// findings" would mean "no data", so callers that fail closed ask this first).
    func hasAdvisories(ecosystems: [String]) throws -> Bool

    // The matching index
    /// Every non-withdrawn advisory's entries in `ecosystems` (all when nil). Red Hat product
    /// ecosystems are loaded when `Red Hat:N` is asked.
    func loadIndex(ecosystems: Set<String>?) throws -> AdvisoryIndex
    /// The same for these package names only (what matching one guest needs).
    func loadIndex(ecosystems: Set<String>, packages: Set<String>) throws -> AdvisoryIndex

    // Inventories
    /// Stores (or replaces) inventories and records the image each was seen in, in one transaction.
    func storeInventories(_ items: [NewInventory], at now: Date) throws
    func inventory(_ key: WardenCore.Digest) throws -> StoredInventory?
    /// Every inventory, by key.
    func inventories() throws -> [StoredInventory]
    func inventoryCount() throws -> Int
    /// Image paths last seen with each inventory, by inventory key.
    func imagesByInventory() throws -> [String: [String]]
    /// The inventory key of the last scan of `path`, else `fingerprint` when an inventory of
    /// that content is stored; nil when neither.
    func inventoryKey(path: String, fingerprint: WardenCore.Digest?) throws -> String?

    // Package versions and assessments (a rescan's unit is the package version)
    /// When inventory `key` was last assessed (its stored findings are those of that time).
    func lastAssessmentTime(of key: WardenCore.Digest) throws -> Date?
    /// Inventories stored before package versions were kept get theirs; returns how many.
    func indexMissingPackageSets() throws -> Int
    /// The distinct release keys of stored package versions.
    func packageVersionReleases() throws -> [String]
    /// Package versions of `release` whose name or source name is one of `names`.
    func packageVersions(release: String, names: Set<String>) throws -> [PackageVersion]
    /// Package versions never assessed (every one unless `unassessedOnly`).
    func packageVersions(unassessedOnly: Bool) throws -> [PackageVersion]
    /// The stored findings of these package versions, with their hash (assessed ones only).
    func packageVersionFindings(_ ids: [Int64]) throws -> [Int64: (hash: String, findings: Data)]
    /// These package versions (those that exist).
    func packageVersions(ids: [Int64]) throws -> [PackageVersion]
    /// The inventories holding each of these package versions.
    func inventories(holding ids: [Int64]) throws -> [Int64: [String]]
    /// Inventory `key`'s package versions in its package order; nil when none are stored.
    func packageVersionIDs(of key: String) throws -> [Int64]?
    /// Inventories with package versions but no assessment yet, with those versions.
    func unassessedInventories() throws -> [(key: String, release: String, packageVersions: [Int64])]
    /// The stored vulnerable count of each of these inventories (assessed ones only).
    func assessedVulnerable(_ keys: [String]) throws -> [String: Int]
    /// The vulnerable findings of every assessed inventory together.
    func totalVulnerable() throws -> Int
    /// Keys of inventories whose os-release is one of `releases`.
    func inventoryKeys(releases: [String]) throws -> [String]
    /// Advisory changes since the last rescan.
    func pendingAdvisoryChanges() throws -> PendingAdvisoryChanges
    /// In one transaction: stores package-version findings and inventory assessments, marks
    /// advisory changes up to `through` as rescanned (forgetting them), and with `redateAll`
    /// dates every other assessment `now`. Each version in `basis` must still have the hash
    /// given there (the writes were computed from it); otherwise nothing is stored and it throws
    /// ``WardenError/Code/conflict`` (the caller computes again from what is stored now).
    func saveRescan(packageVersions: [PackageVersionWrite], inventories: [InventoryAssessmentWrite], through: Int64?,
                    redateAll: Bool, basis: [PackageVersionBasis], at now: Date) throws
    /// `findings` with the aliases and summaries of their advisories.
    func withDetails(_ findings: [Finding]) throws -> [Finding]

    // Export (agents pull the fleet's advisories)
    /// Records stored after `cursor` in store order (import time, then row), at most `limit`,
    /// rebuilt from the rows (withdrawn ones too, so a withdrawal travels), and the cursor after
    /// the last one (nil when none were returned).
    func advisoryRecords(after cursor: AdvisoryCursor?, limit: Int) throws -> (records: [AdvisoryRecord], next: AdvisoryCursor?)

    // The ledger beside it
    /// For each content key: the ledger VMs with a disk whose fingerprint is that key or whose
    /// path is one of its paths, by VM name (each VM once, with its first such disk).
    func vms(withContents contents: [String: [String]]) throws -> [String: [AffectedVM]]
}

extension AdvisoryStore {
    public func importRecords(_ records: [AdvisoryRecord], file: String) throws -> ImportCounts {
        try importRecords(records, at: Date(), file: file)
    }
    public func recordSource(name: String, format: AdvisoryFormat, location: String, counts: ImportCounts) throws {
        try recordSource(name: name, format: format, location: location, counts: counts, at: Date())
    }
    public func loadIndex() throws -> AdvisoryIndex { try loadIndex(ecosystems: nil) }
    public func storeInventories(_ items: [NewInventory]) throws { try storeInventories(items, at: Date()) }

    /// Stores (or replaces) the inventory `key` and records that `image` had this content.
    public func storeInventory(key: WardenCore.Digest, image: String, osID: String?, versionID: String?,
                               packages: [MatchPackage], at now: Date = Date()) throws {
        try storeInventories([NewInventory(key: key, image: image, osID: osID, versionID: versionID, packages: packages)], at: now)
    }

    /// Ledger VMs with a disk of content `key` or at one of `paths`.
    public func vms(withContent key: WardenCore.Digest, paths: [String]) throws -> [AffectedVM] {
        try vms(withContent: key.description, paths: paths)
    }

    /// Ledger VMs with a disk whose fingerprint is `key` or whose path is one of `paths`.
    public func vms(withContent key: String, paths: [String]) throws -> [AffectedVM] {
        try vms(withContents: [key: paths])[key] ?? []
    }
}
