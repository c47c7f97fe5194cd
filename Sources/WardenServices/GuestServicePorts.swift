import DiskImage
import Foundation
import Inspection
import Ledger
import WardenCore

/// Where a VM's services listen, read from its disk offline (never mounted): what shields use
/// instead of the well-known defaults when the guest says otherwise (docs/network.md).
public enum GuestServicePorts {
    /// Package name → TCP ports for the guest on `disks` (the first disk that opens as a guest):
    /// today sshd's effective ports (`Port`, `ListenAddress`), under both `openssh` and
    /// `openssh-server`. Empty when no disk can be read or it has no sshd_config.
    public static func of(disks: [DiskRecord]) -> [String: [UInt16]] {
        for d in disks.sorted(by: { $0.index < $1.index }) {
            guard let img = try? ImageOpener.open(d.path, options: OpenOptions()),
                  let inventory = try? OpenedGuest(image: img, path: d.path).inventory() else { continue }
            let ports = inventory.ssh.sshd.ports.compactMap { UInt16(exactly: $0) }
            return ports.isEmpty ? [:] : ["openssh": ports, "openssh-server": ports]
        }
        return [:]
    }
}
