import Foundation
import Testing
import WardenTestSupport
@testable import Ledger
import WardenCore
import StoreTestSupport

/// Fixed times: day N of a test calendar starting 2026-01-05 (a Monday), UTC.
func day(_ n: Double) -> Date { Date(timeIntervalSince1970: 1_767_571_200 + n * 86_400) }

let hostH = HostName("h1")!
let hostOther = HostName("h2")!

extension LedgerQueries {
    /// A VM created at `at`, as `kind` (registered, or cloned/copied from `parent`).
    @discardableResult
    func make(_ name: String, at: Date, kind: EventKind = .registered, parent: VMRecord? = nil, owner: String = "alice",
              os: String? = nil) throws -> VMRecord {
        let v = VMRecord(name: name, owner: owner, state: .registered, generation: UUID(), parent: parent?.id,
                         parentGeneration: parent?.generation, createdAt: at, updatedAt: at)
        var payload: [String: JSONValue] = [:]
        if let os { payload["os"] = .string(os) }
        return try createVM(v, disks: [], event: NewEvent(kind: kind, vm: v.id, time: at, generationBefore: parent?.generation,
                                                          payload: payload)).0
    }

    func ran(_ v: VMRecord, on h: HostName = hostH, _ from: Date, _ to: Date?, kind: ResidencyRecord.Kind = .ran) throws {
        try openResidency(vm: v.id, host: h, kind: kind, at: from)
        if let to { try closeResidency(vm: v.id, host: h, kind: kind, at: to) }
    }
}

@Suite struct ExposureTests {
    @Test(arguments: StoreBackend.all) func windowEdgesAndInheritance(_ b: StoreBackend) throws {
        try b.with { l in
            let t1 = day(10), t2 = day(20), now = day(40)
            // Left H exactly at T1 (intervals are half-open): not exposed. One second later: exposed.
            let leftAtT1 = try l.make("left-at-t1", at: day(0)); try l.ran(leftAtT1, day(1), t1)
            let leftAfter = try l.make("left-after-t1", at: day(0)); try l.ran(leftAfter, day(1), t1.addingTimeInterval(1))
            let leftBefore = try l.make("left-before-t1", at: day(0)); try l.ran(leftBefore, day(1), t1.addingTimeInterval(-1))
            // Arrived exactly at T2 (the window is closed): exposed. One second later: not.
            let atT2 = try l.make("arrived-at-t2", at: day(0)); try l.ran(atT2, t2, nil, kind: .stored)
            let afterT2 = try l.make("arrived-after-t2", at: day(0)); try l.ran(afterT2, t2.addingTimeInterval(1), day(22))
            // Open interval from before the window: extends to now.
            let open = try l.make("open", at: day(0)); try l.ran(open, day(3), nil)
            // An empty interval inside the window is no residency.
            let empty = try l.make("empty", at: day(0)); try l.ran(empty, day(12), day(12))
            // On another host only: not exposed, and neither its clone.
            let elsewhere = try l.make("elsewhere", at: day(0)); try l.ran(elsewhere, on: hostOther, day(11), day(13))
            try l.make("elsewhere-clone", at: day(12), kind: .cloned, parent: elsewhere)
            // C exposed from day 12; a clone before (day 11, inside the window) is not exposed,
            // a copy after is, its own copy (a grandchild through a copy of a clone) too, and a
            // clone made after the window still inherits.
            let c = try l.make("c", at: day(0)); try l.ran(c, day(12), day(15))
            try l.make("c-clone-before", at: day(11), kind: .cloned, parent: c)
            let cClone = try l.make("c-clone", at: day(13), kind: .cloned, parent: c)
            let cCloneCopy = try l.make("c-clone-copy", at: day(30), kind: .copied, parent: cClone)
            let cLate = try l.make("c-clone-late", at: day(25), kind: .cloned, parent: c)
            // A clone made at exactly the moment C's exposure began is exposed.
            let cAtStart = try l.make("c-clone-at-start", at: day(12), kind: .cloned, parent: c)
            // P is exposed later (day 15); its clone from day 5 is not exposed.
            let p = try l.make("p", at: day(0)); try l.ran(p, day(15), day(16))
            try l.make("p-clone-early", at: day(5), kind: .cloned, parent: p)
            // G: cloned from P on day 16 (inherits from day 16) and itself on H from day 18.
            let g = try l.make("g", at: day(16), kind: .cloned, parent: p); try l.ran(g, day(18), nil)
            // A VM exposed before the window only.
            let old = try l.make("old", at: day(0)); try l.ran(old, day(5), day(8))
            try l.make("old-clone", at: day(9), kind: .cloned, parent: old)

            let r = try l.exposure(host: hostH, from: t1, to: t2, now: now)
            // The SQL implementation agrees with the reference built from the primitives.
            #expect(r == (try l.referenceExposure(host: hostH, from: t1, to: t2, now: now)))
            let got = Dictionary(uniqueKeysWithValues: r.vms.map { ($0.name, $0) })
            #expect(Set(got.keys) == ["left-after-t1", "arrived-at-t2", "open", "c", "c-clone", "c-clone-copy",
                                      "c-clone-late", "c-clone-at-start", "p", "g"])
            #expect(got["left-after-t1"]?.exposedSince == t1)
            #expect(got["open"]?.exposedSince == t1)
            #expect(got["arrived-at-t2"]?.exposedSince == t2)
            #expect(got["arrived-at-t2"]?.residencies == [ExposureInterval(kind: .stored, from: t2, to: nil)])
            #expect(got["c"]?.how == "direct")
            #expect(got["c-clone"]?.how == "inherited")
            #expect(got["c-clone"]?.exposedSince == day(13))
            #expect(got["c-clone-copy"]?.source == c.id && got["c-clone-copy"]?.steps == 2)
            #expect(got["c-clone-copy"]?.inheritedFrom == cClone.id)
            #expect(got["c-clone-late"]?.exposedSince == day(25))
            #expect(got["c-clone-at-start"]?.inheritedFrom == c.id)
            #expect(got["g"]?.how == "direct+inherited")
            #expect(got["g"]?.exposedSince == day(16))
            #expect(got["g"]?.source == p.id && got["g"]?.steps == 1)
            #expect(got["c"]?.source == c.id && got["c"]?.steps == 0)
            // Ordered by exposure start.
            #expect(r.vms.map(\.exposedSince) == r.vms.map(\.exposedSince).sorted())
            _ = (leftAtT1, leftBefore, afterT2, empty, cLate, cAtStart)

            // A point window at T1 holds exactly the VMs on H at that instant.
            let point = try l.exposure(host: hostH, from: t1, to: t1, now: now)
            #expect(Set(point.vms.filter { $0.how != "inherited" }.map(\.name)) == ["left-after-t1", "open"])
            // An open interval only reaches `now`: a window entirely after now finds nothing open.
            let future = try l.exposure(host: hostH, from: day(50), to: day(60), now: now)
            #expect(future.vms.isEmpty)
            #expect(throws: WardenError.self) { try l.exposure(host: hostH, from: t2, to: t1, now: now) }
        }
    }
}

extension ExposureTests {
    /// Random fleets (seeded): the SQL exposure equals the reference for many windows.
    @Test(arguments: StoreBackend.all) func sqlAgreesWithReferenceOnRandomFleets(_ b: StoreBackend) throws {
        for seed in UInt64(1)...3 {
            try b.with { l in
                var rng = SeededRandom(seed: seed)
                var vms: [VMRecord] = []
                let hosts = [hostH, hostOther]
                for i in 0..<200 {
                    // Seed 3: creation times in any order (a clone recorded as older than its
                    // parent, as imported or hand-edited ledgers can have).
                    let at = seed == 3 ? day(Double(Int.random(in: 0..<200, using: &rng)) / 5) : day(Double(i) / 5)
                    let parent = vms.isEmpty || Int.random(in: 0..<3, using: &rng) != 0 ? nil : vms[Int.random(in: 0..<vms.count, using: &rng)]
                    let v = try l.make("v\(i)", at: at, kind: parent == nil ? .registered : (Bool.random(using: &rng) ? .cloned : .copied), parent: parent)
                    vms.append(v)
                    for _ in 0..<Int.random(in: 0...3, using: &rng) {
                        let from = at.addingTimeInterval(Double(Int.random(in: 0..<(2 * 86_400), using: &rng)))
                        let len = Double(Int.random(in: 0..<(8 * 86_400), using: &rng))
                        let open = Int.random(in: 0..<8, using: &rng) == 0
                        try l.ran(v, on: hosts[Int.random(in: 0..<2, using: &rng)], from, open ? nil : from.addingTimeInterval(len),
                                  kind: Bool.random(using: &rng) ? .ran : .stored)
                    }
                }
                var seen = (direct: 0, inherited: 0)
                defer { #expect(seen.direct > 20 && seen.inherited > 20, "seed \(seed): the windows hit too little: \(seen)") }
                for _ in 0..<12 {
                    let a = day(Double(Int.random(in: 0..<40, using: &rng)))
                    let b = a.addingTimeInterval(Double(Int.random(in: 0..<(6 * 86_400), using: &rng)))
                    let sql = try l.exposure(host: hostH, from: a, to: b, now: day(50))
                    let ref = try l.referenceExposure(host: hostH, from: a, to: b, now: day(50))
                    #expect(sql == ref, "seed \(seed), window \(a)…\(b)")
                    seen.direct += sql.vms.filter { $0.how != "inherited" }.count
                    seen.inherited += sql.vms.filter { $0.how != "direct" }.count
                }
            }
        }
    }
}

@Suite struct LineageTests {
    @Test(arguments: StoreBackend.all) func cloneOfCloneOfCopyWithSnapshotsAndRollbacks(_ b: StoreBackend) throws {
        try b.with { l in
            let root = try l.make("root", at: day(0))
            // A snapshot of root at its first generation, then two rollbacks to it: two branches.
            _ = try l.append(NewEvent(kind: .snapshotted, vm: root.id, time: day(0.5), payload: ["snapshot": .string("s1")]))
            try l.addSnapshot(SnapshotRecord(vm: root.id, name: "s1", generation: root.generation, createdAt: day(0.5)))
            let g1 = UUID(), g2 = UUID(), g3 = UUID()
            _ = try l.updateVM(root.id, event: NewEvent(kind: .patched, vm: root.id, time: day(0.7), generationAfter: g1)) { $0.generation = g1 }
            _ = try l.updateVM(root.id, event: NewEvent(kind: .rolledBack, vm: root.id, time: day(5), payload: ["snapshot": .string("s1")])) { $0.generation = g2 }
            _ = try l.updateVM(root.id, event: NewEvent(kind: .rolledBack, vm: root.id, time: day(6), payload: ["snapshot": .string("s1")])) { $0.generation = g3 }
            let copy = try l.make("copy", at: day(1), kind: .copied, parent: try #require(try l.vm(root.id)))
            let clone = try l.make("clone", at: day(2), kind: .cloned, parent: copy)
            let grand = try l.make("clone-of-clone", at: day(3), kind: .cloned, parent: clone)
            let sibling = try l.make("sibling", at: day(4), kind: .cloned, parent: try #require(try l.vm(root.id)))

            let t = try l.lineage(of: clone.id)
            #expect(t.root == root.id)
            #expect(t.nodes.map(\.name) == ["root", "copy", "clone", "clone-of-clone"])
            #expect(t.nodes.map(\.role) == [.ancestor, .ancestor, .self, .descendant])
            #expect(t.nodes.map(\.depth) == [0, 1, 2, 3])
            #expect(t.nodes.map(\.relation) == ["registered", "copied", "cloned", "cloned"])
            #expect(t.nodes[3].parent == clone.id && t.nodes[3].parentGeneration == clone.generation)
            let r = t.nodes[0]
            #expect(r.snapshots.map(\.name) == ["s1"])
            // Generation steps: created (g0), patched → g1, two rollbacks branching from s1's generation g0.
            #expect(r.generations.map(\.kind) == [.registered, .patched, .rolledBack, .rolledBack])
            #expect(r.generations.map(\.generation) == [root.generation, g1, g2, g3])
            #expect(r.generations[2].parentGeneration == root.generation)
            #expect(r.generations[3].parentGeneration == root.generation)
            #expect(r.generations[3].snapshot == "s1")
            // The copy was taken at root's rotated generation g3.
            #expect(t.nodes[1].parentGeneration == g3)

            // From the root: every descendant, depth first, siblings by creation time.
            let all = try l.lineage(of: root.id)
            #expect(all.nodes.map(\.name) == ["root", "copy", "clone", "clone-of-clone", "sibling"])
            #expect(all.nodes.map(\.depth) == [0, 1, 2, 3, 1])
            _ = (grand, sibling)

            // A family is fixed when a VM is recorded: its parent cannot change afterwards.
            #expect(throws: WardenError.self) {
                _ = try l.updateVM(sibling.id, event: NewEvent(kind: .patched, vm: sibling.id, time: day(7))) { $0.parent = clone.id }
            }
            #expect(try l.family(of: grand.id, limit: 100)?.map(\.name).sorted() == ["clone", "clone-of-clone", "copy", "root", "sibling"])
            #expect(throws: WardenError.self) { _ = try l.family(of: grand.id, limit: 4) }
            #expect(try l.family(of: VMID(), limit: 100) == nil)
        }
    }

    @Test(arguments: StoreBackend.all) func manyGenerations(_ b: StoreBackend) throws {
        try b.with { l in
            var chain = [try l.make("gen-0", at: day(0))]
            for i in 1..<150 {
                chain.append(try l.make("gen-\(i)", at: day(Double(i) / 10), kind: i % 3 == 0 ? .copied : .cloned, parent: chain[i - 1]))
            }
            // Branches off generation 100.
            for j in 0..<5 { try l.make("branch-\(j)", at: day(20 + Double(j)), kind: .cloned, parent: chain[100]) }
            let t = try l.lineage(of: chain[75].id)
            #expect(t.nodes.count == 150 + 5)
            #expect(t.nodes.prefix(76).allSatisfy { $0.role != .descendant })
            #expect(t.nodes[75].role == .self)
            #expect(t.nodes.prefix(150).map(\.name) == (0..<150).map { "gen-\($0)" })
            #expect(t.nodes.prefix(150).map(\.depth) == Array(0..<150))
            #expect(t.nodes.suffix(5).map(\.name) == (0..<5).map { "branch-\($0)" })
            // Every node comes after its parent.
            var seen = Set<VMID>()
            for n in t.nodes {
                if let p = n.parent { #expect(seen.contains(p)) }
                seen.insert(n.id)
            }
            let branch = try #require(t.nodes.first { $0.name == "branch-0" })
            #expect(branch.depth == 101 && branch.parent == chain[100].id)
            #expect(t.nodes.first { $0.name == "gen-99" }?.relation == "copied")
        }
    }
}

@Suite struct CensusTests {
    @Test(arguments: StoreBackend.all) func constructedFleet(_ b: StoreBackend) throws {
        try b.with { l in
            // now: Wednesday 2026-03-04 12:00 UTC (day 58.5 of the test calendar); ISO week 2026-W10.
            let now = day(58.5)
            // 2026-01-05 is Monday of 2026-W02.
            let a = try l.make("a", at: day(0), owner: "alice", os: "debian 12")     // W02
            let b = try l.make("b", at: day(1), owner: "bob", os: "debian 12")       // W02
            let c = try l.make("c", at: day(8), owner: "alice", os: "alpine 3.19")   // W03
            let d = try l.make("d", at: day(50), owner: "carol")                      // W09
            let e = try l.make("e", at: day(56), owner: "bob")                        // W10 (Monday 2026-03-02)
            let f = try l.make("f", at: day(57), kind: .cloned, parent: a, owner: "alice", os: "debian 12") // W10
            // Later scan changes c's OS.
            _ = try l.append(NewEvent(kind: .scanned, vm: c.id, time: day(55), payload: ["os": .string("alpine 3.20")]))
            _ = try l.append(NewEvent(kind: .scanned, vm: a.id, time: day(40)))
            _ = try l.append(NewEvent(kind: .scanned, vm: f.id, time: day(58)))
            // Started events: a recently, b long ago, d never, e recently.
            _ = try l.updateVM(a.id, event: NewEvent(kind: .started, vm: a.id, time: day(57))) { $0.state = .running }
            _ = try l.updateVM(b.id, event: NewEvent(kind: .started, vm: b.id, time: day(10))) { $0.state = .running }
            _ = try l.updateVM(b.id, event: NewEvent(kind: .stopped, vm: b.id, time: day(11))) { $0.state = .stopped }
            _ = try l.updateVM(e.id, event: NewEvent(kind: .started, vm: e.id, time: day(56.5))) { $0.state = .running }
            // Retired: b in W09 (day 51), e's sibling none.
            _ = try l.updateVM(b.id, event: NewEvent(kind: .retired, vm: b.id, time: day(51))) { $0.state = .retired }

            let census = try l.census(now: now, weeks: 4, dormantDays: 30, staleScanDays: 7, limit: 2)
            #expect(census.total == 6 && census.live == 5)
            #expect(census.byState == ["registered": 3, "discovered": 0, "stopped": 0, "running": 2, "retired": 1])
            #expect(census.byOwner == ["alice": 3, "carol": 1, "bob": 1])
            #expect(census.byOs == ["debian 12": 2, "alpine 3.20": 1, "unknown": 2])
            #expect(census.weeks.map(\.week) == ["2026-W07", "2026-W08", "2026-W09", "2026-W10"])
            #expect(census.weeks.map(\.appeared) == [0, 0, 1, 2])
            #expect(census.weeks.map(\.disappeared) == [0, 0, 1, 0])
            #expect(census.weeks.map(\.liveAtEnd) == [3, 3, 3, 5])
            #expect(census.growth.liveAtStart == 3 && census.growth.liveNow == 5)
            #expect(census.growth.netPerWeek == 0.5)
            #expect(abs((census.growth.percentPerWeek ?? 0) - 50.0 / 3.0) < 1e-9)
            // Dormant (30 days → before day 28.5): c (never started, created day 8). d is new (day 50), a/e recent.
            #expect(census.dormant.count == 1 && census.dormant.never == 1)
            #expect(census.dormant.vms.map(\.name) == ["c"])
            // Stale scans (7 days → before day 51.5): a (day 40) and d (never, created day 50). c scanned day 55,
            // f day 58, e created day 56 (too new). Never-scanned first, then oldest.
            #expect(census.staleScans.count == 2 && census.staleScans.never == 1)
            #expect(census.staleScans.vms.map(\.name) == ["d", "a"])
            #expect(census.staleScans.truncated == false)
            let cut = try l.census(now: now, weeks: 4, dormantDays: 30, staleScanDays: 7, limit: 1)
            #expect(cut.staleScans.vms.count == 1 && cut.staleScans.truncated)
        }
    }
}

@Suite struct FastUUIDTests {
    @Test func agreesWithFoundation() {
        var rng = SeededRandom(seed: 7)
        for _ in 0..<2000 {
            let u = UUID(uuid: (UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng),
                                UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng),
                                UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng),
                                UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng),
                                UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng),
                                UInt8.random(in: 0...255, using: &rng)))
            #expect(FastUUID.text(u) == u.uuidString.lowercased())
            #expect(FastUUID.parse(u.uuidString) == u && FastUUID.parse(u.uuidString.lowercased()) == u)
        }
        for bad in ["", "x", "0123456789abcdef0123456789abcdef0123", "01234567-89ab-cdef-0123-456789abcdeg",
                    "01234567+89ab-cdef-0123-456789abcdef", "01234567-89ab-cdef-0123-456789abcdef0", "é1234567-89ab-cdef-0123-456789abcde"] {
            #expect(FastUUID.parse(bad) == nil, "\(bad)")
        }
    }
}

extension ExposureTests {
    /// The hand-written exposure JSON is byte for byte what JSONEncoder writes with the CLI's
    /// settings (pretty, sorted keys, snake_case, RFC 3339 times), including empty arrays, nulls,
    /// inherited VMs and names that need escaping; chunked output concatenates to the same bytes.
    @Test(arguments: StoreBackend.all) func handWrittenJSONMatchesJSONEncoder(_ b: StoreBackend) throws {
        try b.with { l in
            let odd = try l.make("quote\" back\\ nl\n tab\t ctl\u{1}\u{1F} del\u{7F} é/ü \u{2028}", at: day(0), owner: "o/wn\"er")
            try l.ran(odd, day(1), day(3)); try l.ran(odd, day(2), nil, kind: .stored)
            let plain = try l.make("plain", at: day(0)); try l.ran(plain, day(2), day(2.5))
            let clone = try l.make("clone", at: day(4), kind: .cloned, parent: odd)
            try l.make("clone-of-clone", at: day(5), kind: .copied, parent: clone)
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            enc.keyEncodingStrategy = .convertToSnakeCase
            enc.dateEncodingStrategy = .custom { date, encoder in
                var c = encoder.singleValueContainer()
                try c.encode(LedgerTime.rfc3339(LedgerTime.micros(date)))
            }
            for (a, b) in [(day(1.5), day(2.2)), (day(30), day(31))] {
                let report = try l.exposure(host: hostH, from: a, to: b, now: day(40))
                var bytes: [UInt8] = []
                var chunks = 0
                try report.writeJSON { bytes += $0; chunks += 1 }
                let expected = Array(try enc.encode(report)) + [0x0A]
                #expect(chunks >= 1)
                #expect(bytes == expected, "\(String(decoding: bytes, as: UTF8.self))\n---\n\(String(decoding: expected, as: UTF8.self))")
            }
            #expect(try l.exposure(host: hostH, from: day(1.5), to: day(2.2), now: day(40)).vms.count == 4)
        }
    }
}
