import Foundation
import GRDB
import WardenCore

/// Generates a realistic synthetic fleet in the ledger, in bulk (`warden dev synth`).
///
/// Over a simulated span (two years by default), VMs are registered or discovered, started and
/// stopped on hosts (ran-on residency), stored on hosts (stored-on residency) and moved,
/// migrated while running, snapshotted and rolled back (new generations), cloned and copied
/// into lineage chains (a copy keeps its parent's disk fingerprint, a clone gets a new one),
/// scanned, patched, exported, transferred to other owners, judged by policy and retired.
/// Every kind of event occurs. The same seed gives the same fleet (ids, times, payloads).
///
/// Events go through the same append path as every command (canonical entries, Merkle
/// subtrees, one signed checkpoint per batch transaction).
public struct LedgerSynth {
    public struct Options: Sendable {
        public var vms: Int
        public var events: Int
        public var seed: UInt64 = 1
        public var hosts: Int = 16
        public var owners: Int = 40
        /// Events per transaction (and per checkpoint).
        public var batch: Int = 20_000
        /// SQLite page cache of the writing connection while synthesizing, in MiB (the fleet's
        /// indexes are written at random places; a miss costs a read, and an evicted dirty page
        /// a write). Restored to the normal 64 MiB afterwards.
        public var cacheMiB: Int = 1024
        public var start = Date(timeIntervalSince1970: 1_730_419_200) // 2024-11-01T00:00:00Z
        public var span: TimeInterval = 730 * 86_400
        public init(vms: Int, events: Int) { self.vms = vms; self.events = events }
    }

    public struct Summary: Codable, Sendable {
        public var vms = 0
        public var events = 0
        public var hosts = 0
        public var snapshots = 0
        public var residencyIntervals = 0
        public var seconds = 0.0
        public var eventsPerSecond = 0.0
        public var kinds: [String: Int] = [:]
        public var maxLineageDepth = 0
    }

    struct VM {
        var id: VMID
        var generation: UUID
        var owner: Int
        var state: VMState
        var storageHost: Int
        var runHost: Int = -1
        var ranRow: Int64 = 0
        var storedRow: Int64 = 0
        var snapshots = 0
        var lastSnapshotGeneration: UUID?
        var fingerprint: String
        var depth: Int
    }

    let ledger: SQLiteLedger
    let o: Options

    public init(ledger: SQLiteLedger, options: Options) throws {
        guard options.vms >= 1, options.events >= options.vms, options.hosts >= 2, options.owners >= 1, options.batch >= 1 else {
            throw WardenError(.invalidArgument, "synth needs at least 1 VM, at least as many events as VMs, and 2 hosts")
        }
        guard options.vms <= 50_000_000, options.events <= 500_000_000 else {
            throw WardenError(.limitExceeded, "synth is limited to 50M VMs and 500M events")
        }
        self.ledger = ledger; o = options
    }

    public func run(progress: ((Int, Int) -> Void)? = nil) throws -> Summary {
        var rng = SeededRandom(seed: o.seed)
        var summary = Summary()
        let began = Date()
        let hostNames = (0..<o.hosts).map { HostName(String(format: "synth-host-%02d", $0))! }
        // Hosts (idempotent across runs on one database).
        try ledger.database.write { db in
            for (i, h) in hostNames.enumerated() {
                try db.execute(sql: "INSERT OR IGNORE INTO hosts (name, labels, public_key, added_us) VALUES (?, ?, NULL, ?)",
                               arguments: [h.value, Rows.json(["zone": "zone-\(i % 4)", "role": i % 5 == 0 ? "storage" : "compute"]),
                                           LedgerTime.micros(o.start)])
            }
        }
        summary.hosts = o.hosts
        try ledger.database.pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA cache_size = -\(max(2, o.cacheMiB) * 1024)")
        }
        defer {
            _ = try? ledger.database.pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA cache_size = -65536") }
        }
        var vms: [VM] = []
        vms.reserveCapacity(o.vms)
        var live: [Int32] = []          // indices of VMs that are not retired (swap-removed)
        var livePos: [Int32] = []       // position of each VM in `live`, or -1
        livePos.reserveCapacity(o.vms); live.reserveCapacity(o.vms)
        var lastClone = -1
        let stepUS = max(1, Int64(o.span * 1_000_000) / Int64(o.events))
        var now = LedgerTime.micros(o.start)
        var step = 0

        func uuid() -> UUID {
            var a = rng.next(), b = rng.next()
            a = (a & ~0xF000) | 0x4000              // version 4 (bytes 6–7 of the big-endian layout)
            b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000
            let x = a.bigEndian, y = b.bigEndian
            return withUnsafeBytes(of: (x, y)) { p in
                UUID(uuid: (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]))
            }
        }
        func fingerprint() -> String {
            var s = "sha256:"
            for _ in 0..<4 { s += String(format: "%016llx", rng.next()) }
            return s
        }
        // Actors drawn from a table (the same draws as formatting them each time).
        let actors = (0..<200).map { u in hostNames.map { "user\(u)@\($0.value)" } }
        func actor() -> String { let u = rng.below(200); return actors[u][rng.below(o.hosts)] }
        let kindIndex = Dictionary(uniqueKeysWithValues: EventKind.allCases.enumerated().map { ($1, $0) })
        var kindCounts = [Int](repeating: 0, count: EventKind.allCases.count)
        let owners = (0..<o.owners).map { "team-\($0)" }

        while step < o.events {
            let batchEnd = min(o.events, step + o.batch)
            try ledger.logWrite { db, log in
                let updVM = try db.cachedStatement(sql: "UPDATE vms SET state = ?, generation = ?, owner = ?, updated_us = ? WHERE id = ?")
                let insRes = try db.cachedStatement(sql: "INSERT INTO residency (vm, host, kind, from_us, to_us, family) VALUES (?1, ?2, ?3, ?4, NULL, \(Rows.familyOfVM))")
                let closeRes = try db.cachedStatement(sql: "UPDATE residency SET to_us = ? WHERE id = ?")
                let insSnap = try db.cachedStatement(sql: "INSERT INTO snapshots (vm, name, generation, created_us, inventory_key) VALUES (?, ?, ?, ?, NULL)")

                func open(_ v: Int, _ host: Int, _ kind: ResidencyRecord.Kind) throws -> Int64 {
                    try insRes.execute(arguments: [FastUUID.text(vms[v].id.uuid), hostNames[host].value, kind.rawValue, now])
                    summary.residencyIntervals += 1
                    return db.lastInsertedRowID
                }
                func close(_ row: Int64) throws { if row != 0 { try closeRes.execute(arguments: [now, row]) } }
                func save(_ v: Int) throws {
                    try updVM.execute(arguments: [vms[v].state.rawValue, LedgerEntry.uuidText(vms[v].generation),
                                                  owners[vms[v].owner], now, FastUUID.text(vms[v].id.uuid)])
                }
                func event(_ kind: EventKind, _ v: Int, before: UUID?, payload: [String: JSONValue] = [:]) throws {
                    _ = try log.append(db, NewEvent(kind: kind, vm: vms[v].id, actor: actor(), host: hostNames[vms[v].runHost >= 0 ? vms[v].runHost : vms[v].storageHost],
                                                    time: LedgerTime.date(now), generationBefore: before,
                                                    generationAfter: vms[v].generation, payload: payload))
                    kindCounts[kindIndex[kind]!] += 1
                    summary.events += 1
                }
                func create(parent: Int?) throws {
                    let idx = vms.count
                    var kind: EventKind
                    var fp = fingerprint()
                    var depth = 0
                    var owner = rng.below(o.owners)
                    if let p = parent {
                        kind = rng.below(2) == 0 ? .cloned : .copied
                        if kind == .copied { fp = vms[p].fingerprint }
                        depth = vms[p].depth + 1
                        if rng.below(4) != 0 { owner = vms[p].owner }
                    } else {
                        let r = rng.below(20)
                        kind = r < 13 ? .registered : (r < 18 ? .discovered : .created)
                    }
                    let host = parent.map { rng.below(3) == 0 ? rng.below(o.hosts) : vms[$0].storageHost } ?? rng.below(o.hosts)
                    let vm = VM(id: VMID(uuid()), generation: uuid(), owner: owner,
                                state: kind == .discovered ? .discovered : (kind == .created ? .stopped : .registered),
                                storageHost: host, fingerprint: fp, depth: depth)
                    vms.append(vm)
                    livePos.append(Int32(live.count)); live.append(Int32(idx))
                    summary.maxLineageDepth = max(summary.maxLineageDepth, depth)
                    let rec = VMRecord(id: vm.id, name: "vm-\(idx)-\(vm.id.description.prefix(4))", owner: "team-\(owner)",
                                       labels: ["sensitivity": rng.below(5) == 0 ? "high" : "low", "env": rng.below(3) == 0 ? "prod" : "dev"],
                                       state: vm.state, generation: vm.generation, parent: parent.map { vms[$0].id },
                                       parentGeneration: parent.map { vms[$0].generation },
                                       createdAt: LedgerTime.date(now), updatedAt: LedgerTime.date(now))
                    try Rows.insertVM(db, rec)
                    let path = "/var/lib/warden/synth/\(vm.id).qcow2"
                    try Rows.insertDisk(db, DiskRecord(vm: vm.id, index: 0, path: path, format: "qcow2",
                                                       backingChain: depth > 0 && kind == .cloned ? ["/var/lib/warden/synth/base-\(depth % 7).qcow2"] : [],
                                                       fingerprint: Digest(fp)))
                    if rng.below(6) == 0 {
                        try Rows.insertDisk(db, DiskRecord(vm: vm.id, index: 1, path: "/var/lib/warden/synth/\(vm.id)-data.raw", format: "raw",
                                                           fingerprint: Digest(fingerprint())))
                    }
                    vms[idx].storedRow = try open(idx, host, .stored)
                    var payload: [String: JSONValue] = ["image": .string(path)]
                    if let p = parent {
                        payload["parent"] = .string(vms[p].id.description)
                        payload["parent_generation"] = .string(LedgerEntry.uuidText(vms[p].generation))
                        lastClone = idx
                    }
                    try event(kind, idx, before: nil, payload: payload)
                    summary.vms += 1
                }
                func retire(_ v: Int) throws {
                    try close(vms[v].ranRow); try close(vms[v].storedRow)
                    vms[v].ranRow = 0; vms[v].storedRow = 0; vms[v].runHost = -1
                    vms[v].state = .retired
                    let pos = Int(livePos[v]), lastIdx = Int(live[live.count - 1])
                    live[pos] = Int32(lastIdx); livePos[lastIdx] = Int32(pos)
                    live.removeLast(); livePos[v] = -1
                    try save(v)
                    try event(.retired, v, before: vms[v].generation)
                }

                while step < batchEnd {
                    now += stepUS / 2 + Int64(rng.below(Int(stepUS)))
                    let remainingCreates = o.vms - summary.vms
                    let remaining = o.events - step
                    if remainingCreates > 0 && (live.isEmpty || remainingCreates >= remaining || rng.below(remaining) < remainingCreates) {
                        var parent: Int?
                        if !live.isEmpty, rng.below(100) < 35 {
                            if lastClone >= 0, livePos[lastClone] >= 0, rng.below(2) == 0 { parent = lastClone }
                            else { parent = Int(live[rng.below(live.count)]) }
                        }
                        try create(parent: parent)
                        step += 1
                        continue
                    }
                    // Retirements are rare, and never leave the fleet without live VMs while
                    // creations remain.
                    let v = Int(live[rng.below(live.count)])
                    let gen = vms[v].generation
                    let r = rng.below(100)
                    if vms[v].state == .running {
                        switch r {
                        case 0..<28:
                            try close(vms[v].ranRow); vms[v].ranRow = 0
                            vms[v].state = .stopped; vms[v].runHost = -1
                            try save(v); try event(.stopped, v, before: gen)
                        case 28..<38:
                            var to = rng.below(o.hosts - 1); if to >= vms[v].runHost { to += 1 }
                            let from = vms[v].runHost
                            try close(vms[v].ranRow)
                            vms[v].runHost = to
                            vms[v].ranRow = try open(v, to, .ran)
                            try event(.migrated, v, before: gen, payload: ["from": .string(hostNames[from].value), "to": .string(hostNames[to].value)])
                        case 38..<48:
                            vms[v].snapshots += 1; vms[v].lastSnapshotGeneration = gen
                            try insSnap.execute(arguments: [vms[v].id.description, "snap-\(vms[v].snapshots)", LedgerEntry.uuidText(gen), now])
                            summary.snapshots += 1
                            try event(.snapshotted, v, before: gen, payload: ["snapshot": .string("snap-\(vms[v].snapshots)"), "live": .bool(true)])
                        case 48..<65:
                            try event(.scanned, v, before: gen, payload: Self.scanPayload(vulnerable: rng.below(40), worst: rng.below(5)))
                        case 65..<75:
                            try event(.patched, v, before: gen, payload: ["packages": .number(Double(1 + rng.below(30)))])
                        case 75..<88:
                            try event(.policyDecision, v, before: gen, payload: Self.decisionPayload(op: ["start", "migrate", "copy", "export"][rng.below(4)], effect: rng.below(10) == 0 ? "deny" : "allow", rule: "rule-\(rng.below(12))"))
                        case 88..<93:
                            try event(.exported, v, before: gen, payload: ["destination": .string("s3://backups/\(vms[v].id)")])
                        case 93..<96:
                            let from = vms[v].owner
                            vms[v].owner = rng.below(o.owners)
                            try save(v)
                            try event(.ownershipTransferred, v, before: gen, payload: ["from": .string("team-\(from)"), "to": .string("team-\(vms[v].owner)")])
                        default:
                            try event(.scanned, v, before: gen, payload: Self.scanPayload(vulnerable: 0, worst: 0))
                        }
                    } else {
                        switch r {
                        case 0..<40:
                            let host = rng.below(4) == 0 ? rng.below(o.hosts) : vms[v].storageHost
                            vms[v].runHost = host
                            vms[v].ranRow = try open(v, host, .ran)
                            vms[v].state = .running
                            try save(v); try event(.started, v, before: gen)
                        case 40..<48:
                            vms[v].snapshots += 1; vms[v].lastSnapshotGeneration = gen
                            try insSnap.execute(arguments: [vms[v].id.description, "snap-\(vms[v].snapshots)", LedgerEntry.uuidText(gen), now])
                            summary.snapshots += 1
                            try event(.snapshotted, v, before: gen, payload: ["snapshot": .string("snap-\(vms[v].snapshots)")])
                        case 48..<56:
                            if vms[v].snapshots > 0 {
                                vms[v].generation = uuid()
                                try save(v)
                                try event(.rolledBack, v, before: gen, payload: ["snapshot": .string("snap-\(1 + rng.below(vms[v].snapshots))")])
                            } else {
                                try event(.scanned, v, before: gen, payload: Self.scanPayload(vulnerable: rng.below(40), worst: rng.below(4)))
                            }
                        case 56..<68:
                            try event(.scanned, v, before: gen, payload: Self.scanPayload(vulnerable: rng.below(40), worst: rng.below(5)))
                        case 68..<74:
                            try event(.patched, v, before: gen, payload: ["packages": .number(Double(1 + rng.below(30))), "offline": .bool(true)])
                        case 74..<80:
                            var to = rng.below(o.hosts - 1); if to >= vms[v].storageHost { to += 1 }
                            let from = vms[v].storageHost
                            try close(vms[v].storedRow)
                            vms[v].storageHost = to
                            vms[v].storedRow = try open(v, to, .stored)
                            try event(.movedStorage, v, before: gen, payload: ["from": .string(hostNames[from].value), "to": .string(hostNames[to].value)])
                        case 80..<85:
                            try event(.exported, v, before: gen, payload: ["destination": .string("/backups/\(vms[v].id).qcow2")])
                        case 85..<88:
                            let from = vms[v].owner
                            vms[v].owner = rng.below(o.owners)
                            try save(v)
                            try event(.ownershipTransferred, v, before: gen, payload: ["from": .string("team-\(from)"), "to": .string("team-\(vms[v].owner)")])
                        case 88..<95:
                            try event(.policyDecision, v, before: gen, payload: Self.decisionPayload(op: "start", effect: rng.below(5) == 0 ? "deny" : "allow", rule: "rule-\(rng.below(12))"))
                        default: // 95..<100
                            // The last live VM is never retired (the rest of the run needs one).
                            if live.count > 1 { try retire(v) }
                            else { try event(.scanned, v, before: gen, payload: Self.scanPayload(vulnerable: 0, worst: 0)) }
                        }
                    }
                    step += 1
                }
            }
            progress?(step, o.events)
        }
        for (i, k) in EventKind.allCases.enumerated() where kindCounts[i] > 0 { summary.kinds[k.rawValue] = kindCounts[i] }
        summary.seconds = Date().timeIntervalSince(began)
        summary.eventsPerSecond = summary.seconds > 0 ? Double(summary.events) / summary.seconds : 0
        return summary
    }

    /// A `scanned` payload as `warden scan` writes it (counts and the worst severity, never findings' text).
    static func scanPayload(vulnerable: Int, worst: Int) -> [String: JSONValue] {
        var p: [String: JSONValue] = ["image": .string("/var/lib/libvirt/images/synth.qcow2"), "vulnerable": .number(Double(vulnerable))]
        if vulnerable > 0 { p["max_severity"] = .string(["low", "medium", "high", "critical", "medium"][worst % 5]) }
        return p
    }

    /// A `policy-decision` payload as the policy gate writes it.
    static func decisionPayload(op: String, effect: String, rule: String) -> [String: JSONValue] {
        ["op": .string(op), "effect": .string(effect), "rules": .array([.string(rule)]),
         "reasons": .array([.string(effect == "deny" ? "\(rule) denies \(op)" : "no rule denies \(op)")])]
    }
}
