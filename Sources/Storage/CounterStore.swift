import Foundation
import GRDB
import WardenCore

/// Named monotonic counters per VM, kept in the Warden database, outside every VM image,
/// so no rollback, restore or clone of the VM can make one go backwards.
///
/// Each `next` is one write transaction: the first call for a name returns 1, every later
/// call returns one more than any value returned before.
public struct CounterStore: Sendable {
    public let database: WardenDatabase
    /// How many counters one VM may have (a guest chooses the names; it must not fill the disk).
    public static let maxCountersPerVM = 1024
    public init(database: WardenDatabase) { self.database = database }

    /// Whether `name` is a valid counter name: 1–64 of `A–Z a–z 0–9 . _ -`.
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...64).contains(bytes.count) else { return false }
        return bytes.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2E || b == 0x5F || b == 0x2D
        }
    }

    /// Increments and returns the counter `name` of `vm`.
    public func next(vm: VMID, name: String, now: Date = Date()) throws -> Int64 {
        guard Self.isValidName(name) else {
            throw WardenError(.invalidArgument, "counter names are 1-64 characters of A-Z a-z 0-9 . _ -")
        }
        let us = Int64((now.timeIntervalSince1970 * 1_000_000).rounded())
        return try database.write { db in
            if let v = try Int64.fetchOne(db, sql: "UPDATE counters SET value = value + 1, updated_us = ? WHERE vm = ? AND name = ? RETURNING value",
                                          arguments: [us, vm.description, name]) {
                return v
            }
            let count = try Int.fetchOne(db, sql: "SELECT count(*) FROM counters WHERE vm = ?", arguments: [vm.description]) ?? 0
            guard count < Self.maxCountersPerVM else {
                throw WardenError(.limitExceeded, "VM \(vm) already has \(Self.maxCountersPerVM) counters")
            }
            try db.execute(sql: "INSERT INTO counters (vm, name, value, updated_us) VALUES (?, ?, 1, ?)",
                           arguments: [vm.description, name, us])
            return 1
        }
    }

    /// The counter's current value (0 when it was never used).
    public func value(vm: VMID, name: String) throws -> Int64 {
        try database.read { db in
            try Int64.fetchOne(db, sql: "SELECT value FROM counters WHERE vm = ? AND name = ?", arguments: [vm.description, name]) ?? 0
        }
    }

    /// All counters of `vm`, by name.
    public func all(vm: VMID) throws -> [(name: String, value: Int64)] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT name, value FROM counters WHERE vm = ? ORDER BY name", arguments: [vm.description])
                .map { ($0["name"], $0["value"]) }
        }
    }
}
