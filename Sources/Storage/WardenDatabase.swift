import CSQLite
import Foundation
import GRDB
import WardenCore

/// Where Warden's database lives, and how it is opened.
///
/// The path is, in order: an explicit `--db`, `$WARDEN_DB`, `$WARDEN_HOME/warden.db`,
/// then `~/.local/share/warden/warden.db`. The database is SQLite in WAL mode; every
/// component's schema is a list of named, append-only migrations (``WardenSchema``).
public final class WardenDatabase: Sendable {
    /// The database file.
    public let path: String
    /// The GRDB connection pool (one writer, concurrent readers).
    public let pool: DatabasePool

    /// Resolves the database path from an explicit option and the environment.
    public static func defaultPath(explicit: String? = nil,
                                   environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let explicit, !explicit.isEmpty { return explicit }
        if let db = environment["WARDEN_DB"], !db.isEmpty { return db }
        if let home = environment["WARDEN_HOME"], !home.isEmpty { return home + "/warden.db" }
        let userHome = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return userHome + "/.local/share/warden/warden.db"
    }

    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    ///
    /// - Parameter create: when false, a missing database is an error instead of being created
    ///   (read-only commands and the policy hook must fail closed, not invent an empty fleet).
    /// - Parameter checkpointOnClose: when false, closing the connections leaves the WAL as it
    ///   is (no checkpoint, no deletion). The libvirt hook opens the ledger once per VM start;
    ///   checkpointing on every exit, and then re-creating (and fsyncing) a fresh WAL on the
    ///   next open, cost more than the decision itself. SQLite still checkpoints automatically
    ///   once the WAL passes 1000 pages, in whichever process commits then.
    public init(path: String, create: Bool = true, readOnly: Bool = false, checkpointOnClose: Bool = true) throws {
        self.path = path
        let fm = FileManager.default
        let fresh = !fm.fileExists(atPath: path)
        if fresh {
            guard create, !readOnly else {
                throw WardenError(.unavailable, "no Warden database (run a command that registers something first, or pass --db)", file: path)
            }
            let dir = (path as NSString).deletingLastPathComponent
            if !dir.isEmpty {
                do {
                    try fm.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                           attributes: [.posixPermissions: 0o700])
                } catch {
                    throw WardenError(.io, "cannot create the database folder: \(error.localizedDescription)", file: dir)
                }
            }
        }
        var config = Configuration()
        config.readonly = readOnly
        // Decisions and the changes they allow commit in one write transaction
        // (``transaction(_:)``), so writers queue behind each other: wait long enough for a
        // storm of concurrent copies to drain rather than failing.
        config.busyMode = .timeout(60)
        config.prepareDatabase { db in
            if !checkpointOnClose, let c = db.sqliteConnection {
                _ = warden_sqlite_no_checkpoint_on_close(c)
            }
            try db.execute(sql: "PRAGMA foreign_keys = ON")
            // FULL: a commit is on disk (WAL fsynced) before it returns, so an acknowledged
            // ledger event survives a power cut, not only a crash of the process.
            if !readOnly { try db.execute(sql: "PRAGMA synchronous = FULL") }
            // 64 MiB of page cache per connection (SQLite's default is 2 MiB): appends touch
            // the event indexes at random places, and misses cost a pread each.
            try db.execute(sql: "PRAGMA cache_size = -65536")
            // Readers map the file (up to 16 GiB of address space, not memory): queries that
            // touch tens of thousands of random pages (exposure) then read them in place
            // instead of copying each with pread. The writer keeps pread.
            if db.configuration.readonly { try db.execute(sql: "PRAGMA mmap_size = 17179869184") }
        }
        do {
            // A new database is created, switched to WAL and migrated by one process at a
            // time (the others wait on the folder's lock, then find it ready): switching the
            // journal mode is refused, not waited for, while another connection holds the file.
            let lock = fresh && !readOnly ? MigrationLock.acquire(databasePath: path) : nil
            defer { lock?.release() }
            pool = try Self.openPool(path: path, configuration: config)
            // GRDB sets `synchronous = NORMAL` on the writer when it turns WAL on, after
            // `prepareDatabase` ran: set FULL again, or commits are not fsynced.
            if !readOnly { try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = FULL") } }
            // `PRAGMA user_version` holds ``WardenSchema/stamp`` once every migration of this
            // build is applied: then the migration walk (reading grdb_migrations, a write
            // barrier) is skipped, which the libvirt hook's start-up budget needs.
            let current = try pool.read { try Int32.fetchOne($0, sql: "PRAGMA user_version") } == WardenSchema.stamp
            if current {
                // Nothing to migrate.
            } else if !readOnly {
                // Serialised across processes: eight first commands on a fresh database must
                // not each try to create the tables.
                let migrate = { [pool] in
                    try WardenSchema.migrator.migrate(pool)
                    try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA user_version = \(WardenSchema.stamp)") }
                }
                if lock != nil { try migrate() } else { try MigrationLock.holding(databasePath: path, migrate) }
            } else {
                let pending = try pool.read { try WardenSchema.migrator.hasCompletedMigrations($0) }
                if !pending {
                    throw WardenError(.unavailable, "the database schema is older than this warden; open it once read-write to migrate", file: path)
                }
            }
        } catch let e as WardenError {
            throw e
        } catch let e as DatabaseError {
            throw WardenError(Self.isDamage(e) ? .corrupt : .unavailable,
                              "cannot open the database: \(e.message ?? "SQLite error \(e.resultCode.rawValue)")", file: path)
        } catch {
            throw WardenError(.unavailable, "cannot open the database: \(error)", file: path)
        }
        // The database holds host keys' fingerprints, owners and history: keep it private.
        _ = chmod(path, 0o600)
    }

    /// Opens the pool, retrying (bounded: 100 × 50 ms) while another process holds a lock
    /// that SQLite refuses at once instead of waiting for (the WAL switch of a database that
    /// another process is creating).
    static func openPool(path: String, configuration: Configuration) throws -> DatabasePool {
        var attempt = 0
        while true {
            do {
                return try DatabasePool(path: path, configuration: configuration)
            } catch let e as DatabaseError where e.resultCode == .SQLITE_BUSY || e.resultCode == .SQLITE_LOCKED {
                attempt += 1
                if attempt >= 100 { throw e }
                usleep(50_000)
            }
        }
    }

    /// Runs `body` in a write transaction; SQLite errors become ``WardenError``s naming the file.
    /// Inside ``transaction(_:)`` it runs on that transaction's connection, in a savepoint.
    public func write<T>(_ body: (Database) throws -> T) throws -> T {
        if let db = boundConnection {
            do {
                var result: T?
                try db.inSavepoint { result = try body(db); return .commit }
                return result!
            } catch { throw Self.wrap(error, path: path) }
        }
        do { return try pool.write(body) } catch { throw Self.wrap(error, path: path) }
    }

    /// Runs `body` in a read transaction (a consistent snapshot). Inside ``transaction(_:)``
    /// it reads on that transaction's connection (seeing its uncommitted changes).
    public func read<T>(_ body: (Database) throws -> T) throws -> T {
        if let db = boundConnection {
            do { return try body(db) } catch { throw Self.wrap(error, path: path) }
        }
        do { return try pool.read(body) } catch { throw Self.wrap(error, path: path) }
    }

    /// The connection of the ``transaction(_:)`` this thread is inside, for this database.
    private var boundConnection: Database? {
        guard let b = Self.bound, b.owner == ObjectIdentifier(self) else { return nil }
        return b.db
    }

    /// Whether the caller is inside ``transaction(_:)`` on this database.
    public var inTransaction: Bool { boundConnection != nil }

    private final class Bound: @unchecked Sendable {
        // @unchecked: the connection is used only by the thread that runs the transaction body.
        let db: Database
        let owner: ObjectIdentifier
        init(db: Database, owner: ObjectIdentifier) { self.db = db; self.owner = owner }
    }
    @TaskLocal private static var bound: Bound?

    /// Runs `body` as one write transaction (`BEGIN IMMEDIATE`: it holds SQLite's write lock
    /// from the start, so no other process or thread commits between what `body` reads and
    /// what it writes). Every ``read(_:)`` and ``write(_:)`` on this database that `body`
    /// makes, directly or through a store, joins the transaction; if `body` throws, all of
    /// it is rolled back. Nested calls join the outer transaction.
    ///
    /// This is how a decision that depends on ledger state (a replica count, a uniqueness
    /// check) commits together with the change it allows (docs/decisions.md).
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        if inTransaction { return try body() }
        do {
            return try pool.writeWithoutTransaction { db in
                var result: T?
                try db.inTransaction(.immediate) {
                    result = try Self.$bound.withValue(Bound(db: db, owner: ObjectIdentifier(self))) { try body() }
                    return .commit
                }
                return result!
            }
        } catch { throw Self.wrap(error, path: path) }
    }

    package static func wrap(_ error: Error, path: String) -> Error {
        if let e = error as? WardenError { return e }
        if let e = error as? DatabaseError {
            if e.resultCode == .SQLITE_CONSTRAINT {
                return WardenError(.conflict, "database constraint: \(e.message ?? "violated")", file: path, cause: e)
            }
            return WardenError(isDamage(e) ? .corrupt : .unavailable,
                               "database error: \(e.message ?? "SQLite error \(e.resultCode.rawValue)")", file: path, cause: e)
        }
        return error
    }

    /// SQLite reports a damaged or truncated file (not a busy or missing one).
    package static func isDamage(_ e: DatabaseError) -> Bool {
        e.resultCode == .SQLITE_CORRUPT || e.resultCode == .SQLITE_NOTADB || e.extendedResultCode == .SQLITE_IOERR_SHORT_READ
    }
}

/// An exclusive `flock` on the database's folder while migrations run, so concurrent first
/// uses of a new database apply them once (the others wait, then find them applied).
enum MigrationLock {
    /// A held lock; ``release()`` (or the end of the process) lets the next one in.
    final class Held {
        let fd: Int32
        init(fd: Int32) { self.fd = fd }
        func release() { _ = flock(fd, LOCK_UN); close(fd) }
    }

    /// Takes the lock (waiting for it); nil when the folder cannot be opened or locked.
    static func acquire(databasePath: String) -> Held? {
        var dir = (databasePath as NSString).deletingLastPathComponent
        if dir.isEmpty { dir = "." }
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR { close(fd); return nil }
        }
        return Held(fd: fd)
    }

    static func holding<T>(databasePath: String, _ body: () throws -> T) throws -> T {
        let held = acquire(databasePath: databasePath)
        defer { held?.release() }
        return try body()
    }
}

/// Every component's named migrations, in the one order they are applied.
///
/// Migrations are append-only: once a release has shipped one, it is never edited or
/// reordered; new schema changes are new migrations at the end of their group, and new
/// groups go at the end of ``groups``.
public enum WardenSchema {
    /// A named migration.
    public struct Migration: Sendable {
        public let name: String
        public let apply: @Sendable (Database) throws -> Void
        public init(_ name: String, _ apply: @escaping @Sendable (Database) throws -> Void) {
            self.name = name
            self.apply = apply
        }
    }

    /// The groups, in order. Each group's own list lives next to its store.
    static var groups: [[Migration]] {
        [LedgerMigrations.all, AdvisoryMigrations.all, StateMigrations.all, JobMigrations.all, MalwareMigrations.all]
    }

    /// A non-zero 31-bit FNV-1a hash of every migration name in order: what
    /// `PRAGMA user_version` holds when a database has exactly this build's migrations.
    /// Any added migration changes it, so an older database is walked and migrated as before.
    public static let stamp: Int32 = {
        var h: UInt32 = 2_166_136_261
        for group in groups {
            for mig in group {
                for byte in mig.name.utf8 + [0] { h = (h ^ UInt32(byte)) &* 16_777_619 }
            }
        }
        return Int32(bitPattern: h & 0x7FFF_FFFF) | 1
    }()

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        for group in groups {
            for mig in group {
                m.registerMigration(mig.name) { db in try mig.apply(db) }
            }
        }
        return m
    }
}
