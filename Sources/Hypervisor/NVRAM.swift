import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// A VM's UEFI firmware and its own variable store (OVMF, Debian's `ovmf`):
///
/// ```
/// $WARDEN_HOME/nvram/<vm-id>/OVMF_VARS.fd            0600, the VM's boot entries and keys
/// $WARDEN_HOME/nvram/<vm-id>/snapshots/<name>/…      the store as it was at snapshot <name>
/// ```
///
/// Made from the firmware's empty template on the first `vm start --uefi`; the firmware code
/// itself is shared and read-only. A clone gets a copy (its boot entries point at its copied
/// disks), a snapshot keeps one and a rollback puts it back; the started and cloned events
/// record the store's SHA-256.
public struct NVRAM: Sendable {
    public let vm: VMID
    public let directory: String

    public static let codeCandidates = ["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"]

    public init(vm: VMID, home: String = RunDirectory.home()) {
        self.vm = vm
        directory = home + "/nvram/" + vm.description
    }

    public var varsFile: String { directory + "/OVMF_VARS.fd" }
    public var exists: Bool { FileManager.default.fileExists(atPath: varsFile) }
    public var kept: KeptFile { KeptFile(path: varsFile, snapshots: directory + "/snapshots", what: "UEFI variables") }

    /// The firmware code and its matching empty variable store.
    public static func firmware() throws -> (code: String, vars: String) {
        for code in codeCandidates where FileManager.default.isReadableFile(atPath: code) {
            let vars = code.replacingOccurrences(of: "OVMF_CODE", with: "OVMF_VARS")
            if FileManager.default.isReadableFile(atPath: vars) { return (code, vars) }
        }
        throw WardenError(.unavailable, "no UEFI firmware (Debian: apt-get install ovmf)")
    }

    /// Makes the variable store from the template when the VM has none yet; returns whether it did.
    @discardableResult
    public func prepare() throws -> Bool {
        let (_, template) = try Self.firmware()
        try KeptFile.makeFolder(directory)
        guard !exists else { return false }
        try KeptFile.copyFile(template, varsFile, what: "UEFI variables")
        return true
    }

    /// Takes a copy of `other`'s variable store (a clone's).
    public func adopt(_ other: NVRAM) throws {
        try KeptFile.makeFolder(directory)
        try other.kept.copy(to: varsFile)
    }

    /// The arguments that give QEMU the firmware (read-only) and this VM's store.
    static func qemuArguments(run: RunDirectory) -> [String] {
        guard let (code, _) = try? firmware() else { return [] }   // checked by prepare() before the start
        let home = ((run.path as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent
        let store = NVRAM(vm: run.vm, home: home)
        return ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=\(QEMULauncher.escapeOption(code))",
                "-drive", "if=pflash,format=raw,unit=1,file=\(QEMULauncher.escapeOption(store.varsFile))"]
    }
}
