import Foundation
import WardenCore

/// A private PostgreSQL 15 server for tests: `initdb` into a fresh folder, `pg_ctl start` on a
/// free loopback port with its socket in that folder, password (SCRAM) authentication. One
/// server per test process (``shared()``), each test in a database of its own
/// (``createDatabase()``); the server is stopped and its folder removed when the process
/// exits, passed or failed. `scripts/test` also stops a server a killed run left behind.
public final class PostgresServer: @unchecked Sendable {
    // @unchecked: immutable after start; stop/start are called by one test at a time.
    public let directory: String
    public let port: Int
    public let user = "warden"
    public let password: String
    /// `runuser -u postgres --` when the tests run as root (PostgreSQL refuses to run as root).
    let asOwner: [String]

    /// The Debian binaries folder (`/usr/lib/postgresql/15/bin`), or the first on PATH.
    public static func binary(_ name: String) -> String {
        for dir in ["/usr/lib/postgresql/15/bin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return name
    }

    nonisolated(unsafe) private static var started: PostgresServer?
    private static let lock = NSLock()
    nonisolated(unsafe) private static var stopAtExit: [String] = []
    private static let exitLock = NSLock()

    /// The process's server, started on first use.
    public static func shared() throws -> PostgresServer {
        lock.lock(); defer { lock.unlock() }
        if let s = started { return s }
        let s = try PostgresServer()
        started = s
        return s
    }

    /// Starts a new server (``shared()`` is what most tests want).
    public init(durable: Bool = false) throws {
        let base = FileManager.default.temporaryDirectory.path
        directory = "\(base)/warden-pg-\(getpid())-\(UUID().uuidString.prefix(8))"
        password = UUID().uuidString
        asOwner = getuid() == 0 ? ["runuser", "-u", "postgres", "--"] : []
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        let pwfile = directory + "/pwfile"
        try Data((password + "\n").utf8).write(to: URL(fileURLWithPath: pwfile))
        if getuid() == 0 { try Tool.run(["chown", "-R", "postgres:postgres", directory]) }
        _ = chmod(directory + "/data", 0o700)
        try Tool.run(asOwner + [Self.binary("initdb"), "-D", directory + "/data", "-U", user, "--pwfile", pwfile,
                                "--auth", "scram-sha-256", "--locale", "C.UTF-8", "--encoding", "UTF8", "--no-sync"])
        try? FileManager.default.removeItem(atPath: pwfile)
        port = try Self.freePort()
        Self.exitLock.lock(); Self.stopAtExit.append(directory); let first = Self.stopAtExit.count == 1; Self.exitLock.unlock()
        if first {
            atexit {
                for dir in PostgresServer.stopAtExit {
                    let owner = getuid() == 0 ? ["runuser", "-u", "postgres", "--"] : []
                    _ = try? Tool.run(owner + [PostgresServer.binary("pg_ctl"), "stop", "-D", dir + "/data", "-m", "immediate", "-w"],
                                      check: false, timeout: 30)
                    try? FileManager.default.removeItem(atPath: dir)
                }
            }
        }
        // Tests need no durability: fsync off keeps CREATE DATABASE and commits cheap. A
        // benchmark passes durable: true.
        durableSettings = durable ? [] : ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        try start()
    }

    private var durableSettings: [String] = []

    /// Starts (or restarts) the server; waits until it accepts connections.
    public func start() throws {
        let options = (["-p", "\(port)", "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=\(directory)",
                        "-c", "max_connections=200"] + durableSettings).joined(separator: " ")
        try Tool.run(asOwner + [Self.binary("pg_ctl"), "start", "-D", directory + "/data", "-l", directory + "/server.log",
                                "-o", options, "-w", "-t", "60"], timeout: 90)
    }

    /// Stops the server (fast shutdown); ``start()`` brings it back on the same port.
    public func stop() throws {
        try Tool.run(asOwner + [Self.binary("pg_ctl"), "stop", "-D", directory + "/data", "-m", "fast", "-w", "-t", "60"], timeout: 90)
    }

    /// The URL of `database` (without the password: pass ``environment`` or ``urlWithPassword(_:)``).
    public func url(_ database: String) -> String { "postgres://\(user)@127.0.0.1:\(port)/\(database)" }
    public func urlWithPassword(_ database: String) -> String { "postgres://\(user):\(password)@127.0.0.1:\(port)/\(database)" }
    /// `PGPASSWORD` for warden and psql.
    public var environment: [String: String] { ["PGPASSWORD": password] }

    /// Runs SQL with psql (the real client) against `database`.
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres") throws -> String {
        try Tool.run([Self.binary("psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", "\(port)",
                      "-U", user, "-d", database, "-c", sql], environment: environment).stdoutText
    }

    /// A new, empty database; returns its name.
    public func createDatabase() throws -> String {
        let name = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        try psql("CREATE DATABASE \(name)")
        return name
    }

    public func dropDatabase(_ name: String) {
        _ = try? psql("DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
    }

    /// A loopback TCP port nobody listens on now.
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ToolError.spawn(["socket"], String(cString: strerror(errno))) }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        let bound = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw ToolError.spawn(["bind"], String(cString: strerror(errno))) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
