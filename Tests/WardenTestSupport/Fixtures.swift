import Foundation
import WardenCore

/// The result of running an external tool.
public struct ToolResult: Sendable {
    public var status: Int32
    public var stdout: Data
    public var stderr: String
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
}

public struct ToolError: Error, CustomStringConvertible {
    public var command: [String]
    public var result: ToolResult
    public var description: String {
        "\(command.joined(separator: " ")) exited \(result.status): \(result.stderr.prefix(2000))"
    }
}

/// Runs real tools (qemu-img, mkfs.ext4, debugfs, sgdisk, ...) for fixtures and oracles.
public enum Tool {
    /// Runs `args` (looked up on PATH, plus /usr/sbin and /sbin) and returns its output.
    @discardableResult
    public static func run(_ args: [String], cwd: String? = nil, stdin: Data? = nil,
                           environment: [String: String] = [:], check: Bool = true) throws -> ToolResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = (env["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        env["LC_ALL"] = "C"
        for (k, v) in environment { env[k] = v }
        p.environment = env
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let inPipe = Pipe()
        p.standardInput = stdin == nil ? FileHandle.nullDevice : inPipe
        try p.run()
        if let stdin {
            try inPipe.fileHandleForWriting.write(contentsOf: stdin)
            try inPipe.fileHandleForWriting.close()
        }
        // Drain both pipes concurrently so neither can fill and block the child.
        let errBox = DataBox()
        let t = Thread { errBox.data = err.fileHandleForReading.readDataToEndOfFile() }
        t.start()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        while !errBox.done { usleep(1000) }
        let r = ToolResult(status: p.terminationStatus, stdout: outData, stderr: String(decoding: errBox.data, as: UTF8.self))
        if check && r.status != 0 { throw ToolError(command: args, result: r) }
        return r
    }

    /// Runs a shell script with `bash -euo pipefail -c`.
    @discardableResult
    public static func sh(_ script: String, cwd: String? = nil, check: Bool = true) throws -> ToolResult {
        try run(["bash", "-euo", "pipefail", "-c", script], cwd: cwd, check: check)
    }
}

final class DataBox: @unchecked Sendable {
    private let lock = NSLock()
    private var _data = Data()
    private var _done = false
    var data: Data {
        get { lock.withLock { _data } }
        set { lock.withLock { _data = newValue; _done = true } }
    }
    var done: Bool { lock.withLock { _done } }
}

/// Builds fixtures with real tools, cached on disk by a key that names the recipe.
///
/// The cache lives in `$WARDEN_FIXTURE_CACHE` or `/tmp/warden-fixtures`. A
/// fixture directory is built in a temporary sibling and renamed into place,
/// so a half-built fixture is never used. Change the recipe text (or bump
/// `version`) and the key changes with it.
public enum Fixtures {
    public static let version = "1"
    private static let lock = NSLock()

    public static var cacheRoot: String {
        ProcessInfo.processInfo.environment["WARDEN_FIXTURE_CACHE"] ?? "/tmp/warden-fixtures"
    }

    /// FNV-1a 64-bit hash of the recipe, as hex: enough to key a cache.
    public static func key(_ recipe: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in (version + "\u{0}" + recipe).utf8 {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return String(h, radix: 16)
    }

    /// Returns a directory holding the fixture named `name`, building it with
    /// `build(dir)` the first time. `recipe` must change whenever the output would.
    public static func cached(_ name: String, recipe: String, build: (String) throws -> Void) throws -> String {
        lock.lock()
        defer { lock.unlock() }
        let fm = FileManager.default
        let final = "\(cacheRoot)/\(name)-\(key(name + "\u{0}" + recipe))"
        if fm.fileExists(atPath: final + "/.complete") { return final }
        try fm.createDirectory(atPath: cacheRoot, withIntermediateDirectories: true)
        let tmp = "\(final).tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try? fm.removeItem(atPath: tmp)
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        do {
            try build(tmp)
            _ = fm.createFile(atPath: tmp + "/.complete", contents: Data())
            try? fm.removeItem(atPath: final)
            try fm.moveItem(atPath: tmp, toPath: final)
        } catch {
            try? fm.removeItem(atPath: tmp)
            if fm.fileExists(atPath: final + "/.complete") { return final }
            throw error
        }
        return final
    }

    /// Runs `body` with a fresh temporary directory that is removed afterwards.
    public static func withTemporaryDirectory<T>(_ body: (String) throws -> T) throws -> T {
        let dir = NSTemporaryDirectory() + "warden-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        return try body(dir)
    }

    /// Writes `bytes` to `path`.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// Reads a whole file.
    public static func read(_ path: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// The built `warden` executable, next to the test bundle.
    public static var wardenBinary: String {
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        // swift test runs .../debug/WardenPackageTests.xctest (a file on Linux).
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("warden").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return ".build/debug/warden"
    }
}
