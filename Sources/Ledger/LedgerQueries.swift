import Foundation
import WardenCore

// Queries over the ledger: lineage, exposure and census.
//
// A backend provides a few primitives (``LedgerQueries``); the algorithms that turn them
// into answers live here, once, so every backend answers with the same semantics
// (docs/ledger.md, sections "Lineage", "Exposure" and "Census").

/// The primitives the queries need beyond ``LedgerStore``.
public protocol LedgerQueries: LedgerStore {
    /// Residency intervals on `host` that overlap the closed window `[from, to]`:
    /// `interval.from <= to && (interval.to ?? now) > from`, empty intervals excluded.
    func residencies(on host: HostName, overlapping from: Date, _ to: Date, now: Date) throws -> [ResidencyRecord]
    /// The VMs whose `parent` is one of `parents` (labels need not be loaded).
    func children(of parents: [VMID]) throws -> [VMRecord]
    /// The VMs with these ids, in any order; unknown ids are left out (labels need not be loaded).
    func vms(withIDs ids: [VMID]) throws -> [VMRecord]
    /// The ancestors of `id` by `parent`, nearest first, at most `limit` (labels need not be loaded).
    func ancestors(of id: VMID, limit: Int) throws -> [VMRecord]
    /// For each VM, the events that set a new generation (its creation included), in log order;
    /// `snapshot` holds the payload's `snapshot` when it is a string.
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

// MARK: - Exposure

/// A residency interval as reported by exposure (`to` nil while open).
public struct ExposureInterval: Codable, Sendable, Equatable {
    public var kind: ResidencyRecord.Kind
    public var from: Date
    public var to: Date?
}

/// One VM that may have been tampered with by whoever controlled the host in the window.
public struct ExposedVM: Codable, Sendable, Equatable {
    public var vm: VMID
    public var name: String
    public var owner: String
    public var state: VMState
    /// When this VM's exposure began: the earliest of its own residency in the window
    /// (clipped to the window's start) and the creation of the VM from an exposed parent.
    public var exposedSince: Date
    /// `direct` when the VM itself was on the host in the window, `inherited` when only
    /// an exposed ancestor was, `direct+inherited` when both.
    public var how: String
    /// Its own intervals on the host that overlap the window (empty when inherited only).
    public var residencies: [ExposureInterval]
    /// The exposed parent it was cloned or copied from after that parent's exposure began
    /// (nil when that is not what made it exposed earliest).
    public var inheritedFrom: VMID?
    /// The directly exposed VM this exposure comes from: itself when direct, else the end of the
    /// `inherited_from` chain.
    public var source: VMID
    /// Clone/copy steps from `source` (0 when direct).
    public var steps: Int
}

/// `warden exposure --host H --from T1 --to T2`.
public struct ExposureReport: Codable, Sendable, Equatable {
    public var schema = "warden.exposure/v1"
    public var host: HostName
    public var from: Date
    public var to: Date
    /// The time open intervals were taken to end at.
    public var now: Date
    /// Exposed VMs, ordered by `exposed_since`, then id.
    public var vms: [ExposedVM]
}

extension LedgerQueries {
    public func exposure(host: HostName, from: Date, to: Date, now: Date = Date()) throws -> ExposureReport {
        try referenceExposure(host: host, from: from, to: to, now: now)
    }

    /// The exposure query computed from the primitives alone: the reference every backend's
    /// ``exposure(host:from:to:now:)`` must agree with (the tests compare them).
    ///
    /// Every VM with a ran-on or stored-on interval on `host` overlapping the closed window
    /// `[from, to]`, plus, transitively, every VM cloned or copied from an exposed VM at or
    /// after the moment that VM's exposure began.
    public func referenceExposure(host: HostName, from: Date, to: Date, now: Date = Date()) throws -> ExposureReport {
        guard from <= to else {
            throw WardenError(.invalidArgument, "the window's start is after its end")
        }
        let direct = try residencies(on: host, overlapping: from, to, now: now)
        var since: [VMID: Date] = [:]
        var intervals: [VMID: [ExposureInterval]] = [:]
        for r in direct {
            let end = r.to ?? now
            guard r.from <= to, end > from, end > r.from else { continue }   // the backend's contract, re-checked
            let start = max(r.from, from)
            since[r.vm] = min(since[r.vm] ?? start, start)
            intervals[r.vm, default: []].append(ExposureInterval(kind: r.kind, from: r.from, to: r.to))
        }
        var inheritedFrom: [VMID: VMID] = [:]
        var records: [VMID: VMRecord] = [:]
        // Propagate down the lineage. A VM's start only ever decreases, so re-visit a VM
        // whenever it gets earlier; lineage is a forest (one parent each), so this ends.
        var frontier = Array(since.keys)
        var rounds = 0
        while !frontier.isEmpty {
            rounds += 1
            if rounds > 100_000 { throw WardenError(.internal, "lineage deeper than 100000 generations") }
            var next: [VMID] = []
            var seen = Set<VMID>()
            for chunk in stride(from: 0, to: frontier.count, by: 500) {
                let parents = Array(frontier[chunk..<min(chunk + 500, frontier.count)])
                for child in try children(of: parents) {
                    guard let parent = child.parent, let parentSince = since[parent] else { continue }
                    records[child.id] = child
                    guard child.createdAt >= parentSince else { continue }
                    if let old = since[child.id], old <= child.createdAt { continue }
                    since[child.id] = child.createdAt
                    inheritedFrom[child.id] = parent
                    if seen.insert(child.id).inserted { next.append(child.id) }
                }
            }
            frontier = next
        }
        for r in try vms(withIDs: since.keys.filter { records[$0] == nil }) { records[r.id] = r }
        let vms = try ExposureAssembly.assemble(since: since, inheritedFrom: inheritedFrom, intervals: intervals) {
            records[$0].map { ($0.name, $0.owner, $0.state) }
        }
        return ExposureReport(host: host, from: from, to: to, now: now, vms: vms)
    }
}

/// Turns exposure starts into report entries; shared by every implementation.
enum ExposureAssembly {
    static func assemble(since: [VMID: Date], inheritedFrom: [VMID: VMID], intervals: [VMID: [ExposureInterval]],
                         record: (VMID) -> (name: String, owner: String, state: VMState)?) throws -> [ExposedVM] {
        // The directly exposed ancestor each exposure comes from, and how many steps away (memoized).
        var source: [VMID: (VMID, Int)] = [:]
        func origin(_ id: VMID) throws -> (VMID, Int) {
            if let known = source[id] { return known }
            var chain: [VMID] = []
            var cursor = id
            while let p = inheritedFrom[cursor], source[cursor] == nil {
                chain.append(cursor)
                cursor = p
                if chain.count > 1_000_000 { throw WardenError(.corrupt, "exposure: lineage cycle at \(id)") }
            }
            var base = source[cursor] ?? (cursor, 0)
            source[cursor] = base
            for v in chain.reversed() {
                base = (base.0, base.1 + 1)
                source[v] = base
            }
            return source[id]!
        }
        var out: [ExposedVM] = []
        out.reserveCapacity(since.count)
        for (id, start) in since {
            guard let rec = record(id) else { continue }
            let own = intervals[id] ?? []
            let parent = inheritedFrom[id]
            let how: String
            switch (own.isEmpty, parent == nil) {
            case (false, true): how = "direct"
            case (true, false): how = "inherited"
            default: how = "direct+inherited"
            }
            let (src, steps) = try origin(id)
            out.append(ExposedVM(vm: id, name: rec.name, owner: rec.owner, state: rec.state, exposedSince: start,
                                 how: how, residencies: own.sorted { ($0.from, $0.kind.rawValue) < ($1.from, $1.kind.rawValue) },
                                 inheritedFrom: parent, source: src, steps: steps))
        }
        // Sort keys computed once: VMID's `<` builds two strings per comparison, and thousands of
        // direct exposures share one start (the window's).
        return out.map { ($0, FastUUID.text($0.vm.uuid)) }
            .sorted { ($0.0.exposedSince, $0.1) < ($1.0.exposedSince, $1.1) }
            .map(\.0)
    }
}

// MARK: - Lineage

/// A snapshot as lineage shows it.
public struct LineageSnapshot: Codable, Sendable, Equatable {
    public var name: String
    public var generation: UUID
    public var createdAt: Date
}

/// One change of a VM's generation: creation, rollback, restore, clone or copy.
public struct GenerationStep: Codable, Sendable, Equatable {
    public var generation: UUID
    /// The generation this one branched from: the previous one, or, for a rollback,
    /// the generation captured by the snapshot rolled back to.
    public var parentGeneration: UUID?
    public var kind: EventKind
    public var seq: Int64
    public var time: Date
    /// The snapshot rolled back to, when the payload names one.
    public var snapshot: String?
}

/// One VM in a lineage tree.
public struct LineageNode: Codable, Sendable, Equatable {
    public enum Role: String, Codable, Sendable { case ancestor, `self`, descendant }
    public var id: VMID
    public var name: String
    public var owner: String
    public var state: VMState
    public var generation: UUID
    public var parent: VMID?
    public var parentGeneration: UUID?
    public var createdAt: Date
    public var role: Role
    /// Distance from the root (0 for the root).
    public var depth: Int
    /// How the VM came to be: the kind of its first event (`registered`, `cloned`, `copied`…).
    public var relation: String
    public var snapshots: [LineageSnapshot]
    /// Generation changes in log order; a rollback shows as a branch from a snapshot's generation.
    public var generations: [GenerationStep]
}

/// `warden vm lineage VM`: the queried VM's ancestors (up to the root) and all its descendants.
public struct Lineage: Codable, Sendable, Equatable {
    public var schema = "warden.lineage/v1"
    public var vm: VMID
    public var root: VMID
    /// Depth-first from the root: a node comes after its parent, siblings by creation time.
    public var nodes: [LineageNode]
}

extension LedgerQueries {
    /// The tree of `id`'s ancestors and descendants, with snapshots and generation branches.
    public func lineage(of id: VMID, maxNodes: Int = 100_000) throws -> Lineage {
        guard let me = try vm(id) else { throw WardenError.notFound("no VM \(id)") }
        // Ancestors, nearest first (one query), then root first.
        let up = try ancestors(of: id, limit: maxNodes)
        if up.count >= maxNodes { throw WardenError.limit("VM \(id) has \(maxNodes) or more ancestors") }
        var seen: Set<VMID> = [id]
        for a in up where !seen.insert(a.id).inserted {
            throw WardenError(.corrupt, "the lineage of \(id) has a cycle at \(a.id)")
        }
        let chain = [me] + up
        let ordered = Array(chain.reversed())
        // Descendants, breadth first in batches.
        var kids: [VMID: [VMRecord]] = [:]
        var frontier = [id]
        var count = chain.count
        while !frontier.isEmpty {
            var next: [VMID] = []
            for c in try children(of: frontier) {
                guard let p = c.parent, seen.insert(c.id).inserted else { continue }
                kids[p, default: []].append(c)
                next.append(c.id)
                count += 1
                if count > maxNodes { throw WardenError.limit("the lineage of \(id) has more than \(maxNodes) VMs") }
            }
            frontier = next
        }
        let all = Array(seen)
        var steps = try generationEvents(of: all)
        var snaps: [VMID: [SnapshotRecord]] = [:]
        for s in try snapshots(ofVMs: all) { snaps[s.vm, default: []].append(s) }
        func node(_ r: VMRecord, role: LineageNode.Role, depth: Int) -> LineageNode {
            let mine = (snaps[r.id] ?? []).sorted { ($0.createdAt, $0.name) < ($1.createdAt, $1.name) }
            let events = steps.removeValue(forKey: r.id) ?? []
            var out: [GenerationStep] = []
            for e in events {
                var step = e
                if e.kind == .rolledBack, let name = e.snapshot,
                   let s = mine.last(where: { $0.name == name && $0.createdAt <= e.time }) ?? mine.last(where: { $0.name == name }) {
                    step.parentGeneration = s.generation
                }
                if e.kind != .rolledBack { step.snapshot = nil }
                out.append(step)
            }
            return LineageNode(id: r.id, name: r.name, owner: r.owner, state: r.state, generation: r.generation,
                               parent: r.parent, parentGeneration: r.parentGeneration, createdAt: r.createdAt,
                               role: role, depth: depth, relation: events.first?.kind.rawValue ?? "unknown",
                               snapshots: mine.map { LineageSnapshot(name: $0.name, generation: $0.generation, createdAt: $0.createdAt) },
                               generations: out)
        }
        var nodes: [LineageNode] = []
        nodes.reserveCapacity(count)
        for (i, a) in ordered.enumerated() {
            nodes.append(node(a, role: a.id == id ? .self : .ancestor, depth: i))
        }
        // Depth-first below `id`, siblings by creation time then id.
        var stack: [(VMRecord, Int)] = (kids[id] ?? []).sorted(by: Self.older).reversed().map { ($0, ordered.count) }
        while let (r, d) = stack.popLast() {
            nodes.append(node(r, role: .descendant, depth: d))
            for c in (kids[r.id] ?? []).sorted(by: Self.older).reversed() { stack.append((c, d + 1)) }
        }
        return Lineage(vm: id, root: ordered[0].id, nodes: nodes)
    }

    static func older(_ a: VMRecord, _ b: VMRecord) -> Bool { (a.createdAt, a.id) < (b.createdAt, b.id) }
}

// MARK: - Census

/// What the census needs to know about one VM.
public struct CensusFacts: Sendable, Equatable {
    public var id: VMID
    public var name: String
    public var owner: String
    public var state: VMState
    public var createdAt: Date
    /// Time of the `retired` event, if any.
    public var retiredAt: Date?
    /// Time of the latest `started` event, if any.
    public var lastStarted: Date?
    /// Time of the latest `scanned` event, if any.
    public var lastScan: Date?
    /// `os` from the payload of the latest registered, discovered or scanned event that has one.
    public var os: String?
    public init(id: VMID, name: String, owner: String, state: VMState, createdAt: Date, retiredAt: Date? = nil,
                lastStarted: Date? = nil, lastScan: Date? = nil, os: String? = nil) {
        self.id = id; self.name = name; self.owner = owner; self.state = state; self.createdAt = createdAt
        self.retiredAt = retiredAt; self.lastStarted = lastStarted; self.lastScan = lastScan; self.os = os
    }
}

public struct CensusWeek: Codable, Sendable, Equatable {
    /// ISO 8601 week, e.g. `2026-W48`.
    public var week: String
    /// Monday 00:00 UTC.
    public var start: Date
    /// VMs created (registered, discovered, cloned, copied…) in the week.
    public var appeared: Int
    /// VMs retired in the week.
    public var disappeared: Int
    /// VMs alive (created, not yet retired) at the end of the week (or now, for the current week).
    public var liveAtEnd: Int
}

public struct CensusVM: Codable, Sendable, Equatable {
    public var id: VMID
    public var name: String
    public var owner: String
    public var state: VMState
    /// The last `started` (dormant list) or `scanned` (stale list) time; nil if never.
    public var last: Date?
}

public struct CensusList: Codable, Sendable, Equatable {
    public var days: Int
    /// All live VMs that qualify (the list below may be cut at `limit`).
    public var count: Int
    /// How many of them never had the event at all.
    public var never: Int
    public var vms: [CensusVM]
    public var truncated: Bool
}

public struct CensusGrowth: Codable, Sendable, Equatable {
    public var weeks: Int
    /// Live VMs at the start of the first week shown.
    public var liveAtStart: Int
    /// Live VMs now.
    public var liveNow: Int
    /// (appeared − disappeared) per week, averaged over the weeks shown.
    public var netPerWeek: Double
    /// `netPerWeek` relative to `liveAtStart`, in percent; nil when `liveAtStart` is 0.
    public var percentPerWeek: Double?
}

/// `warden census`: the transience picture of the fleet.
public struct Census: Codable, Sendable, Equatable {
    public var schema = "warden.census/v1"
    public var now: Date
    public var total: Int
    /// Not retired.
    public var live: Int
    public var byState: [String: Int]
    /// Live VMs per owner.
    public var byOwner: [String: Int]
    /// Live VMs per operating system (`unknown` when never inspected).
    public var byOs: [String: Int]
    public var weeks: [CensusWeek]
    public var growth: CensusGrowth
    public var dormant: CensusList
    public var staleScans: CensusList
}

/// ISO 8601 weeks (Monday first, week 1 holds the year's first Thursday), in UTC.
public enum ISOWeek {
    static var calendar: Calendar {
        var c = Calendar(identifier: .iso8601)
        c.timeZone = TimeZone(identifier: "UTC")!
        return c
    }
    /// Monday 00:00 UTC of the week holding `date`.
    public static func start(of date: Date) -> Date {
        let c = calendar
        let comps = c.dateComponents([.yearForWeekOfYear, .weekOfYear], from: date)
        return c.date(from: comps) ?? date
    }
    /// `YYYY-Www`.
    public static func label(_ date: Date) -> String {
        let comps = calendar.dateComponents([.yearForWeekOfYear, .weekOfYear], from: date)
        return String(format: "%04d-W%02d", comps.yearForWeekOfYear ?? 0, comps.weekOfYear ?? 0)
    }
}

extension LedgerQueries {
    /// Counts by state, owner and OS; appeared/disappeared per ISO week over the last `weeks`
    /// weeks (the current one included); dormant VMs (live, not started for `dormantDays`);
    /// stale scans (live, not scanned for `staleScanDays`); growth over the weeks shown.
    public func census(now: Date = Date(), weeks: Int = 12, dormantDays: Int = 30, staleScanDays: Int = 7,
                       limit: Int = 100) throws -> Census {
        guard weeks >= 1, weeks <= 5200, dormantDays >= 0, staleScanDays >= 0, limit >= 0 else {
            throw WardenError(.invalidArgument, "census: weeks must be 1…5200, days and limit non-negative")
        }
        let facts = try censusFacts()
        return Self.census(facts, now: now, weeks: weeks, dormantDays: dormantDays, staleScanDays: staleScanDays, limit: limit)
    }

    static func census(_ facts: [CensusFacts], now: Date, weeks: Int, dormantDays: Int, staleScanDays: Int, limit: Int) -> Census {
        func isLive(_ f: CensusFacts, at t: Date) -> Bool {
            f.createdAt < t && (f.retiredAt.map { $0 >= t } ?? (f.state != .retired))
        }
        let live = facts.filter { $0.state != .retired }
        var byState: [String: Int] = [:], byOwner: [String: Int] = [:], byOS: [String: Int] = [:]
        for s in VMState.allCases { byState[s.rawValue] = 0 }
        for f in facts { byState[f.state.rawValue, default: 0] += 1 }
        for f in live {
            byOwner[f.owner, default: 0] += 1
            byOS[f.os ?? "unknown", default: 0] += 1
        }
        // Weeks: the current one and weeks-1 before it.
        let thisWeek = ISOWeek.start(of: now)
        let week: TimeInterval = 7 * 86_400
        var table: [CensusWeek] = []
        var starts: [Date] = []
        for i in stride(from: weeks - 1, through: 0, by: -1) { starts.append(thisWeek.addingTimeInterval(-Double(i) * week)) }
        var appeared = [Int](repeating: 0, count: weeks), gone = [Int](repeating: 0, count: weeks)
        func bucket(_ t: Date) -> Int? {
            guard t >= starts[0], t <= now else { return nil }
            let i = Int((t.timeIntervalSince(starts[0]) / week).rounded(.down))
            return i >= 0 && i < weeks ? i : nil
        }
        for f in facts {
            if let b = bucket(f.createdAt) { appeared[b] += 1 }
            if let r = f.retiredAt, let b = bucket(r) { gone[b] += 1 }
        }
        // Live count at the start of the first week, then running totals.
        var running = facts.reduce(0) { $0 + (isLive($1, at: starts[0]) ? 1 : 0) }
        let liveAtStart = running
        for i in 0..<weeks {
            running += appeared[i] - gone[i]
            table.append(CensusWeek(week: ISOWeek.label(starts[i]), start: starts[i], appeared: appeared[i],
                                    disappeared: gone[i], liveAtEnd: running))
        }
        let net = Double(appeared.reduce(0, +) - gone.reduce(0, +)) / Double(weeks)
        let growth = CensusGrowth(weeks: weeks, liveAtStart: liveAtStart, liveNow: live.count, netPerWeek: net,
                                  percentPerWeek: liveAtStart > 0 ? net / Double(liveAtStart) * 100 : nil)
        func list(days: Int, last: (CensusFacts) -> Date?) -> CensusList {
            let cutoff = now.addingTimeInterval(-Double(days) * 86_400)
            // A VM created inside the period is not yet dormant/stale without the event.
            let hits = live.filter { f in
                if let t = last(f) { return t < cutoff }
                return f.createdAt < cutoff
            }.sorted { (last($0) ?? .distantPast, $0.id) < (last($1) ?? .distantPast, $1.id) }
            return CensusList(days: days, count: hits.count, never: hits.filter { last($0) == nil }.count,
                              vms: hits.prefix(limit).map { CensusVM(id: $0.id, name: $0.name, owner: $0.owner, state: $0.state, last: last($0)) },
                              truncated: hits.count > limit)
        }
        return Census(now: now, total: facts.count, live: live.count, byState: byState, byOwner: byOwner, byOs: byOS,
                      weeks: table, growth: growth,
                      dormant: list(days: dormantDays) { $0.lastStarted },
                      staleScans: list(days: staleScanDays) { $0.lastScan })
    }
}

// MARK: - JSON shapes
//
// Optional values are written as explicit nulls, and UUIDs (generations) in lower case like
// VM ids, so every documented key is always present (docs/json-schemas/*.v1.json).

func lowerUUID(_ u: UUID?) -> String? { u.map { $0.uuidString.lowercased() } }

extension ExposedVM {
    enum CodingKeys: String, CodingKey { case vm, name, owner, state, exposedSince, how, residencies, inheritedFrom, source, steps }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(vm, forKey: .vm); try c.encode(name, forKey: .name); try c.encode(owner, forKey: .owner)
        try c.encode(state, forKey: .state); try c.encode(exposedSince, forKey: .exposedSince); try c.encode(how, forKey: .how)
        try c.encode(residencies, forKey: .residencies); try c.encode(inheritedFrom, forKey: .inheritedFrom)
        try c.encode(source, forKey: .source); try c.encode(steps, forKey: .steps)
    }
}

extension ExposureInterval {
    enum CodingKeys: String, CodingKey { case kind, from, to }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind, forKey: .kind); try c.encode(from, forKey: .from); try c.encode(to, forKey: .to)
    }
}

extension LineageSnapshot {
    enum CodingKeys: String, CodingKey { case name, generation, createdAt }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name); try c.encode(lowerUUID(generation), forKey: .generation)
        try c.encode(createdAt, forKey: .createdAt)
    }
}

extension GenerationStep {
    enum CodingKeys: String, CodingKey { case generation, parentGeneration, kind, seq, time, snapshot }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(lowerUUID(generation), forKey: .generation)
        try c.encode(lowerUUID(parentGeneration), forKey: .parentGeneration)
        try c.encode(kind, forKey: .kind); try c.encode(seq, forKey: .seq); try c.encode(time, forKey: .time)
        try c.encode(snapshot, forKey: .snapshot)
    }
}

extension LineageNode {
    enum CodingKeys: String, CodingKey {
        case id, name, owner, state, generation, parent, parentGeneration, createdAt, role, depth, relation, snapshots, generations
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id); try c.encode(name, forKey: .name); try c.encode(owner, forKey: .owner)
        try c.encode(state, forKey: .state); try c.encode(lowerUUID(generation), forKey: .generation)
        try c.encode(parent, forKey: .parent); try c.encode(lowerUUID(parentGeneration), forKey: .parentGeneration)
        try c.encode(createdAt, forKey: .createdAt); try c.encode(role, forKey: .role); try c.encode(depth, forKey: .depth)
        try c.encode(relation, forKey: .relation); try c.encode(snapshots, forKey: .snapshots)
        try c.encode(generations, forKey: .generations)
    }
}

extension CensusVM {
    enum CodingKeys: String, CodingKey { case id, name, owner, state, last }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id); try c.encode(name, forKey: .name); try c.encode(owner, forKey: .owner)
        try c.encode(state, forKey: .state); try c.encode(last, forKey: .last)
    }
}

extension CensusGrowth {
    enum CodingKeys: String, CodingKey { case weeks, liveAtStart, liveNow, netPerWeek, percentPerWeek }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(weeks, forKey: .weeks); try c.encode(liveAtStart, forKey: .liveAtStart)
        try c.encode(liveNow, forKey: .liveNow); try c.encode(netPerWeek, forKey: .netPerWeek)
        try c.encode(percentPerWeek, forKey: .percentPerWeek)
    }
}
