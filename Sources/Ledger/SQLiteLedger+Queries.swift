import Foundation
import GRDB
import WardenCore

/// The query primitives of ``LedgerQueries`` in SQL. The algorithms (exposure, lineage, census)
/// are shared by every backend and live in LedgerQueries.swift.
extension SQLiteLedger: LedgerQueries {
    public func residencies(on host: HostName, overlapping from: Date, _ to: Date, now: Date) throws -> [ResidencyRecord] {
        let t1 = LedgerTime.micros(from), t2 = LedgerTime.micros(to), nowUs = LedgerTime.micros(now)
        // residency_by_host_cover (host, from_us, to_us, vm, kind) covers the range; open intervals end at `now`.
        return try database.read { db in
            let s = try db.cachedStatement(sql: """
                SELECT vm, host, kind, from_us, to_us FROM residency
                WHERE host = ? AND from_us <= ?
                  AND ((to_us IS NOT NULL AND to_us > ? AND to_us > from_us) OR (to_us IS NULL AND ? > ? AND ? > from_us))
                """)
            return try Row.fetchAll(s, arguments: [host.value, t2, t1, nowUs, t1, nowUs]).map(Rows.residency)
        }
    }

    /// Exposure from the direct intervals and the lineage families they touch: one scan of
    /// the host's intervals in the window, then every member of each touched family read in
    /// one range of `vms_by_family` (with the columns the report needs), and exposure carried
    /// down each family in memory. Same semantics as ``referenceExposure(host:from:to:now:)``
    /// (the tests compare them on the same fleets).
    public func exposure(host: HostName, from: Date, to: Date, now: Date = Date()) throws -> ExposureReport {
        guard from <= to else { throw WardenError(.invalidArgument, "the window's start is after its end") }
        let t1 = LedgerTime.micros(from), t2 = LedgerTime.micros(to), nowUs = LedgerTime.micros(now)
        let file = database.path
        let overlap = """
            host = :host AND from_us <= :t2
            AND ((to_us IS NOT NULL AND to_us > :t1 AND to_us > from_us) OR (to_us IS NULL AND :now > :t1 AND :now > from_us))
            """
        let args: StatementArguments = ["host": host.value, "t1": t1, "t2": t2, "now": nowUs]
        return try database.read { db in
            var intervals: [VMID: [ExposureInterval]] = [:]
            var direct: [VMID: Date] = [:]
            // The covering index residency_by_host_cover answers this scan without row lookups.
            let scan = try db.cachedStatement(sql: "SELECT vm, kind, from_us, to_us FROM residency WHERE \(overlap)")
            let rows = try RawCursor(scan, args, db: db)
            while try rows.next() {
                let kind: ResidencyRecord.Kind
                if rows.equals(1, "ran") { kind = .ran } else if rows.equals(1, "stored") { kind = .stored } else {
                    throw WardenError(.corrupt, "a residency row is malformed", file: file)
                }
                guard let vm = rows.uuid(0).map(VMID.init) else { throw WardenError(.corrupt, "a residency row is malformed", file: file) }
                let start = rows.int64(2), end = rows.int64OrNil(3)
                intervals[vm, default: []].append(ExposureInterval(kind: kind, from: LedgerTime.date(start), to: end.map(LedgerTime.date)))
                let since = LedgerTime.date(max(start, t1))
                if direct[vm].map({ since < $0 }) ?? true { direct[vm] = since }
            }
            guard !direct.isEmpty else { return ExposureReport(host: host, from: from, to: to, now: now, vms: []) }
            // Every member of the families of the directly exposed VMs, family by family. The
            // intervals name their VM's family (a row without one, which no writer leaves, is
            // looked up rather than left out).
            let s = try db.cachedStatement(sql: """
                WITH f AS (SELECT DISTINCT coalesce(family, (SELECT v.family FROM vms v WHERE v.id = residency.vm)) AS family
                           FROM residency WHERE \(overlap))
                SELECT m.family, \(Self.familyColumns("m")) FROM f JOIN vms m INDEXED BY vms_by_family ON m.family = f.family
                """)
            var exposed: [ExposedVM] = []
            exposed.reserveCapacity(direct.count * 2)
            var family: [FamilyMember] = []
            var current: [UInt8] = []
            let members = try RawCursor(s, args, db: db)
            while try members.next() {
                let fam = members.bytes(0)
                if !fam.elementsEqual(current) {
                    ExposureAssembly.exposeFamily(family, direct: direct, intervals: intervals, into: &exposed)
                    family.removeAll(keepingCapacity: true)
                    current = Array(fam)
                }
                family.append(try Self.familyMember(members, from: 1, file: file))
            }
            ExposureAssembly.exposeFamily(family, direct: direct, intervals: intervals, into: &exposed)
            return ExposureReport(host: host, from: from, to: to, now: now, vms: ExposureAssembly.inReportOrder(exposed))
        }
    }

    /// The columns ``familyMember(_:from:file:)`` reads, all in the index `vms_by_family`.
    static func familyColumns(_ table: String) -> String {
        ["id", "parent", "created_us", "name", "owner", "state", "generation", "parent_generation"].map { "\(table).\($0)" }.joined(separator: ", ")
    }

    static func familyMember(_ r: RawCursor, from i: Int32, file: String) throws -> FamilyMember {
        let parent = r.uuid(i + 1), parentGeneration = r.uuid(i + 7)
        guard let vm = r.uuid(i).map(VMID.init), let state = VMState(rawValue: r.string(i + 5)), let generation = r.uuid(i + 6),
              r.isNull(i + 1) || parent != nil, r.isNull(i + 7) || parentGeneration != nil else {
            throw WardenError(.corrupt, "a VM row is malformed", file: file)
        }
        return FamilyMember(id: vm, name: r.string(i + 3), owner: r.string(i + 4), state: state, generation: generation,
                            parent: parent.map(VMID.init), parentGeneration: parentGeneration, createdAt: LedgerTime.date(r.int64(i + 2)))
    }

    public func family(of id: VMID, limit: Int) throws -> [FamilyMember]? {
        let file = database.path
        return try database.read { db in
            guard let family = try String.fetchOne(db, sql: "SELECT family FROM vms WHERE id = ?", arguments: [id.description]) else { return nil }
            let s = try db.cachedStatement(sql: "SELECT \(Self.familyColumns("vms")) FROM vms INDEXED BY vms_by_family WHERE family = ? LIMIT ?")
            let rows = try RawCursor(s, [family, limit + 1], db: db)
            var out: [FamilyMember] = []
            while try rows.next() {
                out.append(try Self.familyMember(rows, from: 0, file: file))
                if out.count > limit { throw WardenError.limit("the lineage family of \(id) has more than \(limit) VMs") }
            }
            return out
        }
    }

    /// The ids of up to `limit` VMs, oldest rows first (benchmarks pick from them).
    public func vmIDs(limit: Int) throws -> [VMID] {
        try database.read { db in
            try String.fetchAll(db, sql: "SELECT id FROM vms ORDER BY rowid LIMIT ?", arguments: [limit]).compactMap(FastUUID.vmid)
        }
    }

    /// Children without their labels (the queries do not need them).
    public func children(of parents: [VMID]) throws -> [VMRecord] {
        try vmsWhere("parent", in: parents)
    }

    public func vms(withIDs ids: [VMID]) throws -> [VMRecord] {
        try vmsWhere("id", in: ids)
    }

    public func generationEvents(of vms: [VMID]) throws -> [VMID: [GenerationStep]] {
        let file = database.path
        return try database.read { db in
            var out: [VMID: [GenerationStep]] = [:]
            var rollbacks: [Int64: (VMID, Int)] = [:]
            // The partial index events_generation_steps holds every column read here.
            for start in stride(from: 0, to: vms.count, by: 500) {
                let batch = vms[start..<min(start + 500, vms.count)]
                let s = try db.cachedStatement(sql: """
                    SELECT vm, seq, kind, time_us, generation_before, generation_after FROM events INDEXED BY events_generation_steps
                    WHERE vm IN (\(Array(repeating: "?", count: batch.count).joined(separator: ",")))
                      AND generation_after IS NOT NULL AND generation_after IS NOT generation_before
                    """)
                let rows = try RawCursor(s, StatementArguments(batch.map(\.description)), db: db)
                while try rows.next() {
                    let seq = rows.int64(1)
                    guard let vm = rows.uuid(0).map(VMID.init), let kind = EventKind(rawValue: rows.string(2)), let after = rows.uuid(5),
                          rows.isNull(4) || rows.uuid(4) != nil else {
                        throw WardenError(.corrupt, "event \(seq) is malformed", file: file)
                    }
                    if kind == .rolledBack { rollbacks[seq] = (vm, out[vm]?.count ?? 0) }
                    out[vm, default: []].append(GenerationStep(generation: after, parentGeneration: rows.uuid(4), kind: kind, seq: seq,
                                                               time: LedgerTime.date(rows.int64(3)), snapshot: nil))
                }
            }
            // Rollbacks name the snapshot they went back to in their payload.
            let seqs = Array(rollbacks.keys)
            for start in stride(from: 0, to: seqs.count, by: 500) {
                let batch = seqs[start..<min(start + 500, seqs.count)]
                for r in try Row.fetchAll(db, sql: """
                    SELECT seq, CASE WHEN json_type(payload, '$.snapshot') = 'text' THEN json_extract(payload, '$.snapshot') END
                    FROM events WHERE seq IN (\(Array(repeating: "?", count: batch.count).joined(separator: ",")))
                    """, arguments: StatementArguments(batch)) {
                    if let (vm, i) = rollbacks[r[0] as Int64] { out[vm]?[i].snapshot = r[1] }
                }
            }
            return out.mapValues { $0.sorted { $0.seq < $1.seq } }
        }
    }

    public func snapshots(ofVMs vms: [VMID]) throws -> [SnapshotRecord] {
        try database.read { db in
            var out: [SnapshotRecord] = []
            for start in stride(from: 0, to: vms.count, by: 500) {
                let batch = vms[start..<min(start + 500, vms.count)]
                let marks = Array(repeating: "?", count: batch.count).joined(separator: ",")
                let s = try db.cachedStatement(sql: "SELECT * FROM snapshots WHERE vm IN (\(marks)) ORDER BY vm, created_us, id")
                out += try Row.fetchAll(s, arguments: StatementArguments(batch.map(\.description))).map { try Rows.snapshot($0) }
            }
            return out
        }
    }

    /// VM rows (without labels) whose `column` is one of `values`, in batches of 500 bound parameters.
    private func vmsWhere(_ column: String, in values: [VMID]) throws -> [VMRecord] {
        guard !values.isEmpty else { return [] }
        precondition(column == "id" || column == "parent")
        let file = database.path
        return try database.read { db in
            var out: [VMRecord] = []
            for start in stride(from: 0, to: values.count, by: 500) {
                let batch = values[start..<min(start + 500, values.count)]
                let marks = Array(repeating: "?", count: batch.count).joined(separator: ",")
                let s = try db.cachedStatement(sql: """
                    SELECT id, name, owner, state, generation, parent, parent_generation, created_us, updated_us, mac
                    FROM vms WHERE \(column) IN (\(marks))
                    """)
                for r in try Row.fetchAll(s, arguments: StatementArguments(batch.map(\.description))) {
                    out.append(try Rows.vm(r, file: file))
                }
            }
            return out
        }
    }

    public func censusFacts() throws -> [CensusFacts] {
        try database.read { db in
            var os: [String: String] = [:]
            // The bare json_extract takes its value from the row with max(seq) (SQLite's min/max rule).
            for r in try Row.fetchAll(db, sql: """
                SELECT vm, json_extract(payload, '$.os') AS os, max(seq) FROM events
                WHERE vm IS NOT NULL AND kind IN ('registered', 'discovered', 'copied', 'cloned', 'scanned')
                  AND json_type(payload, '$.os') = 'text'
                GROUP BY vm
                """) {
                os[r["vm"]] = r["os"]
            }
            let rows = try Row.fetchAll(db, sql: """
                SELECT v.id, v.name, v.owner, v.state, v.created_us, e.retired, e.started, e.scanned
                FROM vms v LEFT JOIN (
                    SELECT vm,
                           max(CASE WHEN kind = 'retired' THEN time_us END) AS retired,
                           max(CASE WHEN kind = 'started' THEN time_us END) AS started,
                           max(CASE WHEN kind = 'scanned' THEN time_us END) AS scanned
                    FROM events WHERE vm IS NOT NULL AND kind IN ('retired', 'started', 'scanned')
                    GROUP BY vm
                ) e ON e.vm = v.id
                """)
            return try rows.map { r in
                let idText: String = r["id"]
                guard let id = VMID(idText), let state = VMState(rawValue: r["state"]) else {
                    throw WardenError(.corrupt, "a VM row is malformed", file: database.path)
                }
                let retired: Int64? = r["retired"], started: Int64? = r["started"], scanned: Int64? = r["scanned"]
                return CensusFacts(id: id, name: r["name"], owner: r["owner"], state: state,
                                   createdAt: LedgerTime.date(r["created_us"]),
                                   retiredAt: retired.map(LedgerTime.date), lastStarted: started.map(LedgerTime.date),
                                   lastScan: scanned.map(LedgerTime.date), os: os[idText])
            }
        }
    }

    public func disks(withFingerprint fingerprint: Digest) throws -> [DiskRecord] {
        try database.read { db in
            let vms = try String.fetchAll(db, sql: "SELECT DISTINCT vm FROM disks WHERE fingerprint = ?",
                                          arguments: [fingerprint.description])
            return try vms.compactMap(VMID.init).flatMap { try Rows.fetchDisks(db, $0) }
                .filter { $0.fingerprint == fingerprint }
        }
    }

    public func disk(atPath path: String) throws -> DiskRecord? {
        try database.read { db in
            guard let r = try Row.fetchOne(db, sql: "SELECT vm, idx FROM disks WHERE path = ? ORDER BY vm, idx LIMIT 1",
                                           arguments: [path]),
                  let vm = VMID(r["vm"] as String) else { return nil }
            let idx: Int = r["idx"]
            return try Rows.fetchDisks(db, vm).first { $0.index == idx }
        }
    }
}
