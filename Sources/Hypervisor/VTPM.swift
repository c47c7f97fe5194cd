import Attestation
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// A VM's own TPM 2.0 (Debian's `swtpm`), kept across its lifecycle (docs/vmm-hardening.md):
///
/// ```
/// $WARDEN_HOME/vtpm/<vm-id>/           0700
///   state/tpm2-00.permall              the TPM's persistent state (seeds, NV, persistent keys)
///   snapshots/<name>/tpm2-00.permall   the state as it was when snapshot <name> was taken
/// ```
///
/// One state per VM id: a clone is a new id, so it gets a **fresh** TPM (new endorsement seed,
/// new keys) on its first start, unless `--keep-vtpm` copies the parent's. A snapshot copies
/// the state beside the disks' snapshot; a rollback puts it back with them, so the guest's
/// sealed secrets and NV indexes match its disks. A snapshot taken before the VM had a vTPM
/// rolls back to no vTPM (the next start makes a fresh one).
///
/// swtpm runs like QEMU: as the VM's own uid (`--runas`), with its seccomp profile, serving
/// one connection on a 0600 socket in the run directory and exiting when QEMU closes it.
public struct VTPM: Sendable {
    public let vm: VMID
    public let directory: String

    public static let stateFileName = "tpm2-00.permall"

    public init(vm: VMID, home: String = RunDirectory.home()) {
        self.vm = vm
        directory = home + "/vtpm/" + vm.description
    }

    public var stateDirectory: String { directory + "/state" }
    public var stateFile: String { stateDirectory + "/" + Self.stateFileName }
    /// Whether the VM has a vTPM state yet (it is made on the first start with a vTPM).
    public var exists: Bool { FileManager.default.fileExists(atPath: stateFile) }


    public static func socket(_ run: RunDirectory) -> String { run.path + "/vtpm.sock" }
    /// swtpm's pid, written by swtpm itself beside its state.
    public var pidFile: String { stateDirectory + "/swtpm.pid" }
    static func log(_ run: RunDirectory) -> String { run.path + "/vtpm.log" }

    /// The arguments that give QEMU this TPM (a TIS device on x86, CRB would do as well).
    static func qemuArguments(_ run: RunDirectory) -> [String] {
        ["-chardev", "socket,id=vtpm,path=\(QEMULauncher.escapeOption(socket(run)))",
         "-tpmdev", "emulator,id=tpm0,chardev=vtpm",
         "-device", "tpm-tis,tpmdev=tpm0"]
    }

    private func makeDirectories(owner: UInt32?) throws {
        for d in [(directory as NSString).deletingLastPathComponent, directory, stateDirectory, directory + "/snapshots"] {
            if mkdir(d, 0o700) != 0 && errno != EEXIST {
                throw WardenError(.io, "cannot make the vTPM folder: \(String(cString: strerror(errno)))", file: d)
            }
            chmod(d, 0o700)
        }
        // Only the state folder belongs to the VM's uid: swtpm writes there and nowhere else.
        let uid = owner ?? 0
        if chown(stateDirectory, uid, uid) != 0 { throw WardenError(.io, "cannot hand the vTPM state to uid \(uid)", file: stateDirectory) }
        if let owner, exists, chown(stateFile, owner, owner) != 0 {
            throw WardenError(.io, "cannot hand the vTPM state to uid \(owner)", file: stateFile)
        }
    }

    /// Starts the VM's swtpm for one QEMU run; returns its pid. `runAs`: the confined uid;
    /// `key`: the state key (AES-256, from the vault) when the VM's data is under the vault —
    /// it reaches swtpm through a pipe, never a file or an argument.
    public func launch(run: RunDirectory, runAs: UInt32?, key: SecretBytes? = nil) throws -> pid_t {
        let binary = try ToolProcess.find("swtpm", package: "swtpm")
        try makeDirectories(owner: runAs)
        let sock = Self.socket(run)
        unlink(sock); unlink(pidFile)
        // swtpm gets its state folder and its listening socket as descriptors (3, 4): as the
        // VM's uid it could not reach them through Warden's 0700 folders, and it needs no path
        // of the host at all. `dir=/proc/self/fd/3` opens the folder itself.
        let dirfd = open(stateDirectory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirfd >= 0 else { throw WardenError(.io, "cannot open the vTPM state", file: stateDirectory) }
        defer { close(dirfd) }
        let listener = try Self.listen(at: sock)
        defer { close(listener) }
        // swtpm's --runas wants an account name; the VM's uid has none, so swtpm is started
        // already as that uid (setpriv: no groups, no capabilities, no-new-privs).
        let drop: [String] = try runAs.map {
            [try ToolProcess.find("setpriv", package: "util-linux"), "--reuid=\($0)", "--regid=\($0)", "--clear-groups",
             "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
        } ?? []
        var args = drop + [binary, "socket", "--tpm2", "--tpmstate", "dir=/proc/self/fd/3,mode=0600",
                           "--ctrl", "type=unixio,fd=4", "--terminate", "--daemon", "--pid", "file=/proc/self/fd/3/swtpm.pid", "--seccomp", "action=kill"]
        var pass: [(source: Int32, target: Int32)] = [(dirfd, 3), (listener, 4)]
        let keyfd = try key.map(Self.keyPipe)
        defer { if let keyfd { close(keyfd) } }
        if let keyfd {
            pass.append((keyfd, 5))
            args += ["--key", "fd=5,mode=aes-256-cbc,format=binary"]
        }
        guard let pid = try Self.startDaemon(args, log: Self.log(run), pidFile: pidFile, pass: pass, truncateLog: true) else {
            let text = (try? String(contentsOfFile: Self.log(run), encoding: .utf8)) ?? ""
            throw WardenError(.unavailable, "the VM's vTPM (swtpm) did not start: \(TerminalText.line(String(text.split(separator: "\n").first ?? "no message")))", file: Self.log(run))
        }
        return pid
    }

    /// Stops the VM's swtpm (QEMU normally ends it by closing the connection) and waits up to
    /// two seconds for it to be gone, so that its state file is no longer being written.
    public func stop(run: RunDirectory) {
        if let pid = RunDirectory.readPid(pidFile), kill(pid, 0) == 0, RunDirectory.processMentions(pid, "swtpm") {
            kill(pid, SIGTERM)
            for _ in 0..<80 where kill(pid, 0) == 0 { usleep(25_000) }
        }
        unlink(pidFile); unlink(Self.socket(run))
    }

    /// A listening unix socket at `path` (0600), for QEMU to connect to and swtpm to accept on.
    static func listen(at path: String) throws -> Int32 {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw WardenError(.io, "cannot make the vTPM socket") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw WardenError(.invalidArgument, "the vTPM socket path is too long for a unix socket", file: path)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { for (i, b) in bytes.enumerated() { $0[i] = b } }
        let bound = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, chmod(path, 0o600) == 0, Glibc.listen(fd, 1) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw WardenError(.io, "cannot listen on the vTPM socket: \(e)", file: path)
        }
        return fd
    }

    /// The state file, with its snapshot copies beside it.
    var kept: KeptFile { KeptFile(path: stateFile, snapshots: directory + "/snapshots", what: "vTPM state") }

    /// Copies the state into snapshot `name` (or records that there was none). Returns whether there was one.
    @discardableResult
    public func snapshot(_ name: String) throws -> Bool {
        guard FileManager.default.fileExists(atPath: directory) else { return false }
        return try kept.snapshot(name)
    }

    /// What a rollback does to the state (see ``KeptFile/restorePlan(_:)``).
    public func restorePlan(_ name: String) -> KeptFile.Restored { kept.restorePlan(name) }

    /// Puts snapshot `name`'s state back (a fresh TPM on the next start when it had none).
    @discardableResult
    public func restore(_ name: String) throws -> KeptFile.Restored {
        var st = stat()
        let owner: UInt32? = stat(stateDirectory, &st) == 0 && st.st_uid != 0 ? st.st_uid : nil
        let r = try kept.restore(name)
        if r == .restored, let owner { chown(stateFile, owner, owner) }
        return r
    }

    /// Copies this VM's vTPM state to `other` (`vm clone --keep-vtpm`).
    public func copy(to other: VTPM) throws {
        guard exists else { return }
        try other.makeDirectories(owner: nil)
        try kept.copy(to: other.stateFile)
    }

    /// Removes the vTPM and its snapshots (the VM is retired or its keys shredded).
    public func discard() { kept.discard(); try? FileManager.default.removeItem(atPath: directory) }

    /// The vTPM's endorsement key (TCG default RSA template), read from a private copy of the
    /// state with a short-lived swtpm on a unix socket; nil when the VM has no vTPM yet.
    public func endorsementKey(key: SecretBytes? = nil) throws -> TPMTPublic? {
        guard exists else { return nil }
        let binary = try ToolProcess.find("swtpm", package: "swtpm")
        return try HostTPM.withScratch { dir in
            try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: false)
            try KeptFile.copyFile(stateFile, dir + "/state/" + Self.stateFileName, what: "vTPM state")
            var args = [binary, "socket", "--tpm2", "--tpmstate", "dir=\(dir)/state", "--server", "type=unixio,path=\(dir)/s",
                        "--ctrl", "type=unixio,path=\(dir)/s.ctrl", "--flags", "not-need-init,startup-clear",
                        "--daemon", "--pid", "file=\(dir)/pid"]
            let keyfd = try key.map(Self.keyPipe)
            defer { if let keyfd { close(keyfd) } }
            if keyfd != nil { args += ["--key", "fd=3,mode=aes-256-cbc,format=binary"] }
            guard let pid = try Self.startDaemon(args, log: dir + "/log", pidFile: dir + "/pid", pass: keyfd.map { [(source: $0, target: Int32(3))] } ?? [],
                                                 truncateLog: false) else {
                throw WardenError(.unavailable, "cannot start a swtpm on the VM's vTPM state", file: dir + "/log")
            }
            defer { kill(pid, SIGTERM) }
            return try HostTPM(tcti: "swtpm:path=\(dir)/s").endorsementKey()
        }
    }

    /// A pipe holding `key` (32 bytes) for swtpm's `--key fd=N`: its read end (close-on-exec;
    /// the caller passes it on and closes it). The key never touches a file or an argument.
    static func keyPipe(_ key: SecretBytes) throws -> Int32 {
        guard key.count == 32 else { throw WardenError(.internal, "a vTPM state key is 32 bytes") }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw WardenError(.io, "cannot make a pipe for the vTPM key") }
        defer { close(fds[1]) }
        guard fcntl(fds[0], F_SETFD, FD_CLOEXEC) == 0, fcntl(fds[1], F_SETFD, FD_CLOEXEC) == 0,
              key.withBytes({ Glibc.write(fds[1], $0.baseAddress, $0.count) }) == 32 else {
            close(fds[0])
            throw WardenError(.io, "cannot hand the vTPM its key")
        }
        return fds[0]
    }

    /// Runs a swtpm that daemonizes, and waits for its pid file; nil when it did not start.
    static func startDaemon(_ args: [String], log: String, pidFile: String, pass: [(source: Int32, target: Int32)],
                            truncateLog: Bool) throws -> pid_t? {
        let child = try Spawn.spawn(args, log: log, newSession: false, truncate: truncateLog, pass: pass)
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        guard status & 0x7f == 0, (status >> 8) & 0xff == 0 else { return nil }
        for _ in 0..<100 {   // the daemon writes its pid file just after its parent returns
            if let p = RunDirectory.readPid(pidFile) { return p }
            usleep(20_000)
        }
        return nil
    }
}
