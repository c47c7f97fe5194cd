import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// A private OCI registry for tests: Debian's `docker-registry` (Distribution 2.8) on a free
/// loopback port, its storage in a fresh folder; optionally with htpasswd (bcrypt, made by
/// `htpasswd -B`) basic auth, TLS from a test CA (made by `openssl`), or bearer tokens from a
/// token service (``TokenService``). ``stop()`` kills it and removes the folder; ``with(_:)``
/// stops it whatever the body did, and a process exit stops any left.
public final class RegistryServer: @unchecked Sendable {
    // @unchecked: `pid` is only touched under `lock`.
    public enum Auth: Sendable {
        case none
        case basic(user: String, password: String)
        /// Bearer tokens from a token service at `realm`, signed by the key whose certificate is `certificate`.
        case token(realm: String, service: String, issuer: String, certificate: String)
    }

    public let directory: String
    public let port: Int
    public let tls: Bool
    public let auth: Auth
    /// The test CA (PEM) when TLS is on.
    public let caFile: String?
    private let lock = NSLock()
    private var pid: Int32 = 0
    private var stopped = false

    nonisolated(unsafe) private static var running: [String: Int32] = [:]   // folder → pid
    private static let registry = NSLock()

    /// `127.0.0.1:PORT`: the registry part of a reference.
    public var host: String { "127.0.0.1:\(port)" }
    /// Where blobs are stored (`…/blobs/sha256/ab/abcd…/data`).
    public var blobsDirectory: String { directory + "/storage/docker/registry/v2/blobs" }

    public init(auth: Auth = .none, tls: Bool = false) throws {
        directory = NSTemporaryDirectory() + "warden-registry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory + "/storage", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        self.tls = tls
        self.auth = auth
        port = try PostgresServer.freePort()
        var config = """
            version: 0.1
            log:
              level: warn
              accesslog:
                disabled: true
            storage:
              filesystem:
                rootdirectory: \(directory)/storage
              delete:
                enabled: true
            http:
              addr: 127.0.0.1:\(port)
              secret: test-\(UInt64.random(in: 0...UInt64.max))
            """
        var ca: String?
        do {
            if tls {
                try Tool.sh("""
                    set -e
                    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=warden-test-ca \
                        -keyout ca.key -out ca.pem 2>/dev/null
                    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null
                    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext
                    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem 2>/dev/null
                    """, cwd: directory)
                config += "\n  tls:\n    certificate: \(directory)/server.pem\n    key: \(directory)/server.key"
                ca = directory + "/ca.pem"
            }
            switch auth {
            case .none: break
            case .basic(let user, let password):
                try Tool.run(["htpasswd", "-Bbc", directory + "/htpasswd", user, password])
                config += "\nauth:\n  htpasswd:\n    realm: warden-test\n    path: \(directory)/htpasswd"
            case .token(let realm, let service, let issuer, let certificate):
                config += "\nauth:\n  token:\n    realm: \(realm)\n    service: \(service)\n    issuer: \(issuer)\n    rootcertbundle: \(certificate)"
            }
            try Data((config + "\n").utf8).write(to: URL(fileURLWithPath: directory + "/config.yml"))
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        caFile = ca
        try start()
    }

    deinit { stop() }

    /// Runs `body` with a fresh registry, stopped afterwards even when the body throws.
    public static func with<T>(auth: Auth = .none, tls: Bool = false, _ body: (RegistryServer) throws -> T) throws -> T {
        let r = try RegistryServer(auth: auth, tls: tls)
        defer { r.stop() }
        return try body(r)
    }

    /// Starts the server (again, after ``kill()``) on the same port and storage; waits until it answers.
    public func start() throws {
        let r = try Tool.run(["/bin/sh", "-c", "docker-registry serve \"$0/config.yml\" >>\"$0/registry.log\" 2>&1 </dev/null & echo $!", directory])
        guard let p = Int32(r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw ToolError.spawn(["docker-registry"], "no pid")
        }
        lock.lock(); pid = p; lock.unlock()
        Self.registry.lock(); let first = Self.running.isEmpty; Self.running[directory] = p; Self.registry.unlock()
        if first { atexit { RegistryServer.stopAll() } }
        let scheme = tls ? "https" : "http"
        for _ in 0..<200 {
            let probe = try Tool.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"]
                                     + (caFile.map { ["--cacert", $0] } ?? []) + ["\(scheme)://\(host)/v2/"], check: false, timeout: 10)
            if ["200", "401"].contains(probe.stdoutText) { return }
            if Glibc.kill(p, 0) != 0 { break }
            usleep(50_000)
        }
        let log = (try? String(contentsOfFile: directory + "/registry.log", encoding: .utf8)) ?? ""
        kill()
        throw ToolError.spawn(["docker-registry"], "did not start: \(log.suffix(500))")
    }

    /// Kills the server now (SIGKILL), keeping its storage: a crash in the middle of a transfer.
    public func kill() {
        lock.lock(); let p = pid; pid = 0; lock.unlock()
        guard p > 1 else { return }
        Glibc.kill(p, SIGKILL)
        var status: Int32 = 0
        for _ in 0..<100 where Glibc.kill(p, 0) == 0 { _ = waitpid(p, &status, WNOHANG); usleep(20_000) }
        Self.registry.lock(); Self.running[directory] = nil; Self.registry.unlock()
    }

    public func stop() {
        lock.lock(); let done = stopped; stopped = true; lock.unlock()
        guard !done else { return }
        kill()
        try? FileManager.default.removeItem(atPath: directory)
    }

    static func stopAll() {
        registry.lock(); let all = running; running = [:]; registry.unlock()
        for (dir, p) in all { Glibc.kill(p, SIGKILL); try? FileManager.default.removeItem(atPath: dir) }
    }

    /// Bytes of all blobs stored (what a push really added), by `du --apparent-size`.
    public func storedBlobBytes() throws -> Int64 {
        guard FileManager.default.fileExists(atPath: blobsDirectory) else { return 0 }
        let r = try Tool.run(["du", "-sb", "--apparent-size", blobsDirectory])
        return Int64(r.stdoutText.split(separator: "\t").first ?? "0") ?? 0
    }

    /// The file holding blob `digest` (`sha256:…`).
    public func blobFile(_ digest: String) -> String {
        let hex = String(digest.dropFirst(7))
        return "\(blobsDirectory)/sha256/\(hex.prefix(2))/\(hex)/data"
    }

    /// Repositories present in storage.
    public func repositories() -> [String] {
        let base = directory + "/storage/docker/registry/v2/repositories"
        guard let e = FileManager.default.enumerator(atPath: base) else { return [] }
        var out: [String] = []
        while let p = e.nextObject() as? String { if p.hasSuffix("/_manifests") { out.append(String(p.dropLast(11))) } }
        return out.sorted()
    }
}
