import Foundation
import GuestFS
import WardenCore

/// What one maintenance boot does, written to the appliance as `/plan` (one line per item,
/// read by ``ApplianceInit``). Every value is checked here, on the host: package names and
/// versions as Debian spells them, devices as the appliance names them, mount points and
/// filesystem types from short allowed sets. Nothing from a guest or an advisory reaches the
/// appliance's shell unchecked.
public struct MaintenancePlan: Sendable, Equatable {
    public enum Mode: String, Sendable, Codable {
        /// `apt-get install --only-upgrade` of the packages (findings, or `--packages NAME`).
        case upgrade
        /// `apt-get install NAME=VERSION…`.
        case install
        /// `apt-get upgrade`.
        case all
        /// No package work: bring up the network, run the probes, power off.
        case none
    }

    /// One filesystem to mount under the guest root.
    public struct Mount: Sendable, Equatable, Codable {
        /// `/dev/vdaN`, `/dev/vda` or `/dev/mapper/VG-LV`.
        public var device: String
        public var type: String
        /// The guest's mount point (`/`, `/usr`, `/var`, `/boot`, …).
        public var path: String
        /// Mount options (`subvol=@` for btrfs), or nil.
        public var options: String?
        /// Whether the patch cannot go on without it (`/`, `/usr`, `/var`, `/boot`).
        public var essential: Bool
    }

    public var token: String
    public var mode: Mode
    public var packages: [String]
    public var mounts: [Mount]
    public var lvm: Bool
    public var mirror: Mirror?
    /// URLs the appliance fetches once its network is up, each reported ok or fail (the
    /// confinement check; `warden doctor`-style diagnostics).
    public var probes: [String]

    public init(token: String = MaintenancePlan.newToken(), mode: Mode, packages: [String] = [], mounts: [Mount] = [],
                lvm: Bool = false, mirror: Mirror?, probes: [String] = []) {
        self.token = token; self.mode = mode; self.packages = packages; self.mounts = mounts
        self.lvm = lvm; self.mirror = mirror; self.probes = probes
    }

    public static func newToken() -> String {
        var bytes = [UInt8](repeating: 0, count: 8)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
        return bytes.hexString
    }

    /// The appliance's address and gateway on QEMU's user network.
    static let network = "10.0.2.15/24 10.0.2.2"

    /// Filesystem types the appliance mounts (it has their modules).
    public static let mountableTypes: Set<String> = ["ext2", "ext3", "ext4", "xfs", "vfat", "btrfs"]
    /// Mount points a package manager writes to: without them the patch cannot go on.
    public static let essentialPaths: Set<String> = ["/", "/usr", "/var", "/boot"]

    /// The filesystems to mount for a guest assembled offline (``GuestView``): its root and
    /// every fstab mount the appliance can mount, on disk `disk` (0: `/dev/vda`). A mount
    /// point a package manager needs (``essentialPaths``) that cannot be mounted throws; others
    /// are left out.
    public static func mounts(for view: GuestView, disk: Int = 0) throws -> (mounts: [Mount], lvm: Bool) {
        guard (0..<26).contains(disk) else { throw WardenError(.unsupported, "more than 26 disks") }
        let letter = String(UnicodeScalar(UInt8(97 + disk)))
        var out: [Mount] = []
        var lvm = false
        var seen = Set<String>()
        // An fstab entry the offline assembly could not place (a missing disk, an unknown
        // filesystem) under a path the package manager writes: patching without it would write
        // into the root filesystem's empty mount point instead.
        for p in view.problems where essentialPaths.contains(p.mountPoint) || p.mountPoint.hasPrefix("/usr/") || p.mountPoint.hasPrefix("/var/lib") {
            throw WardenError(.unsupported, "the guest's \(p.mountPoint) cannot be assembled (fstab line \(p.line), \(p.spec)): \(p.reason)")
        }
        for m in view.mounts {
            let path = m.path.isEmpty ? "/" : m.path
            guard seen.insert(path).inserted else { continue }
            let essential = essentialPaths.contains(path)
            func skip(_ why: String) throws {
                if essential { throw WardenError(.unsupported, "the guest's \(path) cannot be assembled in the appliance: \(why)") }
            }
            guard mountableTypes.contains(m.type) else { try skip("\(m.type) is not mounted by the appliance"); continue }
            guard safePath(path) else { try skip("the mount point has characters the appliance does not take"); continue }
            let device: String
            if let lv = m.volume.logicalVolume {
                guard lv.hasPrefix("/dev/mapper/"), !lv.hasPrefix(GuestDisk.luksMapperPrefix),
                      lv.dropFirst("/dev/mapper/".count).unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "+_.-".unicodeScalars.contains($0)) }) else {
                    try skip("\(m.volume.displayName) is not an LVM volume the appliance activates"); continue
                }
                device = lv
                lvm = true
            } else if let p = m.volume.partitionIndex {
                guard (1...128).contains(p) else { try skip("partition \(p)"); continue }
                device = "/dev/vd\(letter)\(p)"
            } else {
                device = "/dev/vd\(letter)"
            }
            var options: String?
            if let sub = m.subvolume {
                guard safePath("/" + sub) else { try skip("the btrfs subvolume name"); continue }
                options = "subvol=" + sub
            }
            out.append(Mount(device: device, type: m.type, path: path, options: options, essential: essential))
        }
        guard out.first?.path == "/" else { throw WardenError(.unsupported, "the guest's root cannot be assembled in the appliance") }
        return (out, lvm)
    }

    static func safePath(_ p: String) -> Bool {
        p.hasPrefix("/") && p.count <= 256 && !p.split(separator: "/").contains("..")
            && p.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "/._+-@".unicodeScalars.contains($0)) }
    }

    /// A Debian package name, optionally `=VERSION` (or `/SUITE`, which is not taken).
    public static func validPackageSpec(_ s: String) -> Bool {
        let parts = s.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        guard let name = parts.first, name.count >= 2, name.count <= 128,
              let f = name.unicodeScalars.first, CharacterSet.lowercaseLetters.contains(f) || CharacterSet.decimalDigits.contains(f),
              name.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.lowercaseLetters.contains($0) || CharacterSet.decimalDigits.contains($0) || "+-.".unicodeScalars.contains($0)) })
        else { return false }
        // An architecture qualifier (`libc6:amd64`) is not taken either.
        if parts.count == 2 {
            let v = parts[1]
            guard !v.isEmpty, v.count <= 128, let f = v.unicodeScalars.first, CharacterSet.decimalDigits.contains(f),
                  v.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || ".+~:-".unicodeScalars.contains($0)) })
            else { return false }
        }
        return true
    }

    static func validProbe(_ u: String) -> Bool {
        u.hasPrefix("http://") && u.count <= 256 && !u.contains(" ")
            && u.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || ":/._-[]".unicodeScalars.contains($0)) }
    }

    /// The `/plan` text; throws when a value would not be safe in it.
    public func text() throws -> String {
        guard token.count == 16, token.allSatisfy(\.isHexDigit) else { throw WardenError(.internal, "bad plan token") }
        for p in packages where !Self.validPackageSpec(p) {
            throw WardenError(.invalidArgument, "not a Debian package name (or NAME=VERSION): \(p)")
        }
        for u in probes where !Self.validProbe(u) { throw WardenError(.invalidArgument, "bad probe URL \(u)") }
        if mode != .none && mirror == nil { throw WardenError(.internal, "a patch plan without a mirror") }
        var lines = ["token \(token)", "net \(Self.network)", "mode \(mode.rawValue)", "lvm \(lvm ? 1 : 0)"]
        for u in probes { lines.append("probe \(u)") }
        for m in mounts {
            guard Self.safePath(m.path), Self.mountableTypes.contains(m.type), Self.safePath(m.device),
                  m.options.map({ Self.safePath("/" + $0.replacingOccurrences(of: "=", with: "/")) }) ?? true else {
                throw WardenError(.internal, "a mount the plan cannot carry: \(m.path)")
            }
            lines.append("mount \(m.device) \(m.type) \(m.path) \(m.options ?? "-") \(m.essential ? "essential" : "optional")")
        }
        if let mirror { lines.append("source \(mirror.sourcesLine)") }
        for p in packages { lines.append("package \(p)") }
        return lines.joined(separator: "\n") + "\n"
    }
}
