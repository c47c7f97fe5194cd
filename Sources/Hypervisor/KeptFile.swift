import Crypto
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// A file of a VM's that lives beside its disks and must follow them through snapshots and
/// rollbacks: the vTPM's state, the UEFI variable store. A snapshot copies it to
/// `<snapshots>/<name>/<file name>`; a rollback puts that copy back, or removes the file when
/// the snapshot was taken before the file existed. Copies are whole (temporary file, rename),
/// 0600, in 0700 folders.
public struct KeptFile: Sendable {
    public let path: String
    public let snapshots: String
    /// What it is, for messages ("vTPM state", "UEFI variables").
    public let what: String

    public init(path: String, snapshots: String, what: String) { self.path = path; self.snapshots = snapshots; self.what = what }

    public var exists: Bool { FileManager.default.fileExists(atPath: path) }
    var name: String { (path as NSString).lastPathComponent }
    func snapshotFolder(_ snapshot: String) -> String { snapshots + "/" + snapshot }

    /// Copies the file into snapshot `snapshot`, or records there that it had none. True when it had one.
    @discardableResult
    public func snapshot(_ snapshot: String) throws -> Bool {
        try Self.makeFolder(snapshots)
        let dest = snapshotFolder(snapshot)
        try? FileManager.default.removeItem(atPath: dest)
        guard mkdir(dest, 0o700) == 0 else { throw WardenError(.io, "cannot make the \(what) snapshot folder", file: dest) }
        guard exists else { return false }
        try Self.copyFile(path, dest + "/" + name, what: what)
        return true
    }

    /// What a rollback did to the file.
    public enum Restored: String, Sendable { case restored, removed, unchanged }

    /// What ``restore(_:)`` will do: `unchanged` for a snapshot Warden kept no record of.
    public func restorePlan(_ snapshot: String) -> Restored {
        let dir = snapshotFolder(snapshot)
        guard FileManager.default.fileExists(atPath: dir) else { return .unchanged }
        if FileManager.default.fileExists(atPath: dir + "/" + name) { return .restored }
        return exists ? .removed : .unchanged
    }

    @discardableResult
    public func restore(_ snapshot: String) throws -> Restored {
        switch restorePlan(snapshot) {
        case .restored: try Self.copyFile(snapshotFolder(snapshot) + "/" + name, path, what: what); return .restored
        case .removed: try FileShred.overwriteAndRemove(path); return .removed
        case .unchanged: return .unchanged
        }
    }

    /// Copies the file to `destination` (a clone's).
    public func copy(to destination: String) throws {
        guard exists else { return }
        try Self.copyFile(path, destination, what: what)
    }

    /// Removes the file and its snapshot copies.
    public func discard() {
        if exists { try? FileShred.overwriteAndRemove(path) }
        try? FileManager.default.removeItem(atPath: snapshots)
    }

    /// SHA-256 of the file, hex (for the ledger); nil when it does not exist.
    public func sha256() -> String? {
        guard let d = FileManager.default.contents(atPath: path) else { return nil }
        return Data(SHA256.hash(data: d)).hexEncoded
    }

    static func makeFolder(_ dir: String) throws {
        try FileDescriptorIO.ensurePrivateDirectory(dir, what: "the VM's device state folder")
    }

    static func copyFile(_ from: String, _ to: String, what: String) throws {
        let tmp = to + ".tmp"
        unlink(tmp)
        do {
            try FileManager.default.copyItem(atPath: from, toPath: tmp)
            chmod(tmp, 0o600)
            guard rename(tmp, to) == 0 else { throw WardenError(.io, "cannot put the \(what) in place", file: to) }
        } catch let e as WardenError { unlink(tmp); throw e } catch {
            unlink(tmp)
            throw WardenError(.io, "cannot copy the \(what): \(error.localizedDescription)", file: from)
        }
    }
}
