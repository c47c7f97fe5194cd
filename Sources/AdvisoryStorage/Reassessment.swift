import Foundation
import WardenCore
import Advisories

/// What changed for one inventory in a fleet rescan.
public struct InventoryChange: Codable, Sendable {
    public var inventory: String
    /// Image paths last scanned with this content.
    public var images: [String]
    /// Ledger VMs with a disk of this content (by fingerprint) or at one of ``images``.
    public var vms: [AffectedVM]
    public var ecosystem: String?
    /// True when the inventory had never been assessed (every finding is new).
    public var firstAssessment: Bool
    public var vulnerable: Int
    public var newFindings: [Finding]
    public var goneFindings: [Finding]
}

/// The result of a fleet rescan.
public struct RescanReport: Codable, Sendable {
    public var schema = "warden.rescan/v1"
    public var assessedAt: Date
    public var inventories: Int
    /// Inventories whose OS no advisory feed covers.
    public var unassessable: [String]
    /// Advisory entries the re-matched package versions were matched against.
    public var advisoryEntries: Int
    /// Distinct package versions re-matched (each once for the whole fleet).
    public var packageVersions: Int = 0
    /// Advisory changes (ecosystem, package) since the last rescan that it took in.
    public var advisoryChanges: Int = 0
    public var changed: [InventoryChange]
    public var newFindings: Int
    public var goneFindings: Int
    public var vulnerable: Int
    public var seconds: Double
}

extension AdvisoryStore {
    /// Brings every stored inventory's assessment up to date with the advisories now stored,
    /// and reports, per inventory, the findings that appeared and went away. No image is read.
    ///
    /// The work follows the change, not the fleet: imports log the (ecosystem, package) keys
    /// they touched; a rescan re-matches only the distinct package versions those keys name
    /// (plus ones never assessed), each once for the whole fleet, and reaches the inventories
    /// holding a version whose findings changed through the package-version index. With
    /// nothing imported or stored since the last rescan it reads almost nothing. `full`
    /// re-matches every package version (the answer is the same; for checking that).
    ///
    /// Rescans running at once (several processes, or hosts on one fleet database) each store a
    /// consistent answer: a rescan saves only if the package versions it computed from still
    /// hold what it read, and otherwise computes again from what the other one stored.
    ///
    /// `phase` (when given) is called after each step with its name, for `--timing`.
    public func rescan(at now: Date = Date(), full: Bool = false, phase: ((String) -> Void)? = nil) throws -> RescanReport {
        let start = Date()
        var report = try PackageVersionBasis.retrying { try rescanOnce(at: now, full: full, phase: phase) }
        report.seconds = Date().timeIntervalSince(start)
        return report
    }

    private func rescanOnce(at now: Date, full: Bool, phase: ((String) -> Void)?) throws -> RescanReport {
        _ = try indexMissingPackageSets()
        let pending = try pendingAdvisoryChanges()
        var ecoOf: [String: GuestEcosystem?] = [:]
        func eco(_ release: String) -> GuestEcosystem? {
            if let e = ecoOf[release] { return e }
            let e = PackageVersion.ecosystem(ofRelease: release)
            ecoOf[release] = e
            return e
        }
        let releases = try packageVersionReleases()
        var candidates = try packageVersions(unassessedOnly: !full)
        if !full && !pending.isEmpty {
            var seen = Set(candidates.map(\.id))
            for r in releases {
                guard let e = eco(r) else { continue }
                let names = pending.names(for: e)
                if names.isEmpty { continue }
                for v in try packageVersions(release: r, names: names) where seen.insert(v.id).inserted { candidates.append(v) }
            }
        }
        candidates.removeAll { eco($0.release) == nil }
        phase?("select package versions")

        var ecosystems = Set<String>(), names = Set<String>()
        for v in candidates {
            ecosystems.formUnion(eco(v.release)!.names)
            names.insert(v.package.name); names.insert(v.package.sourceName)
        }
        // A few names: their entries only; most of a feed: all of it in one pass.
        let index = candidates.isEmpty ? AdvisoryIndex()
            : (full || names.count > 2_000 ? try loadIndex(ecosystems: ecosystems) : try loadIndex(ecosystems: ecosystems, packages: names))
        let matcher = Matcher(index: index)
        phase?("load advisory index")

        // Match each candidate once; keep the ones whose findings changed.
        var hasher = FindingsHasher()
        var changed: [(version: PackageVersion, findings: [Finding])] = []
        var writes: [PackageVersionWrite] = []
        for v in candidates {
            let e = eco(v.release)!
            let pk = [v.package]
            let compact = matcher.compactFindings(packages: pk, ecosystem: e)
            let plain = matcher.mayDeduplicate(compact) ? matcher.findings(packages: pk, ecosystem: e) : nil
            let hash = plain.map { AdvisoryCoding.findingsHash($0) } ?? hasher.hash(compact, packages: pk, metas: index.metas, ecosystem: e)
            if hash == v.findingsHash { continue }
            let findings = plain ?? compact.map { matcher.finding($0, packages: pk, ecosystem: e) }
            changed.append((v, findings))
            writes.append(PackageVersionWrite(id: v.id, findingsHash: hash, vulnerable: findings.count, findings: AdvisoryCoding.encodeFindings(findings)))
        }
        phase?("match package versions")

        // Per changed version: what appeared and what went away (details of the gone ones joined once).
        let oldBlobs = try packageVersionFindings(changed.filter { $0.version.findingsHash != nil }.map(\.version.id))
        var diffs: [Int64: (added: [Finding], removed: [Finding], delta: Int)] = [:]
        var allRemoved: [Finding] = []
        var removedRange: [Int64: Range<Int>] = [:]
        for c in changed {
            let old = oldBlobs[c.version.id].map { AdvisoryCoding.decodeFindingsWithoutDetails($0.findings) } ?? []
            let d = Matcher.diff(old: old, new: c.findings)
            removedRange[c.version.id] = allRemoved.count..<(allRemoved.count + d.removed.count)
            allRemoved += d.removed
            diffs[c.version.id] = (d.added, [], c.findings.count - c.version.vulnerable)
        }
        if !allRemoved.isEmpty {
            let detailed = try withDetails(allRemoved)
            for (id, r) in removedRange where !r.isEmpty { diffs[id]?.removed = Array(detailed[r]) }
        }
        let newFindingsOf = Dictionary(uniqueKeysWithValues: changed.map { ($0.version.id, $0.findings) })

        // Inventories never assessed: every finding of theirs is new. Their versions' findings
        // go into one pool sorted once; each inventory's list is its share of the pool by rank.
        let fresh = try unassessedInventories().filter { eco($0.release) != nil }
        let freshKeys = Set(fresh.map(\.key))
        let freshVersions = Set(fresh.flatMap(\.packageVersions)).sorted()
        var stored: [Int64: [Finding]] = [:]
        let storedBlobs = try packageVersionFindings(freshVersions.filter { newFindingsOf[$0] == nil })
        if !storedBlobs.isEmpty {
            var flat: [Finding] = [], ranges: [(Int64, Range<Int>)] = []
            for (id, stored) in storedBlobs {
                let list = AdvisoryCoding.decodeFindingsWithoutDetails(stored.findings)
                ranges.append((id, flat.count..<(flat.count + list.count)))
                flat += list
            }
            let detailed = try withDetails(flat)
            for (id, r) in ranges { stored[id] = Array(detailed[r]) }
        }
        var pool: [Finding] = []
        var rangeOf: [Int64: Range<Int>] = [:]
        for id in freshVersions {
            guard let list = newFindingsOf[id] ?? stored[id], !list.isEmpty else { continue }
            rangeOf[id] = pool.count..<(pool.count + list.count)
            pool += list
        }
        var rank = [Int](repeating: 0, count: pool.count)
        for (r, i) in pool.indices.sorted(by: { Finding.displayOrder(pool[$0], pool[$1]) }).enumerated() { rank[i] = r }
        var inventoryWrites: [InventoryAssessmentWrite] = []
        var firstFindings: [String: [Finding]] = [:]
        for f in fresh {
            var share: [Int] = []
            for id in f.packageVersions { if let r = rangeOf[id] { share.append(contentsOf: r) } }
            share.sort { rank[$0] < rank[$1] }
            firstFindings[f.key] = share.map { pool[$0] }
            inventoryWrites.append(InventoryAssessmentWrite(inventory: f.key, vulnerable: share.count, assessedAt: now))
        }

        // Inventories holding a version whose findings changed.
        var perInventory: [String: (added: [Finding], removed: [Finding], delta: Int)] = [:]
        var releaseOf = Dictionary(fresh.map { ($0.key, $0.release) }, uniquingKeysWith: { a, _ in a })
        let releaseOfVersion = Dictionary(changed.map { ($0.version.id, $0.version.release) }, uniquingKeysWith: { a, _ in a })
        for (id, holders) in try inventories(holding: Array(diffs.keys)) {
            guard let d = diffs[id] else { continue }
            for inv in holders where !freshKeys.contains(inv) {
                if releaseOf[inv] == nil { releaseOf[inv] = releaseOfVersion[id] }
                perInventory[inv, default: ([], [], 0)].added += d.added
                perInventory[inv, default: ([], [], 0)].removed += d.removed
                perInventory[inv, default: ([], [], 0)].delta += d.delta
            }
        }
        for (inv, d) in perInventory where d.delta != 0 {
            inventoryWrites.append(InventoryAssessmentWrite(inventory: inv, vulnerable: d.delta, relative: true, assessedAt: now))
        }
        phase?("compare")

        // Stored in one transaction, if what it was computed from is still what is stored;
        // every other assessment is now as of this rescan.
        let basis = changed.map { PackageVersionBasis(id: $0.version.id, findingsHash: $0.version.findingsHash) }
            + storedBlobs.map { PackageVersionBasis(id: $0.key, findingsHash: $0.value.hash) }
        try saveRescan(packageVersions: writes, inventories: inventoryWrites, through: pending.isEmpty ? nil : pending.through,
                       redateAll: true, basis: basis, at: now)
        phase?("write")

        var report = RescanReport(assessedAt: now, inventories: try inventoryCount(), unassessable: [], advisoryEntries: index.entryCount,
                                  packageVersions: candidates.count, advisoryChanges: pending.keys.values.reduce(0) { $0 + $1.count },
                                  changed: [], newFindings: 0, goneFindings: 0, vulnerable: try totalVulnerable(), seconds: 0)
        report.unassessable = try inventoryKeys(releases: releases.filter { eco($0) == nil })
        let listed = Set(firstFindings.keys).union(perInventory.keys).sorted()
        if !listed.isEmpty {
            let images = try imagesByInventory()
            let counts = try assessedVulnerable(listed)
            let vmsOf = try vms(withContents: Dictionary(uniqueKeysWithValues: listed.map { ($0, images[$0] ?? []) }))
            for key in listed {
                var added: [Finding], removed: [Finding]
                if let first = firstFindings[key] { added = first; removed = [] } else {
                    let d = perInventory[key]!
                    added = d.added.sorted(by: Finding.displayOrder); removed = d.removed.sorted(by: Finding.displayOrder)
                }
                if added.isEmpty && removed.isEmpty { continue }
                report.newFindings += added.count
                report.goneFindings += removed.count
                let paths = images[key] ?? []
                report.changed.append(InventoryChange(inventory: key, images: paths, vms: vmsOf[key] ?? [],
                                                      ecosystem: releaseOf[key].flatMap { eco($0)?.names.first },
                                                      firstAssessment: firstFindings[key] != nil, vulnerable: counts[key] ?? added.count,
                                                      newFindings: added, goneFindings: removed))
            }
        }
        phase?("report")
        return report
    }
}

/// A ledger VM one of whose disks carries an inventory's content.
public struct AffectedVM: Codable, Sendable, Hashable {
    public var id: String
    public var name: String
    public var disk: String
    public init(id: String, name: String, disk: String) { self.id = id; self.name = name; self.disk = disk }

    /// One ledger disk row as the backends read it for ``AdvisoryStore/vms(withContents:)``.
    public struct DiskRow: Sendable {
        public var vm: String, name: String, path: String, index: Int, fingerprint: String?
        public init(vm: String, name: String, path: String, index: Int, fingerprint: String?) {
            self.vm = vm; self.name = name; self.path = path; self.index = index; self.fingerprint = fingerprint
        }
    }

    /// Per content key, the VMs of `rows` with a disk of that fingerprint or at one of its
    /// paths: ordered by VM name (bytewise), id and disk index, each VM once.
    public static func pick(_ rows: [DiskRow], for contents: [String: [String]]) -> [String: [AffectedVM]] {
        let sorted = rows.sorted { a, b in
            if a.name != b.name { return Array(a.name.utf8).lexicographicallyPrecedes(b.name.utf8) }
            if a.vm != b.vm { return a.vm < b.vm }
            return a.index < b.index
        }
        var out: [String: [AffectedVM]] = [:]
        for (key, paths) in contents {
            let wanted = Set(paths)
            var seen = Set<String>()
            let list = sorted.compactMap { r -> AffectedVM? in
                guard r.fingerprint == key || wanted.contains(r.path), seen.insert(r.vm).inserted else { return nil }
                return AffectedVM(id: r.vm, name: r.name, disk: r.path)
            }
            if !list.isEmpty { out[key] = list }
        }
        return out
    }
}

extension AdvisoryStore {
    /// The inventories an advisory import touched: those holding a package version, in an OS
    /// whose ecosystem the records name, whose binary or source name they name (through the
    /// package-version index). Only these can have new findings after the import.
    public func inventoriesTouched(by records: [AdvisoryRecord]) throws -> [String] {
        var keys: [String: Set<String>] = [:]
        for r in records { for a in r.affected { keys[a.ecosystem, default: []].insert(a.package) } }
        if keys.isEmpty { return [] }
        let changes = PendingAdvisoryChanges(through: 0, keys: keys, since: nil)
        _ = try indexMissingPackageSets()
        var ids: [Int64] = []
        for r in try packageVersionReleases() {
            guard let e = PackageVersion.ecosystem(ofRelease: r) else { continue }
            let names = changes.names(for: e)
            if !names.isEmpty { ids += try packageVersions(release: r, names: names).map(\.id) }
        }
        return Set(try inventories(holding: ids).values.joined()).sorted()
    }
}
