import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Inspection

/// Guest-supplied SQLite databases crafted to make the engine work: each gives a typed error
/// (exit 2 on the command line) in bounded time and memory, never a hang or a crash.
@Suite struct HostileSQLiteTests {
    static func build(_ name: String, _ sql: String) throws -> [UInt8] {
        let dir = try Fixtures.cached("hostile-sqlite-\(name)", recipe: "v1 " + sql) { dir in
            try sql.write(toFile: dir + "/in.sql", atomically: true, encoding: .utf8)
            try Tool.sh("sqlite3 '\(dir)/db' < '\(dir)/in.sql'")
        }
        return try Fixtures.read(dir + "/db")
    }

    func read(_ bytes: [UInt8]) throws {
        var inv = PackageInventory(manager: .rpm, source: "x")
        var w = CappedWarnings()
        try RPMDatabase.readSQLite(bytes, name: "rpmdb.sqlite", into: &inv, warnings: &w)
    }

    func expectTyped(_ bytes: [UInt8], _ codes: [WardenError.Code], sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try read(bytes)
            Issue.record("accepted", sourceLocation: sourceLocation)
        } catch let e as WardenError {
            #expect(codes.contains(e.code), "\(e)", sourceLocation: sourceLocation)
            #expect(e.exitCode == 2, sourceLocation: sourceLocation)
            #expect(!e.description.contains("\n"), sourceLocation: sourceLocation)
        } catch {
            Issue.record("untyped error \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func aPackagesViewOverARecursiveCTEIsNotRun() throws {
        let db = try Self.build("cte-view", """
        CREATE VIEW Packages AS WITH RECURSIVE c(hnum, blob) AS (SELECT 1, zeroblob(16) UNION ALL SELECT hnum + 1, blob FROM c) SELECT hnum, blob FROM c;
        """)
        expectTyped(db, [.corrupt, .limitExceeded])
    }

    @Test func triggersAndViewsAreOff() throws {
        let db = try Self.build("triggers", """
        CREATE TABLE Packages(hnum INTEGER PRIMARY KEY, blob BLOB);
        CREATE TABLE log(x);
        CREATE TRIGGER t AFTER INSERT ON Packages BEGIN INSERT INTO log VALUES (randomblob(1000000)); END;
        CREATE VIEW v AS SELECT * FROM Packages, Packages AS p2, Packages AS p3;
        INSERT INTO Packages VALUES (1, x'00');
        """)
        // Plain table reads still work; the view and trigger are never used.
        try read(db)
    }

    @Test func aHugeSchemaStopsWithinTheBudget() throws {
        // 10^6 tables: loading the schema alone is far past the budget.
        // Written straight into sqlite_master (writable_schema): CREATE TABLE one by one is quadratic.
        let dir = try Fixtures.cached("hostile-sqlite-1m-tables", recipe: "v2") { dir in
            try Tool.sh("""
            python3 -c "
            import sys
            sys.stdout.write('PRAGMA page_size=65536; CREATE TABLE Packages(hnum INTEGER PRIMARY KEY, blob BLOB); PRAGMA writable_schema=ON; BEGIN;\\n')
            for i in range(1000000): sys.stdout.write(\\"INSERT INTO sqlite_master VALUES('table','t%d','t%d',2,'CREATE TABLE t%d(a)');\\n\\" % (i, i, i))
            sys.stdout.write('COMMIT;\\n')
            " | sqlite3 '\(dir)/db'
            """)
        }
        expectTyped(try Fixtures.read(dir + "/db"), [.limitExceeded, .corrupt])
    }

    @Test func headerLiesAreRefused() throws {
        let good = try Self.build("plain", "CREATE TABLE Packages(hnum INTEGER PRIMARY KEY, blob BLOB);")
        var pageSize = good
        pageSize[16] = 0x03; pageSize[17] = 0x00            // 768: not a power of two
        expectTyped(pageSize, [.corrupt])
        var pages = good
        pages[28] = 0x7F; pages[29] = 0xFF; pages[30] = 0xFF; pages[31] = 0xFF
        pages.replaceSubrange(92..<96, with: pages[24..<28])  // make the in-header size count
        expectTyped(pages, [.corrupt])
        expectTyped(Array(good.prefix(700)), [.corrupt])
    }
}
