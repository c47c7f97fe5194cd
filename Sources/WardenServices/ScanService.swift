import Advisories
import DiskImage
import Foundation
import Inspection
import Ledger
import WardenCore
import GuestFS
import Storage
import AdvisoryStorage

/// `scan`: inspect each image, store its inventory under its content identity, match it
/// against the advisory store, save the assessment and record a `scanned` event on every
/// ledger VM that has the disk. The CLI renders the outcome; the server will do the same.
public struct ScanService {
    public let database: WardenDatabase
    public init(database: WardenDatabase) { self.database = database }

    /// One image's result (JSON shape: docs/advisories.md, `warden.scan/v1`).
    public struct ImageResult: Encodable, Sendable {
        public var image: String
        public var inventory: String
        public var osId: String?
        public var versionId: String?
        public var ecosystems: [String]
        public var packages: Int
        public var summary: [String: Int]
        public var vulnerable: Int
        public var findings: [Finding]
        public var problem: String?
        /// Ledger VMs with this disk; each got a `scanned` event.
        public var vms: [AffectedVM] = []
        /// Parts of the disk that were not read: findings cannot cover them.
        public var unscanned: [UnscannedPart] = []
        /// The release's support dates (or why unknown).
        public var releaseSupport: Fact<ReleaseSupport>?
        /// The kernel that will boot (or why unknown).
        public var bootingKernel: Fact<BootKernel>?
        /// Vulnerable findings in kernel packages, and whether each touches the booting kernel.
        public var kernelFindings: [KernelFinding] = []
    }

    public struct KernelFinding: Codable, Sendable, Equatable {
        public var package: String
        public var advisory: String
        public var affects: KernelPackage.Affects
    }

    public struct Outcome: Sendable {
        public var results: [ImageResult] = []
        /// Images that could not be read at all (each names its file).
        public var failures: [WardenError] = []
        /// Images read but not assessable (one line each: no feed, no advisories, unreadable packages).
        public var unassessable: [String] = []
        /// What the results do not cover, one line each: unscanned parts, ended releases.
        public var coverage: [String] = []
        /// Whether some image has parts that were not read.
        public var hasUnscanned: Bool { results.contains { !$0.unscanned.isEmpty } }

        /// Whether a vulnerable finding at or above `threshold` was found.
        public func meets(_ threshold: Severity) -> Bool {
            results.contains { $0.findings.contains { $0.status == .vulnerable && $0.severity >= threshold } }
        }
    }

    /// Vulnerable findings by severity word, every severity present.
    public static func summary(_ findings: [Finding]) -> [String: Int] {
        var s: [String: Int] = [:]
        for sev in Severity.allCases { s[sev.description] = 0 }
        for f in findings where f.status == .vulnerable { s[f.severity.description, default: 0] += 1 }
        return s
    }

    /// Opens, fingerprints and inspects one image (nil inventory: a Windows guest).
    public static func inspect(_ path: String, format: ImageFormat?, passphrase: SecretBytes? = nil) throws -> (Digest, Inventory?) {
        let img: OpenedImage
        do { img = try ImageOpener.open(path, options: OpenOptions(format: format, passphrase: passphrase)) } catch let e as WardenError {
            throw e.inFile(path)
        }
        let key: Digest
        do { key = try ContentFingerprint.of(img.device) } catch let e as WardenError { throw e.inFile(path) }
        do {
            return (key, try OpenedGuest(image: img, path: path).inventory())
        } catch is OpenedGuest.WindowsGuest {
            return (key, nil)
        }
    }

    /// `passphrase(path)` gives the key of an encrypted image (nil: none); it may decide and
    /// record a policy `unlock` first, and throw to refuse.
    /// `progress(done, total)` is told after each image.
    public func scan(images: [String], format: ImageFormat? = nil, includeResolved: Bool = false,
                     passphrase: (String) throws -> SecretBytes? = { _ in nil },
                     progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> Outcome {
        let store = SQLiteAdvisoryStore(database)
        let ledger = SQLiteLedger(database: database)
        var out = Outcome()
        var indexes: [String: AdvisoryIndex] = [:]
        // Images are opened, fingerprinted and inspected on every core, a batch at a time;
        // storing, matching and recording stay in order on this thread (one writer).
        let workers = max(1, ProcessInfo.processInfo.activeProcessorCount)
        /// Inspects `batch` on every core; results in the batch's order.
        func inspectAll(_ batch: [String]) -> [Result<(Digest, Inventory?), WardenError>] {
            // Passphrases first, here: releasing one may decide and record policy.
            let keys: [Result<SecretBytes?, WardenError>] = batch.map { path in
                do { return .success(try passphrase(path)) } catch let e as WardenError { return .failure(e.inFile(path)) } catch {
                    return .failure(WardenError(.internal, "\(error)", file: path))
                }
            }
            let results = Locked<[Result<(Digest, Inventory?), WardenError>]>(batch.map { .failure(WardenError(.internal, "the image was not inspected", file: $0)) })
            DispatchQueue.concurrentPerform(iterations: batch.count) { i in
                let r: Result<(Digest, Inventory?), WardenError>
                switch keys[i] {
                case .failure(let e): r = .failure(e)
                case .success(let key):
                    do { r = .success(try Self.inspect(batch[i], format: format, passphrase: key)) } catch let e as WardenError {
                        r = .failure(e.inFile(batch[i]))
                    } catch {
                        r = .failure(WardenError(.internal, "\(error)", file: batch[i]))
                    }
                }
                results.withLock { $0[i] = r }
            }
            return results.withLock { $0 }
        }
        var finished = 0
        for start in stride(from: 0, to: images.count, by: workers * 4) {
            let batch = Array(images[start..<min(images.count, start + workers * 4)])
            for (path, done) in zip(batch, inspectAll(batch)) {
                defer { finished += 1; progress?(finished, images.count) }
                do {
                    let (key, inventory) = try done.get()
                    guard let inv = inventory else {
                        out.unassessable.append("\(path): a Windows guest: Windows advisories are not matched (docs/advisories.md); `warden inspect` reports its build and KB updates")
                        out.results.append(ImageResult(image: path, inventory: key.description, osId: "windows", ecosystems: [], packages: 0,
                                                       summary: Self.summary([]), vulnerable: 0, findings: [], problem: "windows guest: advisories not matched"))
                        continue
                    }
                    let packages = Matcher.packages(of: inv)
                    let osID = inv.os.id.value, versionID = inv.os.versionId.value
                    try store.storeInventory(key: key, image: path, osID: osID, versionID: versionID, packages: packages)
                    var r = ImageResult(image: path, inventory: key.description, osId: osID, versionId: versionID, ecosystems: [],
                                        packages: packages.count, summary: Self.summary([]), vulnerable: 0, findings: [],
                                        unscanned: inv.unscanned ?? [], releaseSupport: inv.releaseSupport)
                    for u in r.unscanned { out.coverage.append("\(path): \(u.part) was not scanned: \(u.reason)") }
                    if case .known(let support)? = inv.releaseSupport, support.ended {
                        out.coverage.append("\(path): \(support.release) is past its end of support (\(support.endOfLongTermSupport ?? support.endOfLife ?? "?")): findings after that date are not published for it")
                    }
                    if let reason = inv.packages.unknownReason {
                        r.problem = "packages unknown: \(reason)"
                        out.unassessable.append("\(path): package databases could not be read: \(reason)")
                    }
                    guard let eco = GuestEcosystem.from(osID: osID ?? "", versionID: versionID) else {
                        r.problem = "no advisory ecosystem for os \(osID ?? "unknown") \(versionID ?? "")"
                        out.unassessable.append("\(path): no advisory feed covers os-release ID \(osID ?? "unknown") VERSION_ID \(versionID ?? "unknown")")
                        out.results.append(r)
                        continue
                    }
                    r.ecosystems = eco.names
                    let cacheKey = eco.names.joined(separator: "\u{1F}")
                    let index = try indexes[cacheKey] ?? store.loadIndex(ecosystems: Set(eco.names))
                    indexes[cacheKey] = index
                    if index.entryCount == 0 {
                        r.problem = "no advisories imported for \(eco.names.joined(separator: ", "))"
                        out.unassessable.append("\(path): no advisories imported for \(eco.names.joined(separator: " or ")); run warden advisories import or update")
                    }
                    let findings = Matcher(index: index, includeResolved: includeResolved).findings(packages: packages, ecosystem: eco)
                    try store.saveAssessment(key, findings: findings)
                    r.vms = try store.recordScan(ledger: ledger, image: path, key: key, findings: findings)
                    r.findings = findings
                    r.bootingKernel = inv.kernels.value?.booting
                    if let booting = inv.kernels.value?.booting?.value?.release {
                        r.kernelFindings = findings.filter { $0.status == .vulnerable }.compactMap { f in
                            KernelPackage.affects(package: f.package, installedVersion: f.installedVersion, booting: booting)
                                .map { KernelFinding(package: f.package, advisory: f.advisory, affects: $0) }
                        }
                    }
                    r.summary = Self.summary(findings)
                    r.vulnerable = findings.filter { $0.status == .vulnerable }.count
                    out.results.append(r)
                } catch let e as WardenError {
                    out.failures.append(e.inFile(path))
                }
            }
        }
        return out
    }
}
