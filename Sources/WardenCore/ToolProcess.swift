import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs a helper tool (tpm2-tools, ip, qemu-img …) to completion: no shell, stdin from
/// /dev/null, stdout and stderr captured (each capped), a deadline after which the tool is
/// killed. A daemon the tool starts does not hold the call: after the tool exits, its output
/// is read for at most two more seconds. Failures are typed: a missing tool is `.unavailable` naming the Debian package.
public enum ToolProcess {
    public struct Output: Sendable {
        public var status: Int32
        public var stdout: Data
        public var stderr: Data
        /// The first line of stderr (or the exit status), one line, for messages.
        public var firstErrorLine: String {
            let line = String(decoding: stderr, as: UTF8.self).split(separator: "\n").first { !$0.hasPrefix("WARN") }.map(String.init)
            return TerminalText.line(String((line ?? "exit status \(status)").prefix(300)))
        }
    }

    /// Finds `name` on PATH or in the usual system folders.
    public static func find(_ name: String, package: String) throws -> String {
        if name.hasPrefix("/") {
            guard FileManager.default.isExecutableFile(atPath: name) else { throw WardenError(.unavailable, "\(name) is not installed (Debian package \(package))") }
            return name
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for dir in path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] where !dir.isEmpty {
            let c = dir + "/" + name
            if FileManager.default.isExecutableFile(atPath: c) { return c }
        }
        throw WardenError(.unavailable, "\(name) is not installed (Debian package \(package))")
    }

    /// Runs `binary` with `arguments`; `environment` entries are added to (or replace) this
    /// process's environment. Output beyond `outputLimit` bytes per stream is dropped.
    public static func run(_ binary: String, _ arguments: [String], environment: [String: String] = [:],
                           timeout: TimeInterval = 120, outputLimit: Int = 1 << 20) throws -> Output {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = arguments
        if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new } }
        let out = Pipe(), err = Pipe()
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = out
        p.standardError = err
        do { try p.run() } catch {
            throw WardenError(.unavailable, "cannot run \(binary): \(error.localizedDescription)")
        }
        let collected = Locked<(Data, Data)>((Data(), Data()))
        let group = DispatchGroup()
        for (i, pipe) in [out, err].enumerated() {
            group.enter()
            Thread.detachNewThread {
                var buffer = Data()
                let h = pipe.fileHandleForReading
                while true {
                    let chunk = h.availableData
                    if chunk.isEmpty { break }
                    if buffer.count < outputLimit { buffer.append(chunk.prefix(outputLimit - buffer.count)) }
                }
                collected.withLock { if i == 0 { $0.0 = buffer } else { $0.1 = buffer } }
                group.leave()
            }
        }
        let pid = p.processIdentifier
        let killer = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
        p.waitUntilExit()
        killer.cancel()
        // A daemon the tool left behind may hold the pipes open: its output is not waited for.
        _ = group.wait(timeout: .now() + 2)
        let (o, e) = collected.withLock { $0 }
        if p.terminationReason == .uncaughtSignal {
            throw WardenError(.unavailable, "\((binary as NSString).lastPathComponent) was killed (signal \(p.terminationStatus)) after \(Int(timeout)) s or by another process")
        }
        return Output(status: p.terminationStatus, stdout: o, stderr: e)
    }

    /// Runs the tool and returns its stdout; a non-zero exit throws `.unavailable` with the
    /// tool's own first line of stderr.
    @discardableResult
    public static func check(_ binary: String, _ arguments: [String], environment: [String: String] = [:],
                             timeout: TimeInterval = 120, what: String? = nil) throws -> Data {
        let r = try run(binary, arguments, environment: environment, timeout: timeout)
        guard r.status == 0 else {
            throw WardenError(.unavailable, "\(what ?? (binary as NSString).lastPathComponent) failed: \(r.firstErrorLine)")
        }
        return r.stdout
    }
}
