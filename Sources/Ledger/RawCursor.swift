import CSQLite
import Foundation
import GRDB
import WardenCore

/// Steps a prepared GRDB statement through the SQLite C API and reads columns in place: no
/// `Row`, no `DatabaseValue`, no `String` per UUID column. For queries that return tens of
/// thousands of rows (exposure). Valid only inside the read or write block that made it.
struct RawCursor {
    private let h: SQLiteStatement
    private let db: Database

    init(_ statement: Statement, _ arguments: StatementArguments, db: Database) throws {
        try statement.setArguments(arguments)   // resets the statement and binds
        h = statement.sqliteStatement
        self.db = db
    }

    /// Advances to the next row; false at the end (the statement is then reset).
    func next() throws -> Bool {
        let rc = sqlite3_step(h)
        if rc == SQLITE_ROW { return true }
        sqlite3_reset(h)
        if rc == SQLITE_DONE { return false }
        throw DatabaseError(resultCode: ResultCode(rawValue: rc), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
    }

    func isNull(_ i: Int32) -> Bool { sqlite3_column_type(h, i) == SQLITE_NULL }
    func int64(_ i: Int32) -> Int64 { sqlite3_column_int64(h, i) }
    func int64OrNil(_ i: Int32) -> Int64? { isNull(i) ? nil : sqlite3_column_int64(h, i) }

    /// The column's bytes (text or blob), valid until the next step.
    func bytes(_ i: Int32) -> UnsafeRawBufferPointer {
        let n = Int(sqlite3_column_bytes(h, i))
        guard n > 0, let p = sqlite3_column_blob(h, i) else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: p, count: n)
    }

    func string(_ i: Int32) -> String { String(decoding: bytes(i), as: UTF8.self) }

    /// A UUID text column; nil when NULL or malformed.
    func uuid(_ i: Int32) -> UUID? { isNull(i) ? nil : FastUUID.parse(bytes(i)) }

    /// True when the column's bytes are exactly `s`.
    func equals(_ i: Int32, _ s: StaticString) -> Bool {
        let b = bytes(i)
        return b.count == s.utf8CodeUnitCount && (b.count == 0 || memcmp(b.baseAddress!, s.utf8Start, b.count) == 0)
    }
}
