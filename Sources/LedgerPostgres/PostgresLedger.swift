import AdvisoryStorage
import Foundation
import Ledger
import PostgresNIO
import WardenCore

/// The PostgreSQL ledger: the fleet's one ledger, behind the same ``LedgerStore`` protocol as
/// the SQLite ledger and passing the same store suite.
///
/// The Merkle log is global: appends take a transaction-level advisory lock, so concurrent
/// writers (several `warden serve` replicas) append one at a time, and an event, the subtree
/// hashes it completes and the signed checkpoint commit together or not at all. Checkpoints
/// are signed with the key of the host this store runs on (the server's key).
public final class PostgresLedger: LedgerStore, LedgerQueries, @unchecked Sendable {
    // @unchecked: the mutable state (the signing key, the frontier cache) is behind Locked.
    public let store: PostgresStore
    public let keysDirectory: String?
    public let localHost: HostName
    private let key = Locked<HostKey?>(nil)
    /// The log's right edge after the last commit this process made (reused when the tree
    /// has not grown since; reloaded otherwise).
    private let frontierCache = Locked<Merkle.Frontier?>(nil)

    /// - Parameter keysDirectory: where the signing key lives; nil: checkpoints are not signed.
    public init(store: PostgresStore, keysDirectory: String?, host: HostName = .current) {
        self.store = store
        self.keysDirectory = keysDirectory
        self.localHost = host
    }

    var location: String { store.location }

    func signingKey() throws -> HostKey? {
        guard let keysDirectory else { return nil }
        return try key.withLock { k in
            if let k { return k }
            let made = try HostKey.loadOrCreate(directory: keysDirectory, host: localHost)
            k = made
            return made
        }
    }

    // MARK: - Transactions

    public func atomically<T>(family: VMID?, _ body: () throws -> T) throws -> T {
        if store.inTransaction { return try body() }
        return try store.transaction {
            if let family {
                let root = try familyRoot(family)
                try store.query("SELECT pg_advisory_xact_lock_shared(\(PostgresMigrations.LockKey.writers))")
                try store.query("SELECT pg_advisory_xact_lock(hashtextextended(\("family:" + root), 0))")
            } else {
                try store.query("SELECT pg_advisory_xact_lock(\(PostgresMigrations.LockKey.writers))")
            }
            let result = try body()
            frontierCache.withLock { $0 = nil }
            return result
        }
    }

    /// The root ancestor of `vm` (bounded walk: a parent cycle cannot loop forever); the VM
    /// itself when it is unknown (a new family).
    func familyRoot(_ vm: VMID) throws -> String {
        try store.query("SELECT family FROM vms WHERE id = \(vm.description)").first.map { try $0.decode(String.self) } ?? vm.description
    }

    // MARK: - The write path

    /// Runs `body` in a transaction with the log locked; if it appended events, a signed
    /// checkpoint is stored in the same transaction.
    func logWrite<T>(_ body: (inout PGLogAppender) throws -> T) throws -> T {
        let key = try signingKey()
        let outer = store.inTransaction
        var committed: Merkle.Frontier?
        let result = try store.transaction { () -> T in
            var log = try PGLogAppender(self, cached: outer ? nil : frontierCache.withLock { $0 })
            let r = try body(&log)
            try log.flushNodes()
            if log.appended > 0, let key { try log.checkpoint(key: key) }
            committed = log.frontier
            return r
        }
        frontierCache.withLock { $0 = outer ? nil : committed }
        return result
    }

    /// The fleet's own ledger is the whole truth.
    public func fleetFreshness() throws -> FleetFreshness? { nil }

    /// The advisory store is not on PostgreSQL yet: policy facts that need findings are
    /// unknown, and rules that need them fail closed (docs/fleet.md).
    public var advisoryFacts: (any AdvisoryFacts)? { PostgresAdvisoryStore(store: store) }
    public var jobs: any JobQueue { PostgresJobQueue(store: store) }
    public var advisories: any AdvisoryStore { PostgresAdvisoryStore(store: store) }

    // MARK: - VMs

    public func createVM(_ vm: VMRecord, disks: [DiskRecord], event: NewEvent) throws -> (VMRecord, EventRecord) {
        var vm = vm
        vm.createdAt = LedgerTime.date(LedgerTime.micros(vm.createdAt))
        vm.updatedAt = LedgerTime.date(LedgerTime.micros(vm.updatedAt))
        let stored = vm
        return try logWrite { log in
            if let p = stored.parent, try !vmExists(p) {
                throw WardenError(.notFound, "parent VM \(p) is not in the ledger", file: location)
            }
            try insertVM(stored)
            for d in disks {
                var d = d
                d.vm = stored.id
                try insertDisk(d)
            }
            var e = event
            e.vm = stored.id
            if e.generationAfter == nil { e.generationAfter = stored.generation }
            return (stored, try log.append(e))
        }
    }

    func vmExists(_ id: VMID) throws -> Bool {
        try !store.query("SELECT 1 FROM vms WHERE id = \(id.description)").isEmpty
    }

    func insertVM(_ v: VMRecord) throws {
        try store.query("""
            INSERT INTO vms (id, name, owner, state, generation, parent, parent_generation, created_us, updated_us, mac, family)
            VALUES (\(v.id.description), \(v.name), \(v.owner), \(v.state.rawValue), \(PGRows.text(v.generation)),
                    \(v.parent?.description), \(v.parentGeneration.map(PGRows.text)), \(LedgerTime.micros(v.createdAt)),
                    \(LedgerTime.micros(v.updatedAt)), \(v.mac),
                    coalesce((SELECT family FROM vms WHERE id = \(v.parent?.description)), \(v.id.description)))
            """)
        try insertLabels(v)
    }

    func insertLabels(_ v: VMRecord) throws {
        guard !v.labels.isEmpty else { return }
        let keys = v.labels.keys.sorted()
        let values = keys.map { v.labels[$0]! }
        try store.query("""
            INSERT INTO vm_labels (vm, key, value) SELECT \(v.id.description), k, val FROM unnest(\(keys)::text[], \(values)::text[]) AS t(k, val)
            """)
    }

    func insertDisk(_ d: DiskRecord) throws {
        let chain = LedgerEntry.jsonText(.array(d.backingChain.map { .string($0) }))
        try store.query("""
            INSERT INTO disks (vm, idx, path, format, backing_chain, fingerprint, device, inode)
            VALUES (\(d.vm.description), \(d.index), \(d.path), \(d.format), \(chain), \(d.fingerprint?.description),
                    \(d.file.map { Int64(bitPattern: $0.device) }), \(d.file.map { Int64(bitPattern: $0.inode) }))
            """)
    }

    /// VM rows, with their labels.
    func fetchVMs(_ q: PostgresQuery) throws -> [VMRecord] {
        var out = try store.query(q).map { try PGRows.vm($0, location) }
        guard !out.isEmpty else { return out }
        let ids = out.map(\.id.description)
        var labels: [String: [String: String]] = [:]
        for r in try store.query("SELECT vm, key, value FROM vm_labels WHERE vm = ANY(\(ids))") {
            let (vm, k, v) = try r.decode((String, String, String).self)
            labels[vm, default: [:]][k] = v
        }
        for i in out.indices { out[i].labels = labels[out[i].id.description] ?? [:] }
        return out
    }

    public func vm(_ id: VMID) throws -> VMRecord? {
        try fetchVMs("SELECT \(unescaped: PGRows.vmColumns) FROM vms WHERE id = \(id.description)").first
    }

    public func resolveVM(_ reference: String) throws -> VMRecord {
        let ref = reference.trimmingCharacters(in: .whitespaces)
        guard !ref.isEmpty else { throw WardenError(.invalidArgument, "empty VM reference") }
        if let id = VMID(ref) {
            if let v = try vm(id) { return v }
            throw WardenError(.notFound, "no VM with id \(id)")
        }
        let byName = try fetchVMs("SELECT \(unescaped: PGRows.vmColumns) FROM vms WHERE name = \(ref) ORDER BY created_us, seq")
        if byName.count == 1 { return byName[0] }
        if byName.count > 1 {
            let live = byName.filter { $0.state != .retired }
            if live.count == 1 { return live[0] }
            throw WardenError(.conflict, "the name \(ref) is ambiguous: \(byName.map(\.id.description).joined(separator: ", ")); use an id")
        }
        let lower = ref.lowercased()
        if lower.count >= 4, lower.allSatisfy({ $0.isHexDigit || $0 == "-" }) {
            let hits = try fetchVMs("SELECT \(unescaped: PGRows.vmColumns) FROM vms WHERE starts_with(id, \(lower)) ORDER BY id COLLATE \"C\" LIMIT 2")
            if hits.count == 1 { return hits[0] }
            if hits.count > 1 { throw WardenError(.conflict, "the id prefix \(ref) is ambiguous; give more digits") }
        }
        throw WardenError(.notFound, "no VM named \(ref) or with an id starting with it")
    }

    public func listVMs() throws -> [VMRecord] {
        try fetchVMs("SELECT \(unescaped: PGRows.vmColumns) FROM vms ORDER BY created_us, id COLLATE \"C\"")
    }

    public func disks(of vm: VMID) throws -> [DiskRecord] {
        try store.query("SELECT * FROM disks WHERE vm = \(vm.description) ORDER BY idx").map { try PGRows.disk($0, location) }
    }

    public func updateVM(_ id: VMID, event: NewEvent, _ change: (inout VMRecord) throws -> Void) throws -> (VMRecord, EventRecord) {
        try logWrite { log in
            guard let old = try fetchVMs("SELECT \(unescaped: PGRows.vmColumns) FROM vms WHERE id = \(id.description) FOR UPDATE").first else {
                throw WardenError(.notFound, "no VM with id \(id)")
            }
            var new = old
            try change(&new)
            guard new.id == old.id else { throw WardenError(.invalidArgument, "a VM's id cannot change") }
            // Lineage is history (and a family is fixed when the VM is recorded).
            guard new.parent == old.parent else { throw WardenError(.invalidArgument, "a VM's parent cannot change") }
            var e = event
            e.vm = id
            if e.generationBefore == nil { e.generationBefore = old.generation }
            if e.generationAfter == nil { e.generationAfter = new.generation }
            let rec = try log.append(e)
            new.updatedAt = rec.time
            new.createdAt = LedgerTime.date(LedgerTime.micros(new.createdAt))
            try store.query("""
                UPDATE vms SET name = \(new.name), owner = \(new.owner), state = \(new.state.rawValue),
                    generation = \(PGRows.text(new.generation)),
                    parent_generation = \(new.parentGeneration.map(PGRows.text)), created_us = \(LedgerTime.micros(new.createdAt)),
                    updated_us = \(LedgerTime.micros(new.updatedAt)), mac = \(new.mac)
                WHERE id = \(id.description)
                """)
            if new.labels != old.labels {
                try store.query("DELETE FROM vm_labels WHERE vm = \(id.description)")
                try insertLabels(new)
            }
            return (new, rec)
        }
    }

    public func replaceDisks(of vm: VMID, with disks: [DiskRecord]) throws {
        try store.transaction {
            guard try vmExists(vm) else { throw WardenError(.notFound, "no VM with id \(vm)") }
            try store.query("DELETE FROM disks WHERE vm = \(vm.description)")
            for d in disks {
                var d = d
                d.vm = vm
                try insertDisk(d)
            }
        }
    }

    public func vms(withDisk path: String, file: DiskRecord.FileID?) throws -> [VMRecord] {
        let dev = file.map { Int64(bitPattern: $0.device) }, ino = file.map { Int64(bitPattern: $0.inode) }
        return try fetchVMs("""
            SELECT \(unescaped: PGRows.vmColumns) FROM vms WHERE id IN (
                SELECT vm FROM disks WHERE path = \(path) OR (\(dev)::bigint IS NOT NULL AND device = \(dev) AND inode = \(ino)))
            ORDER BY created_us, id COLLATE "C"
            """)
    }

    // MARK: - Hosts and residency

    public func addHost(_ host: HostRecord) throws {
        try store.transaction {
            if try !store.query("SELECT 1 FROM hosts WHERE name = \(host.name.value)").isEmpty {
                throw WardenError(.conflict, "host \(host.name) is already in the ledger")
            }
            let labels = LedgerEntry.payloadText(host.labels.mapValues { JSONValue.string($0) })
            try store.query("""
                INSERT INTO hosts (name, labels, public_key, added_us)
                VALUES (\(host.name.value), \(labels), \(host.publicKey), \(LedgerTime.micros(host.addedAt)))
                """)
        }
    }

    public func host(_ name: HostName) throws -> HostRecord? {
        try store.query("SELECT * FROM hosts WHERE name = \(name.value)").first.map { try PGRows.host($0, location) }
    }

    public func listHosts() throws -> [HostRecord] {
        try store.query("SELECT * FROM hosts ORDER BY name COLLATE \"C\"").map { try PGRows.host($0, location) }
    }

    public func openResidency(vm: VMID, host: HostName, kind: ResidencyRecord.Kind, at: Date) throws {
        try store.transaction {
            // One open interval per (vm, kind, host), also under concurrent calls.
            try store.query("SELECT pg_advisory_xact_lock(hashtextextended(\("residency:\(vm):\(kind.rawValue):\(host.value)"), 0))")
            let open = try store.query("""
                SELECT 1 FROM residency WHERE vm = \(vm.description) AND kind = \(kind.rawValue) AND host = \(host.value) AND to_us IS NULL
                """)
            if !open.isEmpty { return }
            try store.query("""
                INSERT INTO residency (vm, host, kind, from_us, to_us)
                VALUES (\(vm.description), \(host.value), \(kind.rawValue), \(LedgerTime.micros(at)), NULL)
                """)
        }
    }

    public func closeResidency(vm: VMID, host: HostName, kind: ResidencyRecord.Kind, at: Date) throws {
        try store.query("""
            UPDATE residency SET to_us = GREATEST(from_us, \(LedgerTime.micros(at)))
            WHERE vm = \(vm.description) AND kind = \(kind.rawValue) AND host = \(host.value) AND to_us IS NULL
            """)
    }

    public func residency(of vm: VMID) throws -> [ResidencyRecord] {
        try store.query("SELECT * FROM residency WHERE vm = \(vm.description) ORDER BY from_us, id")
            .map { try PGRows.residency($0, location) }
    }

    // MARK: - Snapshots

    public func addSnapshot(_ s: SnapshotRecord) throws {
        try store.transaction {
            guard try vmExists(s.vm) else { throw WardenError(.notFound, "no VM with id \(s.vm)") }
            try store.query("""
                INSERT INTO snapshots (vm, name, generation, created_us, inventory_key)
                VALUES (\(s.vm.description), \(s.name), \(PGRows.text(s.generation)), \(LedgerTime.micros(s.createdAt)),
                        \(s.inventoryKey?.description))
                """)
        }
    }

    public func snapshots(of vm: VMID) throws -> [SnapshotRecord] {
        try store.query("SELECT * FROM snapshots WHERE vm = \(vm.description) ORDER BY created_us, id")
            .map { try PGRows.snapshot($0, location) }
    }

    // MARK: - Events

    public func append(_ event: NewEvent) throws -> EventRecord {
        try logWrite { log in try log.append(event) }
    }

    /// Appends several events in one transaction (one checkpoint for all).
    public func append(_ events: [NewEvent]) throws -> [EventRecord] {
        try logWrite { log in try events.map { try log.append($0) } }
    }

    public func ingest(_ events: [IngestedEvent], from host: HostName) throws -> [IngestOutcome] {
        try IngestedEvent.requireValidIDs(events)
        return try logWrite { log in
            // Under the log lock: a concurrent report of the same ids waits, then finds them.
            var known: [String: Int64] = [:]
            for r in try store.query("SELECT id, seq FROM ingested WHERE host = \(host.value) AND id = ANY(\(events.map(\.id)))") {
                let (id, seq) = try r.decode((String, Int64).self)
                known[id] = seq
            }
            var newIDs: [String] = [], newSeqs: [Int64] = []
            let out = try events.map { item -> IngestOutcome in
                if let seq = known[item.id] { return IngestOutcome(id: item.id, seq: seq, duplicate: true) }
                var e = item.event
                e.host = host
                let rec = try log.append(e)
                known[item.id] = rec.seq
                newIDs.append(item.id); newSeqs.append(rec.seq)
                return IngestOutcome(id: item.id, seq: rec.seq, duplicate: false)
            }
            if !newIDs.isEmpty {
                try store.query("""
                    INSERT INTO ingested (host, id, seq) SELECT \(host.value), i, s FROM unnest(\(newIDs)::text[], \(newSeqs)::bigint[]) AS t(i, s)
                    """)
            }
            return out
        }
    }

    public func events(after seq: Int64, limit: Int) throws -> [EventRecord] {
        try store.query("SELECT * FROM events WHERE seq > \(seq) ORDER BY seq LIMIT \(max(0, limit))").map { try PGRows.event($0, location) }
    }

    public func upsertVM(_ vm: VMRecord) throws {
        try store.transaction {
            if let p = vm.parent, try !vmExists(p) {
                throw WardenError(.conflict, "parent VM \(p) is not in the ledger yet", file: location)
            }
            if try vmExists(vm.id) {
                try store.query("""
                    UPDATE vms SET name = \(vm.name), owner = \(vm.owner), state = \(vm.state.rawValue),
                        generation = \(PGRows.text(vm.generation)), parent = \(vm.parent?.description),
                        parent_generation = \(vm.parentGeneration.map(PGRows.text)), created_us = \(LedgerTime.micros(vm.createdAt)),
                        updated_us = \(LedgerTime.micros(vm.updatedAt)), mac = \(vm.mac)
                    WHERE id = \(vm.id.description)
                    """)
                try store.query("DELETE FROM vm_labels WHERE vm = \(vm.id.description)")
                try insertLabels(vm)
            } else {
                try insertVM(vm)
            }
        }
    }

    public func replaceResidency(vm: VMID, host: HostName, with intervals: [ResidencyRecord]) throws {
        try store.transaction {
            guard try vmExists(vm) else { throw WardenError(.notFound, "no VM with id \(vm)") }
            try store.query("DELETE FROM residency WHERE vm = \(vm.description) AND host = \(host.value)")
            for r in intervals.sorted(by: { $0.from < $1.from }) where r.vm == vm && r.host == host {
                let from = LedgerTime.micros(r.from)
                try store.query("""
                    INSERT INTO residency (vm, host, kind, from_us, to_us)
                    VALUES (\(vm.description), \(host.value), \(r.kind.rawValue), \(from), \(r.to.map { max(LedgerTime.micros($0), from) }))
                    """)
            }
        }
    }

    public func events(of vm: VMID) throws -> [EventRecord] {
        try store.query("SELECT * FROM events WHERE vm = \(vm.description) ORDER BY seq").map { try PGRows.event($0, location) }
    }

    public func latestEvents(kind: EventKind, mentioning: String?) throws -> [EventRecord] {
        try store.query("""
            SELECT * FROM (SELECT DISTINCT ON (vm) * FROM events WHERE kind = \(kind.rawValue) AND vm IS NOT NULL ORDER BY vm, seq DESC) l
            WHERE \(mentioning)::text IS NULL OR strpos(l.payload, \(mentioning)::text) > 0
            """).map { try PGRows.event($0, location) }
    }

    public func latestHostEvent(kind: EventKind, host: HostName) throws -> EventRecord? {
        try store.query("""
            SELECT * FROM events WHERE kind = \(kind.rawValue) AND host = \(host.value) AND vm IS NULL ORDER BY seq DESC LIMIT 1
            """).first.map { try PGRows.event($0, location) }
    }

    public func event(seq: Int64) throws -> EventRecord? {
        try store.query("SELECT * FROM events WHERE seq = \(seq)").first.map { try PGRows.event($0, location) }
    }

    public func eventCount() throws -> Int64 {
        try PGLogAppender.treeSize(store)
    }

    // MARK: - Queries

    public func descendants(of vm: VMID) throws -> [VMRecord] {
        try fetchVMs("""
            WITH RECURSIVE d(id) AS (
                SELECT id FROM vms WHERE parent = \(vm.description)
                UNION SELECT v.id FROM vms v JOIN d ON v.parent = d.id
            )
            SELECT \(unescaped: PGRows.vmColumns.split(separator: ",").map { "vms." + $0.trimmingCharacters(in: .whitespaces) }.joined(separator: ", "))
            FROM vms JOIN d ON vms.id = d.id ORDER BY vms.created_us, vms.id COLLATE "C"
            """)
    }

    public func liveReplicas(of vm: VMID) throws -> [VMRecord] {
        guard try vmExists(vm) else { throw WardenError(.notFound, "no VM with id \(vm)") }
        return try fetchVMs("""
            SELECT \(unescaped: PGRows.vmColumns) FROM vms WHERE family = \(try familyRoot(vm)) AND state <> 'retired'
            ORDER BY created_us, id COLLATE "C"
            """)
    }

    public func lastScan(of vm: VMID) throws -> Date? {
        try store.query("SELECT max(time_us) FROM events WHERE vm = \(vm.description) AND kind = 'scanned'")
            .first.flatMap { try $0.decode(Int64?.self) }.map(LedgerTime.date)
    }

    // MARK: - Query primitives (LedgerQueries)

    public func residencies(on host: HostName, overlapping from: Date, _ to: Date, now: Date) throws -> [ResidencyRecord] {
        let t1 = LedgerTime.micros(from), t2 = LedgerTime.micros(to), n = LedgerTime.micros(now)
        return try store.query("""
            SELECT vm, host, kind, from_us, to_us FROM residency
            WHERE host = \(host.value) AND from_us <= \(t2)
              AND ((to_us IS NOT NULL AND to_us > \(t1) AND to_us > from_us) OR (to_us IS NULL AND \(n) > \(t1) AND \(n) > from_us))
            """).map { try PGRows.residency($0, location) }
    }

    /// Exposure as on SQLite: the direct intervals, then every member of each lineage family
    /// they touch (one range of `vms_by_family` each), exposure carried down each family in
    /// memory. Same semantics as ``referenceExposure(host:from:to:now:)`` (the store suite
    /// compares them).
    public func exposure(host: HostName, from: Date, to: Date, now: Date = Date()) throws -> ExposureReport {
        guard from <= to else { throw WardenError(.invalidArgument, "the window's start is after its end") }
        let t1 = LedgerTime.micros(from), t2 = LedgerTime.micros(to), n = LedgerTime.micros(now)
        let nested = store.inTransaction
        return try store.transaction {
        // The planner cannot estimate how many families a window touches and would hash the
        // whole vms table; index lookups per family are what this query needs. JIT would cost
        // 20 ms of compilation on every call. Both settings last for this transaction only —
        // and when it is a caller's, they are put back before returning to it.
        try store.query("SET LOCAL jit = off")
        try store.query("SET LOCAL enable_hashjoin = off")
        try store.query("SET LOCAL enable_mergejoin = off")
        defer {
            if nested {
                for setting in ["jit", "enable_hashjoin", "enable_mergejoin"] {
                    _ = try? store.query(PostgresQuery(unsafeSQL: "SET LOCAL \(setting) TO DEFAULT"))
                }
            }
        }
        var intervals: [VMID: [ExposureInterval]] = [:]
        var direct: [VMID: Date] = [:]
        for r in try store.query("""
            SELECT vm, kind, from_us, to_us FROM residency
            WHERE host = \(host.value) AND from_us <= \(t2)
              AND ((to_us IS NOT NULL AND to_us > \(t1) AND to_us > from_us) OR (to_us IS NULL AND \(n) > \(t1) AND \(n) > from_us))
            """) {
            // Decoded by position: tens of thousands of rows.
            guard let (vmText, kindText, start, end) = try? r.decode((String, String, Int64, Int64?).self),
                  let vm = FastUUID.vmid(vmText), let kind = ResidencyRecord.Kind(rawValue: kindText) else {
                throw WardenError(.corrupt, "a residency row is malformed", file: location)
            }
            intervals[vm, default: []].append(ExposureInterval(kind: kind, from: LedgerTime.date(start), to: end.map(LedgerTime.date)))
            let since = LedgerTime.date(max(start, t1))
            if direct[vm].map({ since < $0 }) ?? true { direct[vm] = since }
        }
        guard !direct.isEmpty else { return ExposureReport(host: host, from: from, to: to, now: now, vms: []) }
        // Rows grouped by family here rather than sorted by the server.
        var families: [String: [FamilyMember]] = [:]
        for r in try store.query("""
            WITH f AS (
                SELECT DISTINCT coalesce(r.family, (SELECT v.family FROM vms v WHERE v.id = r.vm)) AS family FROM residency r
                WHERE r.host = \(host.value) AND r.from_us <= \(t2)
                  AND ((r.to_us IS NOT NULL AND r.to_us > \(t1) AND r.to_us > r.from_us) OR (r.to_us IS NULL AND \(n) > \(t1) AND \(n) > r.from_us)))
            SELECT \(unescaped: PGRows.familyColumns.split(separator: ",").map { "m." + $0.trimmingCharacters(in: .whitespaces) }.joined(separator: ", "))
            FROM f JOIN vms m ON m.family = f.family
            """) {
            let (family, member) = try PGRows.familyMember(r, location)
            families[family, default: []].append(member)
        }
        var exposed: [ExposedVM] = []
        exposed.reserveCapacity(direct.count * 2)
        for members in families.values { ExposureAssembly.exposeFamily(members, direct: direct, intervals: intervals, into: &exposed) }
        return ExposureReport(host: host, from: from, to: to, now: now, vms: ExposureAssembly.inReportOrder(exposed))
        }
    }

    public func family(of id: VMID, limit: Int) throws -> [FamilyMember]? {
        guard let family = try store.query("SELECT family FROM vms WHERE id = \(id.description)").first.map({ try $0.decode(String.self) }) else {
            return nil
        }
        let rows = try store.query("SELECT \(unescaped: PGRows.familyColumns) FROM vms WHERE family = \(family) LIMIT \(limit + 1)")
        if rows.count > limit { throw WardenError.limit("the lineage family of \(id) has more than \(limit) VMs") }
        return try rows.map { try PGRows.familyMember($0, location).member }
    }

    public func children(of parents: [VMID]) throws -> [VMRecord] {
        guard !parents.isEmpty else { return [] }
        return try store.query("SELECT \(unescaped: PGRows.vmColumns) FROM vms WHERE parent = ANY(\(parents.map(\.description)))")
            .map { try PGRows.vm($0, location) }
    }

    public func vms(withIDs ids: [VMID]) throws -> [VMRecord] {
        guard !ids.isEmpty else { return [] }
        return try store.query("SELECT \(unescaped: PGRows.vmColumns) FROM vms WHERE id = ANY(\(ids.map(\.description)))")
            .map { try PGRows.vm($0, location) }
    }

    public func generationEvents(of vms: [VMID]) throws -> [VMID: [GenerationStep]] {
        guard !vms.isEmpty else { return [:] }
        var out: [VMID: [GenerationStep]] = [:]
        var rollbacks: [Int64: (VMID, Int)] = [:]
        // The partial index events_generation_steps holds every column read here.
        for r in try store.query("""
            SELECT vm, seq, kind, time_us, generation_before, generation_after FROM events
            WHERE vm = ANY(\(vms.map(\.description))) AND generation_after IS NOT NULL
              AND generation_after IS DISTINCT FROM generation_before
            ORDER BY vm, seq
            """) {
            let c = Cells(r, "events", location)
            guard let kind = EventKind(rawValue: try c.get("kind")) else { throw c.bad("kind") }
            let vm = try c.vmid("vm"), seq = try c.get("seq", Int64.self)
            if kind == .rolledBack { rollbacks[seq] = (vm, out[vm]?.count ?? 0) }
            out[vm, default: []].append(GenerationStep(
                generation: try c.uuid("generation_after"), parentGeneration: try c.optionalUUID("generation_before"),
                kind: kind, seq: seq, time: try c.time("time_us"), snapshot: nil))
        }
        // Rollbacks name the snapshot they went back to in their payload.
        if !rollbacks.isEmpty {
            for r in try store.query("""
                SELECT seq, CASE WHEN jsonb_typeof(payload::jsonb -> 'snapshot') = 'string' THEN payload::jsonb ->> 'snapshot' END AS snapshot
                FROM events WHERE seq = ANY(\(Array(rollbacks.keys))::bigint[])
                """) {
                let c = Cells(r, "events", location)
                if let (vm, i) = rollbacks[try c.get("seq", Int64.self)] { out[vm]?[i].snapshot = try c.optional("snapshot", String.self) }
            }
        }
        return out
    }

    public func snapshots(ofVMs vms: [VMID]) throws -> [SnapshotRecord] {
        guard !vms.isEmpty else { return [] }
        return try store.query("SELECT * FROM snapshots WHERE vm = ANY(\(vms.map(\.description))) ORDER BY vm, created_us, id")
            .map { try PGRows.snapshot($0, location) }
    }

    public func censusFacts() throws -> [CensusFacts] {
        var os: [String: String] = [:]
        for r in try store.query("""
            SELECT DISTINCT ON (vm) vm, payload::jsonb ->> 'os' AS os FROM events
            WHERE vm IS NOT NULL AND kind IN ('registered', 'discovered', 'copied', 'cloned', 'scanned')
              AND jsonb_typeof(payload::jsonb -> 'os') = 'string'
            ORDER BY vm, seq DESC
            """) {
            let (vm, value) = try r.decode((String, String).self)
            os[vm] = value
        }
        return try store.query("""
            SELECT v.id, v.name, v.owner, v.state, v.created_us, e.retired, e.started, e.scanned
            FROM vms v LEFT JOIN (
                SELECT vm,
                       max(CASE WHEN kind = 'retired' THEN time_us END) AS retired,
                       max(CASE WHEN kind = 'started' THEN time_us END) AS started,
                       max(CASE WHEN kind = 'scanned' THEN time_us END) AS scanned
                FROM events WHERE vm IS NOT NULL AND kind IN ('retired', 'started', 'scanned')
                GROUP BY vm
            ) e ON e.vm = v.id
            """).map { r in
            let c = Cells(r, "vms", location)
            let id = try c.vmid("id")
            guard let state = VMState(rawValue: try c.get("state")) else { throw c.bad("state") }
            return CensusFacts(id: id, name: try c.get("name"), owner: try c.get("owner"), state: state,
                               createdAt: try c.time("created_us"), retiredAt: try c.optionalTime("retired"),
                               lastStarted: try c.optionalTime("started"), lastScan: try c.optionalTime("scanned"),
                               os: os[id.description])
        }
    }

    public func disks(withFingerprint fingerprint: Digest) throws -> [DiskRecord] {
        try store.query("SELECT * FROM disks WHERE fingerprint = \(fingerprint.description) ORDER BY vm, idx")
            .map { try PGRows.disk($0, location) }
    }

    public func disk(atPath path: String) throws -> DiskRecord? {
        try store.query("SELECT * FROM disks WHERE path = \(path) ORDER BY vm COLLATE \"C\", idx LIMIT 1")
            .first.map { try PGRows.disk($0, location) }
    }
}
