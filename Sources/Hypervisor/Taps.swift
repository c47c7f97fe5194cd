import Foundation
import WardenCore
import WardenNetwork
#if canImport(Glibc)
import Glibc
#endif

/// A network interface of a Warden-run VM: a tap on the host (made by Warden when it does not
/// exist, and attached to `bridge` when one is named), seen by the guest as a virtio-net NIC.
public struct NIC: Codable, Sendable, Equatable {
    /// The host tap device (an interface name, checked like every name that reaches nftables).
    public var tap: String
    /// The bridge the tap joins (nil: the tap stands alone, routed by the host).
    public var bridge: String?
    /// The guest's MAC address.
    public var mac: String

    public init(tap: String, bridge: String?, mac: String) { self.tap = tap; self.bridge = bridge; self.mac = mac }

    /// A locally administered MAC from the VM's id (QEMU's 52:54:00 prefix), stable across starts.
    public static func mac(for vm: VMID, index: Int = 0) -> String {
        let bytes = withUnsafeBytes(of: vm.uuid.uuid) { Array($0) }
        return String(format: "52:54:00:%02x:%02x:%02x", bytes[13], bytes[14], bytes[15] &+ UInt8(truncatingIfNeeded: index))
    }

    /// The default tap name for a VM: `wv` and 8 hex digits of its id.
    public static func defaultTap(for vm: VMID) -> String {
        "wv" + String(vm.description.replacingOccurrences(of: "-", with: "").prefix(8))
    }

    /// Checks the names and the MAC; one line naming what is wrong.
    public func validated() throws -> NIC {
        _ = try Interface.check(tap)
        if let bridge { _ = try Interface.check(bridge) }
        let parts = mac.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6, parts.allSatisfy({ $0.count == 2 && UInt8($0, radix: 16) != nil }),
              let first = UInt8(parts[0], radix: 16), first & 1 == 0 else {
            throw WardenError(.invalidArgument, "not a unicast MAC address: \(TerminalText.line(String(mac.prefix(40)))) (like 52:54:00:12:34:56)")
        }
        return self
    }
}

/// Making and removing the taps of Warden-run VMs, with iproute2 (`ip`), never through a shell.
public enum Taps {
    static func sysfs(_ name: String) -> String { "/sys/class/net/\(name)" }

    /// Makes `nic`'s tap ready: an existing tap is used as it is (it must be a tun/tap device);
    /// a missing one is made persistent (so a rollback's new QEMU finds it), joined to the
    /// bridge and brought up. Returns whether Warden made it (and so removes it at stop).
    public static func prepare(_ nic: NIC) throws -> Bool {
        let nic = try nic.validated()
        if let bridge = nic.bridge, !FileManager.default.fileExists(atPath: sysfs(bridge) + "/bridge") {
            throw WardenError(.notFound, "bridge \(bridge) does not exist on this host (ip link add \(bridge) type bridge)")
        }
        if FileManager.default.fileExists(atPath: sysfs(nic.tap)) {
            guard FileManager.default.fileExists(atPath: sysfs(nic.tap) + "/tun_flags") else {
                throw WardenError(.conflict, "interface \(nic.tap) exists and is not a tap device")
            }
            return false
        }
        try ip(["tuntap", "add", "dev", nic.tap, "mode", "tap"])
        do {
            if let bridge = nic.bridge { try ip(["link", "set", "dev", nic.tap, "master", bridge]) }
            try ip(["link", "set", "dev", nic.tap, "up"])
        } catch {
            remove(nic.tap)
            throw error
        }
        return true
    }

    /// Removes a tap Warden made (quietly: it may be gone already).
    public static func remove(_ tap: String) {
        guard Interface.isValid(tap), FileManager.default.fileExists(atPath: sysfs(tap) + "/tun_flags") else { return }
        _ = try? ip(["link", "del", "dev", tap])
    }

    static func ip(_ args: [String]) throws {
        guard let binary = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw WardenError(.unavailable, "ip is not installed (Debian: apt-get install iproute2); the VM's tap cannot be made")
        }
        try ToolProcess.check(binary, args, timeout: 30, what: "ip \(args.prefix(2).joined(separator: " "))")
    }
}
