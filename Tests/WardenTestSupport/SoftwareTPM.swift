import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// A private software TPM 2.0 for tests: Debian's `swtpm` with its state in a fresh folder (or
/// in `stateDirectory`, to look into a VM's vTPM), serving tpm2-tools on a unix socket in
/// that folder (no network), started up and ready. ``stop()`` kills it and removes the folder;
/// ``with(_:)`` stops it whatever the body did, and a process exit stops any left.
public final class SoftwareTPM: @unchecked Sendable {
    // @unchecked: immutable after init; stop() is idempotent and guarded by a lock.
    public let directory: String
    private let pidFile: String
    private let lock = NSLock()
    private var stopped = false

    /// The TCTI string tpm2-tools and Warden take (`--tcti` / `$TPM2TOOLS_TCTI`).
    public var tcti: String { "swtpm:path=\(directory)/tpm.sock" }

    nonisolated(unsafe) private static var running: [String: String] = [:]   // pid file → folder
    private static let registry = NSLock()

    public init(stateDirectory: String? = nil) throws {
        directory = NSTemporaryDirectory() + "warden-swtpm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory + "/state", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        pidFile = directory + "/swtpm.pid"
        do {
            try Tool.run(["swtpm", "socket", "--tpm2", "--tpmstate", "dir=\(stateDirectory ?? directory + "/state")",
                          "--server", "type=unixio,path=\(directory)/tpm.sock", "--ctrl", "type=unixio,path=\(directory)/tpm.sock.ctrl",
                          "--flags", "not-need-init,startup-clear", "--daemon", "--pid", "file=\(pidFile)",
                          "--log", "file=\(directory)/swtpm.log"], timeout: 30)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        Self.registry.lock(); let first = Self.running.isEmpty; Self.running[pidFile] = directory; Self.registry.unlock()
        if first { atexit { SoftwareTPM.stopAll() } }
        do { try waitReady() } catch { stop(); throw error }
    }

    deinit { stop() }

    /// Runs `body` with a fresh TPM, stopped afterwards even when the body throws.
    public static func with<T>(stateDirectory: String? = nil, _ body: (SoftwareTPM) throws -> T) throws -> T {
        let tpm = try SoftwareTPM(stateDirectory: stateDirectory)
        defer { tpm.stop() }
        return try body(tpm)
    }

    private func waitReady() throws {
        for _ in 0..<100 {
            if (try? Tool.run(["tpm2_getcap", "properties-fixed"], environment: ["TPM2TOOLS_TCTI": tcti], timeout: 10)) != nil { return }
            usleep(50_000)
        }
        throw ToolError.spawn(["swtpm"], "did not answer on \(directory)/tpm.sock")
    }

    /// Runs a tpm2-tools command against this TPM.
    @discardableResult
    public func tool(_ args: [String]) throws -> ToolResult {
        try Tool.run(args, environment: ["TPM2TOOLS_TCTI": tcti], timeout: 60)
    }

    /// Extends a sha256 PCR with a digest (as a boot component would).
    public func extend(pcr: Int, with text: String) throws {
        let digest = Data(text.utf8).sha256Hex
        try tool(["tpm2_pcrextend", "\(pcr):sha256=\(digest)"])
    }

    public func stop() {
        lock.lock(); defer { lock.unlock() }
        guard !stopped else { return }
        stopped = true
        Self.kill(pidFile: pidFile)
        try? FileManager.default.removeItem(atPath: directory)
        Self.registry.lock(); Self.running[pidFile] = nil; Self.registry.unlock()
    }

    static func kill(pidFile: String) {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else { return }
        Glibc.kill(pid, SIGTERM)
        for _ in 0..<40 where Glibc.kill(pid, 0) == 0 { usleep(25_000) }
        if Glibc.kill(pid, 0) == 0 { Glibc.kill(pid, SIGKILL) }
    }

    static func stopAll() {
        registry.lock(); let all = running; running = [:]; registry.unlock()
        for (pidFile, dir) in all { kill(pidFile: pidFile); try? FileManager.default.removeItem(atPath: dir) }
    }
}

extension Data {
    /// SHA-256 as hex, through sha256sum (the test support has no crypto library of its own).
    var sha256Hex: String {
        let r = try? Tool.run(["sha256sum"], stdin: self)
        return String(String(decoding: r?.stdout ?? Data(), as: UTF8.self).prefix(64))
    }
}
