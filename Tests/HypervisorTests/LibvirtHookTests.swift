import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Hypervisor
import Ledger
import Advisories
import Storage
import AdvisoryStorage

@Suite struct LibvirtDomainXMLTests {
    let xml = """
    <domain type='qemu' id='3'>
      <name>db1</name>
      <uuid>6f1c8a4e-3b1d-4c2a-9e0f-0123456789ab</uuid>
      <metadata><name>not the name</name></metadata>
      <memory unit='MiB'>128</memory>
      <devices>
        <disk type='file' device='disk'>
          <driver name='qemu' type='qcow2'/>
          <source file='/var/lib/libvirt/images/db1.qcow2' index='2'/>
          <backingStore type='file' index='3'>
            <format type='qcow2'/>
            <source file='/var/lib/libvirt/images/base.qcow2'/>
          </backingStore>
          <target dev='vda' bus='virtio'/>
        </disk>
        <disk type='block' device='disk'>
          <driver name='qemu' type='raw'/>
          <source dev='/dev/vg0/db1-data'/>
          <target dev='vdb' bus='virtio'/>
        </disk>
        <disk type='file' device='cdrom'>
          <source file='/srv/iso/debian.iso'/>
          <target dev='sda' bus='sata'/>
        </disk>
        <disk type='network' device='disk'>
          <source protocol='rbd' name='pool/image'/>
          <target dev='vdc' bus='virtio'/>
        </disk>
      </devices>
    </domain>
    """

    @Test func parsesNameUUIDAndDisks() throws {
        let d = try LibvirtDomain.parse(Data(xml.utf8))
        #expect(d.name == "db1")
        #expect(d.uuid == UUID(uuidString: "6f1c8a4e-3b1d-4c2a-9e0f-0123456789ab"))
        #expect(d.diskPaths == ["/var/lib/libvirt/images/db1.qcow2", "/dev/vg0/db1-data"])
        #expect(d.diskFormats == ["qcow2", "raw"])
        #expect(d.type == "qemu")
    }

    /// The host ends of the domain's network devices, as libvirt names them once they exist;
    /// names that are not interface names (a hostile XML) are dropped, never passed on.
    @Test func interfacesAreTheTargetDevicesWithValidNames() throws {
        let x = """
        <domain type='kvm'><name>n1</name><uuid>6f1c8a4e-3b1d-4c2a-9e0f-0123456789ab</uuid><devices>
          <interface type='bridge'><source bridge='br0'/><target dev='vnet3'/></interface>
          <interface type='network'><target dev='vnet3'/></interface>
          <interface type='ethernet'><target dev='tap; rm -rf /'/></interface>
          <interface type='ethernet'><target dev='waytoolonginterfacename'/></interface>
          <interface type='user'/>
          <disk type='file' device='disk'><target dev='vda'/></disk>
        </devices></domain>
        """
        #expect(try LibvirtDomain.parse(Data(x.utf8)).interfaces == ["vnet3"])
        #expect(try LibvirtDomain.parse(Data(xml.utf8)).interfaces.isEmpty)
    }

    @Test func malformedXMLIsAnError() {
        for bad in ["", "<domain>", "<domain><uuid>x</uuid><name>a</name></domain>", "<domain><uuid>6f1c8a4e-3b1d-4c2a-9e0f-0123456789ab</uuid></domain>",
                    "<!DOCTYPE d [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><domain><name>&e;</name></domain>"] {
            #expect(throws: WardenError.self, "\(bad)") { try LibvirtDomain.parse(Data(bad.utf8)) }
        }
        // Truncated at every length: an error or a result, never a crash.
        let bytes = Array(xml.utf8)
        for n in stride(from: 0, to: bytes.count, by: 7) { _ = try? LibvirtDomain.parse(Data(bytes[0..<n])) }
        let deep = String(repeating: "<a>", count: 200) + String(repeating: "</a>", count: 200)
        #expect(throws: WardenError.self) { try LibvirtDomain.parse(Data("<domain><name>x</name>\(deep)</domain>".utf8)) }
    }

    @Test func hookActions() {
        #expect(LibvirtHook.action(operation: "prepare", subOperation: "begin") == .decide(.start))
        #expect(LibvirtHook.action(operation: "start", subOperation: "begin") == .decide(.start))
        #expect(LibvirtHook.action(operation: "restore", subOperation: "begin") == .decide(.restore))
        #expect(LibvirtHook.action(operation: "migrate", subOperation: "begin") == .decide(.migrate))
        #expect(LibvirtHook.action(operation: "started", subOperation: "begin") == .openResidency)
        #expect(LibvirtHook.action(operation: "stopped", subOperation: "end") == .closeResidency)
        #expect(LibvirtHook.action(operation: "release", subOperation: "end") == .closeResidency)
        #expect(LibvirtHook.action(operation: "reconnect", subOperation: "begin") == .ignore)
        #expect(LibvirtHook.action(operation: "attach", subOperation: "begin") == .ignore)
        #expect(LibvirtHook.action(operation: "prepare", subOperation: "end") == .ignore)
    }

    @Test func lifecycleEventNames() {
        #expect(LibvirtLifecycleEvent(domain: "d", uuid: nil, event: 2, detail: 3).name == "started/from-snapshot")
        #expect(LibvirtLifecycleEvent(domain: "d", uuid: nil, event: 5, detail: 4).name == "stopped/saved")
        #expect(LibvirtLifecycleEvent(domain: "d", uuid: nil, event: 42, detail: -1).name == "event-42/detail--1")
    }
}

@Suite struct LibvirtHookInstallerTests {
    @Test func folderFormIsIdempotent() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let r1 = try LibvirtHookInstaller.install(hooksDirectory: dir, form: .directory, warden: "/usr/bin/warden",
                                                      database: "/var/lib/warden/warden.db", policy: "/etc/warden/policy")
            #expect(r1.path == dir + "/qemu.d/50-warden" && r1.changed)
            let r2 = try LibvirtHookInstaller.install(hooksDirectory: dir, form: .directory, warden: "/usr/bin/warden",
                                                      database: "/var/lib/warden/warden.db", policy: "/etc/warden/policy")
            #expect(!r2.changed)
            let attrs = try FileManager.default.attributesOfItem(atPath: r1.path)
            #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o755)
            // The wrapper really runs and passes its arguments through, quoted.
            let r3 = try LibvirtHookInstaller.install(hooksDirectory: dir, form: .directory, warden: "/bin/echo",
                                                      database: "/var/lib/it's here/w.db", policy: "/etc/warden/policy")
            #expect(r3.changed)
            let out = try Tool.run([r3.path, "dom", "prepare", "begin", "-"]).stdoutText
            // `--` before libvirt's arguments: a domain named like an option stays a domain name.
            #expect(out == "libvirt-hook --db /var/lib/it's here/w.db --policy /etc/warden/policy -- dom prepare begin -\n")
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/qemu.d") == ["50-warden"])
        }
    }

    @Test func singleFileFormNeverReplacesAForeignHook() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let r = try LibvirtHookInstaller.install(hooksDirectory: dir, form: .file, warden: "/usr/bin/warden",
                                                     database: "/d.db", policy: "/p")
            #expect(r.path == dir + "/qemu" && r.changed)
            #expect(try !LibvirtHookInstaller.install(hooksDirectory: dir, form: .file, warden: "/usr/bin/warden", database: "/d.db", policy: "/p").changed)
            try "#!/bin/sh\nexit 0\n".write(toFile: dir + "/qemu", atomically: true, encoding: .utf8)
            #expect(throws: WardenError.self) {
                try LibvirtHookInstaller.install(hooksDirectory: dir, form: .file, warden: "/usr/bin/warden", database: "/d.db", policy: "/p")
            }
            #expect(try String(contentsOfFile: dir + "/qemu", encoding: .utf8) == "#!/bin/sh\nexit 0\n")
            #expect(throws: WardenError.self) {
                try LibvirtHookInstaller.install(hooksDirectory: dir, form: .directory, warden: "warden", database: "/d.db", policy: "/p")
            }
        }
    }
}

@Suite struct LibvirtWatchTests {
    @Test func actions() {
        func a(_ e: Int32, _ d: Int32) -> LibvirtWatch.Action { LibvirtWatch.action(for: LibvirtLifecycleEvent(domain: "d", uuid: nil, event: e, detail: d)) }
        #expect(a(2, 3) == .rotate(via: "snapshot"))
        #expect(a(5, 6) == .rotate(via: "snapshot"))
        #expect(a(0, 3) == .rotate(via: "snapshot"))
        #expect(a(2, 2) == .rotate(via: "restore"))
        #expect(a(5, 4) == .saved)
        #expect(a(0, 0) == .defined)
        #expect(a(1, 0) == .undefined)
        #expect(a(2, 0) == .none)        // booted: the hook's business
        #expect(a(4, 2) == .none)        // resumed/from-snapshot follows a restore; not a revert
    }

    /// What libvirt 9.0 emits for one revert of a running domain, then a second revert 20 s later.
    @Test func oneRotationPerRevert() {
        let u = UUID()
        func e(_ ev: Int32, _ d: Int32) -> LibvirtLifecycleEvent { LibvirtLifecycleEvent(domain: "d", uuid: u, event: ev, detail: d) }
        var dedup = LibvirtWatch.RevertDeduplicator()
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        do { let r = dedup.isNewRevert(e(5, 6), at: t0); #expect(r) }
        do { let r = dedup.isNewRevert(e(2, 3), at: t0.addingTimeInterval(1.1)); #expect(!r) }
        do { let r = dedup.isNewRevert(e(4, 2), at: t0.addingTimeInterval(1.1)); #expect(r) }   // not a revert event: passes
        do { let r = dedup.isNewRevert(e(0, 3), at: t0.addingTimeInterval(1.2)); #expect(!r) }
        do { let r = dedup.isNewRevert(e(5, 6), at: t0.addingTimeInterval(20)); #expect(r) }
        // Another domain is independent.
        do { let r = dedup.isNewRevert(LibvirtLifecycleEvent(domain: "other", uuid: UUID(), event: 2, detail: 3), at: t0.addingTimeInterval(20.5)); #expect(r) }
    }
}

@Suite struct LibvirtHookFailClosedTests {
    let xml = Data("<domain type='qemu'><name>db1</name><uuid>6f1c8a4e-3b1d-4c2a-9e0f-0123456789ab</uuid></domain>".utf8)

    @Test func unreachableLedgerVetoes() {
        let out = LibvirtHook.run(arguments: ["db1", "prepare", "begin", "-"], domainXML: xml, host: HostName("h1")!,
                                  policy: .defaultDirectory,
                                  openStore: { throw WardenError(.unavailable, "no Warden database", file: "/var/lib/warden/warden.db") })
        #expect(out.status == 1)
        #expect(out.message == "denied start of an unknown VM by Warden policy: failing closed: ledger unavailable: /var/lib/warden/warden.db: no Warden database")
        // started also fails (libvirt then stops the domain); stopped does not.
        #expect(LibvirtHook.run(arguments: ["db1", "started", "begin", "-"], domainXML: xml, policy: .defaultDirectory,
                                openStore: { throw WardenError(.unavailable, "gone") }).status == 1)
        #expect(LibvirtHook.run(arguments: ["db1", "stopped", "end", "-"], domainXML: xml, policy: .defaultDirectory,
                                openStore: { throw WardenError(.unavailable, "gone") }).status == 0)
        // Calls Warden does not handle never open the ledger.
        #expect(LibvirtHook.run(arguments: ["db1", "reconnect", "begin", "-"], domainXML: Data(), policy: .defaultDirectory,
                                openStore: { Issue.record("opened"); throw WardenError(.unavailable, "gone") }).status == 0)
    }

    @Test func malformedXMLVetoes() {
        let out = LibvirtHook.run(arguments: ["db1", "restore", "begin", "-"], domainXML: Data("<domain><name>".utf8),
                                  policy: .defaultDirectory, openStore: { throw WardenError(.unavailable, "gone") })
        #expect(out.status == 1)
        #expect(out.message?.hasPrefix("denied restore of an unknown VM by Warden policy: failing closed: db1: domain XML:") == true, "\(out.message ?? "")")
    }
}

/// The hook decides `findings` rules from the advisory store in the ledger's database.
@Suite struct LibvirtHookAdvisoryTests {
    @Test func startIsVetoedOnOpenFindingsFromTheAdvisoryStore() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let uuid = UUID(uuidString: "6f1c8a4e-3b1d-4c2a-9e0f-0123456789ab")!
            let xml = Data("<domain type='qemu'><name>db1</name><uuid>\(uuid.uuidString)</uuid></domain>".utf8)
            let db = try WardenDatabase(path: dir + "/w.db")
            let ledger = SQLiteLedger(database: db, host: HostName("h1")!)
            let id = VMID(uuid)
            _ = try ledger.createVM(VMRecord(id: id, name: "db1", owner: "alice", state: .stopped),
                                    disks: [DiskRecord(vm: id, index: 0, path: dir + "/db1.qcow2", format: "qcow2")],
                                    event: NewEvent(kind: .registered, vm: id, host: HostName("h1")!))
            try PolicyFiles.write(PolicyFiles.noCriticalsOnline, in: dir)
            func hook() -> LibvirtHook.Outcome {
                LibvirtHook.run(arguments: ["db1", "prepare", "begin", "-"], domainXML: xml, host: HostName("h1")!,
                                policy: .explicit(dir + "/policy"), openStore: { ledger })
            }
            // Never scanned: unknown, so the deny rule fails closed.
            var out = hook()
            #expect(out.status == 1 && out.message?.contains("never scanned") == true, "\(out)")
            // An inventory of the disk and an advisory it is vulnerable to.
            let store = SQLiteAdvisoryStore(db)
            _ = try store.importRecords([AdvisoryRecord(id: "DSA-77-1", source: "osv", aliases: ["CVE-2026-77"], severity: .critical,
                                                        affected: [AffectedPackage(ecosystem: "Debian:12", package: "openssl",
                                                                                   ranges: [[.introduced("0"), .fixed("3.0.13-1")]])])], file: "t")
            try store.storeInventory(key: WardenCore.Digest(hex: String(repeating: "ab", count: 32)), image: dir + "/db1.qcow2",
                                     osID: "debian", versionID: "12",
                                     packages: [MatchPackage(name: "libssl3", version: "3.0.11-1", sourceName: "openssl", sourceVersion: "3.0.11-1")])
            out = hook()
            #expect(out.status == 1, "\(out)")
            #expect(out.message?.contains("rule no-criticals-online: 1 open finding at or above critical: DSA-77-1 (CVE-2026-77) in libssl3 3.0.11-1") == true,
                    "\(out.message ?? "")")
            // Fixed in the store (a newer record): allowed, and recorded.
            _ = try store.importRecords([AdvisoryRecord(id: "DSA-77-1", source: "osv", modified: Date(), aliases: ["CVE-2026-77"], severity: .critical,
                                                        affected: [AffectedPackage(ecosystem: "Debian:12", package: "openssl",
                                                                                   ranges: [[.introduced("0"), .fixed("3.0.10-1")]])])], file: "t")
            out = hook()
            #expect(out.status == 0 && out.decision?.effect == .allow, "\(out)")
        }
    }
}
