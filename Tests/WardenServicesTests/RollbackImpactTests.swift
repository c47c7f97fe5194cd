import Testing
import Foundation
import Advisories
import WardenServices
import Hypervisor
import Inspection
import WardenCore
import WardenTestSupport

enum ImpactFixture {
    static let oldSSL = RollbackFixtures.oldSSL, newSSL = RollbackFixtures.newSSL, fixedIn = RollbackFixtures.fixedIn
    static func build() throws -> (disk: String, oldHostKey: String) { try RollbackFixtures.impactDisk() }

    /// An advisory: openssl before `fixedIn` is vulnerable (DSA-5678-1, high).
    static func lookup(_ inv: Inventory) throws -> [RollbackImpact.Vulnerability]? {
        (inv.packages.value ?? []).flatMap(\.packages).compactMap { p in
            guard p.name == "openssl", (try? VersionScheme.deb.compare(p.version, fixedIn)) == .less else { return nil }
            return RollbackImpact.Vulnerability(id: "DSA-5678-1", severity: .high, package: "openssl")
        }
    }
}

@Suite struct RollbackImpactTests {
    @Test func listsWhatTheSnapshotBringsBack() throws {
        let (disk, oldKey) = try ImpactFixture.build()
        let r = try RollbackImpact.compute(disk: disk, snapshot: "old", vulnerabilities: ImpactFixture.lookup)
        #expect(r.advisoriesChecked)
        #expect(r.reexposedVulnerabilities == [.init(id: "DSA-5678-1", severity: .high, package: "openssl",
                                                     versionThen: ImpactFixture.oldSSL, versionNow: ImpactFixture.newSSL)])
        #expect(r.downgradedPackages.map(\.name) == ["openssl"])
        #expect(r.accounts.contains { $0.name == "alice" && $0.change == "re-enabled" })
        #expect(r.accounts.contains { $0.name == "bob" && $0.change == "password-changes-back" })
        #expect(!r.accounts.contains { $0.name == "root" })
        #expect(r.sshHostKeys.map(\.fingerprint) == [oldKey])
        #expect(r.sshdWeaker == [.init(setting: "PermitRootLogin", now: "no", then: "yes")])
        // Hashes are compared, never shown.
        let text = r.lines.joined(separator: "\n") + (String(data: try JSONEncoder().encode(r), encoding: .utf8) ?? "")
        #expect(!text.contains("oldhash") && !text.contains("newhash") && !text.contains("aaaaaaaa"))
    }

    @Test func snapshotListAndUnknownSnapshot() throws {
        let (disk, _) = try ImpactFixture.build()
        // qemu-img's view of the snapshot list is the oracle for the name.
        #expect(try QEMUImg.snapshots(disk).map(\.name) == ["old"])
        #expect(throws: WardenError.self) { try RollbackImpact.compute(disk: disk, snapshot: "missing") }
    }
}
