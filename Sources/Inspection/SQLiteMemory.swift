import CSQLite
import Dispatch
import WardenCore

/// A read-only SQLite database opened from bytes in memory (`sqlite3_deserialize`).
///
/// Guest databases (rpmdb.sqlite) are read out of the image into memory and opened
/// here with `SQLITE_DESERIALIZE_READONLY`: SQLite never touches a host file, and
/// nothing can be written back.
///
/// The database is guest-controlled input to a SQL engine, so the connection is hardened
/// before the bytes are attached (``warden_sqlite_harden``: defensive, untrusted schema, no
/// extensions, no triggers or views), the header is checked first, per-connection limits are
/// small, and a progress handler stops any statement (schema loading included) that runs
/// past ``Budget`` work, time or memory growth. Each gives a one-line `.corrupt` or
/// `.limitExceeded` error naming the database.
final class SQLiteMemory {
    private var db: OpaquePointer?
    let name: String
    private let budget: Budget

    /// Work, time and memory one guest database may cost.
    final class Budget {
        /// Progress-handler calls (each every ``opsPerCall`` virtual-machine instructions).
        static let maxCalls = 20_000
        static let opsPerCall: Int32 = 1000
        static let maxSeconds: Double = 10
        /// Growth of SQLite's heap since the database was opened.
        static let maxHeapGrowth: Int64 = 256 << 20
        var calls = 0
        let start = DispatchTime.now().uptimeNanoseconds
        let heapAtStart = sqlite3_memory_used()
        var exceeded: String?
    }

    init(bytes: [UInt8], name: String) throws {
        self.name = name
        self.budget = Budget()
        try Self.checkHeader(bytes, name: name)
        guard sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY, nil) == SQLITE_OK, let db else {
            throw WardenError.corrupt("\(name): cannot open an in-memory SQLite database")
        }
        guard warden_sqlite_harden(db) == 0 else {
            throw WardenError(.internal, "\(name): cannot harden the SQLite connection")
        }
        for (limit, value) in [(SQLITE_LIMIT_LENGTH, Int32(64 << 20)), (SQLITE_LIMIT_SQL_LENGTH, 1 << 20), (SQLITE_LIMIT_COLUMN, 1000),
                               (SQLITE_LIMIT_EXPR_DEPTH, 100), (SQLITE_LIMIT_COMPOUND_SELECT, 50), (SQLITE_LIMIT_VDBE_OP, 100_000),
                               (SQLITE_LIMIT_FUNCTION_ARG, 16), (SQLITE_LIMIT_ATTACHED, 0), (SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000),
                               (SQLITE_LIMIT_VARIABLE_NUMBER, 100), (SQLITE_LIMIT_TRIGGER_DEPTH, 1)] {
            sqlite3_limit(db, limit, value)
        }
        let ctx = Unmanaged.passUnretained(budget).toOpaque()
        sqlite3_progress_handler(db, Budget.opsPerCall, { p in
            guard let p else { return 1 }
            let b = Unmanaged<Budget>.fromOpaque(p).takeUnretainedValue()
            b.calls += 1
            if b.calls > Budget.maxCalls { b.exceeded = "more than \(Budget.maxCalls * Int(Budget.opsPerCall)) SQLite instructions"; return 1 }
            if b.calls % 16 == 0 {
                if Double(DispatchTime.now().uptimeNanoseconds - b.start) / 1e9 > Budget.maxSeconds {
                    b.exceeded = "more than \(Int(Budget.maxSeconds)) s"; return 1
                }
                if sqlite3_memory_used() - b.heapAtStart > Budget.maxHeapGrowth {
                    b.exceeded = "more than \(Budget.maxHeapGrowth >> 20) MiB of memory"; return 1
                }
            }
            return 0
        }, ctx)
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
        _ = try? exec("PRAGMA cache_size = -8192")   // 8 MiB of page cache at most
    }

    /// The 100-byte header: magic, a power-of-two page size, and a page count that fits.
    static func checkHeader(_ b: [UInt8], name: String) throws {
        guard b.count >= 512, b.starts(with: Array("SQLite format 3".utf8) + [0]) else {
            throw WardenError.corrupt("\(name): not an SQLite database (no SQLite header)")
        }
        let raw = Int(b[16]) << 8 | Int(b[17])
        let pageSize = raw == 1 ? 65536 : raw
        guard pageSize >= 512, pageSize <= 65536, pageSize & (pageSize - 1) == 0 else {
            throw WardenError.corrupt("\(name): SQLite header gives an invalid page size \(raw)")
        }
        guard b.count % pageSize == 0 else {
            throw WardenError.corrupt("\(name): \(b.count) bytes is not a whole number of \(pageSize)-byte pages")
        }
        let pages = Int(b[28]) << 24 | Int(b[29]) << 16 | Int(b[30]) << 8 | Int(b[31])
        // The in-header size is valid only when the change counters match (SQLite's rule).
        if b[24...27] == b[92...95], pages > b.count / pageSize {
            throw WardenError.corrupt("\(name): SQLite header claims \(pages) pages, the file has \(b.count / pageSize)")
        }
    }

    private func exec(_ sql: String) throws {
        try query(sql) { _ in }
    }

    private func failure(_ what: String) -> WardenError {
        if let e = budget.exceeded { return WardenError.limit("\(name): \(what) stopped: the database needs \(e)") }
        return WardenError.corrupt("\(name): \(what) failed: \(String(cString: sqlite3_errmsg(db)))")
    }

    deinit { sqlite3_close(db) }

    /// Runs `sql` (no parameters) and calls `row` with each row's column accessor.
    func query(_ sql: String, _ row: (Row) throws -> Void) throws {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK, let stmt else { throw failure("query") }
        defer { sqlite3_finalize(stmt) }
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { return }
            guard rc == SQLITE_ROW else { throw failure("read") }
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
