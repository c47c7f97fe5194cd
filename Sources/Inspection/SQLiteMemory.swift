import CSQLite
import WardenCore

/// A read-only SQLite database opened from bytes in memory (`sqlite3_deserialize`).
///
/// Guest databases (rpmdb.sqlite) are read out of the image into memory and opened
/// here with `SQLITE_DESERIALIZE_READONLY`: SQLite never touches a host file, and
/// nothing can be written back.
final class SQLiteMemory {
    private var db: OpaquePointer?
    let name: String

    init(bytes: [UInt8], name: String) throws {
        self.name = name
        guard sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY, nil) == SQLITE_OK, let db else {
            throw WardenError.corrupt("\(name): cannot open an in-memory SQLite database")
        }
        guard !bytes.isEmpty, let buf = sqlite3_malloc64(UInt64(bytes.count)) else {
            throw WardenError.corrupt("\(name): empty or too large for SQLite")
        }
        bytes.withUnsafeBytes { UnsafeMutableRawPointer(buf).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        let flags = UInt32(SQLITE_DESERIALIZE_READONLY | SQLITE_DESERIALIZE_FREEONCLOSE)
        let rc = sqlite3_deserialize(db, "main", buf.assumingMemoryBound(to: UInt8.self),
                                     sqlite3_int64(bytes.count), sqlite3_int64(bytes.count), flags)
        guard rc == SQLITE_OK else {
            throw WardenError.corrupt("\(name): not a readable SQLite database (code \(rc))")
        }
        // Bound the work a hostile database can cause.
        sqlite3_limit(db, SQLITE_LIMIT_LENGTH, 64 << 20)
    }

    deinit { sqlite3_close(db) }

    /// Runs `sql` (no parameters) and calls `row` with each row's column accessor.
    func query(_ sql: String, _ row: (Row) throws -> Void) throws {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK, let stmt else {
            throw WardenError.corrupt("\(name): query failed: \(String(cString: sqlite3_errmsg(db)))")
        }
        defer { sqlite3_finalize(stmt) }
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { return }
            guard rc == SQLITE_ROW else {
                throw WardenError.corrupt("\(name): read failed: \(String(cString: sqlite3_errmsg(db)))")
            }
            try row(Row(stmt: stmt))
        }
    }

    struct Row {
        let stmt: OpaquePointer
        func int(_ i: Int32) -> Int64 { sqlite3_column_int64(stmt, i) }
        func blob(_ i: Int32) -> [UInt8] {
            let n = Int(sqlite3_column_bytes(stmt, i))
            guard n > 0, let p = sqlite3_column_blob(stmt, i) else { return [] }
            return Array(UnsafeRawBufferPointer(start: p, count: n))
        }
        func text(_ i: Int32) -> String? {
            guard let p = sqlite3_column_text(stmt, i) else { return nil }
            return String(cString: p)
        }
    }
}
