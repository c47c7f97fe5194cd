import Foundation
import Testing
import WardenCore
import WardenTestSupport

/// Hosts in network namespaces on one machine: a bridge in the test's own namespace holds the
/// server's address; each host is a namespace with a veth into the bridge. Everything is
/// removed by ``destroy()``, which the tests call in a `defer` (so also on failure).
final class FleetNet: @unchecked Sendable {
    let tag: String
    let subnet: Int
    let bridge: String
    var hosts: [String: (ns: String, veth: String, address: String)] = [:]
    var serverAddress: String { "10.\(subnet).0.1" }

    static var available: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip")
    }

    init(hosts names: [String]) throws {
        tag = String(UUID().uuidString.prefix(6)).lowercased()
        subnet = Int.random(in: 100...250)
        bridge = "wbr\(tag)"
        do {
            try Tool.run(["ip", "link", "add", bridge, "type", "bridge"])
            try Tool.run(["ip", "addr", "add", "\(serverAddress)/24", "dev", bridge])
            try Tool.run(["ip", "link", "set", bridge, "up"])
            for (i, name) in names.enumerated() {
                let ns = "w\(name)\(tag)", outside = "wv\(i)\(tag)", inside = "wi\(i)\(tag)"
                let address = "10.\(subnet).0.\(i + 2)"
                try Tool.run(["ip", "netns", "add", ns])
                hosts[name] = (ns, outside, address)
                try Tool.run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside])
                try Tool.run(["ip", "link", "set", inside, "netns", ns])
                try Tool.run(["ip", "link", "set", outside, "master", bridge])
                try Tool.run(["ip", "link", "set", outside, "up"])
                try Tool.run(["ip", "-n", ns, "addr", "add", "\(address)/24", "dev", inside])
                try Tool.run(["ip", "-n", ns, "link", "set", inside, "up"])
                try Tool.run(["ip", "-n", ns, "link", "set", "lo", "up"])
            }
        } catch {
            destroy()
            throw error
        }
    }

    /// Cuts (or restores) a host's link, as `ip link set … down` on its cable.
    func link(_ host: String, up: Bool) throws {
        try Tool.run(["ip", "link", "set", hosts[host]!.veth, up ? "up" : "down"])
    }

    func destroy() {
        for (_, h) in hosts {
            _ = try? Tool.run(["ip", "netns", "del", h.ns], check: false)
            _ = try? Tool.run(["ip", "link", "del", h.veth], check: false)
        }
        _ = try? Tool.run(["ip", "link", "del", bridge], check: false)
    }
}

/// A `warden serve` process (SIGKILLed when the test ends), with its own folder and tokens;
/// with `tls`, HTTPS as the fleet's CA (hosts enrol and report with client certificates).
final class ServeProcess: @unchecked Sendable {
    let dir: String
    let listen: String
    let database: String?
    let environment: [String: String]
    let tls: Bool
    /// More `warden serve` arguments.
    var extraArguments: [String] = []
    private(set) var process: Process?
    private(set) var port = 0

    init(dir: String, listen: String, database: String?, environment: [String: String] = [:], tls: Bool = true) {
        self.dir = dir; self.listen = listen; self.database = database; self.environment = environment; self.tls = tls
    }

    /// The fleet CA's certificate, as an administrator hands it to hosts (`warden serve ca`).
    var caFile: String { dir + "/fleet-ca.pem" }

    /// Enrols `host` (its warden home `home`, in its namespace when `net` is given) with a
    /// fresh one-time host token: the agent's key and certificate land in `home/agent/`.
    func enrol(_ net: FleetNet?, _ host: String, home: String) throws {
        let token = try self.token("enrol-\(host)-\(UUID().uuidString.prefix(6))", role: "host", host: host)
        _ = try wardenOn(net, host, home: home, ["agent", "enrol", url, "--host", host, "--ca-file", caFile], env: ["WARDEN_AGENT_TOKEN": token])
    }

    /// curl's options to trust the fleet CA (https) — and nothing else.
    var curlTrust: [String] { tls ? ["--cacert", caFile] : [] }

    /// Makes a token with the CLI (as an operator would on the server).
    func token(_ name: String, role: String, host: String? = nil) throws -> String {
        var args = [Fixtures.wardenBinary, "serve", "token", "add", name, "--role", role, "--db", dir + "/warden.db"]
        if let host { args += ["--host", host] }
        return try Tool.run(args).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts the server (on the same port as before when restarted) and waits until it listens.
    func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Fixtures.wardenBinary)
        let bind = port == 0 ? listen : listen.replacingOccurrences(of: ":0", with: ":\(port)")
        var args = ["serve", "--listen", bind, "--db", dir + "/warden.db", "--log-level", "error"]
        if let database { args += ["--database", database] }
        args += extraArguments
        if tls {
            args.append("--tls")
            let ca = try Tool.run([Fixtures.wardenBinary, "serve", "ca", "--db", dir + "/warden.db"]).stdout
            try ca.write(to: URL(fileURLWithPath: caFile))
        }
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        p.environment = env
        let log = dir + "/serve-\(UUID().uuidString.prefix(4)).log"
        FileManager.default.createFile(atPath: log, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: log)
        p.standardError = FileHandle(forWritingAtPath: log)
        try p.run()
        process = p
        // Killed when starting fails, too (the caller's defer is not set up yet).
        var started = false
        defer { if !started { kill9() } }
        do {
            try waitUntil("warden serve listens", timeout: 60) {
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                if !p.isRunning { throw ServeFailed(log: text) }
                guard let line = text.split(separator: "\n").first(where: { $0.contains("listening on") }),
                      let n = Int(line.split(separator: ":").last ?? "") else { return false }
                port = n
                return true
            }
        } catch let e as ServeFailed {
            throw e
        } catch {
            throw ServeFailed(log: "\(error); log: " + ((try? String(contentsOfFile: log, encoding: .utf8)) ?? ""))
        }
        started = true
    }

    struct ServeFailed: Error, CustomStringConvertible { var log: String; var description: String { "warden serve exited: \(log)" } }

    var url: String { "\(tls ? "https" : "http")://\(listen.split(separator: ":").first!):\(port)" }

    /// SIGKILL, no goodbye (a crash).
    func kill9() {
        guard let p = process else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        process = nil
    }

    /// GETs `path` with `token` (curl, from the test's namespace) and decodes JSON.
    func get(_ path: String, token: String) throws -> Any {
        let r = try Tool.run(["curl", "-sS", "--max-time", "20"] + curlTrust + ["-H", "Authorization: Bearer \(token)", url + path])
        return try JSONSerialization.jsonObject(with: r.stdout)
    }
}

/// Runs warden inside a host's namespace with its own home.
func wardenOn(_ net: FleetNet?, _ host: String, home: String, _ args: [String], env: [String: String] = [:], check: Bool = true) throws -> ToolResult {
    var prefix: [String] = []
    if let net { prefix = ["ip", "netns", "exec", net.hosts[host]!.ns] }
    var environment = ["WARDEN_HOME": home, "WARDEN_POLICY": home + "/policy"]
    for (k, v) in env { environment[k] = v }
    return try Tool.run(prefix + [Fixtures.wardenBinary] + args, environment: environment, check: check, timeout: 120)
}
