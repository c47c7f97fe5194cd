import Foundation
import WardenCore

// MARK: - Exposure

/// A residency interval as reported by exposure (`to` nil while open).
public struct ExposureInterval: Codable, Sendable, Equatable {
    public var kind: ResidencyRecord.Kind
    public var from: Date
    public var to: Date?
    package init(kind: ResidencyRecord.Kind, from: Date, to: Date?) { self.kind = kind; self.from = from; self.to = to }
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
    package init(host: HostName, from: Date, to: Date, now: Date, vms: [ExposedVM]) {
        self.host = host; self.from = from; self.to = to; self.now = now; self.vms = vms
    }
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
package enum ExposureAssembly {
    /// The exposed members of one lineage family (every member of it, in any order), from
    /// the direct exposure starts and intervals, appended to `out` unordered. A member is
    /// exposed from its creation when its parent was exposed by then, else from its own
    /// direct start (the earlier wins; direct wins a tie, as in the reference). Walked from
    /// the roots down, so each member is visited once with its parent's final start, source
    /// and steps. Members on a parent cycle (a damaged ledger) are not reached.
    package static func exposeFamily(_ members: [FamilyMember], direct: [VMID: Date], intervals: [VMID: [ExposureInterval]],
                                     into out: inout [ExposedVM]) {
        let n = members.count
        if n == 1 {
            let m = members[0]
            if let d = direct[m.id] { out.append(entry(m, since: d, own: intervals[m.id] ?? [], inheritedFrom: nil, source: m.id, steps: 0)) }
            return
        }
        // Each member's parent among the members (-1 for a root): a scan for small families.
        var parent = [Int](repeating: -1, count: n)
        if n <= 24 {
            for i in 0..<n {
                guard let p = members[i].parent else { continue }
                for j in 0..<n where j != i && members[j].id == p { parent[i] = j; break }
            }
        } else {
            var index: [VMID: Int] = [:]
            index.reserveCapacity(n)
            for (i, m) in members.enumerated() { index[m.id] = i }
            for i in 0..<n { if let p = members[i].parent, let j = index[p], j != i { parent[i] = j } }
        }
        var children = [[Int]](repeating: [], count: n)
        var stack: [(i: Int, since: Date?, source: VMID?, steps: Int)] = []
        for i in 0..<n { if parent[i] >= 0 { children[parent[i]].append(i) } else { stack.append((i, nil, nil, 0)) } }
        var visited = [Bool](repeating: false, count: n)
        while let (i, parentSince, parentSource, parentSteps) = stack.popLast() {
            guard !visited[i] else { continue }
            visited[i] = true
            let m = members[i]
            let d = direct[m.id]
            let inherited = parentSince.flatMap { m.createdAt >= $0 ? m.createdAt : nil }
            var mine: (since: Date, source: VMID, steps: Int)?
            if let inherited, d.map({ inherited < $0 }) ?? true, let p = m.parent, let src = parentSource {
                mine = (inherited, src, parentSteps + 1)
                out.append(entry(m, since: inherited, own: intervals[m.id] ?? [], inheritedFrom: p, source: src, steps: parentSteps + 1))
            } else if let d {
                mine = (d, m.id, 0)
                out.append(entry(m, since: d, own: intervals[m.id] ?? [], inheritedFrom: nil, source: m.id, steps: 0))
            }
            for c in children[i] { stack.append((c, mine?.since, mine?.source, mine?.steps ?? 0)) }
        }
    }

    private static func entry(_ m: FamilyMember, since: Date, own: [ExposureInterval], inheritedFrom: VMID?, source: VMID, steps: Int) -> ExposedVM {
        ExposedVM(vm: m.id, name: m.name, owner: m.owner, state: m.state, exposedSince: since,
                  how: Self.how(ownIntervals: !own.isEmpty, inherited: inheritedFrom != nil),
                  residencies: inIntervalOrder(own),
                  inheritedFrom: inheritedFrom, source: source, steps: steps)
    }

    static func how(ownIntervals: Bool, inherited: Bool) -> String {
        switch (ownIntervals, inherited) {
        case (true, false): return "direct"
        case (false, true): return "inherited"
        default: return "direct+inherited"
        }
    }

    /// A VM's own intervals in report order: by start, then kind.
    static func inIntervalOrder(_ own: [ExposureInterval]) -> [ExposureInterval] {
        own.count < 2 ? own : own.sorted { ($0.from, $0.kind.rawValue) < ($1.from, $1.kind.rawValue) }
    }

    /// Report order: by exposure start, then VM id (the id's bytes order as its text does).
    package static func inReportOrder(_ vms: [ExposedVM]) -> [ExposedVM] {
        vms.sorted { a, b in
            if a.exposedSince != b.exposedSince { return a.exposedSince < b.exposedSince }
            return withUnsafeBytes(of: a.vm.uuid.uuid) { x in withUnsafeBytes(of: b.vm.uuid.uuid) { y in memcmp(x.baseAddress!, y.baseAddress!, 16) < 0 } }
        }
    }

    package static func assemble(since: [VMID: Date], inheritedFrom: [VMID: VMID], intervals: [VMID: [ExposureInterval]],
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
            let how = Self.how(ownIntervals: !own.isEmpty, inherited: parent != nil)
            let (src, steps) = try origin(id)
            out.append(ExposedVM(vm: id, name: rec.name, owner: rec.owner, state: rec.state, exposedSince: start,
                                 how: how, residencies: inIntervalOrder(own),
                                 inheritedFrom: parent, source: src, steps: steps))
        }
        return inReportOrder(out)
    }
}
