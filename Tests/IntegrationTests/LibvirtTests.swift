import Foundation
import Ledger
import AdvisoryStorage
import Advisories
import Testing
import WardenCore
import WardenTestSupport

/// The hook and the watcher against the real libvirtd (see LibvirtFixture).
@Suite(.serialized) struct LibvirtTests {
    static let secureZone = """
    apiVersion: warden/v1
    kind: Policy
    rules:
      - name: sensitive-only-in-secure-zone
        match: { labels: { sensitivity: high } }
        on: [start, migrate, restore]
        require: { host: { labels: { zone: secure } } }
      - name: scanned-first
        on: [start]
        require: { scanAge: 7d }
    """

    /// Starts libvirtd (or skips), writes `policy`, and opens a fresh ledger with this host labelled.
    func prepare(_ policy: String, hostLabels: [String: String]) throws -> SQLiteLedger? {
        if let why = LibvirtFixture.skipReason {
            print("skipping libvirt test: \(why)")
            return nil
        }
        try LibvirtFixture.start()
        try LibvirtFixture.reset(policy: policy)
        let ledger = try SQLiteLedger(path: LibvirtFixture.database)
        try ledger.addHost(HostRecord(name: .current, labels: hostLabels))
        return ledger
    }

    @discardableResult
    func register(_ ledger: SQLiteLedger, _ name: String, uuid: UUID, labels: [String: String] = ["sensitivity": "high"],
                  scanned: Bool = true) throws -> VMRecord {
        let id = VMID(uuid)
        let (vm, _) = try ledger.createVM(VMRecord(id: id, name: name, owner: "alice", labels: labels, state: .stopped),
                                          disks: [], event: NewEvent(kind: .registered, vm: id))
        if scanned { _ = try ledger.append(NewEvent(kind: .scanned, vm: id)) }
        return vm
    }

    func decisions(_ ledger: SQLiteLedger, _ id: VMID) throws -> [[String: JSONValue]] {
        try ledger.events(of: id).filter { $0.kind == .policyDecision }.map(\.payload)
    }

    @Test func allowedStartRecordsResidency() throws {
        guard let ledger = try prepare(Self.secureZone, hostLabels: ["zone": "secure"]) else { return }
        let uuid = try LibvirtFixture.define("warden-t-allowed")
        defer { try? LibvirtFixture.undefine("warden-t-allowed") }
        try register(ledger, "warden-t-allowed", uuid: uuid)
        try LibvirtFixture.virsh(["start", "warden-t-allowed"])
        #expect(try LibvirtFixture.state("warden-t-allowed") == "running")
        let ds = try decisions(ledger, VMID(uuid))
        #expect(ds.count == 2)   // prepare begin and start begin
        #expect(ds.allSatisfy { $0["effect"] == .string("allow") && $0["op"] == .string("start") })
        #expect(ds.first?["rules"] == .array([.string("sensitive-only-in-secure-zone"), .string("scanned-first")]))
        let open = try ledger.residency(of: VMID(uuid))
        #expect(open.count == 1 && open.first?.host == .current && open.first?.kind == .ran && open.first?.to == nil)
        try LibvirtFixture.virsh(["destroy", "warden-t-allowed"])
        let closed = try ledger.residency(of: VMID(uuid))
        #expect(closed.count == 1 && closed.first?.to != nil)
        // libvirtd ran the lean hook; its decisions are pending a checkpoint, and verify passes.
        let hookFile = try String(contentsOfFile: "/etc/libvirt/hooks/qemu.d/50-warden-test", encoding: .utf8)
        #expect(hookFile.contains("/warden-hook' --db"), "\(hookFile)")
        #expect(try ledger.events(of: VMID(uuid)).filter { $0.kind == .policyDecision }.allSatisfy { $0.actor.hasPrefix("libvirt-hook@") })
        let verify = try WardenRun.run(["ledger", "verify", "--db", LibvirtFixture.database])
        #expect(verify.status == 0 && verify.stdoutText.contains("pending: the last 2 entries"), "\(verify.stdoutText) \(verify.stderr)")
    }

    /// A `quarantine` decision at start puts the domain's tap into quarantine at `started`,
    /// before its CPUs run; a later start re-applies the state on that start's interface.
    @Test func quarantineDecisionIsEnforcedOnTheDomainsTap() throws {
        guard NetLab.available else { print("skipping: needs nftables"); return }
        let policy = """
        apiVersion: warden/v1
        kind: Policy
        rules:
          - name: scanned-or-quarantined
            on: [start]
            require: { scanAge: 7d }
            otherwise: quarantine
        """
        guard let ledger = try prepare(policy, hostLabels: [:]) else { return }
        let tap = "wq" + String(UUID().uuidString.prefix(6)).lowercased()
        let uuid = try LibvirtFixture.define("warden-t-quar", tap: tap)
        defer {
            try? LibvirtFixture.undefine("warden-t-quar")
            _ = try? Tool.run(["nft", "delete", "table", "netdev", "warden"], check: false)
        }
        try register(ledger, "warden-t-quar", uuid: uuid, labels: [:], scanned: false)
        try LibvirtFixture.virsh(["start", "warden-t-quar"])
        #expect(try LibvirtFixture.state("warden-t-quar") == "running")
        let table = try Tool.run(["nft", "list", "table", "netdev", "warden"]).stdoutText
        #expect(table.contains("device \"\(tap)\"") && table.contains("hook ingress") && table.contains("hook egress"), "\(table)")
        let states = try ledger.events(of: VMID(uuid)).filter { $0.kind == .networkState }
        #expect(states.count == 1 && states.first?.payload["state"] == .string("quarantined") && states.first?.actor.hasPrefix("libvirt-hook@") == true)
        #expect(states.first?.payload["reason"]?.stringValue?.hasPrefix("quarantine decision") == true)
        try LibvirtFixture.virsh(["destroy", "warden-t-quar"])
    }

    /// A NIC hot-plugged into a quarantined domain (`virsh attach-device`) gets the
    /// quarantine too: `warden libvirt watch` sees libvirt's device-added event and extends the
    /// VM's state to the new tap, recorded.
    @Test func aHotPluggedNICOfAQuarantinedDomainIsQuarantined() throws {
        guard NetLab.available else { print("skipping: needs nftables"); return }
        let policy = "apiVersion: warden/v1\nkind: Policy\nrules:\n  - name: q\n    on: [start]\n    require: { scanAge: 7d }\n    otherwise: quarantine\n"
        guard let ledger = try prepare(policy, hostLabels: [:]) else { return }
        let suffix = String(UUID().uuidString.prefix(6)).lowercased()
        let (tap, plugged, name) = ("wq" + suffix, "wh" + suffix, "warden-t-hotplug")
        let uuid = try LibvirtFixture.define(name, tap: tap)
        let out = LibvirtFixture.root + "/watch-hotplug.out"
        FileManager.default.createFile(atPath: out, contents: nil)
        let watch = Process()
        watch.executableURL = URL(fileURLWithPath: Fixtures.wardenBinary)
        watch.arguments = ["libvirt", "watch", "--uri", LibvirtFixture.uri, "--db", LibvirtFixture.database, "--policy", LibvirtFixture.policy]
        watch.standardOutput = FileHandle(forWritingAtPath: out)
        watch.standardError = watch.standardOutput
        try watch.run()
        defer {
            watch.terminate(); watch.waitUntilExit()
            try? LibvirtFixture.undefine(name)
            _ = try? Tool.run(["nft", "delete", "table", "netdev", "warden"], check: false)
        }
        func output() -> String { (try? String(contentsOfFile: out, encoding: .utf8)) ?? "" }
        for _ in 0..<100 where !output().contains("watching") { usleep(100_000) }
        try register(ledger, name, uuid: uuid, labels: [:], scanned: false)
        try LibvirtFixture.virsh(["start", name])
        let nic = LibvirtFixture.root + "/hotplug-nic.xml"
        try "<interface type='ethernet'><target dev='\(plugged)' managed='yes'/><model type='virtio'/></interface>\n"
            .write(toFile: nic, atomically: true, encoding: .utf8)
        try LibvirtFixture.virsh(["attach-device", name, nic, "--live"])
        try waitUntil("the hot-plugged tap's quarantine", timeout: 30) {
            try Tool.run(["nft", "list", "table", "netdev", "warden"]).stdoutText.contains("device \"\(plugged)\"")
        }
        let table = try Tool.run(["nft", "list", "table", "netdev", "warden"]).stdoutText
        #expect(table.contains("device \"\(tap)\"") && table.components(separatedBy: "device \"\(plugged)\"").count - 1 == 2, "\(table)")
        let last = try #require(try ledger.events(of: VMID(uuid)).last { $0.kind == .networkState })
        #expect(last.payload["state"] == .string("quarantined") && last.actor.hasPrefix("libvirt-watch@"))
        #expect(last.payload["interfaces"] == .array([.string(tap), .string(plugged)]), "\(last.payload)")
        #expect(output().contains("device-added/"), "\(output())")
        try LibvirtFixture.virsh(["destroy", name])
    }

    /// A rescan that finds a new finding for a running libvirt domain shields its tap, found in
    /// libvirt's live XML (no state was recorded before).
    @Test func rescanShieldsARunningDomainFoundThroughLibvirt() throws {
        guard NetLab.available else { print("skipping: needs nftables"); return }
        guard let ledger = try prepare(Self.secureZone, hostLabels: ["zone": "secure"]) else { return }
        let tap = "ws" + String(UUID().uuidString.prefix(6)).lowercased()
        let name = "warden-t-shield"
        let uuid = try LibvirtFixture.define(name, tap: tap)
        defer {
            try? LibvirtFixture.undefine(name)
            _ = try? Tool.run(["nft", "delete", "table", "netdev", "warden"], check: false)
        }
        let id = VMID(uuid)
        let disk = LibvirtFixture.root + "/\(name).qcow2"
        _ = try ledger.createVM(VMRecord(id: id, name: name, owner: "alice", labels: ["sensitivity": "high"], state: .stopped),
                                disks: [DiskRecord(vm: id, index: 0, path: disk, format: "qcow2")], event: NewEvent(kind: .registered, vm: id))
        _ = try ledger.append(NewEvent(kind: .scanned, vm: id))
        let store = SQLiteAdvisoryStore(ledger.database)
        try store.storeInventory(key: WardenCore.Digest(hex: String(repeating: "5e", count: 32)), image: disk, osID: "debian", versionID: "12",
                                 packages: [MatchPackage(name: "openssh-server", version: "1:9.2p1-2+deb12u2", sourceName: "openssh",
                                                         sourceVersion: "1:9.2p1-2+deb12u2")])
        _ = try store.rescan()
        try LibvirtFixture.virsh(["start", name])
        _ = try store.importRecords([AdvisoryRecord(id: "DSA-5555-1", source: "osv", severity: .high,
                                                    affected: [AffectedPackage(ecosystem: "Debian:12", package: "openssh",
                                                                               ranges: [[.introduced("0"), .fixed("1:9.2p1-2+deb12u9")]])])], file: "t")
        let r = try Tool.run([Fixtures.wardenBinary, "fleet", "rescan", "--db", LibvirtFixture.database], check: false)
        #expect(r.status == 0 && r.stderr.contains("\(name): network shielded (new findings: 22/tcp"), "\(r.stderr)")
        let table = try Tool.run(["nft", "list", "table", "netdev", "warden"]).stdoutText
        #expect(table.contains("device \"\(tap)\"") && table.contains("tcp dport 22"), "\(table)")
        try LibvirtFixture.virsh(["destroy", name])
    }

    @Test func deniedStartsShowTheReasonInVirsh() throws {
        // Wrong host label.
        guard let ledger = try prepare(Self.secureZone, hostLabels: ["zone": "dmz"]) else { return }
        let uuid = try LibvirtFixture.define("warden-t-denied")
        defer { try? LibvirtFixture.undefine("warden-t-denied") }
        try register(ledger, "warden-t-denied", uuid: uuid)
        let wrongHost = try LibvirtFixture.virsh(["start", "warden-t-denied"], check: false)
        #expect(wrongHost.status != 0)
        #expect(wrongHost.stderr.contains("warden: denied start of warden-t-denied by Warden policy: rule sensitive-only-in-secure-zone: host \(HostName.current) has zone=dmz, needs zone=secure"), "\(wrongHost.stderr)")
        #expect(try LibvirtFixture.state("warden-t-denied") == "shut off")
        let ds = try decisions(ledger, VMID(uuid))
        #expect(ds.count == 1 && ds.first?["effect"] == .string("deny"))

        // Outside the time window: a window on a weekday three days from today (UTC).
        let weekday = (Calendar(identifier: .gregorian).dateComponents(in: TimeZone(identifier: "UTC")!, from: Date()).weekday! + 5) % 7 + 1
        let other = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][(weekday - 1 + 3) % 7]
        try LibvirtFixture.reset(policy: """
        apiVersion: warden/v1
        kind: Policy
        rules:
          - name: only-on-\(other.lowercased())
            on: [start]
            require: { window: { days: \(other), hours: "00:00-24:00", timezone: UTC } }
        """)
        let l2 = try SQLiteLedger(path: LibvirtFixture.database)
        try register(l2, "warden-t-denied", uuid: uuid)
        let window = try LibvirtFixture.virsh(["start", "warden-t-denied"], check: false)
        #expect(window.status != 0)
        #expect(window.stderr.contains("rule only-on-\(other.lowercased()):") && window.stderr.contains("is outside the window \(other) 00:00-24:00 UTC"), "\(window.stderr)")
        #expect(try LibvirtFixture.state("warden-t-denied") == "shut off")

        // Never scanned.
        try LibvirtFixture.reset(policy: Self.secureZone)
        let l3 = try SQLiteLedger(path: LibvirtFixture.database)
        try l3.addHost(HostRecord(name: .current, labels: ["zone": "secure"]))
        try register(l3, "warden-t-denied", uuid: uuid, scanned: false)
        let unscanned = try LibvirtFixture.virsh(["start", "warden-t-denied"], check: false)
        #expect(unscanned.status != 0)
        #expect(unscanned.stderr.contains("rule scanned-first: never scanned (scans must be at most 7d old)"), "\(unscanned.stderr)")
        #expect(try LibvirtFixture.state("warden-t-denied") == "shut off")
        #expect(try l3.residency(of: VMID(uuid)).isEmpty)
    }

    @Test func restoreIsVetoed() throws {
        guard let ledger = try prepare(Self.secureZone + """

          - name: no-restores
            on: [restore]
            deny: {}
        """, hostLabels: ["zone": "secure"]) else { return }
        let uuid = try LibvirtFixture.define("warden-t-restore")
        defer { try? LibvirtFixture.undefine("warden-t-restore") }
        try register(ledger, "warden-t-restore", uuid: uuid)
        try LibvirtFixture.virsh(["start", "warden-t-restore"])
        let saved = LibvirtFixture.root + "/warden-t-restore.save"
        try? FileManager.default.removeItem(atPath: saved)
        try LibvirtFixture.virsh(["save", "warden-t-restore", saved])
        #expect(try LibvirtFixture.state("warden-t-restore") == "shut off")
        let r = try LibvirtFixture.virsh(["restore", saved], check: false)
        #expect(r.status != 0)
        #expect(r.stderr.contains("warden: denied restore of warden-t-restore by Warden policy: rule no-restores: applies unconditionally"), "\(r.stderr)")
        #expect(try LibvirtFixture.state("warden-t-restore") == "shut off")
        let restores = try decisions(ledger, VMID(uuid)).filter { $0["op"] == .string("restore") }
        #expect(!restores.isEmpty && restores.allSatisfy { $0["effect"] == .string("deny") })
        try? FileManager.default.removeItem(atPath: saved)
    }

    @Test func unknownDomainIsDiscovered() throws {
        guard let ledger = try prepare("apiVersion: warden/v1\nkind: Policy\nrules: []\n", hostLabels: [:]) else { return }
        let uuid = try LibvirtFixture.define("warden-t-unknown")
        defer { try? LibvirtFixture.undefine("warden-t-unknown") }
        try LibvirtFixture.virsh(["start", "warden-t-unknown"])
        let vm = try #require(try ledger.vm(VMID(uuid)))
        #expect(vm.state == .discovered && vm.name == "warden-t-unknown" && vm.owner == "unknown")
        #expect(try ledger.disks(of: vm.id).map(\.path) == [LibvirtFixture.root + "/warden-t-unknown.qcow2"])
        #expect(try ledger.events(of: vm.id).first?.kind == .discovered)
        #expect(try ledger.residency(of: vm.id).count == 1)
    }

    @Test func snapshotRevertSeenByWatchRotatesTheGeneration() throws {
        guard let ledger = try prepare("apiVersion: warden/v1\nkind: Policy\nrules: []\n", hostLabels: [:]) else { return }
        let uuid = try LibvirtFixture.define("warden-t-revert")
        defer { try? LibvirtFixture.undefine("warden-t-revert") }
        let vm = try register(ledger, "warden-t-revert", uuid: uuid)
        let out = LibvirtFixture.root + "/watch.out"
        FileManager.default.createFile(atPath: out, contents: nil)
        let watch = Process()
        watch.executableURL = URL(fileURLWithPath: Fixtures.wardenBinary)
        watch.arguments = ["libvirt", "watch", "--uri", LibvirtFixture.uri, "--db", LibvirtFixture.database]
        watch.standardOutput = FileHandle(forWritingAtPath: out)
        watch.standardError = watch.standardOutput
        try watch.run()
        defer { watch.terminate(); watch.waitUntilExit() }
        func output() -> String { (try? String(contentsOfFile: out, encoding: .utf8)) ?? "" }
        for _ in 0..<100 where !output().contains("watching") { usleep(100_000) }
        #expect(output().contains("watching qemu:///system"))
        try LibvirtFixture.virsh(["start", "warden-t-revert"])
        try LibvirtFixture.virsh(["snapshot-create-as", "warden-t-revert", "s1"])
        #expect(try ledger.vm(vm.id)?.generation == vm.generation)
        try LibvirtFixture.virsh(["snapshot-revert", "warden-t-revert", "s1"])
        var after = vm.generation
        for _ in 0..<150 {
            after = try ledger.vm(vm.id)?.generation ?? vm.generation
            if after != vm.generation { break }
            usleep(100_000)
        }
        #expect(after != vm.generation, "watch output: \(output())")
        usleep(2_000_000)   // the rest of the revert's events arrive within this
        let rolled = try ledger.events(of: vm.id).filter { $0.kind == .rolledBack }
        #expect(rolled.count == 1, "watch output: \(output())")
        #expect(rolled.first?.generationBefore == vm.generation && rolled.first?.generationAfter == after)
        #expect(rolled.first?.payload["via"] == .string("snapshot"))
        #expect(try ledger.vm(vm.id)?.generation == after)
    }
}
