import DiskImage
import Foundation
import Inspection
import Ledger
import WardenCore

/// Where a VM's services listen, read from its disk offline (never mounted): what shields use
/// instead of the well-known defaults when the guest says otherwise (docs/network.md).
public enum GuestServicePorts {
    /// Package name → ports for the guest on `disks` (the first disk that opens as a guest):
    /// - sshd's effective ports (`Port`, `ListenAddress`), under both `openssh` and
    ///   `openssh-server`;
    /// - the ports of enabled systemd socket units (`ListenStream=`, `ListenDatagram=`, with
    ///   drop-ins), under the package whose dpkg file list ships the unit.
    /// Empty when no disk can be read or nothing says where a service listens.
    public static func of(disks: [DiskRecord]) -> [String: [UInt16]] {
        for d in disks.sorted(by: { $0.index < $1.index }) {
            guard let img = try? ImageOpener.open(d.path, options: OpenOptions()),
                  let guest = try? OpenedGuest(image: img, path: d.path) else { continue }
            let inventory = guest.inventory()
            var out: [String: Set<UInt16>] = [:]
            let ssh = inventory.ssh.sshd.ports.compactMap { UInt16(exactly: $0) }
            if !ssh.isEmpty { out["openssh", default: []].formUnion(ssh); out["openssh-server", default: []].formUnion(ssh) }
            if let services = inventory.services.value {
                for l in Inspection.socketListeners(GuestFiles(view: guest.view), services: services) {
                    guard let package = l.package else { continue }
                    out[package, default: []].formUnion(l.tcp + l.udp)
                }
            }
            return out.mapValues { $0.sorted() }
        }
        return [:]
    }
}
