import ArgumentParser
import Foundation
import WardenCore
import DiskImage
import GuestFS
import Inspection
import Advisories
import Ledger

extension Severity: ExpressibleByArgument {
    public init?(argument: String) {
        guard let s = Severity(word: argument), [.low, .medium, .high, .critical].contains(s) else { return nil }
        self = s
    }
}

/// `warden scan IMAGE…`: inspect, store the inventory, match it against the advisories.
struct ScanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scan",
        abstract: "Find known vulnerabilities in guests offline: inspect, store the inventory, match advisories.",
        discussion: """
        Each image's inventory is stored under its content identity, so `warden fleet rescan` can \
        re-assess it later without the image. Exit codes: 0 ok; 1 when --fail-on is met (a vulnerable \
        finding at or above that severity); 2 bad input, or with --fail-on a guest that cannot be \
        assessed (unknown distro, no advisories for its release). JSON shape: docs/advisories.md.
        """
    )
    @OptionGroup var database: DatabaseOption
    @Argument(help: "Disk images (raw, qcow2 or VMDK).") var images: [String]
    @Option(help: "Force the image format: raw, qcow2 or vmdk.") var format: ImageFormat?
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Also list fixed and not-affected findings.") var all = false
    @Option(help: ArgumentHelp("Exit 1 when a vulnerable finding has at least this severity.", valueName: "low|medium|high|critical"))
    var failOn: Severity?

    func validate() throws { if images.isEmpty { throw ValidationError("name at least one image") } }

    struct ImageResult: Encodable {
        var image: String
        var inventory: String
        var osId: String?
        var versionId: String?
        var ecosystems: [String]
        var packages: Int
        var summary: [String: Int]
        var vulnerable: Int
        var findings: [Finding]
        var problem: String?
        /// Ledger VMs with this disk; each got a `scanned` event.
        var vms: [AffectedVM] = []
    }

    static func summary(_ findings: [Finding]) -> [String: Int] {
        var s: [String: Int] = [:]
        for sev in Severity.allCases { s[sev.description] = 0 }
        for f in findings where f.status == .vulnerable { s[f.severity.description, default: 0] += 1 }
        return s
    }

    /// Opens, fingerprints and inspects one image.
    static func inspect(_ path: String, format: ImageFormat?) throws -> (WardenCore.Digest, Inventory?) {
        do {
            let img = try ImageOpener.open(path, options: OpenOptions(format: format))
            let key = try ContentFingerprint.of(img.device)
            let layout = try GuestDisk.layout(of: img.device)
            do {
                let view = try GuestView.assemble(disk: img.device, layout: layout)
                return (key, Inspection.inspect(view: view, image: path))
            } catch let e as WardenError where e.code == .notFound {
                if layout.volumes.contains(where: { $0.filesystem?.type == "ntfs" }) { return (key, nil) }
                throw e
            }
        } catch let e as WardenError {
            throw e.inFile(path)
        }
    }

    func run() throws {
        let db = try database.open()
        let store = AdvisoryStore(db)
        var results: [ImageResult] = []
        var failures: [WardenError] = []
        var unassessable: [String] = []
        var indexes: [String: AdvisoryIndex] = [:]
        for path in images {
            do {
                let (key, inventory) = try Self.inspect(path, format: format)
                guard let inv = inventory else {
                    unassessable.append("\(path): Windows guests are recognised but not inspected; no advisories matched")
                    results.append(ImageResult(image: path, inventory: key.description, ecosystems: [], packages: 0,
                                               summary: Self.summary([]), vulnerable: 0, findings: [], problem: "windows guest not inspected"))
                    continue
                }
                let packages = Matcher.packages(of: inv)
                let osID = inv.os.id.value, versionID = inv.os.versionId.value
                try store.storeInventory(key: key, image: path, osID: osID, versionID: versionID, packages: packages)
                var r = ImageResult(image: path, inventory: key.description, osId: osID, versionId: versionID, ecosystems: [],
                                    packages: packages.count, summary: Self.summary([]), vulnerable: 0, findings: [])
                if let reason = inv.packages.unknownReason {
                    r.problem = "packages unknown: \(reason)"
                    unassessable.append("\(path): package databases could not be read: \(reason)")
                }
                guard let eco = GuestEcosystem.from(osID: osID ?? "", versionID: versionID) else {
                    r.problem = "no advisory ecosystem for os \(osID ?? "unknown") \(versionID ?? "")"
                    unassessable.append("\(path): no advisory feed covers os-release ID \(osID ?? "unknown") VERSION_ID \(versionID ?? "unknown")")
                    results.append(r)
                    continue
                }
                r.ecosystems = eco.names
                let cacheKey = eco.names.joined(separator: "\u{1F}")
                let index = try indexes[cacheKey] ?? store.loadIndex(ecosystems: Set(eco.names))
                indexes[cacheKey] = index
                if index.entryCount == 0 {
                    r.problem = "no advisories imported for \(eco.names.joined(separator: ", "))"
                    unassessable.append("\(path): no advisories imported for \(eco.names.joined(separator: " or ")); run warden advisories import or update")
                }
                let findings = Matcher(index: index, includeResolved: all).findings(packages: packages, ecosystem: eco)
                try store.saveAssessment(key, findings: findings)
                r.vms = try store.recordScan(ledger: SQLiteLedger(database: db), image: path, key: key, findings: findings)
                r.findings = findings
                r.summary = Self.summary(findings)
                r.vulnerable = findings.filter { $0.status == .vulnerable }.count
                results.append(r)
            } catch let e as WardenError {
                failures.append(e.inFile(path))
            }
        }
        let met = failOn.map { t in results.contains { $0.findings.contains { $0.status == .vulnerable && $0.severity >= t } } } ?? false
        if json {
            struct Doc: Encodable {
                var schema = "warden.scan/v1"
                var images: [ImageResult]
                var failOn: String?
                var failed: Bool
            }
            Output.stdout.line(try Output.json(Doc(images: results, failOn: failOn?.description, failed: met)))
        } else {
            for r in results { Self.printHuman(r) }
        }
        Output.stdout.flush()
        for u in unassessable { Output.note(u) }
        for e in failures { Output.error(e.description) }
        if !failures.isEmpty { throw ExitCode(failures.map(\.exitCode).max() ?? 2) }
        if failOn != nil && !unassessable.isEmpty {
            Output.error("--fail-on: \(unassessable.count) image(s) could not be assessed; failing closed")
            throw ExitCode(2)
        }
        if met { throw ExitCode(1) }
    }

    static func printHuman(_ r: ImageResult) {
        let out = Output.stdout
        out.line(oneLine("\(r.image): \(r.osId ?? "unknown") \(r.versionId ?? "") (\(r.ecosystems.joined(separator: ", "))), \(r.packages) packages, inventory \(r.inventory)"))
        let order: [Severity] = [.critical, .high, .medium, .low, .negligible, .unknown]
        out.line("  vulnerable: \(r.vulnerable)  " + order.map { "\($0) \(r.summary[$0.description] ?? 0)" }.joined(separator: "  "))
        guard !r.findings.isEmpty else { out.line(""); return }
        let rows = r.findings.map { f -> [String] in
            [f.status == .vulnerable ? f.severity.description : f.status.rawValue, f.package, f.installedVersion,
             f.fixedVersion ?? (f.status == .vulnerable ? "no fix yet" : "-"), f.advisory, f.aliases.prefix(3).joined(separator: ",")]
        }
        let header = ["SEVERITY", "PACKAGE", "INSTALLED", "FIXED", "ADVISORY", "ALIASES"]
        var widths = header.map(\.count)
        for row in rows { for (i, c) in row.enumerated() { widths[i] = min(max(widths[i], c.count), 40) } }
        func fmt(_ row: [String]) -> String {
            row.enumerated().map { i, c in i == row.count - 1 ? c : c.padding(toLength: max(widths[i], c.count), withPad: " ", startingAt: 0) }
                .joined(separator: "  ").replacingOccurrences(of: #"\s+$"#, with: "", options: .regularExpression)
        }
        out.line("  " + fmt(header))
        for row in rows { out.line(oneLine("  " + fmt(row))) }
        out.line("")
    }
}
