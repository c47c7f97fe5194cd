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
    /// A fresh store; `connect` opens another connection to the same database (as another
    /// process or host would), `tearDown` removes it all.
    public typealias Instance = (store: any LedgerQueries, connect: @Sendable () throws -> any LedgerQueries, tearDown: @Sendable () -> Void)
    public let name: String
    public let make: @Sendable () throws -> Instance
    public var testDescription: String { name }
    public init(name: String, make: @escaping @Sendable () throws -> Instance) {
        self.name = name; self.make = make
    }

    public static let all: [StoreBackend] = [
        StoreBackend(name: "sqlite") {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("warden-store-\(UUID().uuidString)").path
            let store = SQLiteLedger(database: try WardenDatabase(path: dir + "/warden.db"), host: HostName("test-host")!)
            return (store, { SQLiteLedger(database: try WardenDatabase(path: dir + "/warden.db"), host: HostName("test-host")!) },
                    { try? FileManager.default.removeItem(atPath: dir) })
        },
        StoreBackend(name: "postgres") {
            let server = try PostgresServer.shared()
            let name = try server.createDatabase()
            let keys = FileManager.default.temporaryDirectory.appendingPathComponent("warden-pgkeys-\(UUID().uuidString)").path
            let db = try PostgresStore(url: server.urlWithPassword(name))
            let store = PostgresLedger(store: db, keysDirectory: keys, host: HostName("test-host")!)
            let others = Locked<[PostgresStore]>([])
            return (store, {
                let other = try PostgresStore(url: server.urlWithPassword(name))
                others.withLock { $0.append(other) }
                return PostgresLedger(store: other, keysDirectory: keys, host: HostName("test-host")!)
            }, {
                for o in others.withLock({ $0 }) { o.close() }
                db.close()
                server.dropDatabase(name)
                try? FileManager.default.removeItem(atPath: keys)
            })
        },
    ]

    public func with<T>(_ body: (any LedgerQueries) throws -> T) throws -> T {
        let made = try make()
        defer { made.tearDown() }
        return try body(made.store)
    }

    /// `body` gets the store and a way to open more connections to its database.
    public func with<T>(_ body: (any LedgerQueries, @Sendable () throws -> any LedgerQueries) throws -> T) throws -> T {
        let made = try make()
        defer { made.tearDown() }
        return try body(made.store, made.connect)
    }

    public func withAsync<T>(_ body: (any LedgerQueries) async throws -> T) async throws -> T {
        let made = try make()
        defer { made.tearDown() }
        return try await body(made.store)
    }
}

