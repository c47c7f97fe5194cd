import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Maintenance
#if canImport(Glibc)
import Glibc
#endif

/// A TCP listener on every host address that counts the connections it accepts.
final class Listener: @unchecked Sendable {
    let fd: Int32
    let port: Int
    private let count = Locked(0)
    private let stop = Locked(false)
    private var thread: Thread?

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = 0   // INADDR_ANY
        addr.sin_port = 0
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0, listen(fd, 16) == 0 else { throw WardenError(.io, "cannot listen") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = Int(UInt16(bigEndian: addr.sin_port))
        self.fd = fd
    }

    func start() {
        let t = Thread { [self] in
            while !stop.withLock({ $0 }) {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 100) > 0 {
                    let c = accept(fd, nil, nil)
                    if c >= 0 { count.withLock { $0 += 1 }; close(c) }
                }
            }
        }
        thread = t
        t.start()
    }

    func finish() -> Int {
        stop.withLock { $0 = true }
        usleep(300_000)
        close(fd)
        return count.withLock { $0 }
    }
}

/// Real maintenance boots (QEMU, the host's kernel, the appliance built by Warden).
@Suite(.serialized) struct MaintenanceBootTests {
    static var unavailable: String? {
        if let why = TestGuest.unavailableReason { return why }
        if getuid() != 0 { return "needs root (the maintenance boot is confined)" }
        return nil
    }

    /// The appliance, built once into the fixture cache (Warden keys it by its inputs).
    static func appliance() throws -> Appliance {
        try Appliance.prepare(home: Fixtures.cacheRoot + "/maintenance-home")
    }

    /// This host's first global IPv4 address, if it has one.
    static func hostAddress() -> String? {
        guard let r = try? Tool.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], check: false) else { return nil }
        for line in r.stdoutText.split(separator: "\n") {
            let words = line.split(separator: " ")
            if let i = words.firstIndex(of: "inet"), i + 1 < words.count { return String(words[i + 1].split(separator: "/")[0]) }
        }
        return nil
    }

    /// The appliance reaches the mirror, and nothing else: a listener on the host sees no
    /// connection, through QEMU's host alias (10.0.2.2) or the host's own address.
    @Test func theApplianceReachesOnlyTheMirror() throws {
        if let why = Self.unavailable { print("skipped: \(why)"); return }
        let appliance = try Self.appliance()
        try Fixtures.withTemporaryDirectory { dir in
            let mirrorDir = dir + "/mirror"
            try FileManager.default.createDirectory(atPath: mirrorDir, withIntermediateDirectories: true)
            try "Package: nothing\n".write(toFile: mirrorDir + "/Packages", atomically: true, encoding: .utf8)
            chmod(dir, 0o755); chmod(mirrorDir, 0o755); chmod(mirrorDir + "/Packages", 0o644)
            let listener = try Listener()
            listener.start()
            var probes = ["http://10.0.2.100/Packages", "http://10.0.2.2:\(listener.port)/x"]
            if let host = Self.hostAddress() { probes.append("http://\(host):\(listener.port)/x") }
            let mirror = try Mirror.parse(mirrorDir, suite: nil, components: [], keyring: nil, defaultSuite: nil, allowUnsigned: false)
            let plan = MaintenancePlan(mode: .none, mirror: mirror, probes: probes)
            var options = MaintenanceBoot.Options()
            options.timeout = 180
            options.memoryMiB = 256
            options.pipeExecutable = Fixtures.wardenBinary
            let result = try MaintenanceBoot(appliance: appliance, options: options).run(plan: plan, disks: [], work: dir + "/work")
            let seen = listener.finish()
            let console = (try? String(contentsOfFile: result.console, encoding: .utf8)) ?? ""
            #expect(result.outcome == "ok", "\(result.steps) \(console.suffix(2000))")
            #expect(result.probes["http://10.0.2.100/Packages"] == "ok", "\(result.steps)")
            for p in probes.dropFirst() { #expect(result.probes[p] == "fail", "\(p): \(result.steps)") }
            #expect(seen == 0, "the host listener saw \(seen) connection(s)")
            #expect(!result.timedOut)
        }
    }

    /// A boot that does not finish is killed at the timeout, and says so.
    @Test func aBootThatHangsIsKilledAtTheTimeout() throws {
        if let why = Self.unavailable { print("skipped: \(why)"); return }
        let appliance = try Self.appliance()
        try Fixtures.withTemporaryDirectory { dir in
            // Probes of an address that never answers keep the appliance busy past the timeout.
            let plan = MaintenancePlan(mode: .none, mirror: nil, probes: (1...20).map { "http://10.0.2.2:\(9000 + $0)/" })
            var options = MaintenanceBoot.Options()
            options.timeout = 5
            options.memoryMiB = 256
            options.pipeExecutable = Fixtures.wardenBinary
            let started = Date()
            let result = try MaintenanceBoot(appliance: appliance, options: options).run(plan: plan, disks: [], work: dir + "/work")
            #expect(result.timedOut)
            #expect(result.outcome == nil)
            #expect(Date().timeIntervalSince(started) < 60)
        }
    }
}
