import Foundation
import Testing
import WardenTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Scenarios S2 (a dormant, vulnerable guest joins the network), S6 (an unpatchable legacy
/// service) and S12 (a VM back after months): network namespaces, veth, a bridge and nftables
/// made by the test (NetLab), QEMU under software emulation (docs/scenarios.md).
@Suite(.serialized) struct NetworkScenarios {
    /// The Debian 12 guest disk Warden scans: openssh-server and openssl older than their fixes,
    /// sshd listening on 22 (ext4 by mkfs.ext4 -d, in qcow2).
    static func vulnerableDisk(_ path: String, tree: String) throws {
        try Tool.sh("""
        mkdir -p '\(tree)/etc/ssh' '\(tree)/var/lib/dpkg'
        printf 'Port 22\\n' > '\(tree)/etc/ssh/sshd_config'
        printf 'ID=debian\\nVERSION_ID="12"\\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\\n' > '\(tree)/etc/os-release'
        printf 'Package: openssh-server\\nStatus: install ok installed\\nSource: openssh\\nVersion: 1:9.2p1-2+deb12u2\\nArchitecture: amd64\\n\\nPackage: openssl\\nStatus: install ok installed\\nVersion: \(RollbackFixtures.oldSSL)\\nArchitecture: amd64\\n\\nPackage: nginx\\nStatus: install ok installed\\nVersion: 1.22.1-9\\nArchitecture: amd64\\n\\n' > '\(tree)/var/lib/dpkg/status'
        truncate -s 16M '\(path).raw' && mkfs.ext4 -q -F -d '\(tree)' '\(path).raw'
        qemu-img convert -f raw -O qcow2 '\(path).raw' '\(path)' && rm '\(path).raw'
        """)
    }

    static func fetchLines(_ text: String) -> [String] {
        text.split(whereSeparator: \.isNewline).map(String.init).filter { $0.hasPrefix("WARDEN-FETCH ") }
    }

    @Test(.enabled(if: NetLab.available && TestGuest.unavailableReason == nil, "needs root, iproute2, nftables and the test guest"))
    func s2DormantGuestJoinsTheNetwork() throws {
        let s = try Scenario("S2", "Transience: a dormant, vulnerable guest starts and joins the network",
                             section: "§2, Transience",
                             problem: "VMs that sleep miss every patch; when one wakes it joins the network as it was, with holes fixed long ago, before anyone has looked at it.")
        let lab = try NetLab()
        var qemuPid: pid_t?
        defer {
            if let qemuPid { kill(qemuPid, SIGKILL) }
            RuntimeScenarios.killVM(s, "legacy")
            lab.destroy()
            s.cleanUp()
        }
        let guest = try RuntimeScenarios.setUp(s)
        let W = s.dir
        let host = lab.ns["host"]!
        s.alias(host, as: "$HOSTNS")
        try Self.vulnerableDisk(W + "/legacy.qcow2", tree: W + "/tree")
        try lab.serve("mirror", tcp: [80, 8080])
        try lab.serve("client", tcp: [80])
        let urls = ["http://\(lab.ip(20)):80/", "http://\(lab.ip(20)):8080/", "http://\(lab.ip(30)):80/"]
        let fetch = "warden.net=\(lab.ip(40))/24 warden.fetch=\(urls.joined(separator: ","))"
        s.note("The lab: network namespaces made by the test, a bridge `br0` in `$HOSTNS` (the hypervisor host), the package mirror \(lab.ip(20)) (ports 80 and 8080) and another machine \(lab.ip(30)) (port 80) on it. The guest is the busybox test guest standing in for the Debian image `legacy.qcow2` (openssl \(RollbackFixtures.oldSSL), fixed in \(RollbackFixtures.fixedIn) by DSA-5678-1); on start it fetches \(urls.joined(separator: ", ")). Warden's commands run in `$HOSTNS` (`ip netns exec`), where the bridge and Warden's nftables table live.")

        try s.arm(.without, "The guest is started with plain QEMU on a tap in the bridge.") {
            let tap = "wp\(lab.tag)"
            try s.sh("""
            ip netns exec $HOSTNS ip tuntap add dev \(tap) mode tap
            ip -n $HOSTNS link set \(tap) master br0 up
            ip netns exec $HOSTNS \(RuntimeScenarios.qemu(guest, disk: "$W/legacy.qcow2", log: "$W/plain.log", options: fetch,
                extra: "-netdev tap,id=n0,ifname=\(tap),script=no,downscript=no -device virtio-net-pci,netdev=n0 -daemonize -pidfile $W/qemu.pid"))
            """.replacingOccurrences(of: "$HOSTNS", with: host), show: 0)
            qemuPid = (try? String(contentsOfFile: W + "/qemu.pid", encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            try waitUntil("the guest's fetches", timeout: 300) {
                ((try? String(contentsOfFile: W + "/plain.log", encoding: .utf8)) ?? "").contains("WARDEN-FETCH-DONE")
            }
            let got = Self.fetchLines(try String(contentsOfFile: W + "/plain.log", encoding: .utf8))
            try s.sh("grep WARDEN-FETCH $W/plain.log")
            if let qemuPid { kill(qemuPid, SIGKILL) }
            qemuPid = nil
            try #require(urls.allSatisfy { u in got.contains { $0.hasPrefix("WARDEN-FETCH \(u) ok") } }, "\(got)")
            s.outcome("The unscanned guest with a known hole reached every machine it tried: the mirror on 80 and 8080, and \(lab.ip(30)).")
        }

        try s.arm(.with, "Warden scans the image against the advisories, and policy decides the start: quarantine. Warden makes the tap and puts the quarantine on it before QEMU opens it.") {
            try s.file(W + "/DSA-5678-1.json", OfflineScenarios.openssl, show: false)
            try s.file(W + "/policy/network/network.yaml", """
            apiVersion: warden/v1
            kind: Network
            quarantine:
              mirrors:
                - { address: \(lab.ip(20)), ports: [80] }
            """)
            try s.file(W + "/policy/admission.yaml", """
            apiVersion: warden/v1
            kind: Policy
            rules:
              - name: scanned-and-clean-or-quarantined
                on: [start]
                require: { scanAge: 7d }
                otherwise: quarantine
              - name: vulnerable-is-quarantined
                on: [start]
                quarantine: { findings: { severity: high } }
            """)
            let ns = ["ip", "netns", "exec", host]
            try s.warden(["vm", "register", "--name", "legacy", "--owner", "ops", "\(W)/legacy.qcow2"], show: 0, prefix: ns)
            try s.warden(["advisories", "import", "\(W)/DSA-5678-1.json"], show: 1, prefix: ns)
            try s.warden(["scan", "\(W)/legacy.qcow2"], check: false, show: 4, prefix: ns)
            let tap = "wg\(lab.tag)"
            let start = try s.warden(["vm", "start", "legacy", "--kernel", guest.kernel, "--initrd", guest.initrd, "--memory", "256", "--accel", "tcg",
                                      "--bridge", "br0", "--tap", tap, "--append", guest.append(fetch)], show: 4, prefix: ns)
            func console() throws -> String {
                try Tool.run(ns + [Fixtures.wardenBinary, "vm", "console", "legacy"], environment: s.wardenEnvironment).stdoutText
            }
            try waitUntil("the guest's fetches", timeout: 300) { try console().contains("WARDEN-FETCH-DONE") }
            let got = Self.fetchLines(try console())
            try s.sh("warden vm console legacy | grep WARDEN-FETCH".replacingOccurrences(of: "warden", with: "ip netns exec \(host) warden", options: .anchored), show: 4)
            try s.warden(["net", "status"], show: 4, prefix: ns)
            try s.warden(["vm", "stop", "legacy", "--timeout", "1"], show: 1, prefix: ns)
            try #require(start.stderr.contains("network quarantined on \(tap)"), "\(start.stderr)")
            try #require(got.contains { $0.hasPrefix("WARDEN-FETCH \(urls[0]) ok") }, "\(got)")
            try #require(got.contains { $0.hasPrefix("WARDEN-FETCH \(urls[1]) fail") } && got.contains { $0.hasPrefix("WARDEN-FETCH \(urls[2]) fail") }, "\(got)")
            s.evidence(["the start's decision: quarantine (open finding DSA-5678-1, high, in openssl)",
                        "nftables on the tap Warden made: the guest fetched \(urls[0]); \(urls[1]) and \(urls[2]) failed"])
            s.outcome("The guest started quarantined: it reached the mirror's port 80 (to be patched from) and nothing else, until a rescan finds it clean.")
        }
        try s.finish()
    }

    @Test(.enabled(if: NetLab.available, "needs root, iproute2 and nftables"))
    func s6UnpatchableLegacyService() throws {
        let s = try Scenario("S6", "Diversity: a legacy guest whose vulnerable sshd cannot be patched",
                             section: "§2, Diversity",
                             problem: "Fleets keep old, odd guests that no patch reaches (an appliance, a frozen build). Their vulnerable services stay reachable for as long as they run.")
        let lab = try NetLab()
        defer { lab.destroy(); s.cleanUp() }
        let W = s.dir
        let host = lab.ns["host"]!
        try Self.vulnerableDisk(W + "/web.qcow2", tree: W + "/tree")
        try lab.serve("vm", tcp: [22, 80])
        s.note("The lab: network namespaces made by the test; the VM's namespace (\(lab.ip(10))) runs services on 22 (sshd) and 80 (the web server) behind a veth whose host end stands for the VM's tap (`\(lab.tap)`); a client (\(lab.ip(30))) on the same bridge. The VM's disk `web.qcow2` has openssh-server 1:9.2p1-2+deb12u2, which DSA-5555-1 fixes in 1:9.2p1-2+deb12u9; the vendor ships no update for this appliance. Warden's commands run in the lab's host namespace (`ip netns exec`), where the bridge and Warden's nftables table live.")
        try s.file(W + "/DSA-5555-1.json", """
        {"schema_version": "1.6.0", "id": "DSA-5555-1", "modified": "2026-11-01T00:00:00Z", "aliases": ["CVE-2026-5555"],
         "summary": "openssh - security update", "database_specific": {"severity": "high"},
         "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssh"},
                       "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:9.2p1-2+deb12u9"}]}]}]}
        """, show: false)

        try s.arm(.without, "A client on the network tries the VM's services.") {
            let ssh = try lab.connects("client", "vm", 22), web = try lab.connects("client", "vm", 80)
            try s.sh("ip netns exec \(lab.ns["client"]!) curl -s --max-time 2 http://\(lab.ip(10)):22/ && echo ' <- port 22 answered'", show: 2)
            try #require(ssh && web)
            s.outcome("The vulnerable sshd on port 22 answers anyone on the network, as does the web server on 80.")
        }

        try s.arm(.with, "Warden scans the disk offline (sshd's ports come from its sshd_config) and shields the running VM at the host: inbound traffic to the vulnerable service's ports is dropped by nftables on its tap.") {
            try s.file(W + "/policy/network/network.yaml", """
            apiVersion: warden/v1
            kind: Network
            shield:
              severity: high
            """)
            let ns = ["ip", "netns", "exec", host]
            try s.warden(["vm", "register", "--name", "web", "--owner", "ops", "\(W)/web.qcow2"], show: 0, prefix: ns)
            try s.warden(["event", "record", "--vm", "web", "--kind", "started"], show: 0, prefix: ns)
            try s.warden(["advisories", "import", "\(W)/DSA-5555-1.json"], show: 1, prefix: ns)
            try s.warden(["scan", "\(W)/web.qcow2"], check: false, show: 3, prefix: ns)
            let shield = try s.warden(["net", "shield", "web", "--interface", lab.tap], show: 4, prefix: ns)
            let ssh = try lab.connects("client", "vm", 22), web = try lab.connects("client", "vm", 80)
            try s.sh("ip netns exec \(lab.ns["client"]!) curl -s --max-time 2 http://\(lab.ip(10)):22/ || echo 'port 22: no answer'; ip netns exec \(lab.ns["client"]!) curl -s --max-time 2 http://\(lab.ip(10)):80/ && echo ' <- port 80 answered'", check: false, show: 3)
            try s.warden(["net", "status"], show: 4, prefix: ns)
            try #require((shield.stdoutText + shield.stderr).contains("22/tcp") && (shield.stdoutText + shield.stderr).contains("DSA-5555-1"), "\(shield.stdoutText) \(shield.stderr)")
            try #require(!ssh && web)
            s.evidence(["`net shield`: 22/tcp closed for openssh-server (DSA-5555-1); `fleet rescan` does the same for every running VM when a new advisory arrives (docs/network.md)", "client → 22: no answer; client → 80: answered"])
            s.outcome("Port 22 is dropped at the host for the unpatchable sshd; port 80 still serves.")
        }
        try s.finish()
    }

    @Test(.enabled(if: TestGuest.unavailableReason == nil, "needs QEMU, busybox-static and a Debian kernel"))
    func s12BackAfterMonths() throws {
        let s = try Scenario("S12", "Transience: a VM dormant for months comes back",
                             section: "§2, Transience",
                             problem: "A VM last looked at months ago is started as if nothing had happened since; the holes fixed upstream meanwhile are all open in it.")
        defer { RuntimeScenarios.killVM(s, "ledger-app"); s.cleanUp() }
        let guest = try RuntimeScenarios.setUp(s)
        let W = s.dir
        try Self.vulnerableDisk(W + "/app.qcow2", tree: W + "/tree")
        try FileManager.default.copyItem(atPath: W + "/app.qcow2", toPath: W + "/plain.qcow2")
        s.note("The VM `app.qcow2` last ran and was last scanned in June; DSA-5678-1 (openssl, high) was published in 2024 and fixed in \(RollbackFixtures.fixedIn); the disk has openssl \(RollbackFixtures.oldSSL).")

        try s.arm(.without, "The VM is started with plain QEMU.") {
            let boot = try s.sh(RuntimeScenarios.qemu(guest, disk: "$W/plain.qcow2", log: "$W/boot.log", options: "warden.halt=1")
                                + "\ngrep -m1 WARDEN-GUEST-READY $W/boot.log", timeout: 240)
            let old = try s.sh("""
            qemu-img convert -O raw $W/plain.qcow2 $W/plain.raw
            v=$(debugfs -R 'cat /var/lib/dpkg/status' $W/plain.raw 2>/dev/null | grep -A3 '^Package: openssl' | sed -n 's/^Version: //p')
            dpkg --compare-versions "$v" lt \(RollbackFixtures.fixedIn) && echo "openssl $v: older than the 2024 fix \(RollbackFixtures.fixedIn)"
            """)
            try #require(boot.stdoutText.contains("WARDEN-GUEST-READY") && old.stdoutText.contains("older than the 2024 fix"))
            s.outcome("The guest booted straight away; nothing asked when it was last scanned, and it runs openssl with a hole fixed two years ago.")
        }

        try s.arm(.with, "Admission control: the start needs a recent scan; a rescan then decides on what it finds. Every decision is recorded.") {
            try s.file(W + "/DSA-5678-1.json", OfflineScenarios.openssl, show: false)
            try s.file(W + "/policy/admission.yaml", """
            apiVersion: warden/v1
            kind: Policy
            rules:
              - name: rescan-after-dormancy
                on: [start]
                require: { scanAge: 30d }
                otherwise: deny
              - name: no-known-high-holes
                on: [start]
                deny: { findings: { severity: high } }
            """)
            try s.warden(["vm", "register", "--name", "ledger-app", "--owner", "ops", "\(W)/app.qcow2"], show: 0)
            // What happened in June, as the hook and the scanner recorded it then.
            try s.sh("""
            warden event record --vm ledger-app --kind started --at 2026-06-02T08:00:00Z
            warden event record --vm ledger-app --kind scanned --at 2026-06-02T08:05:00Z
            warden event record --vm ledger-app --kind stopped --at 2026-06-12T18:00:00Z
            """, show: 0)
            let start = ["vm", "start", "ledger-app", "--kernel", guest.kernel, "--initrd", guest.initrd, "--memory", "256", "--accel", "tcg"]
            let first = try s.warden(start, check: false)
            try s.warden(["advisories", "import", "\(W)/DSA-5678-1.json"], show: 1)
            try s.warden(["scan", "\(W)/app.qcow2"], check: false, show: 4)
            let second = try s.warden(start, check: false)
            let history = try s.sh("warden vm history ledger-app --json | python3 -c 'import json, sys; [print(e[\"payload\"][\"op\"], e[\"payload\"][\"effect\"], \"-\", e[\"payload\"][\"reasons\"][0]) for e in json.load(sys.stdin)[\"events\"] if e[\"kind\"] == \"policy-decision\"]'", show: 4)
            try #require(first.status == 3 && first.stderr.contains("rescan-after-dormancy"), "\(first.stderr)")
            try #require(second.status == 3 && second.stderr.contains("no-known-high-holes") && second.stderr.contains("DSA-5678-1"), "\(second.stderr)")
            try #require(history.stdoutText.components(separatedBy: "start deny").count - 1 == 2, "\(history.stdoutText)")
            s.evidence(["start 1: denied by rescan-after-dormancy (last scan in June)",
                        "the rescan found DSA-5678-1 (high) in openssl \(RollbackFixtures.oldSSL)",
                        "start 2: denied by no-known-high-holes, naming DSA-5678-1",
                        "both decisions are `policy-decision` events in the VM's history"])
            s.outcome("The dormant VM did not start on a six-month-old scan; the forced rescan found the long-fixed hole, the start was refused until it is patched (`warden vm patch`, docs/patching.md), and both decisions are in the ledger.")
        }
        try s.finish()
    }
}
