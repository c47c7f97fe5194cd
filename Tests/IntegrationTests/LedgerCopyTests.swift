import Foundation
import Testing
import WardenCore
import WardenTestSupport

/// `warden ledger copy`: a SQLite ledger copied into PostgreSQL is the same log (verify passes
/// against the copy, with the same root), and a non-empty target is refused.
@Suite struct LedgerCopyTests {
    @Test func aCopiedLedgerVerifiesWithTheSameRoot() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let db = tmp + "/w.db"
            try Tool.run([Fixtures.wardenBinary, "dev", "synth", "--db", db, "--vms", "300", "--events", "6000", "--hosts", "3", "--seed", "5", "--batch", "1000"])
            let local = try Tool.run([Fixtures.wardenBinary, "ledger", "verify", "--db", db, "--json"])
            let pg = try PostgresServer.shared()
            let name = try pg.createDatabase()
            defer { pg.dropDatabase(name) }
            let copy = try Tool.run([Fixtures.wardenBinary, "ledger", "copy", "--db", db, "--database", pg.url(name), "--json"],
                                    environment: pg.environment)
            let counts = try #require(try JSONSerialization.jsonObject(with: copy.stdout) as? [String: Any])
            #expect(counts["events"] as? Int == 6000 && counts["vms"] as? Int == 300, "\(counts)")
            let remote = try Tool.run([Fixtures.wardenBinary, "ledger", "verify", "--database", pg.url(name), "--json"],
                                      environment: pg.environment, check: false)
            #expect(remote.status == 0, "\(remote.stdoutText.prefix(1000))")
            func root(_ r: ToolResult) throws -> String? {
                (try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])?["root_hex"] as? String
            }
            #expect(try root(remote) != nil && root(remote) == root(local))
            // A second copy into the same database is refused.
            let again = try Tool.run([Fixtures.wardenBinary, "ledger", "copy", "--db", db, "--database", pg.url(name)],
                                     environment: pg.environment, check: false)
            #expect(again.status != 0 && again.stderr.contains("not empty"), "\(again.stderr)")
        }
    }
}
