import CSQLite
import Foundation
import GRDB
import WardenCore

/// Row mapping for the ledger tables.
enum Rows {
    static func json(_ labels: [String: String]) -> String {
        LedgerEntry.payloadText(labels.mapValues { JSONValue.string($0) })
    }

    static func labels(_ text: String) throws -> [String: String] {
        guard let d = try? JSONDecoder().decode([String: String].self, from: Data(text.utf8)) else {
            throw WardenError(.corrupt, "a label map in the database is not a JSON object of strings")
        }
        return d
    }

    static func uuid(_ s: String?, _ what: String) throws -> UUID? {
        guard let s else { return nil }
        guard let u = UUID(uuidString: s) else { throw WardenError(.corrupt, "\(what) in the database is not a UUID") }
        return u
    }

    static func treeSize(_ db: Database) throws -> Int64 {
        try Int64.fetchOne(db, sql: "SELECT coalesce(max(seq), 0) FROM events") ?? 0
    }

    static func vmExists(_ db: Database, _ id: VMID) throws -> Bool {
        try Row.fetchOne(db, sql: "SELECT 1 FROM vms WHERE id = ?", arguments: [id.description]) != nil
    }

    /// The family of the VM bound as `?1`, for a residency row's `family`.
    static let familyOfVM = "(SELECT family FROM vms WHERE id = ?1)"

    static func insertVM(_ db: Database, _ v: VMRecord) throws {
        let s = try db.cachedStatement(sql: """
            INSERT INTO vms (id, name, owner, state, generation, parent, parent_generation, created_us, updated_us, mac, family)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, coalesce((SELECT family FROM vms WHERE id = ?6), ?1))
            """)
        try s.execute(arguments: [FastUUID.text(v.id.uuid), v.name, v.owner, v.state.rawValue, LedgerEntry.uuidText(v.generation),
                                  v.parent.map { FastUUID.text($0.uuid) }, v.parentGeneration.map(LedgerEntry.uuidText),
                                  LedgerTime.micros(v.createdAt), LedgerTime.micros(v.updatedAt), v.mac])
        try insertLabels(db, v)
    }

    static func insertLabels(_ db: Database, _ v: VMRecord) throws {
        let s = try db.cachedStatement(sql: "INSERT INTO vm_labels (vm, key, value) VALUES (?, ?, ?)")
        guard !v.labels.isEmpty else { return }
        let id = FastUUID.text(v.id.uuid)
        for (k, val) in v.labels { try s.execute(arguments: [id, k, val]) }
    }

    static func updateVM(_ db: Database, _ v: VMRecord, labelsChanged: Bool) throws {
        try db.execute(sql: """
            UPDATE vms SET name = ?, owner = ?, state = ?, generation = ?, parent_generation = ?,
                           created_us = ?, updated_us = ?, mac = ? WHERE id = ?
            """, arguments: [v.name, v.owner, v.state.rawValue, LedgerEntry.uuidText(v.generation),
                             v.parentGeneration.map(LedgerEntry.uuidText), LedgerTime.micros(v.createdAt),
                             LedgerTime.micros(v.updatedAt), v.mac, v.id.description])
        if labelsChanged {
            try db.execute(sql: "DELETE FROM vm_labels WHERE vm = ?", arguments: [v.id.description])
            try insertLabels(db, v)
        }
    }

    static func insertDisk(_ db: Database, _ d: DiskRecord) throws {
        let s = try db.cachedStatement(sql: "INSERT INTO disks (vm, idx, path, format, backing_chain, fingerprint, device, inode) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        try s.execute(arguments: [FastUUID.text(d.vm.uuid), d.index, d.path, d.format,
                                  LedgerEntry.jsonText(.array(d.backingChain.map { .string($0) })),
                                  d.fingerprint?.description,
                                  d.file.map { Int64(bitPattern: $0.device) }, d.file.map { Int64(bitPattern: $0.inode) }])
    }

    static func vm(_ r: Row, file: String) throws -> VMRecord {
        guard let id = VMID(r["id"] as String), let state = VMState(rawValue: r["state"]),
              let gen = try uuid(r["generation"], "a generation") else {
            throw WardenError(.corrupt, "a VM row is malformed", file: file)
        }
        let parent: String? = r["parent"]
        return VMRecord(id: id, name: r["name"], owner: r["owner"], labels: [:], state: state, generation: gen,
                        parent: try parent.map { guard let p = VMID($0) else { throw WardenError(.corrupt, "a parent id is not a UUID", file: file) }; return p },
                        parentGeneration: try uuid(r["parent_generation"], "a parent generation"),
                        createdAt: LedgerTime.date(r["created_us"]), updatedAt: LedgerTime.date(r["updated_us"]), mac: r["mac"])
    }

    static func fetchVM(_ db: Database, _ id: VMID) throws -> VMRecord? {
        try fetchVMs(db, sql: "SELECT * FROM vms WHERE id = ?", [id.description]).first
    }

    static func fetchVMs(_ db: Database, sql: String, _ args: StatementArguments) throws -> [VMRecord] {
        var out = try Row.fetchAll(db, sql: sql, arguments: args).map { try vm($0, file: "") }
        let ls = try db.cachedStatement(sql: "SELECT key, value FROM vm_labels WHERE vm = ?")
        for i in out.indices {
            for r in try Row.fetchAll(ls, arguments: [out[i].id.description]) {
                out[i].labels[r[0] as String] = r[1] as String
            }
        }
        return out
    }

    static func fetchDisks(_ db: Database, _ vm: VMID) throws -> [DiskRecord] {
        try Row.fetchAll(db, sql: "SELECT * FROM disks WHERE vm = ? ORDER BY idx", arguments: [vm.description]).map { r in
            guard let chain = try? JSONDecoder().decode([String].self, from: Data((r["backing_chain"] as String).utf8)) else {
                throw WardenError(.corrupt, "a disk's backing chain is not a JSON list")
            }
            let fp: String? = r["fingerprint"]
            let dev: Int64? = r["device"], ino: Int64? = r["inode"]
            var file: DiskRecord.FileID?
            if let dev, let ino { file = DiskRecord.FileID(device: UInt64(bitPattern: dev), inode: UInt64(bitPattern: ino)) }
            return DiskRecord(vm: vm, index: r["idx"], path: r["path"], format: r["format"], backingChain: chain,
                              fingerprint: fp.flatMap(Digest.init), file: file)
        }
    }

    static func host(_ r: Row) throws -> HostRecord {
        guard let name = HostName(r["name"] as String) else { throw WardenError(.corrupt, "a host name in the database is malformed") }
        return HostRecord(name: name, labels: try labels(r["labels"]), publicKey: r["public_key"],
                          addedAt: LedgerTime.date(r["added_us"]))
    }

    static func residency(_ r: Row) throws -> ResidencyRecord {
        guard let vm = VMID(r["vm"] as String), let host = HostName(r["host"] as String),
              let kind = ResidencyRecord.Kind(rawValue: r["kind"]) else {
            throw WardenError(.corrupt, "a residency row is malformed")
        }
        let to: Int64? = r["to_us"]
        return ResidencyRecord(vm: vm, host: host, kind: kind, from: LedgerTime.date(r["from_us"]), to: to.map(LedgerTime.date))
    }

    static func snapshot(_ r: Row) throws -> SnapshotRecord {
        guard let vm = VMID(r["vm"] as String), let gen = try uuid(r["generation"], "a snapshot generation") else {
            throw WardenError(.corrupt, "a snapshot row is malformed")
        }
        let key: String? = r["inventory_key"]
        return SnapshotRecord(vm: vm, name: r["name"], generation: gen, createdAt: LedgerTime.date(r["created_us"]),
                              inventoryKey: key.flatMap(Digest.init))
    }

    static func event(_ r: Row, file: String) throws -> EventRecord {
        let seq: Int64 = r["seq"]
        func bad(_ what: String) -> WardenError { WardenError(.corrupt, "event \(seq): \(what)", file: file) }
        guard let kind = EventKind(rawValue: r["kind"]) else { throw bad("unknown kind") }
        guard let host = HostName(r["host"] as String) else { throw bad("malformed host") }
        let vmText: String? = r["vm"]
        var vm: VMID?
        if let vmText { guard let v = VMID(vmText) else { throw bad("vm is not a UUID") }; vm = v }
        let payloadText: String = r["payload"]
        guard let payload = try? JSONDecoder().decode([String: JSONValue].self, from: Data(payloadText.utf8)) else {
            throw bad("payload is not a JSON object")
        }
        return EventRecord(seq: seq, kind: kind, vm: vm, actor: r["actor"], host: host, time: LedgerTime.date(r["time_us"]),
                           generationBefore: try uuid(r["generation_before"], "a generation"),
                           generationAfter: try uuid(r["generation_after"], "a generation"),
                           payload: payload, reportedByCaller: (r["reported"] as Int64) != 0, leafHash: r["leaf_hash"])
    }

    /// Makes sure the hosts table holds this host with this public key (adding or filling it in);
    /// a different key there is refused.
    static func ensureHostKey(_ db: Database, key: HostKey, file: String) throws {
        try db.execute(sql: """
            INSERT INTO hosts (name, labels, public_key, added_us) VALUES (?, '{}', ?, ?)
            ON CONFLICT(name) DO UPDATE SET public_key = excluded.public_key WHERE hosts.public_key IS NULL
            """, arguments: [key.host.value, key.publicKey, LedgerTime.micros(Date())])
        let stored = try Data.fetchOne(db, sql: "SELECT public_key FROM hosts WHERE name = ?", arguments: [key.host.value])
        guard stored == key.publicKey else {
            throw WardenError(.conflict, "the ledger holds a different signing key for host \(key.host) than \(key.host).ed25519 in the keys folder", file: file)
        }
    }
}
