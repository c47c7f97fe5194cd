import WardenCore

/// The fast path of fleet rescans: findings without their strings.
///
/// ``Matcher/compactFindings(packages:ecosystem:)`` returns, for one guest, exactly the findings
/// ``Matcher/findings(packages:ecosystem:)`` returns, in the same order, but each one is a
/// package index and an advisory entry, not a ``Finding`` with a dozen copied strings. A rescan
/// hashes these to see whether an inventory's findings changed, and builds ``Finding`` values
/// (``Matcher/finding(_:packages:ecosystem:)``) only for the inventories that did.
extension Matcher {
    /// One finding of ``Matcher/compactFindings(packages:ecosystem:)``: indices and small values only.
    public struct CompactFinding {
        /// Index of the installed package in the list that was matched.
        public let package: Int
        /// Index of the advisory in ``AdvisoryIndex/metas``.
        public let advisory: Int
        /// Index in the guest ecosystem's ``GuestEcosystem/names``.
        public let ecosystem: Int32
        /// Matched under the source name (else under the binary name).
        public let bySource: Bool
        public let severity: Severity
        public let status: FindingStatus
        public let fixedVersion: String?
    }

    /// The findings of ``findings(packages:ecosystem:)``, same set and same order, in compact form.
    public func compactFindings(packages: [MatchPackage], ecosystem: GuestEcosystem) -> [CompactFinding] {
        var out: [CompactFinding] = []
        // Findings are unique per (package name, installed version, advisory), as in `findings`:
        // `firstOfMeta[m]` is the first finding of advisory m in `out` (+ 1; 0 = none yet),
        // `nextOfMeta` chains the later ones. Only the touched slots are reset afterwards.
        var firstOfMeta = self.firstOfMeta
        self.firstOfMeta = [] // (taken, so writes below do not copy it)
        if firstOfMeta.count != index.metas.count { firstOfMeta = [Int32](repeating: 0, count: index.metas.count) }
        defer { self.firstOfMeta = firstOfMeta }
        var nextOfMeta: [Int32] = []
        index.metas.withUnsafeBufferPointer { metas in
            packages.withUnsafeBufferPointer { pk in
                for (ei, eco) in ecosystem.names.enumerated() {
                    guard let table = index.byEcosystem[eco] else { continue }
                    for pi in pk.indices {
                        let version = ecosystem.bySourceOnly ? pk[pi].sourceVersion : pk[pi].version
                        let alsoSource = !ecosystem.bySourceOnly && pk[pi].sourceName != pk[pi].name && !pk[pi].sourceName.isEmpty
                        for k in 0..<(alsoSource ? 2 : 1) {
                            let bySource = ecosystem.bySourceOnly || k == 1
                            guard let entries = bySource ? table[pk[pi].sourceName] : table[pk[pi].name] else { continue }
                            let hits = hitsFor(version: version, entries: entries, scheme: ecosystem.scheme)
                            for h in hits {
                                let meta = h.meta
                                var seen = false
                                var last = -1
                                var j = Int(firstOfMeta[meta]) - 1
                                while j >= 0 {
                                    let q = out[j].package
                                    if q == pi || (pk[q].name == pk[pi].name && pk[q].version == pk[pi].version) { seen = true; break }
                                    last = j
                                    j = Int(nextOfMeta[j]) - 1
                                }
                                if seen { continue }
                                let severity = metas[meta].cvssScore != nil ? metas[meta].severity
                                    : (h.entrySeverity.flatMap { $0 == .unknown ? nil : $0 } ?? metas[meta].severity)
                                if last >= 0 { nextOfMeta[last] = Int32(out.count + 1) } else { firstOfMeta[meta] = Int32(out.count + 1) }
                                nextOfMeta.append(0)
                                out.append(CompactFinding(package: pi, advisory: meta, ecosystem: Int32(ei), bySource: bySource,
                                                          severity: severity, status: h.status, fixedVersion: h.fixed))
                            }
                        }
                    }
                }
                for f in out { firstOfMeta[f.advisory] = 0 }
                // Finding.displayOrder, on the same fields (equal indices mean equal strings).
                out.sort { a, b in
                    if a.severity != b.severity { return a.severity > b.severity }
                    if a.package != b.package, pk[a.package].name != pk[b.package].name { return pk[a.package].name < pk[b.package].name }
                    if a.advisory != b.advisory {
                        if metas[a.advisory].id != metas[b.advisory].id { return metas[a.advisory].id < metas[b.advisory].id }
                        if metas[a.advisory].source != metas[b.advisory].source { return metas[a.advisory].source < metas[b.advisory].source }
                    }
                    return a.package != b.package && pk[a.package].version < pk[b.package].version
                }
            }
        }
        return out
    }

    /// Whether ``deduplicated(_:)`` could fold any of these findings: some advisory's id is also
    /// another advisory's id or an alias. Then the compact findings are not the plain ones, and
    /// the caller must use ``findings(packages:ecosystem:)`` for this guest.
    public func mayDeduplicate(_ compact: [CompactFinding]) -> Bool {
        guard compact.count > 1 else { return false }
        if sharedIdentifiers.count != index.metas.count {
            var idCount: [String: Int] = [:]
            var aliases = Set<String>()
            for m in index.metas { idCount[m.id, default: 0] += 1; aliases.formUnion(m.aliases) }
            sharedIdentifiers = index.metas.map { idCount[$0.id, default: 0] > 1 || aliases.contains($0.id) }
        }
        return compact.contains { sharedIdentifiers[$0.advisory] }
    }

    /// The ``Finding`` a compact finding stands for (`packages` and `ecosystem` as matched).
    public func finding(_ c: CompactFinding, packages: [MatchPackage], ecosystem: GuestEcosystem) -> Finding {
        let p = packages[c.package]
        let m = index.metas[c.advisory]
        return Finding(package: p.name, installedVersion: p.version, sourcePackage: p.sourceName,
                       matchedName: c.bySource ? p.sourceName : p.name, ecosystem: ecosystem.names[Int(c.ecosystem)],
                       advisory: m.id, source: m.source, aliases: m.aliases, severity: c.severity,
                       cvssScore: m.cvssScore, fixedVersion: c.fixedVersion, status: c.status, summary: m.summary)
    }
}
