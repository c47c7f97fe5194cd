import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// The per-VM run directory, `$WARDEN_HOME/run/<vm-id>/`:
///
/// ```
/// lock               flock(2)ed by every warden process that starts, stops, snapshots or rolls back the VM
/// qemu.pid           QEMU's pid (written by QEMU's -pidfile); present while it runs
/// qmp.sock           QMP socket (QEMU is the server)
/// state.sock         the state port's host end (QEMU is the server; the state server connects)
/// serial.log         the guest's serial console (appended across restarts)
/// qemu.log           QEMU's stderr
/// state-server.pid   the state server's pid; state-server.log its messages
/// launch.json        the options of the last `vm start` (reused when a rollback restarts QEMU)
/// ```
public struct RunDirectory: Sendable {
    public let path: String
    public let vm: VMID

    /// `$WARDEN_HOME` or `~/.local/share/warden` (the database's folder by default).
    public static func home(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let h = environment["WARDEN_HOME"], !h.isEmpty { return h }
        let userHome = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return userHome + "/.local/share/warden"
    }

    public init(vm: VMID, home: String = RunDirectory.home()) {
        self.vm = vm
        // The VM id is a UUID: always a single path component.
        path = home + "/run/" + vm.description
    }

    public var lockFile: String { path + "/lock" }
    public var pidFile: String { path + "/qemu.pid" }
    public var qmpSocket: String { path + "/qmp.sock" }
    public var stateSocket: String { path + "/state.sock" }
    public var serialLog: String { path + "/serial.log" }
    public var qemuLog: String { path + "/qemu.log" }
    public var stateServerPidFile: String { path + "/state-server.pid" }
    public var stateServerLog: String { path + "/state-server.log" }
    public var launchFile: String { path + "/launch.json" }
    /// The taps Warden made for this run (one name a line), removed when the VM stops.
    public var tapsFile: String { path + "/taps" }
    /// The empty directory a confined QEMU is chrooted into.
    public var chrootDirectory: String { path + "/chroot" }

    /// Removes the taps Warden made for this run, and the list.
    public func removeCreatedTaps() {
        if let text = try? String(contentsOfFile: tapsFile, encoding: .utf8) {
            for name in text.split(separator: "\n") { Taps.remove(String(name)) }
        }
        unlink(tapsFile)
    }

    /// Creates the directory (mode 0700).
    public func create() throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw WardenError(.io, "cannot create the run directory: \(error.localizedDescription)", file: path)
        }
        // Sockets live here: sun_path holds 107 bytes.
        if stateSocket.utf8.count > 100 {
            throw WardenError(.invalidArgument, "run directory path is too long for Unix sockets (set WARDEN_HOME to a shorter path)", file: path)
        }
    }

    /// Takes the VM's lock (exclusive, blocking up to `timeout`); released when the returned value is released.
    public func lock(timeout: TimeInterval = 60) throws -> FileLock {
        try create()
        return try FileLock(path: lockFile, timeout: timeout, holder: "another warden command holds this VM's lock")
    }

    /// Reads a pid file; nil when absent or malformed.
    static func readPid(_ file: String) -> pid_t? {
        guard let s = try? String(contentsOfFile: file, encoding: .utf8),
              let p = Int32(s.trimmingCharacters(in: .whitespacesAndNewlines)), p > 1 else { return nil }
        return p
    }

    /// QEMU's pid if the pid file names a live QEMU process of this VM (its command line
    /// names this VM's QMP socket), else nil. A pid file naming a dead or foreign process is stale.
    public var livePid: pid_t? {
        guard let pid = Self.readPid(pidFile) else { return nil }
        return Self.processMentions(pid, qmpSocket) ? pid : nil
    }

    /// True when a pid file exists but its process is gone (or is not this VM's QEMU).
    public var isStale: Bool {
        FileManager.default.fileExists(atPath: pidFile) && livePid == nil
    }

    public var stateServerPid: pid_t? {
        guard let pid = Self.readPid(stateServerPidFile) else { return nil }
        return Self.processMentions(pid, vm.description) ? pid : nil
    }

    /// Whether `/proc/<pid>/cmdline` contains `text` (and the process is not a zombie).
    public static func processMentions(_ pid: pid_t, _ text: String) -> Bool {
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
           let close = stat.lastIndex(of: ")"), stat[stat.index(after: close)...].hasPrefix(" Z") {
            return false
        }
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self).contains(text)
    }

    /// Removes what a running QEMU leaves behind (pid file, sockets); keeps logs and launch.json.
    public func cleanRuntimeFiles() {
        for f in [pidFile, qmpSocket, stateSocket, stateServerPidFile] { unlink(f) }
    }
}

