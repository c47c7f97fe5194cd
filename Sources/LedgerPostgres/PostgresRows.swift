import Foundation
import Ledger
import PostgresNIO
import WardenCore

/// Reads the cells of one PostgreSQL row by column name; anything malformed is a typed
/// `.corrupt` error naming the table, never a trap.
struct Cells {
    let row: PostgresRandomAccessRow
    let table: String
    let location: String

    init(_ row: PostgresRow, _ table: String, _ location: String) {
        self.row = row.makeRandomAccess(); self.table = table; self.location = location
    }

    func bad(_ column: String) -> WardenError {
        WardenError(.corrupt, "a \(table) row has a malformed \(column)", file: location)
    }

    func get<T: PostgresDecodable>(_ column: String, _ type: T.Type = T.self) throws -> T {
        guard row.contains(column) else { throw bad(column) }
        do { return try row[column].decode(T.self) } catch { throw bad(column) }
    }
    func optional<T: PostgresDecodable>(_ column: String, _ type: T.Type = T.self) throws -> T? {
        guard row.contains(column) else { throw bad(column) }
        let cell = row[column]
        if cell.bytes == nil { return nil }
        do { return try cell.decode(T.self) } catch { throw bad(column) }
    }
    func vmid(_ column: String) throws -> VMID {
        guard let v = VMID(try get(column, String.self)) else { throw bad(column) }
        return v
    }
    func optionalVMID(_ column: String) throws -> VMID? {
        guard let s = try optional(column, String.self) else { return nil }
        guard let v = VMID(s) else { throw bad(column) }
        return v
    }
    func uuid(_ column: String) throws -> UUID {
        guard let u = UUID(uuidString: try get(column, String.self)) else { throw bad(column) }
        return u
    }
    func optionalUUID(_ column: String) throws -> UUID? {
        guard let s = try optional(column, String.self) else { return nil }
        guard let u = UUID(uuidString: s) else { throw bad(column) }
        return u
    }
    func time(_ column: String) throws -> Date { LedgerTime.date(try get(column, Int64.self)) }
    func optionalTime(_ column: String) throws -> Date? { try optional(column, Int64.self).map(LedgerTime.date) }
}

/// Row mapping for the PostgreSQL ledger tables (the SQLite ledger's `Rows`, for this backend).
enum PGRows {
    static let vmColumns = "id, name, owner, state, generation, parent, parent_generation, created_us, updated_us, mac"

    static func text(_ u: UUID) -> String { u.uuidString.lowercased() }

    static func vm(_ r: PostgresRow, _ location: String) throws -> VMRecord {
        let c = Cells(r, "vms", location)
        guard let state = VMState(rawValue: try c.get("state")) else { throw c.bad("state") }
        return VMRecord(id: try c.vmid("id"), name: try c.get("name"), owner: try c.get("owner"), labels: [:], state: state,
                        generation: try c.uuid("generation"), parent: try c.optionalVMID("parent"),
                        parentGeneration: try c.optionalUUID("parent_generation"),
                        createdAt: try c.time("created_us"), updatedAt: try c.time("updated_us"), mac: try c.optional("mac"))
    }

    /// The columns ``familyMember(_:_:)`` reads, in its order, all in the index
    /// `vms_by_family`: the family, then the member.
    static let familyColumns = "family, id, parent, created_us, name, owner, state, generation, parent_generation"

    /// A row of ``familyColumns``, decoded by position (exposure reads tens of thousands).
    static func familyMember(_ r: PostgresRow, _ location: String) throws -> (family: String, member: FamilyMember) {
        guard let (family, id, parent, created, name, owner, stateText, generation, parentGeneration)
                = try? r.decode((String, String, String?, Int64, String, String, String, String, String?).self),
              let vm = FastUUID.vmid(id), let state = VMState(rawValue: stateText), let gen = FastUUID.parse(generation) else {
            throw WardenError(.corrupt, "a vms row is malformed", file: location)
        }
        let p = try parent.map { guard let v = FastUUID.vmid($0) else { throw WardenError(.corrupt, "a vms row has a malformed parent", file: location) }; return v }
        let pg = try parentGeneration.map { guard let u = FastUUID.parse($0) else { throw WardenError(.corrupt, "a vms row has a malformed parent_generation", file: location) }; return u }
        return (family, FamilyMember(id: vm, name: name, owner: owner, state: state, generation: gen,
                                     parent: p, parentGeneration: pg, createdAt: LedgerTime.date(created)))
    }

    static func disk(_ r: PostgresRow, _ location: String) throws -> DiskRecord {
        let c = Cells(r, "disks", location)
        guard let chain = try? JSONDecoder().decode([String].self, from: Data((try c.get("backing_chain", String.self)).utf8)) else {
            throw c.bad("backing_chain")
        }
        var file: DiskRecord.FileID?
        if let dev = try c.optional("device", Int64.self), let ino = try c.optional("inode", Int64.self) {
            file = DiskRecord.FileID(device: UInt64(bitPattern: dev), inode: UInt64(bitPattern: ino))
        }
        var fingerprint: Digest?
        if let fp = try c.optional("fingerprint", String.self) {
            guard let d = Digest(fp) else { throw c.bad("fingerprint") }
            fingerprint = d
        }
        return DiskRecord(vm: try c.vmid("vm"), index: try c.get("idx", Int.self), path: try c.get("path"),
                          format: try c.get("format"), backingChain: chain, fingerprint: fingerprint, file: file)
    }

    static func host(_ r: PostgresRow, _ location: String) throws -> HostRecord {
        let c = Cells(r, "hosts", location)
        guard let name = HostName(try c.get("name", String.self)) else { throw c.bad("name") }
        guard let labels = try? JSONDecoder().decode([String: String].self, from: Data((try c.get("labels", String.self)).utf8)) else {
            throw c.bad("labels")
        }
        return HostRecord(name: name, labels: labels, publicKey: try c.optional("public_key", Data.self), addedAt: try c.time("added_us"))
    }

    static func residency(_ r: PostgresRow, _ location: String) throws -> ResidencyRecord {
        let c = Cells(r, "residency", location)
        guard let host = HostName(try c.get("host", String.self)) else { throw c.bad("host") }
        guard let kind = ResidencyRecord.Kind(rawValue: try c.get("kind")) else { throw c.bad("kind") }
        return ResidencyRecord(vm: try c.vmid("vm"), host: host, kind: kind, from: try c.time("from_us"), to: try c.optionalTime("to_us"))
    }

    static func snapshot(_ r: PostgresRow, _ location: String) throws -> SnapshotRecord {
        let c = Cells(r, "snapshots", location)
        var key: Digest?
        if let k = try c.optional("inventory_key", String.self) {
            guard let d = Digest(k) else { throw c.bad("inventory_key") }
            key = d
        }
        return SnapshotRecord(vm: try c.vmid("vm"), name: try c.get("name"), generation: try c.uuid("generation"),
                              createdAt: try c.time("created_us"), inventoryKey: key)
    }

    static func event(_ r: PostgresRow, _ location: String) throws -> EventRecord {
        let c = Cells(r, "events", location)
        guard let kind = EventKind(rawValue: try c.get("kind")) else { throw c.bad("kind") }
        guard let host = HostName(try c.get("host", String.self)) else { throw c.bad("host") }
        let text: String = try c.get("payload")
        guard let payload = try? JSONDecoder().decode([String: JSONValue].self, from: Data(text.utf8)) else { throw c.bad("payload") }
        return EventRecord(seq: try c.get("seq"), kind: kind, vm: try c.optionalVMID("vm"), actor: try c.get("actor"), host: host,
                           time: try c.time("time_us"), generationBefore: try c.optionalUUID("generation_before"),
                           generationAfter: try c.optionalUUID("generation_after"), payload: payload,
                           reportedByCaller: try c.get("reported", Bool.self), leafHash: try c.get("leaf_hash", Data.self))
    }
}
