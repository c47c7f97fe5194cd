import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import WardenCore

/// A PostgreSQL database as Warden's stores use it: a small pool of connections, blocking
/// calls for the synchronous store protocols, and one transaction that every call made inside
/// ``transaction(_:)`` joins (the same contract as `WardenDatabase` on SQLite).
///
/// Calls block the calling thread on an `EventLoopFuture` (never on a Swift concurrency
/// continuation), so they may run on any thread but an event loop's: the CLI's, a test's, or
/// the server's thread pool (docs/decisions.md, "Blocking work under the async server").
public final class PostgresStore: Sendable {
    /// Where the database is, without the password (for messages).
    public let location: String
    let configuration: PostgresConnection.Configuration
    let group: any EventLoopGroup
    let logger: Logger
    /// Idle connections, at most ``maxIdle``.
    private let idle = Locked<[PostgresConnection]>([])
    private let nextID = Locked<Int>(0)
    static let maxIdle = 8

    /// Connects to `url` (`postgres://user:password@host:port/database`) and applies this
    /// build's migrations (named and append-only, serialised by an advisory lock).
    public init(url: String, migrate: Bool = true) throws {
        let (config, location) = try Self.parse(url)
        self.configuration = config
        self.location = location
        self.group = MultiThreadedEventLoopGroup.singleton
        var logger = Logger(label: "warden.postgres")
        logger.logLevel = .critical
        self.logger = logger
        if migrate { try PostgresMigrations.apply(self) }
    }

    /// Parses a `postgres://` or `postgresql://` URL. The password may also come from
    /// `$PGPASSWORD`, so it need not be on a command line.
    static func parse(_ url: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws
        -> (PostgresConnection.Configuration, String) {
        guard let c = URLComponents(string: url), c.scheme == "postgres" || c.scheme == "postgresql",
              let host = c.host, !host.isEmpty else {
            throw WardenError(.invalidArgument, "not a PostgreSQL URL (postgres://user@host:port/database)")
        }
        let user = c.user.flatMap { $0.removingPercentEncoding } ?? "postgres"
        let password = c.password.flatMap { $0.removingPercentEncoding } ?? environment["PGPASSWORD"]
        let database = String(c.path.drop(while: { $0 == "/" }))
        let port = c.port ?? 5432
        guard (1...65535).contains(port) else { throw WardenError(.invalidArgument, "the PostgreSQL port is out of range") }
        var config = PostgresConnection.Configuration(host: host, port: port, username: user, password: password,
                                                      database: database.isEmpty ? nil : database, tls: .disable)
        config.options.connectTimeout = .seconds(10)
        return (config, "postgres://\(user)@\(host):\(port)/\(database)")
    }

    // MARK: Connections

    private func checkout() throws -> PostgresConnection {
        if let c = idle.withLock({ $0.popLast() }), !c.isClosed { return c }
        let id = nextID.withLock { n -> Int in n += 1; return n }
        do {
            return try PostgresConnection.connect(on: group.next(), configuration: configuration, id: id, logger: logger).wait()
        } catch {
            throw WardenError(.unavailable, "cannot connect to PostgreSQL at \(location): \(Self.describe(error))", cause: error)
        }
    }

    private func checkin(_ c: PostgresConnection) {
        guard !c.isClosed else { return }
        let extra: PostgresConnection? = idle.withLock { list in
            if list.count < Self.maxIdle { list.append(c); return nil }
            return c
        }
        if let extra { let _: EventLoopFuture<Void> = extra.close() }
    }

    /// Closes the idle connections.
    public func close() {
        let all = idle.withLock { list -> [PostgresConnection] in defer { list = [] }; return list }
        for c in all { let f: EventLoopFuture<Void> = c.close(); try? f.wait() }
    }

    deinit {
        for c in idle.withLock({ $0 }) { let _: EventLoopFuture<Void> = c.close() }
    }

    // MARK: Transactions

    private final class Bound: @unchecked Sendable {
        // @unchecked: used only by the thread that runs the transaction body.
        let connection: PostgresConnection
        let owner: ObjectIdentifier
        init(_ c: PostgresConnection, owner: ObjectIdentifier) { connection = c; self.owner = owner }
    }
    @TaskLocal private static var bound: Bound?

    private var boundConnection: PostgresConnection? {
        guard let b = Self.bound, b.owner == ObjectIdentifier(self) else { return nil }
        return b.connection
    }

    /// Whether the caller is inside ``transaction(_:)`` on this database.
    public var inTransaction: Bool { boundConnection != nil }

    /// Runs `body` as one transaction: every ``query(_:)`` it makes on this database, directly
    /// or through a store, runs on the transaction's connection; if `body` throws, all of it is
    /// rolled back. Nested calls join the outer transaction.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        if inTransaction { return try body() }
        let c = try checkout()
        var healthy = true
        defer { if healthy { checkin(c) } else { let _: EventLoopFuture<Void> = c.close() } }
        do {
            _ = try run(c, "BEGIN")
            let result = try Self.$bound.withValue(Bound(c, owner: ObjectIdentifier(self))) { try body() }
            _ = try run(c, "COMMIT")
            return result
        } catch {
            do { _ = try run(c, "ROLLBACK") } catch { healthy = false }
            throw error
        }
    }

    /// Runs one statement and returns its rows (inside ``transaction(_:)`` on its connection).
    @discardableResult
    public func query(_ q: PostgresQuery) throws -> [PostgresRow] {
        if let c = boundConnection { return try run(c, q) }
        let c = try checkout()
        do {
            let rows = try run(c, q)
            checkin(c)
            return rows
        } catch {
            // A failed statement outside a transaction leaves the connection usable; a broken
            // connection is closed by the driver and not returned.
            checkin(c)
            throw error
        }
    }

    private func run(_ c: PostgresConnection, _ q: PostgresQuery) throws -> [PostgresRow] {
        do {
            return try c.query(q, logger: logger).wait().rows
        } catch {
            throw Self.wrap(error, location: location)
        }
    }

    /// Maps a driver error to a ``WardenError``: constraint violations are conflicts, a lost
    /// server is unavailable; the message is the server's, never the query's bound values.
    static func wrap(_ error: Error, location: String) -> Error {
        if let e = error as? WardenError { return e }
        if let e = error as? PSQLError {
            let state = e.serverInfo?[.sqlState] ?? ""
            let message = e.serverInfo?[.message] ?? describe(e)
            switch state {
            case "23505", "23503", "23514", "WDN01":
                return WardenError(.conflict, "database constraint: \(message)", file: location, cause: e)
            case "40001", "40P01":
                return WardenError(.conflict, "the transaction conflicted with another; retry: \(message)", file: location, cause: e)
            case "":
                return WardenError(.unavailable, "PostgreSQL: \(message)", file: location, cause: e)
            default:
                return WardenError(.unavailable, "PostgreSQL error \(state): \(message)", file: location, cause: e)
            }
        }
        return WardenError(.unavailable, "PostgreSQL: \(describe(error))", file: location, cause: error)
    }

    static func describe(_ error: Error) -> String {
        if let e = error as? PSQLError {
            if let m = e.serverInfo?[.message] { return m }
            return "\(e.code)"
        }
        return "\(error)"
    }
}
