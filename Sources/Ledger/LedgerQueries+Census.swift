import Foundation
import WardenCore

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
    /// Malware scans of live VMs (`warden malware scan`): how many were scanned, and which
    /// were found infected by their latest scan.
    public var malware: CensusMalware
}

/// The malware part of the census.
public struct CensusMalware: Codable, Sendable, Equatable {
    /// Live VMs with at least one malware scan.
    public var scanned: Int
    /// Live VMs never scanned for malware.
    public var never: Int
    /// Live VMs whose latest malware scan found something.
    public var infected: Int
    /// The infected VMs (`last`: their latest scan), at most the census limit.
    public var vms: [CensusVM]
    public var truncated: Bool
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
        var malware: [VMID: (time: Date, detections: Int)] = [:]
        for e in try latestEvents(kind: .malwareScanned, mentioning: nil) {
            guard let vm = e.vm else { continue }
            // A payload without a count reads as infected: the census must not hide one.
            var n = 1
            if case .number(let d)? = e.payload["detections"], d >= 0, d < 1e12 { n = Int(d) }
            malware[vm] = (e.time, n)
        }
        return Self.census(facts, now: now, weeks: weeks, dormantDays: dormantDays, staleScanDays: staleScanDays, limit: limit,
                           malwareScans: malware)
    }

    static func census(_ facts: [CensusFacts], now: Date, weeks: Int, dormantDays: Int, staleScanDays: Int, limit: Int,
                       malwareScans: [VMID: (time: Date, detections: Int)] = [:]) -> Census {
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
        let infected = live.filter { (malwareScans[$0.id]?.detections ?? 0) > 0 }.sorted { $0.id < $1.id }
        let malware = CensusMalware(
            scanned: live.filter { malwareScans[$0.id] != nil }.count,
            never: live.filter { malwareScans[$0.id] == nil }.count,
            infected: infected.count,
            vms: infected.prefix(limit).map { CensusVM(id: $0.id, name: $0.name, owner: $0.owner, state: $0.state, last: malwareScans[$0.id]?.time) },
            truncated: infected.count > limit)
        return Census(now: now, total: facts.count, live: live.count, byState: byState, byOwner: byOwner, byOs: byOS,
                      weeks: table, growth: growth,
                      dormant: list(days: dormantDays) { $0.lastStarted },
                      staleScans: list(days: staleScanDays) { $0.lastScan },
                      malware: malware)
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
