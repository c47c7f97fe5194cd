import Foundation
import WardenCore
import GuestFS
import Inspection
import Crypto

/// An identity value a clone still shares with its source.
public struct IdentityCollision: Codable, Sendable, Equatable {
    /// `machine-id`, `dbus-machine-id`, `ssh-host-key`, `random-seed`, `dhcp-lease`,
    /// `cloud-init-instance-id`, `hostname`, `udev-persistent-net`, `nm-mac-pin`, `filesystem-uuid`.
    public var field: String
    /// What is shared (paths, fingerprints; never secrets or file contents).
    public var detail: String
    public init(field: String, detail: String) {
        self.field = field
        self.detail = detail
    }
}

/// Verification after a clone: re-inspects both guests and proves no identity field is shared.
///
/// Secrets (random seeds, leases) are compared by content in memory only; collisions name
/// paths and fingerprints, never contents.
public enum IdentityCheck {
    /// Collisions between `source` and `clone`. `expectedHostname`, when given, must be the
    /// clone's hostname.
    public static func compare(source: GuestFiles, clone: GuestFiles, expectedHostname: String?,
                               checkFilesystemUUIDs: Bool = false) -> [IdentityCollision] {
        var out: [IdentityCollision] = []
        let a = Inspection.identity(source), b = Inspection.identity(clone)
        if let x = a.machineId.value, x == b.machineId.value {
            out.append(IdentityCollision(field: "machine-id", detail: "/etc/machine-id is the same in both"))
        }
        if !b.dbusMachineIdLinksToEtc, let x = a.dbusMachineId.value, x == b.dbusMachineId.value {
            out.append(IdentityCollision(field: "dbus-machine-id", detail: "/var/lib/dbus/machine-id is the same in both"))
        }
        let shared = Set(hostKeyFingerprints(source)).intersection(hostKeyFingerprints(clone))
        for f in shared.sorted() {
            out.append(IdentityCollision(field: "ssh-host-key", detail: "host key \(f) is in both"))
        }
        for p in RandomSeedOperation.paths where sameContent(source, clone, p) {
            out.append(IdentityCollision(field: "random-seed", detail: "\(p) is the same in both"))
        }
        for p in b.dhcpLeases + DHCPClientStateOperation().targets(clone).map(\.0) where sameContent(source, clone, p) {
            if !out.contains(where: { $0.field == "dhcp-lease" && $0.detail.hasPrefix(p + " ") }) {
                out.append(IdentityCollision(field: "dhcp-lease", detail: "\(p) is the same in both"))
            }
        }
        if let x = a.cloudInitInstanceId.value, x == b.cloudInitInstanceId.value {
            out.append(IdentityCollision(field: "cloud-init-instance-id", detail: "cloud-init instance id \(x) is the same in both"))
        }
        if let h = expectedHostname {
            if b.hostname.value != h {
                out.append(IdentityCollision(field: "hostname", detail: "hostname is \(b.hostname.value ?? "unknown"), not \(h)"))
            } else if a.hostname.value == h {
                out.append(IdentityCollision(field: "hostname", detail: "hostname \(h) is the same in both"))
            }
        }
        let macs = Set(a.persistentNetRules.map(\.macAddress))
        for r in b.persistentNetRules where macs.contains(r.macAddress) {
            out.append(IdentityCollision(field: "udev-persistent-net", detail: "\(r.path) line \(r.line) pins \(r.macAddress)"))
        }
        let pins = Set(a.networkManagerConnections.flatMap { $0.macAddresses.map(\.value) })
        for c in b.networkManagerConnections where c.macAddresses.contains(where: { pins.contains($0.value) }) {
            out.append(IdentityCollision(field: "nm-mac-pin", detail: "\(c.path) pins a MAC the source also pins"))
        }
        if checkFilesystemUUIDs {
            let old = Set(FilesystemUUIDsOperation.targets(source).map(\.uuid))
            for t in FilesystemUUIDsOperation.targets(clone) where old.contains(t.uuid) {
                out.append(IdentityCollision(field: "filesystem-uuid", detail: "\(t.mount) has UUID \(t.uuid) in both"))
            }
        }
        return out
    }

    /// SHA-256 fingerprints of every SSH host key: from the `.pub` files and from the public
    /// half stored in each unencrypted openssh-key-v1 private key file.
    public static func hostKeyFingerprints(_ g: GuestFiles) -> [String] {
        var out: Set<String> = []
        for k in Inspection.sshHostKeys(g) {
            if let pk = k.publicKey.value { out.insert(pk.fingerprint) }
            if k.privateKey.present, let b = g.small(k.privateKey.path, maxBytes: 64 * 1024),
               let blob = OpenSSHKey.publicBlob(ofPrivateKeyFile: b) {
                out.insert(OpenSSHKey.fingerprint(ofBlob: blob))
            }
        }
        return out.sorted()
    }

    /// True when `path` is a non-empty regular file in both guests with equal bytes.
    static func sameContent(_ a: GuestFiles, _ b: GuestFiles, _ path: String) -> Bool {
        guard let x = a.small(path, maxBytes: 4 << 20), !x.isEmpty, let y = b.small(path, maxBytes: 4 << 20) else { return false }
        return SHA256.hash(data: x) == SHA256.hash(data: y)
    }
}

extension OpenSSHKey {
    /// `SHA256:<base64 without padding>` of a public key blob.
    public static func fingerprint(ofBlob blob: [UInt8]) -> String {
        "SHA256:" + Data(SHA256.hash(data: blob)).base64EncodedString().replacingOccurrences(of: "=", with: "")
    }

    /// The public key blob stored (unencrypted, in the header) in an openssh-key-v1 private
    /// key file; nil for other formats or malformed input.
    public static func publicBlob(ofPrivateKeyFile file: [UInt8]) -> [UInt8]? {
        let text = String(decoding: file, as: UTF8.self)
        let begin = "-----BEGIN OPENSSH PRIVATE KEY-----", end = "-----END OPENSSH PRIVATE KEY-----"
        guard let r1 = text.range(of: begin), let r2 = text.range(of: end, range: r1.upperBound..<text.endIndex) else { return nil }
        let b64 = text[r1.upperBound..<r2.lowerBound].filter { !$0.isWhitespace }
        guard b64.utf8.count <= 1 << 20, let data = Data(base64Encoded: String(b64)) else { return nil }
        let bytes = [UInt8](data)
        let magic = Array("openssh-key-v1".utf8) + [0]
        guard bytes.starts(with: magic) else { return nil }
        var pos = magic.count
        func string() -> [UInt8]? {
            guard bytes.count - pos >= 4 else { return nil }
            let n = Int(bytes[pos]) << 24 | Int(bytes[pos + 1]) << 16 | Int(bytes[pos + 2]) << 8 | Int(bytes[pos + 3])
            pos += 4
            guard n <= bytes.count - pos else { return nil }
            defer { pos += n }
            return Array(bytes[pos..<pos + n])
        }
        guard string() != nil, string() != nil, string() != nil, bytes.count - pos >= 4 else { return nil } // cipher, kdf, kdfopts
        pos += 4 // number of keys
        return string()
    }
}
