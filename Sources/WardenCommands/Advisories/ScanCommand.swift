import ArgumentParser
import Foundation
import WardenConfig
import AdvisoryStorage
import Policy
import WardenNetwork
import WardenCore
import DiskImage
import GuestFS
import Inspection
import Advisories
import Ledger
import WardenServices
import ImageStore

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
        
        Examples:
          warden scan /srv/vms/web.qcow2
          warden scan disk.qcow2 --fail-on high --json
        """
    )
    @OptionGroup var database: DatabaseOption
    @Argument(help: "Disk images (raw, qcow2, VMDK, VHD, VHDX, VDI or OVA), or registry references of KubeVirt containerDisks (host[:port]/repo[:tag], docker://… too).")
    var images: [String]
    @Option(help: "Force the image format: raw, qcow2, vmdk, vhd, vhdx, vdi or ova.") var format: ImageFormat?
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Also list fixed and not-affected findings.") var all = false
    @OptionGroup var key: KeyFromOption
    @Option(help: ArgumentHelp("Exit 1 when a vulnerable finding has at least this severity.", valueName: "low|medium|high|critical"))
    var failOn: Severity?
    @Flag(help: "Exit 2 when a part of a disk was not read (a closed encrypted volume, an unreadable filesystem, an LVM problem): a clean result would not cover it.")
    var failOnUnscanned = false
    @OptionGroup var registry: RegistryConnection

    func validate() throws { if images.isEmpty { throw ValidationError("name at least one image") } }

    typealias ImageResult = ScanService.ImageResult

    func run() throws {
        let db = try database.open()
        let ledgerForKeys = SQLiteLedger(database: db)
        // Registry references (KubeVirt containerDisks) are fetched into private folders first.
        let fetched = try ContainerDiskArguments.resolve(images, options: registry.options)
        defer { fetched.cleanUp() }
        let meter = ProgressMeter("scan", total: UInt64(fetched.paths.count), unit: .items("images"))
        var outcome = try ScanService(database: db).scan(images: fetched.paths, format: format, includeResolved: all, passphrase: { path in
            try key.passphrase(forImage: path, ledger: ledgerForKeys)
        }, progress: { done, _ in meter.set(done: UInt64(done)) })
        meter.finish()
        for i in outcome.results.indices { if let ref = fetched.names[outcome.results[i].image] { outcome.results[i].image = ref } }
        // A fresh assessment lifts a quarantine when nothing blocking is left (docs/network.md).
        let ledger = SQLiteLedger(database: db)
        let net = NetworkService(ledger: ledger, policyDirectory: PolicySet.defaultDirectory())
        for id in Set(outcome.results.flatMap { $0.vms.map(\.id) }).sorted() {
            guard let vmid = VMID(id), let vm = try ledger.vm(vmid) else { continue }
            do {
                if let n = try net.liftIfClean(vm, advisories: SQLiteAdvisoryStore(db)) { Output.note("\(vm.name): network \(n.state.rawValue) (\(n.reason))") }
            } catch let e as WardenError {
                Output.note("\(vm.name): stays quarantined: \(e.message)")
            }
        }
        let met = failOn.map(outcome.meets) ?? false
        struct Doc: Encodable {
            var schema = "warden.scan/v1"
            var images: [ImageResult]
            var failOn: String?
            var failed: Bool
        }
        try Output.render(Doc(images: outcome.results, failOn: failOn?.description, failed: met), json: json) {
            for r in outcome.results { Self.printHuman(r) }
        }
        Output.stdout.flush()
        for u in outcome.unassessable { Output.note(u) }
        for c in outcome.coverage { Output.note(c) }
        for e in outcome.failures { Output.error(e.description) }
        if !outcome.failures.isEmpty { throw ExitCode(outcome.failures.map(\.exitCode).max() ?? 2) }
        if failOn != nil && !outcome.unassessable.isEmpty {
            Output.error("--fail-on: \(outcome.unassessable.count) image(s) could not be assessed; failing closed")
            throw ExitCode(2)
        }
        if failOnUnscanned && outcome.hasUnscanned {
            Output.error("--fail-on-unscanned: parts of \(outcome.results.filter { !$0.unscanned.isEmpty }.count) image(s) were not scanned")
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
        if !r.kernelFindings.isEmpty, let booting = r.bootingKernel?.value {
            let unused = Set(r.kernelFindings.filter { $0.affects == .notBooting }.map(\.package))
            out.line(oneLine("  kernel: \(booting.release) boots (\(booting.source)); " + (unused.isEmpty
                ? "every kernel finding is in it"
                : "findings in \(unused.sorted().joined(separator: ", ")) touch installed kernels that do not boot")))
        }
        out.line("")
    }
}
