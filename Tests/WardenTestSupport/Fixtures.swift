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
    static func spawn(_ command: [String], _ why: String) -> ToolError {
        ToolError(command: command, result: ToolResult(status: -1, stdout: Data(), stderr: "cannot start: \(why)"))
    }
    public var description: String {
        "\(command.joined(separator: " ")) exited \(result.status): \(result.stderr.prefix(2000))"
    }
}

/// Runs real tools (qemu-img, mkfs.ext4, debugfs, sgdisk, ...) for fixtures and oracles.
public enum Tool {
    /// The longest any one tool may run before the test kills it and fails (seconds);
    /// `WARDEN_TOOL_TIMEOUT` overrides it. A hang becomes a failure that names the command.
    public static var defaultTimeout: Double {
        ProcessInfo.processInfo.environment["WARDEN_TOOL_TIMEOUT"].flatMap(Double.init) ?? 1200
    }

    /// Runs `args` (looked up on PATH, plus /usr/sbin and /sbin) and returns its output.
    ///
    /// Not `Foundation.Process`: on Linux it learns that a child exited when a socket the child
    /// inherits is closed, so a daemon started by the tool (`virtlogd -d` from a shell) keeps
    /// the call waiting forever. Here the tool is started with `posix_spawn`, gets only its
    /// three standard descriptors (everything else is closed in the child), runs in a process
    /// group of its own, and is reaped with `waitpid`. After `timeout` seconds the group gets
    /// SIGKILL and the call throws. Once the tool has exited, a daemon it left holding the
    /// output pipes cannot block the call: the readers get two more seconds.
    @discardableResult
    public static func run(_ args: [String], cwd: String? = nil, stdin: Data? = nil,
                           environment: [String: String] = [:], check: Bool = true,
                           timeout: Double? = nil) throws -> ToolResult {
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = (env["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        env["LC_ALL"] = "C"
        for (k, v) in environment { env[k] = v }
        var argv = ["/usr/bin/env"] + args
        if let cwd { argv = ["/bin/sh", "-c", "cd \"$0\" && exec /usr/bin/env \"$@\"", cwd] + args }

        func pipePair() throws -> (read: Int32, write: Int32) {
            var fds: [Int32] = [-1, -1]
            guard fds.withUnsafeMutableBufferPointer({ pipeCloexec($0.baseAddress!, O_CLOEXEC) }) == 0 else { throw ToolError.spawn(args, "pipe: \(String(cString: strerror(errno)))") }
            return (fds[0], fds[1])
        }
        let out = try pipePair(), err = try pipePair()
        let input: (read: Int32, write: Int32)? = stdin == nil ? nil : try pipePair()

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let input { posix_spawn_file_actions_adddup2(&actions, input.read, 0) }
        else { posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0) }
        posix_spawn_file_actions_adddup2(&actions, out.write, 1)
        posix_spawn_file_actions_adddup2(&actions, err.write, 2)
        _ = spawnCloseFrom(&actions, 3)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attr, 0)
        var none = sigset_t(); sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var all = sigset_t(); sigfillset(&all)
        posix_spawnattr_setsigdefault(&attr, &all)

        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        var cenv: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in cargs { free(p) }; for p in cenv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, &attr, &cargs, &cenv)
        close(out.write); close(err.write)
        if let input { close(input.read) }
        guard rc == 0 else {
            close(out.read); close(err.read)
            if let input { close(input.write) }
            throw ToolError.spawn(args, String(cString: strerror(rc)))
        }

        let outBox = DataBox(), errBox = DataBox()
        Thread { outBox.drain(out.read) }.start()
        Thread { errBox.drain(err.read) }.start()
        if let input, let stdin {
            let fd = input.write
            Thread {
                signal(SIGPIPE, SIG_IGN)
                stdin.withUnsafeBytes { buf in
                    var off = 0
                    while off < buf.count {
                        let n = write(fd, buf.baseAddress! + off, buf.count - off)
                        if n < 0 && errno == EINTR { continue }
                        if n <= 0 { break }
                        off += n
                    }
                }
                close(fd)
            }.start()
        }

        let limit = timeout ?? defaultTimeout
        let deadline = Date().addingTimeInterval(limit)
        var status: Int32 = 0
        var timedOut = false
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { break }
            if !timedOut && Date() >= deadline {
                timedOut = true
                kill(-pid, SIGKILL)
                kill(pid, SIGKILL)
            }
            usleep(timedOut ? 10_000 : 2_000)
        }
        let readersDeadline = Date().addingTimeInterval(2)
        while !(outBox.done && errBox.done) && Date() < readersDeadline { usleep(1000) }
        let exitCode: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let r = ToolResult(status: exitCode, stdout: outBox.data, stderr: String(decoding: errBox.data, as: UTF8.self))
        if timedOut {
            throw ToolError(command: args, result: ToolResult(status: -1, stdout: r.stdout,
                stderr: "timed out after \(Int(limit)) s and was killed; stderr so far: " + r.stderr))
        }
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
    var data: Data { lock.withLock { _data } }
    var done: Bool { lock.withLock { _done } }

    /// Reads `fd` to end of file, appending as it goes, so a reader that is given up on
    /// still leaves what it read.
    func drain(_ fd: Int32) {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            lock.withLock { _data.append(contentsOf: buf[0..<n]) }
        }
        lock.withLock { _done = true }
    }
}

/// `posix_spawn_file_actions_addclosefrom_np` (glibc ≥ 2.34): closes every descriptor from
/// `from` up in the child. Swift's Glibc module does not import it.
@_silgen_name("pipe2")
func pipeCloexec(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32

@_silgen_name("posix_spawn_file_actions_addclosefrom_np")
func spawnCloseFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ from: Int32) -> Int32

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
