import Foundation
import Testing
import WardenTestSupport
@testable import Ledger
import WardenCore
@testable import Storage

@Suite struct WardenDatabaseTests {
    @Test func pathResolutionOrder() {
        #expect(WardenDatabase.defaultPath(explicit: "/x/a.db", environment: ["WARDEN_DB": "/y"]) == "/x/a.db")
        #expect(WardenDatabase.defaultPath(environment: ["WARDEN_DB": "/y/b.db", "WARDEN_HOME": "/z"]) == "/y/b.db")
        #expect(WardenDatabase.defaultPath(environment: ["WARDEN_HOME": "/z"]) == "/z/warden.db")
        #expect(WardenDatabase.defaultPath(environment: ["HOME": "/home/u"]) == "/home/u/.local/share/warden/warden.db")
    }

    @Test func createsPrivateDatabaseInWALMode() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("warden-db-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("sub/warden.db").path
        let db = try WardenDatabase(path: path)
        let mode = try db.read { try String.fetchOne($0, sql: "PRAGMA journal_mode") }
        #expect(mode == "wal")
        // The writer fsyncs every commit (2 = FULL): GRDB's WAL set-up must not leave NORMAL.
        let sync = try db.pool.writeWithoutTransaction { try Int.fetchOne($0, sql: "PRAGMA synchronous") }
        #expect(sync == 2)
        let attrs = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attrs[.posixPermissions] as? Int) == 0o600)
    }

    @Test func missingDatabaseFailsClosedWhenNotCreating() {
        #expect(throws: WardenError.self) {
            _ = try WardenDatabase(path: "/nonexistent-\(UUID().uuidString)/w.db", create: false)
        }
    }
}
