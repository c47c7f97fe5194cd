import Foundation
import Testing
import WardenTestSupport

/// Scenarios S3 (rollback re-opens a fixed hole) and S8 (an image carried away on a removable
/// medium): offline, on disks built with mkfs.ext4 -d and qemu-img (docs/scenarios.md).
@Suite struct OfflineScenarios {
    static let openssl = """
    {"schema_version": "1.6.0", "id": "DSA-5678-1", "modified": "2024-06-01T00:00:00Z", "aliases": ["CVE-2024-5678"],
     "summary": "openssl - security update", "database_specific": {"severity": "high"},
     "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "\(RollbackFixtures.fixedIn)"}]}]}]}
    """

    @Test func s3RollbackReopensAFixedHole() throws {
        let s = try Scenario("S3", "Lifecycle: a rollback silently re-opens a patched hole",
                             section: "§2, Software Lifecycle",
                             problem: "Rolling a VM back to a snapshot undoes everything since, including the security patches. The hole that was closed is open again, and nothing says so.")
        defer { s.cleanUp() }
        let W = s.dir
        let (disk, _) = try RollbackFixtures.impactDisk()
        s.note("The guest's disk (ext4 made by mkfs.ext4 -d, in qcow2): its internal snapshot `old` was taken before the patch, with openssl \(RollbackFixtures.oldSSL); the current disk has openssl \(RollbackFixtures.newSSL). DSA-5678-1 (CVE-2024-5678, high) is fixed in \(RollbackFixtures.fixedIn).")
        try FileManager.default.copyItem(atPath: disk, toPath: W + "/plain.qcow2")
        try FileManager.default.copyItem(atPath: disk, toPath: W + "/guest.qcow2")
        try s.file(W + "/DSA-5678-1.json", Self.openssl, show: false)

        try s.arm(.without, "The administrator rolls back with qemu-img, then looks at the packages with plain tools.") {
            let apply = try s.run(["qemu-img", "snapshot", "-a", "old", "\(W)/plain.qcow2"])
            let version = try s.sh("""
            qemu-img convert -O raw $W/plain.qcow2 $W/plain.raw
            debugfs -R 'cat /var/lib/dpkg/status' $W/plain.raw 2>/dev/null > $W/status
            grep -A4 '^Package: openssl' $W/status | grep '^Version'
            dpkg --compare-versions "$(grep -A4 '^Package: openssl' $W/status | sed -n 's/^Version: //p')" lt \(RollbackFixtures.fixedIn) && echo "older than the fix \(RollbackFixtures.fixedIn)"
            """)
            try #require(apply.stdoutText.isEmpty && apply.stderr.isEmpty)
            try #require(version.stdoutText.contains("Version: \(RollbackFixtures.oldSSL)") && version.stdoutText.contains("older than the fix"))
            s.outcome("`qemu-img snapshot -a` succeeds without a word; afterwards the guest has openssl \(RollbackFixtures.oldSSL) again, older than the fix for DSA-5678-1.")
        }

        try s.arm(.with, "The same rollback through Warden: an impact report, and policy on the report.") {
            try s.warden(["vm", "register", "--name", "app", "--owner", "ops", "\(W)/guest.qcow2"], show: 0)
            try s.warden(["advisories", "import", "\(W)/DSA-5678-1.json"], show: 2)
            try s.warden(["scan", "\(W)/guest.qcow2"], check: false, show: 4)
            try s.file(W + "/policy/rollback.yaml", """
            apiVersion: warden/v1
            kind: Policy
            rules:
              - name: rollback-must-not-reexpose
                on: [rollback]
                deny: { reexposes: { severity: high } }
            """)
            let report = try s.warden(["vm", "rollback", "app", "old", "--dry-run"], show: 16)
            let denied = try s.warden(["vm", "rollback", "app", "old"], check: false)
            let history = try s.warden(["vm", "history", "app"], show: 0)
            try #require(report.stdoutText.contains("vulnerability DSA-5678-1 [CVE-2024-5678] (high) in openssl \(RollbackFixtures.oldSSL)"))
            try #require(denied.status == 3 && denied.stderr.contains("rollback-must-not-reexpose") && denied.stderr.contains("DSA-5678-1"))
            try #require(!history.stdoutText.contains("rolled-back") && history.stdoutText.contains("policy-decision"))
            s.evidence(["the dry run names DSA-5678-1 [CVE-2024-5678] (high) in openssl \(RollbackFixtures.oldSSL) (now \(RollbackFixtures.newSSL)), plus the re-enabled account and the old SSH host key",
                        "the rollback exits 3 naming the rule and the advisory; the denial is a `policy-decision` in the VM's history, and no `rolled-back` event exists"])
            s.outcome("The rollback's impact report names the re-opened CVE, and policy denies the rollback; the disk is untouched and the decision is recorded.")
        }
        try s.finish()
    }

    @Test func s8CarriedAway() throws {
        let s = try Scenario("S8", "Mobility: an image leaves on a removable medium",
                             section: "§2, Mobility",
                             problem: "A VM is a file: it can be copied onto a USB stick and booted on any machine, with all its data, outside every control of the place it came from.")
        defer { s.cleanUp() }
        let W = s.dir
        try FleetScenarios.guest(s, at: W + "/db.raw", os: FleetScenarios.debian12, tree: W + "/tree")
        try Tool.sh("""
        printf 'postgres://billing:Sup3rS3cret@db/billing\\n' > '\(W)/secret'
        debugfs -w -R "write \(W)/secret /etc/db-credentials" '\(W)/db.raw' 2>/dev/null
        qemu-img convert -f raw -O qcow2 '\(W)/db.raw' '\(W)/db.qcow2'
        cp '\(W)/db.qcow2' '\(W)/plain.qcow2'
        mkdir -p '\(W)/media/usb' '\(W)/vms'
        """)
        s.note("This machine has no removable device to plug in (no USB, no scsi_debug in its kernel), so the stick is the folder `$W/media/usb`; the policy below names the allowed storage roots, which catches it as surely as the removable flag would on a real stick (the rule carries both).")

        try s.arm(.without, "Someone copies the VM's disk to the stick and reads it on another machine.") {
            try s.run(["cp", "\(W)/plain.qcow2", "\(W)/media/usb/db.qcow2"])
            let read = try s.sh("""
            qemu-img convert -O raw $W/media/usb/db.qcow2 $W/elsewhere.raw
            debugfs -R 'cat /etc/db-credentials' $W/elsewhere.raw 2>/dev/null
            """)
            try #require(read.stdoutText.contains("Sup3rS3cret"))
            s.outcome("The copy works and the database credentials inside the guest are read on the other machine.")
        }

        try s.arm(.with, "Policy decides copies; an encrypted VM copied by hand is ciphertext without a key Warden releases.") {
            try s.warden(["vm", "register", "--name", "db", "--owner", "billing", "\(W)/db.qcow2"], show: 0)
            try s.file(W + "/policy/copies.yaml", """
            apiVersion: warden/v1
            kind: Policy
            rules:
              - name: never-removable
                on: [copy, clone]
                deny: { destination: { removable: true } }
              - name: copies-stay-in-vm-storage
                on: [copy, clone]
                require: { destination: { roots: [\(W)/vms] } }
                otherwise: deny
            """.replacingOccurrences(of: W, with: W))
            let denied = try s.warden(["vm", "copy", "db", "\(W)/media/usb/wd"], check: false)
            let allowed = try s.warden(["vm", "copy", "db", "\(W)/vms", "--name", "db-standby"], show: 2)
            try #require(denied.status == 3 && denied.stderr.contains("copies-stay-in-vm-storage"), "\(denied.stderr)")
            try #require(!FileManager.default.fileExists(atPath: W + "/media/usb/wd") || (try FileManager.default.contentsOfDirectory(atPath: W + "/media/usb/wd")).isEmpty)
            try #require(allowed.status == 0)
            // cp needs no permission from Warden: the defence is that the file is ciphertext.
            try s.warden(["vm", "encrypt", "db"], show: 2)
            try s.run(["cp", "\(W)/db.qcow2", "\(W)/media/usb/db-by-hand.qcow2"])
            let attempt = try s.sh("""
            qemu-img info $W/media/usb/db-by-hand.qcow2 | grep -i encrypt
            grep -a -c Sup3rS3cret $W/media/usb/db-by-hand.qcow2 || echo "secret not found in the copy"
            qemu-img convert -O raw $W/media/usb/db-by-hand.qcow2 $W/stolen.raw
            """, check: false)
            try #require(attempt.status != 0 && attempt.stdoutText.contains("secret not found in the copy"))
            try #require(!FileManager.default.fileExists(atPath: W + "/stolen.raw"))
            s.evidence(["`vm copy` to the stick: exit \(denied.status), rule copies-stay-in-vm-storage; nothing written there",
                        "`vm copy` into $W/vms: allowed and recorded",
                        "after `vm encrypt`, a `cp` to the stick gives a LUKS-encrypted qcow2: the secret's bytes are not in it, and qemu-img cannot open it without the key (which stays in Warden's vault, released only by an `unlock` decision)"])
            s.outcome("The copy to the stick is denied and nothing is written; the copy into VM storage is allowed. A copy made by hand of the encrypted VM is useless: the credentials are not in it and no tool opens it without a key Warden releases.")
        }
        try s.finish()
    }
}
