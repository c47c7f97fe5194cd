import Foundation
import Hypervisor
import Ledger
import Testing
import Vault
import WardenCore
import WardenTestSupport

/// Encrypted disks under the real libvirtd (docs/vault.md, "libvirt-run VMs"): part of the
/// serialized LibvirtTests suite, since they share its daemon, database and policy.
extension LibvirtTests {
    static let unlockInSecureZone = """
    apiVersion: warden/v1
    kind: Policy
    rules:
      - name: keys-only-in-secure-zone
        on: [unlock]
        require: { host: { labels: { zone: secure } } }
    """

    /// The domain's disk (Warden-encrypted) names a LUKS secret; only `warden libvirt start`
    /// after an allowed `unlock` gives libvirt the key, and nothing is left defined afterwards.
    @Test func encryptedDomainStartsOnlyThroughAnAllowedUnlock() throws {
        guard let ledger = try prepare(Self.unlockInSecureZone, hostLabels: ["zone": "open"]) else { return }
        let name = "warden-t-encrypted"
        let uuid = try LibvirtFixture.define(name)
        defer { try? LibvirtFixture.undefine(name) }
        let disk = LibvirtFixture.root + "/\(name).qcow2"
        // A pattern the guest must read back through the decryption.
        try Tool.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", disk])
        let db = LibvirtFixture.database
        let reg = try WardenRun.run(["vm", "register", "--db", db, "--name", name, "--owner", "alice", "--encrypt", disk])
        #expect(reg.status == 0, "\(reg.stderr)")
        let vm = try #require(VMID(reg.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(try QEMUImgInfo.encrypted(disk))

        // Without a secret in its XML, Warden says what to add (and releases nothing).
        let bare = try WardenRun.run(["libvirt", "start", name, "--db", db, "--policy", LibvirtFixture.policy])
        #expect(bare.status != 0 && bare.stderr.contains("<encryption format='luks'><secret type='passphrase' uuid="), "\(bare.stderr)")
        #expect(try ledger.events(of: vm).filter { $0.kind == .policyDecision }.isEmpty)

        let secret = UUID()
        let xml = try LibvirtFixture.domainXML(name: name, uuid: uuid, disk: disk)
            .replacingOccurrences(of: "<source file='\(disk)'/>",
                                  with: "<source file='\(disk)'>\(LibvirtStart.encryptionXML(secret))</source>")
        try xml.write(toFile: LibvirtFixture.root + "/\(name).xml", atomically: true, encoding: .utf8)
        try LibvirtFixture.virsh(["define", LibvirtFixture.root + "/\(name).xml"])

        // Plain `virsh start`: the hook refuses (no key was released for it), and records it.
        let unlocks = { try ledger.events(of: vm).filter { $0.kind == .policyDecision && $0.payload["op"] == .string("unlock") } }
        let plain = try LibvirtFixture.virsh(["start", name], check: false)
        #expect(plain.status != 0 && plain.stderr.contains("no key was released for this start"), "\(plain.stderr)")
        #expect(try LibvirtFixture.state(name) == "shut off")
        #expect(try unlocks().map { $0.payload["effect"] } == [.string("deny")])

        // The wrong zone: exit 3, the denial recorded, nothing defined in libvirt.
        let denied = try WardenRun.run(["libvirt", "start", name, "--db", db, "--policy", LibvirtFixture.policy])
        #expect(denied.status == 3, "\(denied.status) \(denied.stderr)")
        #expect(denied.stderr.contains("keys-only-in-secure-zone"), "\(denied.stderr)")
        #expect(try !LibvirtStart.secretExists(uri: LibvirtFixture.uri, secret))
        #expect(try LibvirtFixture.state(name) == "shut off")
        #expect(try unlocks().map { $0.payload["effect"] } == [.string("deny"), .string("deny")])
        #expect(try unlocks().last?.payload["rules"] == .array([.string("keys-only-in-secure-zone")]))

        // A secret defined by hand, with the right value: the hook refuses the start, since no
        // key was released for it, and records why.
        let key = try #require(try Vault.beside(database: db).key(for: KeyContext(vm: vm, layer: Vault.diskLayer(0))))
        let secretXML = LibvirtFixture.root + "/secret.xml"
        try "<secret ephemeral='yes' private='yes'><uuid>\(secret.uuidString.lowercased())</uuid></secret>"
            .write(toFile: secretXML, atomically: true, encoding: .utf8)
        try LibvirtFixture.virsh(["secret-define", secretXML])
        let valueFile = LibvirtFixture.root + "/secret.value"
        try SecretFile.write(Vault.passphrase(key.key), to: valueFile)
        defer { SecretFile.destroy(valueFile) }
        try LibvirtFixture.virsh(["secret-set-value", secret.uuidString.lowercased(), "--file", valueFile, "--plain"])
        SecretFile.destroy(valueFile)
        let byHand = try LibvirtFixture.virsh(["start", name], check: false)
        _ = try LibvirtFixture.virsh(["secret-undefine", secret.uuidString.lowercased()], check: false)
        #expect(byHand.status != 0 && byHand.stderr.contains("no key was released for this start"), "\(byHand.stderr)")
        #expect(try LibvirtFixture.state(name) == "shut off")
        #expect(try unlocks().count == 3)

        // Policy now allows this host's zone: started, the guest reads its data, and the secret is gone.
        try Self.unlockInSecureZone.replacingOccurrences(of: "zone: secure", with: "zone: open")
            .write(toFile: LibvirtFixture.policy + "/policy.yaml", atomically: true, encoding: .utf8)
        let allowed = try WardenRun.run(["libvirt", "start", name, "--db", db, "--policy", LibvirtFixture.policy, "--json"])
        #expect(allowed.status == 0, "\(allowed.stderr)")
        #expect(allowed.stdoutText.contains(disk), "\(allowed.stdoutText)")
        #expect(try LibvirtFixture.state(name) == "running")
        #expect(try !LibvirtStart.secretExists(uri: LibvirtFixture.uri, secret))
        #expect(try unlocks().last?.payload["effect"] == .string("allow"))
        // QEMU's qemu-io reads through the guest's disk, decrypting; its output goes to the
        // domain's log. The right pattern reads back, a wrong one fails verification.
        let log = "/var/log/libvirt/qemu/\(name).log"
        func qemuIO(_ command: String) throws -> String {
            let before = (try? FileManager.default.attributesOfItem(atPath: log)[.size] as? Int) ?? 0
            try LibvirtFixture.virsh(["qemu-monitor-command", name, "--hmp", "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"\(command)\""])
            usleep(300_000)
            let all = (try? Data(contentsOf: URL(fileURLWithPath: log))) ?? Data()
            return String(decoding: all.dropFirst(min(before, all.count)), as: UTF8.self)
        }
        let good = try qemuIO("read -P 0x5a 0 64k")
        #expect(good.contains("read 65536/65536 bytes") && !good.contains("Pattern verification failed"), "\(good)")
        let bad = try qemuIO("read -P 0x5b 0 64k")
        #expect(bad.contains("Pattern verification failed"), "\(bad)")
        // The key never reached a command line or the ledger.
        let passphrase = Vault.passphrase(key.key).withBytes { String(decoding: $0, as: UTF8.self) }
        #expect(!(try Tool.run(["ps", "-eo", "args"]).stdoutText.contains(passphrase)))
        #expect(try ledger.events(of: vm).allSatisfy { !"\($0.payload)".contains(passphrase) })

        // Stopped, it cannot be started again without Warden: the secret is not there.
        try LibvirtFixture.virsh(["destroy", name])
        #expect(try LibvirtFixture.virsh(["start", name], check: false).status != 0)
        #expect(try LibvirtFixture.state(name) == "shut off")
    }
}
