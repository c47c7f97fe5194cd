import Foundation
import WardenCore
import GuestFS
import Inspection

// The operations, in run order. Each one finds its targets with the same read-only
// helper in `plan` and `apply`, so a dry run lists exactly what a real run changes.

/// A new `/etc/machine-id` (and the D-Bus copy).
struct MachineIDOperation: SysprepOperation {
    let name = "machine-id"
    let summary = "Write a new /etc/machine-id; /var/lib/dbus/machine-id gets the same id unless it is a symlink to it"
    let virtSysprepEquivalent = "machine-id (virt-sysprep empties it for first-boot generation)"
    let defaultEnabled = true

    static let etc = "/etc/machine-id", dbus = "/var/lib/dbus/machine-id"

    enum DBus { case absent, linkToEtc, file, otherLink }

    /// Whether /etc/machine-id holds an id to replace (nil: nothing to do, with why).
    static func state(_ g: GuestFiles) -> (replace: Bool, why: String, dbus: DBus) {
        var dbus = DBus.absent
        if let st = g.entry(Self.dbus) {
            if st.type == .symlink {
                dbus = g.canonicalPath(Self.dbus) == g.canonicalPath(Self.etc) && g.canonicalPath(Self.etc) != nil ? .linkToEtc : .otherLink
            } else if st.type == .regular {
                dbus = .file
            }
        }
        guard let st = g.entry(Self.etc) ?? ((try? g.resolveStat(Self.etc)) ?? nil) else {
            return (false, "absent; systemd creates one at first boot", dbus)
        }
        guard st.type == .regular || st.type == .symlink else { return (false, "not a regular file", dbus) }
        let text = String(decoding: g.small(Self.etc, maxBytes: 4096) ?? [], as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if text.isEmpty || text == "uninitialized" {
            return (false, "empty: systemd generates a new id at first boot", dbus)
        }
        return (true, "", dbus)
    }

    /// 128 random bits, formatted as systemd does (a version-4 UUID without dashes).
    static func newID() -> String {
        UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
    }

    func plan(_ g: GuestFiles, _ o: SysprepOptions) throws -> [Change] {
        let s = Self.state(g)
        var out = [s.replace ? Change(.replace, Self.etc, "new machine id") : Change(.none, Self.etc, s.why)]
        if s.replace { out += dbusChanges(s.dbus, id: nil) }
        return out
    }

    func dbusChanges(_ d: DBus, id: String?) -> [Change] {
        switch d {
        case .absent: return []
        case .linkToEtc: return [Change(.none, Self.dbus, "symlink to /etc/machine-id, kept")]
        case .file: return [Change(.replace, Self.dbus, "same id as /etc/machine-id")]
        case .otherLink: return [Change(.remove, Self.dbus, "symlink elsewhere, replaced by a file"),
                                 Change(.create, Self.dbus, "same id as /etc/machine-id")]
        }
    }

    func apply(_ w: GuestWriter, _ o: SysprepOptions, _ out: inout SysprepOutputs) throws -> [Change] {
        let s = Self.state(w.files)
        guard s.replace else { return [Change(.none, Self.etc, s.why)] }
        let id = Self.newID()
        let bytes = Array((id + "\n").utf8)
        try w.replace(Self.etc, with: bytes)
        switch s.dbus {
        case .absent, .linkToEtc: break
        case .file: try w.replace(Self.dbus, with: bytes)
        case .otherLink:
            try w.remove(Self.dbus)
            try w.create(Self.dbus, contents: bytes, mode: 0o444)
        }
        out.machineId = id
        return [Change(.replace, Self.etc, "new machine id")] + dbusChanges(s.dbus, id: id)
    }
}

/// New SSH host keys.
struct SSHHostKeysOperation: SysprepOperation {
    let name = "ssh-hostkeys"
    let summary = "Replace the SSH host keys with new Ed25519, ECDSA P-256 and RSA-3072 keys (the types the guest had; all three if it had none)"
    let virtSysprepEquivalent = "ssh-hostkeys (virt-sysprep deletes them; the guest must regenerate them at boot)"
    let defaultEnabled = true

    struct Found {
        var generate: [OpenSSHKey.KeyType] = []
        /// Existing host key files to remove (all types, including DSA and obsolete ones).
        var existing: [String] = []
        var why = ""
    }

    static func find(_ g: GuestFiles) -> Found {
        var f = Found()
        let names = g.namesIn("/etc/ssh")
        // Every ssh_host_* file: keys of all types (DSA and SSH-1 included) and host certificates.
        for n in names where n.hasPrefix("ssh_host_") {
            if let st = g.entry("/etc/ssh/" + n), st.type != .directory { f.existing.append("/etc/ssh/" + n) }
        }
        let had = OpenSSHKey.KeyType.allCases.filter { t in
            f.existing.contains(t.hostKeyPath) || f.existing.contains(t.hostKeyPath + ".pub")
        }
        if !had.isEmpty {
            f.generate = had
        } else if g.entry("/etc/ssh/sshd_config") != nil {
            f.generate = OpenSSHKey.KeyType.allCases
        } else {
            f.why = f.existing.isEmpty ? "no SSH server configured (no /etc/ssh/sshd_config, no host keys)" : ""
        }
        return f
    }

    func plan(_ g: GuestFiles, _ o: SysprepOptions) throws -> [Change] {
        let f = Self.find(g)
        var out: [Change] = f.existing.map { Change(.remove, $0, "old host key") }
        for t in f.generate {
            out.append(Change(.create, t.hostKeyPath, "new \(t.label) \(t.bits)-bit private key, 0600 root:root"))
            out.append(Change(.create, t.hostKeyPath + ".pub", "new \(t.label) public key, 0644 root:root"))
        }
        if out.isEmpty { out.append(Change(.none, "/etc/ssh", f.why)) }
        return out
    }

    func apply(_ w: GuestWriter, _ o: SysprepOptions, _ out: inout SysprepOutputs) throws -> [Change] {
        let g = w.files
        let f = Self.find(g)
        let host = o.hostname ?? Inspection.identity(g).hostname.value ?? "localhost"
        // Generate first: nothing is removed if generation fails.
        let keys = try f.generate.map { t in
            try OpenSSHKey.encode(try o.keys?.material(t) ?? OpenSSHKey.Material.generate(t), comment: "root@" + host)
        }
        var changes: [Change] = []
        for p in f.existing {
            try w.remove(p)
            changes.append(Change(.remove, p, "old host key"))
        }
        if !keys.isEmpty, g.entry("/etc/ssh") == nil {
            throw WardenError.notFound("/etc/ssh does not exist in the guest")
        }
        for k in keys {
            try w.create(k.type.hostKeyPath, contents: k.privateFile, mode: 0o600)
            try w.create(k.type.hostKeyPath + ".pub", contents: k.publicFile, mode: 0o644)
            out.hostKeys.append(GeneratedHostKey(type: k.type.label, path: k.type.hostKeyPath + ".pub", bits: k.type.bits,
                                                 fingerprint: k.fingerprint))
            changes.append(Change(.create, k.type.hostKeyPath, "new \(k.type.label) \(k.type.bits)-bit private key, 0600 root:root"))
            changes.append(Change(.create, k.type.hostKeyPath + ".pub", "\(k.fingerprint)"))
        }
        if changes.isEmpty { changes.append(Change(.none, "/etc/ssh", f.why)) }
        return changes
    }
}

/// Removes files if present: the shared shape of several operations.
protocol RemovalOperation: SysprepOperation {
    /// (path, why) for each file to remove.
    func targets(_ g: GuestFiles) -> [(String, String)]
    var nothingText: String { get }
}

extension RemovalOperation {
    func plan(_ g: GuestFiles, _ o: SysprepOptions) throws -> [Change] {
        let t = targets(g)
        return t.isEmpty ? [Change(.none, nil, nothingText)] : t.map { Change(.remove, $0.0, $0.1) }
    }
    func apply(_ w: GuestWriter, _ o: SysprepOptions, _ out: inout SysprepOutputs) throws -> [Change] {
        let t = targets(w.files)
        for (p, _) in t { try w.remove(p) }
        return t.isEmpty ? [Change(.none, nil, nothingText)] : t.map { Change(.remove, $0.0, $0.1) }
    }
}

extension GuestFiles {
    /// `paths` that exist (as files or links, not directories).
    func present(_ paths: [String]) -> [String] {
        paths.filter { p in entry(p).map { $0.type != .directory } ?? false }
    }
}

/// The systemd random seed and credential secret.
struct RandomSeedOperation: RemovalOperation {
    let name = "random-seed"
    let summary = "Remove the saved random seed (systemd, sysvinit urandom) and systemd's credential.secret"
    let virtSysprepEquivalent = "customize (virt-sysprep writes a new random seed as part of customize)"
    let defaultEnabled = true
    let nothingText = "no saved random seed"
    static let paths = ["/var/lib/systemd/random-seed", "/var/lib/systemd/credential.secret",
                        "/var/lib/urandom/random-seed", "/var/lib/random-seed"]
    func targets(_ g: GuestFiles) -> [(String, String)] {
        g.present(Self.paths).map { ($0, $0.hasSuffix("credential.secret") ? "credential secret (systemd makes a new one)" : "saved random seed") }
    }
}

/// `/etc/hostname` and the `127.0.1.1` line of `/etc/hosts`.
struct HostnameOperation: SysprepOperation {
    let name = "hostname"
    let summary = "Set /etc/hostname and the 127.0.1.1 line of /etc/hosts (needs --hostname; vm clone defaults to the new VM's name)"
    let virtSysprepEquivalent = "customize --hostname"
    let defaultEnabled = true

    /// The new `/etc/hosts`, or nil if there is no such file.
    static func hosts(_ g: GuestFiles, _ h: String) -> (bytes: [UInt8], replaced: Bool)? {
        guard let b = g.small("/etc/hosts") else { return nil }
        let short = h.split(separator: ".").first.map(String.init) ?? h
        let line = "127.0.1.1\t" + (short == h ? h : "\(h) \(short)")
        var lines = String(decoding: b, as: UTF8.self).components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        var replaced = false
        for i in lines.indices {
            let first = lines[i].split(whereSeparator: { $0 == " " || $0 == "\t" }).first
            if first == "127.0.1.1" { lines[i] = line; replaced = true }
        }
        if !replaced { lines.append(line) }
        return (Array((lines.joined(separator: "\n") + "\n").utf8), replaced)
    }

    func changes(_ g: GuestFiles, _ h: String) -> [Change] {
        var out = [g.entry("/etc/hostname") != nil ? Change(.replace, "/etc/hostname", h) : Change(.create, "/etc/hostname", h)]
        if let r = Self.hosts(g, h) {
            out.append(Change(.edit, "/etc/hosts", r.replaced ? "127.0.1.1 line now names \(h)" : "127.0.1.1 line added for \(h)"))
        }
        return out
    }

    func plan(_ g: GuestFiles, _ o: SysprepOptions) throws -> [Change] {
        guard let h = o.hostname else { return [Change(.none, "/etc/hostname", "no new hostname given (--hostname)")] }
        return changes(g, h)
    }

    func apply(_ w: GuestWriter, _ o: SysprepOptions, _ out: inout SysprepOutputs) throws -> [Change] {
        guard let h = o.hostname else { return [Change(.none, "/etc/hostname", "no new hostname given (--hostname)")] }
        let g = w.files
        let c = changes(g, h)
        let hosts = Self.hosts(g, h)
        let bytes = Array((h + "\n").utf8)
        if g.entry("/etc/hostname") != nil { try w.replace("/etc/hostname", with: bytes) }
        else { try w.create("/etc/hostname", contents: bytes, mode: 0o644) }
        if let hosts { try w.replace("/etc/hosts", with: hosts.bytes) }
        return c
    }
}

/// udev's persistent-net rules.
struct UdevPersistentNetOperation: RemovalOperation {
    let name = "udev-persistent-net"
    let summary = "Remove udev persistent-net rules (interface names pinned to the old MAC)"
    let virtSysprepEquivalent = "udev-persistent-net"
    let defaultEnabled = true
    let nothingText = "no persistent-net rules"
    func targets(_ g: GuestFiles) -> [(String, String)] {
        g.present(["/etc/udev/rules.d/70-persistent-net.rules"]).map { ($0, "names interfaces by the old MAC") }
    }
}

/// MAC pins in NetworkManager keyfiles and ifcfg files.
struct NetMACPinsOperation: SysprepOperation {
    let name = "net-mac-pins"
    let summary = "Remove MAC pins (mac-address=, cloned-mac-address=; HWADDR=, MACADDR=) from NetworkManager keyfiles and ifcfg files, keeping the profiles"
    let virtSysprepEquivalent = "net-hwaddr (ifcfg HWADDR); net-nmconn removes whole NetworkManager profiles instead"
    let defaultEnabled = true

    static let nmDir = "/etc/NetworkManager/system-connections"
    static let ifcfgDir = "/etc/sysconfig/network-scripts"
    static let nmSections: Set<String> = ["ethernet", "wifi", "802-3-ethernet", "802-11-wireless", "wimax", "infiniband"]

    /// (path, new bytes, number of lines removed) for every file with a pin. Contents are never reported.
    static func edits(_ g: GuestFiles) -> [(String, [UInt8], Int)] {
        var out: [(String, [UInt8], Int)] = []
        for n in g.namesIn(nmDir) {
            let p = nmDir + "/" + n
            guard g.entry(p)?.type == .regular, let b = g.small(p) else { continue }
            var section = ""
            var removed = 0
            let lines = String(decoding: b, as: UTF8.self).components(separatedBy: "\n").filter { raw in
                let line = raw.trimmingCharacters(in: .whitespaces)
                if line.hasPrefix("["), line.hasSuffix("]") {
                    section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces).lowercased()
                    return true
                }
                guard nmSections.contains(section), let eq = line.firstIndex(of: "=") else { return true }
                let key = line[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
                if key == "mac-address" || key == "cloned-mac-address" { removed += 1; return false }
                return true
            }
            if removed > 0 { out.append((p, Array(lines.joined(separator: "\n").utf8), removed)) }
        }
        for n in g.namesIn(ifcfgDir) where n.hasPrefix("ifcfg-") {
            let p = ifcfgDir + "/" + n
            guard g.entry(p)?.type == .regular, let b = g.small(p) else { continue }
            var removed = 0
            let lines = String(decoding: b, as: UTF8.self).components(separatedBy: "\n").filter { raw in
                let line = raw.trimmingCharacters(in: .whitespaces)
                if line.hasPrefix("HWADDR=") || line.hasPrefix("MACADDR=") { removed += 1; return false }
                return true
            }
            if removed > 0 { out.append((p, Array(lines.joined(separator: "\n").utf8), removed)) }
        }
        return out
    }

    func changes(_ e: [(String, [UInt8], Int)]) -> [Change] {
        e.isEmpty ? [Change(.none, nil, "no MAC-pinned connection profiles")]
            : e.map { Change(.edit, $0.0, "\($0.2) MAC pin line(s) removed") }
    }

    func plan(_ g: GuestFiles, _ o: SysprepOptions) throws -> [Change] { changes(Self.edits(g)) }

    func apply(_ w: GuestWriter, _ o: SysprepOptions, _ out: inout SysprepOutputs) throws -> [Change] {
        let e = Self.edits(w.files)
        for (p, b, _) in e { try w.replace(p, with: b) }
        return changes(e)
    }
}

/// DHCP client leases and client identities.
struct DHCPClientStateOperation: RemovalOperation {
    let name = "dhcp-client-state"
    let summary = "Remove DHCP client leases and DUIDs (dhclient, dhcpcd, NetworkManager, systemd-networkd)"
    let virtSysprepEquivalent = "dhcp-client-state"
    let defaultEnabled = true
    let nothingText = "no DHCP client leases"
    func targets(_ g: GuestFiles) -> [(String, String)] {
        var out: [(String, String)] = []
        func add(_ dir: String, _ pred: (String) -> Bool, _ why: String) {
            for n in g.namesIn(dir) where pred(n) {
                let p = dir + "/" + n
                if let st = g.entry(p), st.type == .regular || st.type == .symlink { out.append((p, why)) }
            }
        }
        let lease: (String) -> Bool = { $0.contains("lease") && !$0.hasPrefix("dhcpd") }
        add("/var/lib/dhcp", lease, "dhclient lease")
        add("/var/lib/dhclient", lease, "dhclient lease")
        add("/var/lib/dhcpcd", { lease($0) || $0 == "duid" || $0 == "secret" }, "dhcpcd lease or client id")
        add("/var/lib/dhcpcd5", { lease($0) || $0 == "duid" || $0 == "secret" }, "dhcpcd lease or client id")
        add("/var/lib/NetworkManager", { lease($0) || $0 == "secret_key" }, "NetworkManager lease or DHCP/IPv6 identity secret")
        add("/var/lib/systemd/netif/leases", { _ in true }, "systemd-networkd lease")
        return out
    }
}

/// cloud-init's per-instance state.
struct CloudInitOperation: RemovalOperation {
    let name = "cloud-init"
    let summary = "Reset cloud-init instance data (/var/lib/cloud/instance, instances/, data/, sem/) so it runs as a new instance"
    let virtSysprepEquivalent = "none (cloud-init clean); virt-sysprep leaves cloud-init state"
    let defaultEnabled = true
    let nothingText = "no cloud-init instance data"
    func targets(_ g: GuestFiles) -> [(String, String)] {
        var out: [(String, String)] = g.present(["/var/lib/cloud/instance"]).map { ($0, "link to the current instance") }
        for d in ["/var/lib/cloud/instances", "/var/lib/cloud/data", "/var/lib/cloud/sem"] {
            out += g.filesBelow(d).map { ($0, "cloud-init instance state") }
        }
        return out
    }
}

/// A new MAC in the VM's definition (the ledger), not in the guest.
struct MACAddressOperation: SysprepOperation {
    let name = "mac-address"
    let summary = "Give the VM a new MAC address in its ledger definition (vm clone only)"
    let virtSysprepEquivalent = "none (virt-clone --mac)"
    let defaultEnabled = true

    func changes(_ o: SysprepOptions) -> [Change] {
        if let mac = o.ledgerMAC { return [Change(.set, nil, "VM definition: MAC \(mac)")] }
        return [Change(.none, nil, "image is not in the ledger; vm clone assigns a new MAC")]
    }
    func plan(_ g: GuestFiles, _ o: SysprepOptions) throws -> [Change] { changes(o) }
    func apply(_ w: GuestWriter, _ o: SysprepOptions, _ out: inout SysprepOutputs) throws -> [Change] { changes(o) }

    /// A random locally-administered unicast MAC in the 52:54:00 prefix QEMU and libvirt use.
    static func newMAC() -> String {
        var g = SystemRandomNumberGenerator()
        let tail = (0..<3).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }
        return (["52", "54", "00"] + tail).joined(separator: ":")
    }
}

/// New ext2/3/4 filesystem UUIDs, with fstab rewritten.
struct FilesystemUUIDsOperation: SysprepOperation {
    let name = "fs-uuids"
    let summary = "Give every ext2/3/4 filesystem a new UUID and rewrite fstab's UUID= lines (boot loader configs are not rewritten)"
    let virtSysprepEquivalent = "fs-uuids"
    let defaultEnabled = false

    static func targets(_ g: GuestFiles) -> [(mount: String, uuid: String)] {
        guard let view = g.view else {
            return g.fs.uuid.map { [("/", $0)] } ?? []
        }
        return view.mounts.compactMap { m in
            guard ["ext2", "ext3", "ext4"].contains(m.type), let u = view.filesystem(at: m.path)?.uuid else { return nil }
            return (m.path, u)
        }
    }

    static func fstab(_ g: GuestFiles, _ map: [String: String]) -> [UInt8]? {
        guard let b = g.small("/etc/fstab") else { return nil }
        var text = String(decoding: b, as: UTF8.self)
        var changed = false
        for (old, new) in map where text.contains(old) {
            for form in ["UUID=" + old, "/dev/disk/by-uuid/" + old, "UUID=\"" + old + "\""] where text.contains(form) {
                text = text.replacingOccurrences(of: form, with: form.replacingOccurrences(of: old, with: new))
                changed = true
            }
        }
        return changed ? Array(text.utf8) : nil
    }

    func plan(_ g: GuestFiles, _ o: SysprepOptions) throws -> [Change] {
        let t = Self.targets(g)
        if t.isEmpty { return [Change(.none, nil, "no ext2/3/4 filesystem")] }
        var out = t.map { Change(.set, $0.mount, "filesystem UUID \($0.uuid) → new") }
        if Self.fstab(g, Dictionary(t.map { ($0.uuid, "NEW") }, uniquingKeysWith: { a, _ in a })) != nil {
            out.append(Change(.edit, "/etc/fstab", "UUID= lines follow the new UUIDs"))
        }
        return out
    }

    func apply(_ w: GuestWriter, _ o: SysprepOptions, _ out: inout SysprepOutputs) throws -> [Change] {
        let g = w.files
        let t = Self.targets(g)
        if t.isEmpty { return [Change(.none, nil, "no ext2/3/4 filesystem")] }
        var map: [String: String] = [:]
        var changes: [Change] = []
        for (mount, old) in t {
            let u = UUID()
            map[old] = u.uuidString.lowercased()
            try w.setFilesystemUUID(mountPoint: mount, u)
            out.filesystemUUIDs[mount] = u.uuidString.lowercased()
            changes.append(Change(.set, mount, "filesystem UUID \(old) → \(u.uuidString.lowercased())"))
        }
        if let b = Self.fstab(g, map) {
            try w.replace("/etc/fstab", with: b)
            changes.append(Change(.edit, "/etc/fstab", "UUID= lines follow the new UUIDs"))
        }
        return changes
    }
}

/// A named user's authorized_keys.
struct AuthorizedKeysOperation: SysprepOperation {
    let name = "authorized-keys"
    let summary = "Remove ~/.ssh/authorized_keys (and authorized_keys2) of the users named with --remove-authorized-keys"
    let virtSysprepEquivalent = "ssh-userdir (virt-sysprep removes every user's whole ~/.ssh)"
    let defaultEnabled = false

    static func targets(_ g: GuestFiles, _ users: [String]) -> [Change] {
        let passwd = String(decoding: g.small("/etc/passwd", maxBytes: 4 << 20) ?? [], as: UTF8.self)
        var homes: [String: String] = [:]
        for line in passwd.split(separator: "\n") {
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            if f.count >= 7, homes[String(f[0])] == nil { homes[String(f[0])] = String(f[5]) }
        }
        var out: [Change] = []
        for u in users {
            guard let home = homes[u], home.hasPrefix("/") else {
                out.append(Change(.none, nil, "no user \(u) in /etc/passwd"))
                continue
            }
            let found = g.present([home + "/.ssh/authorized_keys", home + "/.ssh/authorized_keys2"])
            if found.isEmpty { out.append(Change(.none, home + "/.ssh/authorized_keys", "\(u) has no authorized_keys")) }
            out += found.map { Change(.remove, $0, "authorized keys of \(u)") }
        }
        if users.isEmpty { out.append(Change(.none, nil, "no user named (--remove-authorized-keys USER)")) }
        return out
    }

    func plan(_ g: GuestFiles, _ o: SysprepOptions) throws -> [Change] { Self.targets(g, o.authorizedKeysUsers) }

    func apply(_ w: GuestWriter, _ o: SysprepOptions, _ out: inout SysprepOutputs) throws -> [Change] {
        let c = Self.targets(w.files, o.authorizedKeysUsers)
        for ch in c where ch.action == .remove { if let p = ch.path { try w.remove(p) } }
        return c
    }
}
