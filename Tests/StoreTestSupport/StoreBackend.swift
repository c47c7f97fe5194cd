import Foundation
import Ledger
import LedgerPostgres
import Storage
import Testing
import WardenCore
import WardenTestSupport

/// A ledger backend for the shared store suite: makes a fresh, empty store and tears it down.
/// SQLite, and PostgreSQL on a private server the test support starts (``PostgresServer``).
public struct StoreBackend: Sendable, CustomTestStringConvertible {
    public let name: String
    public let make: @Sendable () throws -> (store: any LedgerQueries, tearDown: @Sendable () -> Void)
    public var testDescription: String { name }
    public init(name: String, make: @escaping @Sendable () throws -> (store: any LedgerQueries, tearDown: @Sendable () -> Void)) {
        self.name = name; self.make = make
    }

    public static let all: [StoreBackend] = [
        StoreBackend(name: "sqlite") {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("warden-store-\(UUID().uuidString)").path
            let store = SQLiteLedger(database: try WardenDatabase(path: dir + "/warden.db"), host: HostName("test-host")!)
            return (store, { try? FileManager.default.removeItem(atPath: dir) })
        },
        StoreBackend(name: "postgres") {
            let server = try PostgresServer.shared()
            let name = try server.createDatabase()
            let keys = FileManager.default.temporaryDirectory.appendingPathComponent("warden-pgkeys-\(UUID().uuidString)").path
            let db = try PostgresStore(url: server.urlWithPassword(name))
            let store = PostgresLedger(store: db, keysDirectory: keys, host: HostName("test-host")!)
            return (store, {
                db.close()
                server.dropDatabase(name)
                try? FileManager.default.removeItem(atPath: keys)
            })
        },
    ]

    public func with<T>(_ body: (any LedgerQueries) throws -> T) throws -> T {
        let (store, tearDown) = try make()
        defer { tearDown() }
        return try body(store)
    }

    public func withAsync<T>(_ body: (any LedgerQueries) async throws -> T) async throws -> T {
        let (store, tearDown) = try make()
        defer { tearDown() }
        return try await body(store)
    }
}
