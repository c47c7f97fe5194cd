import Foundation
import WardenCore
import Inspection

/// The part of an installed package the matcher needs (an inventory is stored as a list of these).
public struct MatchPackage: Sendable, Hashable, Codable {
    public var name: String
    public var version: String
    public var sourceName: String
    public var sourceVersion: String
    public init(name: String, version: String, sourceName: String, sourceVersion: String) {
        self.name = name; self.version = version; self.sourceName = sourceName; self.sourceVersion = sourceVersion
    }
    public init(_ p: InstalledPackage) {
        self.init(name: p.name, version: p.version, sourceName: p.sourceName, sourceVersion: p.sourceVersion)
    }
}

/// A version parsed once in its ecosystem's scheme.
enum ParsedVersion {
    case deb(DebianVersion), rpm(RPMVersion), apk(APKVersion)

    init?(_ text: String, scheme: VersionScheme) {
        switch scheme {
        case .deb: guard let v = try? DebianVersion(text) else { return nil }; self = .deb(v)
        case .rpm: guard let v = try? RPMVersion(text) else { return nil }; self = .rpm(v)
        case .apk: self = .apk(APKVersion(text))
        }
    }

    func compare(_ o: ParsedVersion) -> VersionOrder {
        switch (self, o) {
        case (.deb(let a), .deb(let b)): return a.compare(to: b)
        case (.rpm(let a), .rpm(let b)): return a.compare(to: b)
        case (.apk(let a), .apk(let b)): return a.compare(to: b)
        default: return .equal
        }
    }
}

/// Every non-withdrawn advisory's affected entries, keyed by ecosystem and package name.
///
/// Range text stays unparsed until a package of that name is matched; each entry's versions
/// are then parsed once (``AdvisoryIndex/Entry`` caches them).
public final class AdvisoryIndex: @unchecked Sendable {
    /// What a finding needs from the advisory record.
    public struct Meta: Sendable {
        public var id: String
        public var source: String
        public var aliases: [String]
        public var severity: Severity
        public var cvssScore: Double?
        public var summary: String?
        public init(id: String, source: String, aliases: [String], severity: Severity, cvssScore: Double?, summary: String?) {
            self.id = id; self.source = source; self.aliases = aliases; self.severity = severity
            self.cvssScore = cvssScore; self.summary = summary
        }
    }

    /// One affected entry; its ranges are parsed on first use.
    public final class Entry {
        let meta: Int
        let status: AffectedStatus
        let severity: Severity?
        let rangesText: String
        let versionsText: String
        var parsed: Parsed?

        struct Parsed {
            /// Events sorted by version; `nil` version = introduced "0".
            var ranges: [[(kind: UInt8, text: String, version: ParsedVersion?)]]
            var versions: [ParsedVersion]
            var versionTexts: Set<String>
            /// The highest fixed version (for the "fixed" status).
            var maxFixed: (String, ParsedVersion)?
        }

        init(meta: Int, status: AffectedStatus, severity: Severity?, rangesText: String, versionsText: String) {
            self.meta = meta; self.status = status; self.severity = severity
            self.rangesText = rangesText; self.versionsText = versionsText
        }
    }

    /// The entries of one package name in one ecosystem (a class, so matchers can memoise per list).
    final class Entries {
        var list: [Entry] = []
    }

    public private(set) var metas: [Meta] = []
    var byEcosystem: [String: [String: Entries]] = [:]
    public private(set) var entryCount = 0

    public init() {}

    /// Builds an index from records (withdrawn ones are left out).
    public convenience init(records: [AdvisoryRecord]) {
        self.init()
        for r in records { add(r) }
    }

    public func add(_ r: AdvisoryRecord) {
        guard r.withdrawn == nil else { return }
        let m = addMeta(Meta(id: r.id, source: r.source, aliases: r.aliases, severity: r.severity, cvssScore: r.cvssScore, summary: r.summary))
        for a in r.affected {
            addEntry(meta: m, ecosystem: a.ecosystem, package: a.package, status: a.status, severity: a.severity,
                     rangesText: RangeCoding.encode(a.ranges), versionsText: RangeCoding.encodeVersions(a.versions))
        }
    }

    /// Adds an advisory's metadata; returns its number for ``addEntry``.
    public func addMeta(_ m: Meta) -> Int {
        metas.append(m)
        return metas.count - 1
    }

    /// Adds one affected entry in its stored (encoded) form; see ``RangeCoding``.
    public func addEntry(meta: Int, ecosystem: String, package: String, status: AffectedStatus, severity: Severity?,
                         rangesText: String, versionsText: String) {
        let eco = GuestEcosystem.normalise(ecosystem)
        let entry = Entry(meta: meta, status: status, severity: severity, rangesText: rangesText, versionsText: versionsText)
        if let list = byEcosystem[eco]?[package] {
            list.list.append(entry)
        } else {
            // (A class value through `[key, default:]` would only be read, never stored.)
            let list = Entries()
            list.list.append(entry)
            byEcosystem[eco, default: [:]][package] = list
        }
        entryCount += 1
    }

    /// The ecosystems present.
    public var ecosystems: [String] { byEcosystem.keys.sorted() }
}

/// The compact text form of ranges and versions used in the index and the database:
/// events `i:V`, `f:V`, `l:V`, `m:V` (limit) separated by U+001F, ranges by U+001E;
/// explicit versions separated by U+001F. Versions never hold control characters (checked on import).
public enum RangeCoding {
    public static func encode(_ ranges: [[RangeEvent]]) -> String {
        ranges.map { r in
            r.map { e -> String in
                switch e {
                case .introduced(let v): return "i:" + v
                case .fixed(let v): return "f:" + v
                case .lastAffected(let v): return "l:" + v
                case .limit(let v): return "m:" + v
                }
            }.joined(separator: "\u{1F}")
        }.joined(separator: "\u{1E}")
    }

    public static func decode(_ text: String) -> [[RangeEvent]] {
        guard !text.isEmpty else { return [] }
        return text.split(separator: "\u{1E}").map { r in
            r.split(separator: "\u{1F}").compactMap { e -> RangeEvent? in
                guard e.count >= 2 else { return nil }
                let v = String(e.dropFirst(2))
                switch e.first {
                case "i": return .introduced(v)
                case "f": return .fixed(v)
                case "l": return .lastAffected(v)
                case "m": return .limit(v)
                default: return nil
                }
            }
        }
    }

    public static func encodeVersions(_ v: [String]) -> String { v.joined(separator: "\u{1F}") }
    public static func decodeVersions(_ t: String) -> [String] { t.isEmpty ? [] : t.split(separator: "\u{1F}").map(String.init) }

    /// Whether `s` may be stored (no control characters).
    public static func isClean(_ s: String) -> Bool { !s.utf8.contains { $0 < 0x20 || $0 == 0x7F } }
}

/// Matches installed packages against an ``AdvisoryIndex``. Pure: no I/O.
///
/// Rules: only advisories of the guest's own ecosystem(s) apply; Debian and Ubuntu match by
/// source package and source version, rpm and apk by binary name and by source name with the
/// installed version; explicit `versions` match by equality in the scheme; ranges follow the
/// OSV evaluation (events sorted by version; introduced turns affected on, fixed and limit
/// turn it off at that version, last_affected after it). Results for one
/// (ecosystem, name, version) are computed once and reused across inventories.
public final class Matcher {
    public let index: AdvisoryIndex
    /// Whether to report `fixed` and `not-affected` findings too (scan `--all`); rescans only need `vulnerable`.
    public let includeResolved: Bool

    struct Hit {
        var entry: AdvisoryIndex.Entry; var status: FindingStatus; var fixed: String?
        /// Copied from the entry, so the compact path reads no class instance.
        var meta: Int; var entrySeverity: Severity?
        init(entry: AdvisoryIndex.Entry, status: FindingStatus, fixed: String?) {
            self.entry = entry; self.status = status; self.fixed = fixed
            meta = entry.meta; entrySeverity = entry.severity
        }
    }
    /// Hits per entry list (one package name in one ecosystem) and installed version.
    private var memo: [ObjectIdentifier: [String: [Hit]]] = [:]
    /// Scratch space of ``compactFindings(packages:ecosystem:)``, one slot per advisory, all zero between calls.
    var firstOfMeta: [Int32] = []
    /// Per advisory: its id is another advisory's id or alias (see ``mayDeduplicate(_:)``).
    var sharedIdentifiers: [Bool] = []
    /// Advisory versions the scheme could not parse (such ranges are skipped).
    public private(set) var unparseableVersions = 0

    public init(index: AdvisoryIndex, includeResolved: Bool = false) {
        self.index = index
        self.includeResolved = includeResolved
    }

    /// Findings for `packages` of a guest in `ecosystem`, sorted by ``Finding/displayOrder``.
    public func findings(packages: [MatchPackage], ecosystem: GuestEcosystem) -> [Finding] {
        var out: [Finding] = []
        struct Seen: Hashable { var package: String; var version: String; var meta: Int }
        var seen = Set<Seen>()
        for eco in ecosystem.names {
            guard let table = index.byEcosystem[eco] else { continue }
            for p in packages {
                let version = ecosystem.bySourceOnly ? p.sourceVersion : p.version
                var names = ecosystem.bySourceOnly ? [p.sourceName] : [p.name]
                if !ecosystem.bySourceOnly, p.sourceName != p.name, !p.sourceName.isEmpty { names.append(p.sourceName) }
                for name in names {
                    guard let entries = table[name] else { continue }
                    let hits = hitsFor(version: version, entries: entries, scheme: ecosystem.scheme)
                    for h in hits {
                        guard seen.insert(Seen(package: p.name, version: p.version, meta: h.entry.meta)).inserted else { continue }
                        let m = index.metas[h.entry.meta]
                        let f = Finding(package: p.name, installedVersion: p.version, sourcePackage: p.sourceName, matchedName: name,
                                        ecosystem: eco, advisory: m.id, source: m.source, aliases: m.aliases,
                                        severity: m.cvssScore != nil ? m.severity : (h.entry.severity.flatMap { $0 == .unknown ? nil : $0 } ?? m.severity),
                                        cvssScore: m.cvssScore, fixedVersion: h.fixed, status: h.status, summary: m.summary)
                        out.append(f)
                    }
                }
            }
        }
        out.sort(by: Finding.displayOrder)
        // The same vulnerability through two feeds (a DSA and the tracker's CVE) is one finding;
        // a kept finding may take a higher severity from one it absorbed, so sort again.
        var kept = Self.deduplicated(out)
        if kept.count != out.count { kept.sort(by: Finding.displayOrder) }
        return kept
    }

    /// Findings of a stored inventory's packages.
    public func findings(inventory: Inventory) -> [Finding]? {
        guard let eco = Self.ecosystem(of: inventory) else { return nil }
        return findings(packages: Self.packages(of: inventory), ecosystem: eco)
    }

    /// The guest's ecosystem from its os-release, or nil when no feed covers it.
    public static func ecosystem(of inv: Inventory) -> GuestEcosystem? {
        guard let id = inv.os.id.value else { return nil }
        return GuestEcosystem.from(osID: id, versionID: inv.os.versionId.value)
    }

    /// The installed packages of an inventory, in matcher form.
    public static func packages(of inv: Inventory) -> [MatchPackage] {
        (inv.packages.value ?? []).flatMap { $0.packages.map(MatchPackage.init) }
    }

    /// Findings in `new` that are not in `old` (by ``Finding/key``), and findings of `old` gone from `new`.
    public static func diff(old: [Finding], new: [Finding]) -> (added: [Finding], removed: [Finding]) {
        let oldKeys = Set(old.map(\.key)), newKeys = Set(new.map(\.key))
        return (new.filter { !oldKeys.contains($0.key) }, old.filter { !newKeys.contains($0.key) })
    }

    func hitsFor(version: String, entries list: AdvisoryIndex.Entries, scheme: VersionScheme) -> [Hit] {
        let id = ObjectIdentifier(list)
        if let h = memo[id]?[version] { return h }
        let entries = list.list
        var hits: [Hit] = []
        let installed = ParsedVersion(version, scheme: scheme)
        for e in entries {
            if e.status == .notAffected {
                if includeResolved { hits.append(Hit(entry: e, status: .notAffected, fixed: nil)) }
                continue
            }
            guard let installed else { continue }
            let p = parsed(e, scheme: scheme)
            if p.versionTexts.contains(version) || p.versions.contains(where: { installed.compare($0) == .equal }) {
                hits.append(Hit(entry: e, status: .vulnerable, fixed: p.maxFixed?.0))
                continue
            }
            var matched: Hit?
            for r in p.ranges {
                var affected = false
                var fixedAbove: String?
                for ev in r {
                    switch ev.kind {
                    case 0: // introduced
                        if ev.version == nil || installed.compare(ev.version!) != .less { affected = true; fixedAbove = nil }
                    case 1: // fixed
                        if let v = ev.version {
                            if installed.compare(v) != .less { affected = false } else if affected && fixedAbove == nil { fixedAbove = ev.text }
                        }
                    case 2: // last_affected
                        if let v = ev.version, installed.compare(v) == .greater { affected = false }
                    default: // limit
                        if let v = ev.version, installed.compare(v) != .less { affected = false }
                    }
                }
                if affected { matched = Hit(entry: e, status: .vulnerable, fixed: fixedAbove); break }
            }
            if let matched {
                hits.append(matched)
            } else if includeResolved, let (text, v) = p.maxFixed, installed.compare(v) != .less {
                hits.append(Hit(entry: e, status: .fixed, fixed: text))
            }
        }
        memo[id, default: [:]][version] = hits
        return hits
    }

    private func parsed(_ e: AdvisoryIndex.Entry, scheme: VersionScheme) -> AdvisoryIndex.Entry.Parsed {
        if let p = e.parsed { return p }
        var ranges: [[(kind: UInt8, text: String, version: ParsedVersion?)]] = []
        var maxFixed: (String, ParsedVersion)?
        for r in RangeCoding.decode(e.rangesText) {
            var events: [(kind: UInt8, text: String, version: ParsedVersion?)] = []
            var ok = true
            for ev in r {
                let kind: UInt8
                switch ev { case .introduced: kind = 0; case .fixed: kind = 1; case .lastAffected: kind = 2; case .limit: kind = 3 }
                if kind == 0 && ev.version == "0" { events.append((0, "0", nil)); continue }
                guard let v = ParsedVersion(ev.version, scheme: scheme) else { ok = false; unparseableVersions += 1; break }
                events.append((kind, ev.version, v))
                if kind == 1, maxFixed == nil || v.compare(maxFixed!.1) == .greater { maxFixed = (ev.version, v) }
            }
            guard ok else { continue }
            // Sort by version; "introduced 0" first; at equal versions the order given is kept.
            let sorted = events.enumerated().sorted { a, b in
                switch (a.element.version, b.element.version) {
                case (nil, nil): return a.offset < b.offset
                case (nil, _): return true
                case (_, nil): return false
                case (let x?, let y?):
                    let o = x.compare(y)
                    return o == .equal ? a.offset < b.offset : o == .less
                }
            }.map(\.element)
            ranges.append(sorted)
        }
        let texts = RangeCoding.decodeVersions(e.versionsText)
        let p = AdvisoryIndex.Entry.Parsed(ranges: ranges, versions: texts.compactMap { ParsedVersion($0, scheme: scheme) },
                                           versionTexts: Set(texts), maxFixed: maxFixed)
        e.parsed = p
        return p
    }
}
