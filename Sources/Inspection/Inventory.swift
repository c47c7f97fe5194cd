import DiskImage
import WardenCore
import GuestFS

/// Everything `warden inspect` reports about one guest (schema `warden.inspect/v1`,
/// documented in docs/json-schemas/inspect.v1.json).
///
/// Every field is a fact read from the guest's disk or an explicit unknown with a reason.
public struct Inventory: Codable, Sendable {
    public var schema = "warden.inspect/v1"
    /// The image path as given.
    public var image: String
    /// Filesystems assembled into the guest's tree (root first, then fstab mounts).
    public var mounts: [GuestView.Mount]
    /// fstab entries that could not be assembled, and why.
    public var unassembled: [GuestView.Problem]
    public var os: OSInfo
    public var identity: IdentityInfo
    public var accounts: AccountsInfo
    public var ssh: SSHInfo
    public var packages: Fact<[PackageInventory]>
    public var services: Fact<ServiceInventory>
    public var kernels: Fact<KernelInventory>
    /// Secrets at rest (private keys, credential files, shell histories), by path and kind only.
    public var secrets: SecretsReport
    /// Non-fatal findings from the filesystem readers (checksum mismatches and the like).
    public var filesystemWarnings: [String]
    /// Parts of the disk that were not read (a closed LUKS volume, an unreadable filesystem,
    /// an LVM problem): what a scan cannot vouch for.
    public var unscanned: [UnscannedPart]?
    /// How long the release gets security support, and whether that has ended.
    public var releaseSupport: Fact<ReleaseSupport>?
}

extension Inspection {
    /// Inspects the guest assembled in `view`. Never throws: what cannot be read is an
    /// unknown with a reason.
    public static func inspect(view: GuestView, image: String) -> Inventory {
        let g = GuestFiles(view: view)
        let io = IOStatistics.shared
        let report = io.measure("identity, accounts, ssh") { identityReport(g) }
        func fact<T>(_ what: String, _ body: () throws -> T) -> Fact<T> {
            do { return .known(try body()) } catch let e as WardenError {
                return .unknown(reason: "\(what) could not be read: \(e.message)")
            } catch {
                return .unknown(reason: "\(what) could not be read: \(error)")
            }
        }
        var fsWarnings: [String] = []
        for m in view.mounts {
            if let fs = view.filesystem(at: m.path) {
                fsWarnings += fs.warnings.prefix(20).map { "\(m.path): \($0)" }
            }
        }
        return Inventory(image: image, mounts: view.mounts, unassembled: view.problems,
                         os: report.os, identity: report.identity, accounts: report.accounts, ssh: report.ssh,
                         packages: io.measure("packages") { fact("package databases") { try packages(g) } },
                         services: io.measure("services") { fact("services") { try services(g) } },
                         kernels: io.measure("kernels") { fact("kernels") { try kernels(g) } },
                         secrets: io.measure("secrets") { secrets(g) },
                         filesystemWarnings: fsWarnings, unscanned: nil, releaseSupport: releaseSupport(report.os))
    }

    /// The answer for a disk that holds NTFS and no Linux root: Windows, recognised from
    /// the filesystem alone; nothing else about it is read yet.
    public static func windowsOS(volume: String) -> OSInfo {
        let why = "Windows guests are recognised from their NTFS volume (\(volume)) but not yet inspected"
        return OSInfo(osReleasePath: .unknown(reason: why), id: .known("windows"), versionId: .unknown(reason: why),
                      prettyName: .unknown(reason: why), idLike: .unknown(reason: why), family: .known(.windows),
                      architecture: .unknown(reason: why), initSystem: .unknown(reason: why), initEvidence: nil)
    }
}
