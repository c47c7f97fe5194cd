import Foundation
import Ledger
import LedgerPostgres
import WardenCore

/// The one way the server (and later the agent) opens its ledger: PostgreSQL when a
/// `postgres://` URL is given, else the SQLite database at `path` (the embedded default, for
/// one machine).
public enum FleetStores {
    public static func open(database url: String?, path: String, keysDirectory: String?, host: HostName = .current) throws -> any LedgerQueries {
        if let url, !url.isEmpty {
            guard url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") else {
                throw WardenError(.invalidArgument, "--database takes a postgres:// URL (without it, the SQLite database at --db is used)")
            }
            let store = try PostgresStore(url: url)
            return PostgresLedger(store: store, keysDirectory: keysDirectory ?? HostKey.directory(databasePath: path), host: host)
        }
        return try SQLiteLedger.open(path, .create, host: host)
    }
}
