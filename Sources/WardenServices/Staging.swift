import DiskImage
import Foundation
import Ledger
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// New disk files made under hidden temporary names and linked into place at one commit point,
/// together with the ledger event that records them.
///
/// The names: disk `F` of the VM with id `ID` is first written as `.F.warden-ID` in the same
/// folder. The commit runs inside ``LedgerStore/atomically(family:_:)``: each temporary file is
/// hard-linked to its final name (never replacing a file), then the VM is created in the
/// ledger; the temporary names are removed only after the commit. So at every instant:
/// - before the link, only hidden temporary files exist;
/// - between the link and the commit, the temporary name still exists and the ledger does
///   not know the VM: ``recover(directory:store:)`` removes the final name (it is the same
///   inode as the temporary file) and the temporary one;
/// - after the commit, the ledger knows the VM: recovery only removes the temporary name.
///
/// Writers hold a shared `flock` on the folder while they stage; recovery runs only under an
/// exclusive one it can get without waiting, so it never touches a live writer's files.
public final class Staging {
    public let directory: String
    public let token: VMID
    public private(set) var files: [(temp: String, final: String)] = []
    private var linked: [String] = []
    private var dirFD: Int32 = -1

    /// The temporary name for `final` under `token`.
    public static func tempName(for final: String, token: VMID) -> String {
        let dir = (final as NSString).deletingLastPathComponent
        return dir + "/." + (final as NSString).lastPathComponent + ".warden-" + token.description
    }

    /// Recovers leftovers in `directory`, then takes the shared staging lock on it.
    public init(directory: String, token: VMID, store: any LedgerStore) throws {
        self.directory = directory
        self.token = token
        _ = Self.recover(directory: directory, store: store)
        dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFD >= 0 else { throw WardenError(.io, "cannot open the folder: \(String(cString: strerror(errno)))", file: directory) }
        while flock(dirFD, LOCK_SH) != 0 {
            guard errno == EINTR else { throw WardenError(.io, "cannot lock the folder: \(String(cString: strerror(errno)))", file: directory) }
        }
    }

    deinit {
        discard()
        if dirFD >= 0 { close(dirFD) }
    }

    /// Reserves a final name; returns the temporary name to write. The final name must not exist.
    public func add(final: String) throws -> String {
        if files.contains(where: { $0.final == final }) {
            throw WardenError(.conflict, "two disks would be written to the same file", file: final)
        }
        var st = stat()
        if lstat(final, &st) == 0 { throw WardenError(.conflict, "already exists; not overwritten", file: final) }
        let temp = Self.tempName(for: final, token: token)
        unlink(temp)
        files.append((temp, final))
        return temp
    }

    /// The commit point's file half: links every temporary file to its final name (never
    /// replacing one) and syncs the folder. On failure the links made so far are undone.
    public func link() throws {
        for (t, f) in files {
            guard Glibc.link(t, f) == 0 else {
                let e = errno
                unlinkFinals()
                throw WardenError(e == EEXIST ? .conflict : .io,
                                  e == EEXIST ? "already exists; not overwritten" : "cannot create: \(String(cString: strerror(e)))", file: f)
            }
            linked.append(f)
        }
        FileDescriptorIO.syncDirectory(directory)
    }

    /// Undoes ``link()`` (the ledger transaction did not commit).
    public func unlinkFinals() {
        for f in linked { unlink(f) }
        linked.removeAll()
    }

    /// After the commit: drops the temporary names; the files stay under their final names.
    public func finish() {
        for (t, _) in files { unlink(t) }
        files.removeAll()
        linked.removeAll()
        FileDescriptorIO.syncDirectory(directory)
    }

    /// Removes every staged file, temporary and (if linked) final.
    public func discard() {
        unlinkFinals()
        for (t, _) in files {
            unlink(t)
            // QCOW2Overlay writes through its own temporary name beside the target.
            QCOW2Overlay.removeWriterTemps(of: t)
        }
        files.removeAll()
    }

    /// What recovery did with one leftover.
    public struct Leftover: Sendable, Codable, Equatable {
        public var temp: String
        public var final: String
        /// `committed`: the ledger has the VM, the temporary name was removed;
        /// `rolled-back`: it does not, the staged file (and its final name, if linked) was removed.
        public var action: String
    }

    /// Parses a staging name: `.F.warden-UUID[.warden-tmp-…]` → (F, UUID).
    static func parse(_ name: String) -> (final: String, token: VMID)? {
        guard name.hasPrefix(".") else { return nil }
        var n = Substring(name.dropFirst())
        if let r = n.range(of: ".warden-tmp-") { n = n[..<r.lowerBound] }
        guard let r = n.range(of: ".warden-", options: .backwards) else { return nil }
        let id = n[r.upperBound...]
        guard id.count == 36, let uuid = UUID(uuidString: String(id)) else { return nil }
        let final = String(n[..<r.lowerBound])
        guard !final.isEmpty else { return nil }
        return (final, VMID(uuid))
    }

    /// Cleans up what crashed writers left in `directory` (see the type's documentation).
    /// Does nothing while any writer holds the folder's staging lock.
    @discardableResult
    public static func recover(directory: String, store: any LedgerStore) -> [Leftover] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory),
              names.contains(where: { $0.hasPrefix(".") && $0.contains(".warden-") }) else { return [] }
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { return [] }
        defer { _ = flock(fd, LOCK_UN) }
        var out: [Leftover] = []
        for name in names.sorted() {
            guard let (finalName, token) = parse(name) else { continue }
            let temp = directory + "/" + name
            let final = directory + "/" + finalName
            let committed: Bool
            do { committed = try store.vm(token) != nil } catch { continue }
            if committed && !name.contains(".warden-tmp-") {
                unlink(temp)
                out.append(Leftover(temp: temp, final: final, action: "committed"))
                continue
            }
            var ts = stat(), fs = stat()
            // The final name goes only when it is our staged file itself: the same regular
            // file (device and inode) as the hidden name, owned by this user. A look-alike
            // hidden name linked to someone else's file does not make recovery remove it.
            if !name.contains(".warden-tmp-"), lstat(temp, &ts) == 0, lstat(final, &fs) == 0,
               ts.st_mode & S_IFMT == S_IFREG, fs.st_mode & S_IFMT == S_IFREG,
               ts.st_dev == fs.st_dev, ts.st_ino == fs.st_ino, ts.st_uid == getuid() {
                unlink(final)
            }
            unlink(temp)
            out.append(Leftover(temp: temp, final: final, action: committed ? "committed" : "rolled-back"))
        }
        if !out.isEmpty { FileDescriptorIO.syncDirectory(directory) }
        return out
    }
}

/// Folders Warden creates for VM files: 0700 whatever the umask, each missing component.
public enum PrivateDirectory {
    public static func make(_ path: String) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw WardenError(.conflict, "not a folder", file: path) }
            return
        }
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty, parent != path { try make(parent) }
        if mkdir(path, 0o700) == 0 {
            _ = chmod(path, 0o700)   // exactly 0700, whatever the umask
        } else if errno != EEXIST {
            throw WardenError(.io, "cannot create the folder: \(String(cString: strerror(errno)))", file: path)
        }
    }
}
