import Foundation
import Testing
import WardenTestSupport
@testable import Ledger
import Advisories
import WardenCore
import Storage
@testable import AdvisoryStorage
import StoreTestSupport

/// The advisory store suite, over every backend (SQLite, and PostgreSQL on a private server).
@Suite struct AdvisoryStoreTests {
    func withStore<T>(_ backend: StoreBackend, _ body: (any AdvisoryStore) throws -> T) throws -> T {
        try backend.with { try body($0.advisories) }
    }

    func record(_ id: String, modified: TimeInterval?, fixed: String, package: String = "openssl", eco: String = "Debian:12",
                withdrawn: Bool = false) -> AdvisoryRecord {
        AdvisoryRecord(id: id, source: "osv", modified: modified.map { Date(timeIntervalSince1970: $0) },
                       withdrawn: withdrawn ? Date(timeIntervalSince1970: 1) : nil, aliases: ["CVE-\(id)"], severity: .high,
                       affected: [AffectedPackage(ecosystem: eco, package: package, ranges: [[.introduced("0"), .fixed(fixed)]])])
    }

    @Test(arguments: StoreBackend.all) func importIsIdempotentAndNewerReplacesOlder(_ backend: StoreBackend) throws {
        try withStore(backend) { store in
            let a = record("A", modified: 100, fixed: "1.0-2")
            var c = try store.importRecords([a, record("B", modified: 100, fixed: "2.0-1", package: "zlib")], file: "f")
            #expect(c.added == 2 && c.seen == 2)
            c = try store.importRecords([a], file: "f")
            #expect(c.unchanged == 1 && c.added == 0)
            #expect(try store.advisoryCount() == 2)
            // Newer replaces, older is ignored.
            c = try store.importRecords([record("A", modified: 200, fixed: "1.0-3")], file: "f")
            #expect(c.replaced == 1)
            c = try store.importRecords([record("A", modified: 150, fixed: "1.0-9")], file: "f")
            #expect(c.older == 1)
            let idx = try store.loadIndex(ecosystems: ["Debian:12"])
            let f = Matcher(index: idx).findings(packages: [MatchPackage(name: "libssl3", version: "1.0-2", sourceName: "openssl", sourceVersion: "1.0-2")],
                                                 ecosystem: GuestEcosystem.from(osID: "debian", versionID: "12")!)
            #expect(f.map { "\($0.advisory) \($0.fixedVersion ?? "-")" } == ["A 1.0-3"])
            #expect(try store.loadIndex().entryCount == 2, "replaced affected rows are deleted, not duplicated")
        }
    }

    @Test(arguments: StoreBackend.all) func withdrawnAndOtherEcosystemsAreNotLoaded(_ backend: StoreBackend) throws {
        try withStore(backend) { store in
            _ = try store.importRecords([record("W", modified: 1, fixed: "9-1", withdrawn: true),
                                         record("X", modified: 1, fixed: "9-1", eco: "Debian:11"),
                                         record("Y", modified: 1, fixed: "9-1", eco: "Red Hat:enterprise_linux:9::baseos")], file: "f")
            #expect(try store.loadIndex(ecosystems: ["Debian:12"]).entryCount == 0)
            #expect(try store.loadIndex(ecosystems: ["Debian:11"]).entryCount == 1)
            #expect(try store.loadIndex(ecosystems: ["Red Hat:9"]).ecosystems == ["Red Hat:9"])
            #expect(try store.loadIndex().entryCount == 2)
        }
    }

    @Test(arguments: StoreBackend.all) func controlCharactersInFeedsAreRefused(_ backend: StoreBackend) throws {
        try withStore(backend) { store in
            #expect(throws: WardenError.self) {
                _ = try store.importRecords([record("A", modified: 1, fixed: "1\u{1F}2")], file: "f")
            }
        }
    }

    @Test(arguments: StoreBackend.all) func inventoriesRoundTripWithHostileNames(_ backend: StoreBackend) throws {
        try withStore(backend) { store in
            let key = Digest(algorithm: "sha256", hex: String(repeating: "ab", count: 32))
            let pk = [MatchPackage(name: "a\tb", version: "1\\2", sourceName: "src\nx", sourceVersion: "1\\2"),
                      MatchPackage(name: "plain", version: "1.0-1", sourceName: "plain", sourceVersion: "1.0-1")]
            try store.storeInventory(key: key, image: "/img/a.qcow2", osID: "debian", versionID: "12", packages: pk)
            let back = try #require(try store.inventory(key))
            #expect(back.packages == pk)
            #expect(back.ecosystem?.names == ["Debian:12"])
            #expect(try store.imagesByInventory()[key.description] == ["/img/a.qcow2"])
        }
    }

    /// A scan between an import and the rescan never takes the import's change away from the
    /// rescan's report: package versions it shares with other inventories keep their findings,
    /// and its assessment is dated before the import until the rescan.
    @Test(arguments: StoreBackend.all) func scanBeforeRescanLeavesTheChangeToTheRescan(_ backend: StoreBackend) throws {
        try withStore(backend) { store in
            let debian = GuestEcosystem.from(osID: "debian", versionID: "12")!
            let ssl = MatchPackage(name: "libssl3", version: "3.0.1-1", sourceName: "openssl", sourceVersion: "3.0.1-1")
            let zlib = MatchPackage(name: "zlib1g", version: "1.2-1", sourceName: "zlib", sourceVersion: "1.2-1")
            let curl = MatchPackage(name: "curl", version: "7.0-1", sourceName: "curl", sourceVersion: "7.0-1")
            let a = Digest(algorithm: "sha256", hex: String(repeating: "a1", count: 32))
            let b = Digest(algorithm: "sha256", hex: String(repeating: "b2", count: 32))
            _ = try store.importRecords([record("Z", modified: 1, fixed: "1.3-1", package: "zlib")], at: Date(timeIntervalSince1970: 1_000), file: "f")
            try store.storeInventory(key: a, image: "/img/a.qcow2", osID: "debian", versionID: "12", packages: [ssl, zlib], at: Date(timeIntervalSince1970: 1_100))
            var r = try store.rescan(at: Date(timeIntervalSince1970: 2_000))
            #expect(r.changed.map(\.inventory) == [a.description] && r.newFindings == 1)
            #expect(try store.inventoriesTouched(by: [record("S", modified: 1, fixed: "3.0.2-1")]) == [a.description])
            #expect(try store.inventoriesTouched(by: [record("C", modified: 1, fixed: "8-1", package: "curl")]).isEmpty)

            // An openssl advisory arrives; before any rescan, a scan stores inventory b (openssl
            // shared with a, curl new) and records what it matched live.
            _ = try store.importRecords([record("S", modified: 1, fixed: "3.0.2-1")], at: Date(timeIntervalSince1970: 3_000), file: "f")
            try store.storeInventory(key: b, image: "/img/b.qcow2", osID: "debian", versionID: "12", packages: [ssl, curl], at: Date(timeIntervalSince1970: 3_100))
            let live = Matcher(index: try store.loadIndex(ecosystems: ["Debian:12"])).findings(packages: [ssl, curl], ecosystem: debian)
            #expect(live.map(\.advisory) == ["S"])
            try store.saveAssessment(b, findings: live, at: Date(timeIntervalSince1970: 3_200))
            let dated = try #require(try store.lastAssessmentTime(of: b))
            #expect(dated < Date(timeIntervalSince1970: 3_000), "dated before the import it has not taken in")

            // The rescan reports the new openssl finding for a (and b's first assessment).
            r = try store.rescan(at: Date(timeIntervalSince1970: 4_000))
            #expect(r.advisoryChanges == 1)
            let forA = try #require(r.changed.first { $0.inventory == a.description })
            #expect(forA.newFindings.map(\.advisory) == ["S"] && forA.vulnerable == 2 && !forA.firstAssessment)
            #expect(try store.latestFindings(for: b).map(\.advisory) == ["S"])
            #expect(try store.lastAssessmentTime(of: b) == Date(timeIntervalSince1970: 4_000))
            #expect(r.vulnerable == 3)
            // Nothing new: nothing matched, nothing changed.
            r = try store.rescan(at: Date(timeIntervalSince1970: 5_000))
            #expect(r.packageVersions == 0 && r.changed.isEmpty && r.vulnerable == 3)
        }
    }

    /// Every inventory's stored count is the number of its stored findings.
    func expectCountsMatchFindings(_ store: any AdvisoryStore, _ keys: [Digest], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let counts = try store.assessedVulnerable(keys.map(\.description))
        var total = 0
        for k in keys {
            let n = try #require(try store.storedFindings(of: k)).count
            total += n
            #expect(counts[k.description] == n, "\(k.description.prefix(14))", sourceLocation: sourceLocation)
        }
        #expect(try store.totalVulnerable() == total, sourceLocation: sourceLocation)
    }

    @Test(arguments: StoreBackend.all) func aRescanOrScanSavedMidwayThroughARescanIsCountedOnce(_ backend: StoreBackend) throws {
        try backend.with { ledger, connect in
            let store = ledger.advisories
            let other = try connect().advisories
            let debian = GuestEcosystem.from(osID: "debian", versionID: "12")!
            let ssl = MatchPackage(name: "libssl3", version: "3.0.1-1", sourceName: "openssl", sourceVersion: "3.0.1-1")
            let zlib = MatchPackage(name: "zlib1g", version: "1.2-1", sourceName: "zlib", sourceVersion: "1.2-1")
            let curl = MatchPackage(name: "curl", version: "7.0-1", sourceName: "curl", sourceVersion: "7.0-1")
            let tar = MatchPackage(name: "tar", version: "1.34-1", sourceName: "tar", sourceVersion: "1.34-1")
            let a = Digest(algorithm: "sha256", hex: String(repeating: "a1", count: 32))
            let b = Digest(algorithm: "sha256", hex: String(repeating: "b2", count: 32))
            let c = Digest(algorithm: "sha256", hex: String(repeating: "c3", count: 32))
            _ = try store.importRecords([record("Z", modified: 1, fixed: "1.3-1", package: "zlib")], at: Date(timeIntervalSince1970: 1_000), file: "f")
            try store.storeInventory(key: a, image: "/img/a.qcow2", osID: "debian", versionID: "12", packages: [ssl, zlib], at: Date(timeIntervalSince1970: 1_100))
            try store.storeInventory(key: b, image: "/img/b.qcow2", osID: "debian", versionID: "12", packages: [ssl, curl], at: Date(timeIntervalSince1970: 1_100))
            _ = try store.rescan(at: Date(timeIntervalSince1970: 2_000))
            try expectCountsMatchFindings(store, [a, b])

            // openssl and curl advisories; a rescan has matched them and is about to save when
            // another connection rescans and saves, and a scan of c (openssl shared, tar new) saves.
            _ = try store.importRecords([record("S", modified: 1, fixed: "3.0.2-1"), record("C", modified: 1, fixed: "8-1", package: "curl")],
                                        at: Date(timeIntervalSince1970: 3_000), file: "f")
            var interleaved = false, attempts = 0
            let r = try store.rescan(at: Date(timeIntervalSince1970: 4_000)) { step in
                if step == "select package versions" { attempts += 1 }
                guard step == "compare", !interleaved else { return }
                interleaved = true
                #expect(throws: Never.self) {
                    _ = try other.rescan(at: Date(timeIntervalSince1970: 3_500))
                    try other.storeInventory(key: c, image: "/img/c.qcow2", osID: "debian", versionID: "12", packages: [ssl, tar],
                                             at: Date(timeIntervalSince1970: 3_600))
                    let live = Matcher(index: try other.loadIndex(ecosystems: ["Debian:12"])).findings(packages: [ssl, tar], ecosystem: debian)
                    try other.saveAssessment(c, findings: live, at: Date(timeIntervalSince1970: 3_700))
                }
            }
            #expect(interleaved && attempts == 2, "the first attempt's save was refused and it computed again")
            #expect(r.changed.isEmpty, "the other rescan stored (and reported) the change")
            try expectCountsMatchFindings(store, [a, b, c])
            #expect(try store.assessedVulnerable([a, b, c].map(\.description)) == [a.description: 2, b.description: 2, c.description: 1])

            // Many connections rescanning at once after an import: each change is counted once.
            _ = try store.importRecords([record("S", modified: 2, fixed: "3.0.1-1"), record("T", modified: 1, fixed: "1.35-1", package: "tar"),
                                         record("Z2", modified: 1, fixed: "1.4-1", package: "zlib")], at: Date(timeIntervalSince1970: 5_000), file: "f")
            let stores = try (0..<4).map { _ in try connect().advisories }
            let failures = Locked<[String]>([])
            DispatchQueue.concurrentPerform(iterations: stores.count) { i in
                do { _ = try stores[i].rescan() } catch { failures.withLock { $0.append("\(error)") } }
            }
            #expect(failures.withLock { $0 }.isEmpty)
            try expectCountsMatchFindings(store, [a, b, c])
            #expect(try store.assessedVulnerable([a, b, c].map(\.description)) == [a.description: 2, b.description: 1, c.description: 1])
        }
    }

    @Test(arguments: StoreBackend.all) func rescanReportsNewAndGoneFindingsAndStoresAssessments(_ backend: StoreBackend) throws {
        try withStore(backend) { store in
            let key = Digest(algorithm: "sha256", hex: String(repeating: "cd", count: 32))
            try store.storeInventory(key: key, image: "/img/b.qcow2", osID: "debian", versionID: "12",
                                     packages: [MatchPackage(name: "libssl3", version: "1.0-1", sourceName: "openssl", sourceVersion: "1.0-1"),
                                                MatchPackage(name: "tar", version: "1.34-1", sourceName: "tar", sourceVersion: "1.34-1")])
            let unassessable = Digest(algorithm: "sha256", hex: String(repeating: "ef", count: 32))
            try store.storeInventory(key: unassessable, image: "/img/win.qcow2", osID: nil, versionID: nil, packages: [])
            let t0 = Date(timeIntervalSince1970: 1_000)
            _ = try store.importRecords([record("A", modified: 1, fixed: "1.0-2")], at: t0, file: "f")
            var r = try store.rescan(at: Date(timeIntervalSince1970: 2_000))
            #expect(r.changed.count == 1 && r.newFindings == 1 && r.changed.first?.firstAssessment == true)
            #expect(r.changed.first?.images == ["/img/b.qcow2"])
            #expect(r.unassessable == [unassessable.description])
            r = try store.rescan()
            #expect(r.changed.isEmpty && r.newFindings == 0 && r.vulnerable == 1)
            // A new advisory for tar, and A now fixed below the installed version.
            let t1 = Date(timeIntervalSince1970: 3_000)
            _ = try store.importRecords([record("T", modified: 1, fixed: "1.35-1", package: "tar"),
                                         record("A", modified: 2, fixed: "0.9-1")], at: t1, file: "f")
            r = try store.rescan(at: Date(timeIntervalSince1970: 4_000))
            #expect(r.changed.count == 1)
            let c = try #require(r.changed.first)
            #expect(c.newFindings.map(\.advisory) == ["T"] && c.goneFindings.map(\.advisory) == ["A"])
            #expect(c.newFindings.first?.aliases == ["CVE-T"])
            #expect(c.firstAssessment == false)
            // The module API the policy engine uses.
            #expect(try store.latestFindings(for: key).map(\.advisory) == ["T"])
            #expect(try store.latestFindings(for: key).first?.aliases == ["CVE-T"])
            #expect(try store.lastAssessmentTime(of: key) == Date(timeIntervalSince1970: 4_000))
            #expect(try store.advisoriesImported(after: Date(timeIntervalSince1970: 2_500)).map(\.id) == ["A", "T"])
            #expect(try store.advisoriesImported(after: t1).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.all) func rescanNamesLedgerVMsAndScanAppendsScannedEvents(_ backend: StoreBackend) throws {
        try backend.with { ledger in
            let store = ledger.advisories
            let key = Digest(algorithm: "sha256", hex: String(repeating: "12", count: 32))
            let (byPrint, _) = try ledger.createVM(VMRecord(name: "web1", owner: "ops"),
                                                   disks: [DiskRecord(vm: VMID(), index: 0, path: "/elsewhere/web1.qcow2", format: "qcow2", fingerprint: key)],
                                                   event: NewEvent(kind: .registered, vm: nil))
            let (byPath, _) = try ledger.createVM(VMRecord(name: "db1", owner: "ops"),
                                                  disks: [DiskRecord(vm: VMID(), index: 0, path: "/img/db1.qcow2", format: "qcow2")],
                                                  event: NewEvent(kind: .registered, vm: nil))
            try store.storeInventory(key: key, image: "/img/db1.qcow2", osID: "debian", versionID: "12",
                                     packages: [MatchPackage(name: "tar", version: "1.0-1", sourceName: "tar", sourceVersion: "1.0-1")])
            _ = try store.importRecords([record("T", modified: 1, fixed: "1.1-1", package: "tar")], file: "f")
            let r = try store.rescan()
            #expect(Set(r.changed.first?.vms.map(\.name) ?? []) == ["web1", "db1"])
            let findings = try store.latestFindings(for: key)
            let vms = try store.recordScan(ledger: ledger, image: "/img/db1.qcow2", key: key, findings: findings)
            #expect(vms.count == 2)
            #expect(try ledger.lastScan(of: byPrint.id) != nil)
            #expect(try ledger.lastScan(of: byPath.id) != nil)
            let ev = try #require(try ledger.events(of: byPath.id).last)
            #expect(ev.kind == .scanned && ev.payload["vulnerable"] == .number(1) && ev.payload["max_severity"] == .string("high"))
        }
    }

    @Test(arguments: StoreBackend.all) func openFindingsOfAVMsDisksFailClosedWithoutData(_ backend: StoreBackend) throws {
        try withStore(backend) { store in
            let vm = VMID()
            let boot = DiskRecord(vm: vm, index: 0, path: "/vms/a.qcow2", format: "qcow2")
            let data = DiskRecord(vm: vm, index: 1, path: "/vms/a-data.qcow2", format: "qcow2",
                                  fingerprint: WardenCore.Digest(hex: String(repeating: "cd", count: 32)))
            func message(_ disks: [DiskRecord]) -> String? {
                do { _ = try store.openFindings(disks: disks); return nil } catch let e as WardenError { return e.message } catch { return "\(error)" }
            }
            #expect(message([boot, data])?.contains("never scanned") == true)
            let ssl = MatchPackage(name: "libssl3", version: "1.0-1", sourceName: "openssl", sourceVersion: "1.0-1")
            try store.storeInventory(key: WardenCore.Digest(hex: String(repeating: "ab", count: 32)), image: boot.path,
                                     osID: "debian", versionID: "12", packages: [ssl])
            #expect(message([boot])?.contains("no advisories imported for Debian:12") == true)
            _ = try store.importRecords([record("A", modified: 1, fixed: "1.0-2"), record("B", modified: 1, fixed: "0.9-1")], file: "f")
            // The data disk, found by its fingerprint: no OS and no packages, so nothing to match.
            try store.storeInventory(key: data.fingerprint!, image: "/elsewhere/copy.qcow2", osID: nil, versionID: nil, packages: [])
            let f = try store.openFindings(disks: [boot, data])
            #expect(f.findings.map(\.advisory) == ["A"])
            #expect(f.inventories.count == 1)
            // Only the rows of these package names are read.
            #expect(try store.loadIndex(ecosystems: ["Debian:12"], packages: ["zlib"]).entryCount == 0)
            #expect(try store.loadIndex(ecosystems: ["Debian:12"], packages: ["openssl"]).entryCount == 2)
            // An inventory of an OS without a feed: unknown.
            try store.storeInventory(key: WardenCore.Digest(hex: String(repeating: "ef", count: 32)), image: "/vms/b.qcow2",
                                     osID: "plan9", versionID: "4", packages: [ssl])
            #expect(message([DiskRecord(vm: vm, index: 0, path: "/vms/b.qcow2", format: "qcow2")])?.contains("no advisory feed covers its OS") == true)
            #expect(try store.advisoryCountImported(after: Date(timeIntervalSince1970: 0)) == 2)
            #expect(try store.advisoryCountImported(after: Date().addingTimeInterval(60)) == 0)
        }
    }

    /// What agents pull: every record rebuilt byte for byte (same content hash), in pages, and
    /// a replaced record comes again after the cursor.
    @Test(arguments: StoreBackend.all) func recordsExportInPagesAndRebuildExactly(_ backend: StoreBackend) throws {
        try withStore(backend) { store in
            var a = record("A", modified: 100, fixed: "1.0-2")
            a.summary = "openssl\tissue"; a.published = Date(timeIntervalSince1970: 50); a.cvssScore = 9.8; a.cvssVector = "CVSS:3.1/AV:N"
            a.affected.append(AffectedPackage(ecosystem: "Debian:11", package: "openssl", status: .notAffected, versions: ["1.1", "1.2"], severity: .low))
            let originals = [a, record("B", modified: 100, fixed: "2.0-1", package: "zlib"), record("W", modified: 1, fixed: "9", withdrawn: true)]
            _ = try store.importRecords(originals, at: Date(timeIntervalSince1970: 1_000), file: "f")
            var got: [AdvisoryRecord] = []
            var cursor: AdvisoryCursor?
            while true {
                let page = try store.advisoryRecords(after: cursor, limit: 2)
                if page.records.isEmpty { #expect(page.next == nil); break }
                got += page.records
                cursor = page.next
                #expect(AdvisoryCursor(text: page.next!.text) == page.next)
            }
            #expect(got.count == 3)
            let hashes = Dictionary(uniqueKeysWithValues: originals.map { ($0.id, AdvisoryCoding.contentHash($0)) })
            for r in got { #expect(AdvisoryCoding.contentHash(r) == hashes[r.id], "\(r.id)") }
            // A newer A: it comes again after the cursor, alone.
            _ = try store.importRecords([record("A", modified: 200, fixed: "1.0-3")], at: Date(timeIntervalSince1970: 2_000), file: "f")
            let again = try store.advisoryRecords(after: cursor, limit: 10)
            #expect(again.records.map(\.id) == ["A"] && again.records.first?.affected.first?.ranges == [[.introduced("0"), .fixed("1.0-3")]])
            #expect(AdvisoryCursor(text: "x:1") == nil && AdvisoryCursor(text: "\(Double.nan.bitPattern):1") == nil)
        }
    }
}

