import ArgumentParser
import Foundation
import WardenConfig
import WardenServices
import Hypervisor
import Policy
import WardenNetwork
import WardenCore
import Advisories
import Ledger
import AdvisoryStorage

/// `warden fleet rescan`: re-assess every stored inventory without reading any image.
struct FleetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "Fleet-wide operations on stored inventories: rescan against the current advisories (and shield running VMs); patch dormant VMs.",
        subcommands: [Rescan.self, FleetPatch.self]
    )

    struct Rescan: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rescan",
            abstract: "Bring every stored inventory's assessment up to date with the current advisories; report new and gone findings.",
            discussion: """
            No image is opened: inventories stored by `warden scan` are enough. The work follows the \
            change: only the distinct package versions that advisory imports since the last rescan \
            touched (and ones never assessed) are re-matched, each once for the whole fleet; with \
            nothing new it returns at once. `--full` re-matches every package version. Reports, per \
            inventory whose findings changed since its last assessment, the findings that appeared and \
            the ones that went away, with the images (and VMs) that carry that content. JSON shape: \
            docs/advisories.md.
            
            Example:
              warden fleet rescan
            """
        )
        @OptionGroup var database: DatabaseOption
        @Flag(help: "Print JSON.") var json = false
        @Option(help: ArgumentHelp("Findings listed per changed inventory in human output.", valueName: "n"))
        var limit: Int = 20
        @Flag(help: "Re-match every package version, not only those touched since the last rescan.") var full = false
        @Flag(help: .hidden) var timing = false

        func run() throws {
            let db = try database.open()
            let store = SQLiteAdvisoryStore(db)
            var phases = PhaseClock()
            // Six steps (select, load, match, compare, write, report), each reported as it ends.
            let meter = ProgressMeter("fleet rescan", total: 6, unit: .items("steps"))
            let report = try store.rescan(full: full, phase: { name in
                if timing { phases.lap(name) }
                meter.advance()
            })
            meter.finish()
            // New findings at the shield severity shield the running VMs that carry them.
            let ledger = SQLiteLedger(database: db)
            let net = NetworkService(ledger: ledger, policyDirectory: PolicySet.defaultDirectory())
            var shieldFailures = 0
            for id in Set(report.changed.filter { !$0.newFindings.isEmpty }.flatMap { $0.vms.map(\.id) }).sorted() {
                guard let vmid = VMID(id), let vm = try ledger.vm(vmid) else { continue }
                do {
                    if let n = try net.shieldIfExposed(vm, advisories: store, discover: { LibvirtDomains.interfaces(uuid: $0.id.uuid) },
                                                       guestPorts: { GuestServicePorts.of(disks: (try? ledger.disks(of: $0.id)) ?? []) }) { Output.note("\(vm.name): network shielded (\(n.reason))") }
                } catch let e as WardenError {
                    shieldFailures += 1
                    Output.error("\(vm.name): could not be shielded: \(e.message)")
                }
            }
            if timing { phases.lap("done"); for l in phases.lines { Output.note(l) } }
            try Output.render(report, json: json) {
                let out = Output.stdout
                out.line("rescanned \(report.inventories) inventories (\(report.packageVersions) package versions re-matched after \(report.advisoryChanges) advisory changes) against \(report.advisoryEntries) advisory entries in \(String(format: "%.2f", report.seconds)) s: \(report.changed.count) changed, \(report.newFindings) new findings, \(report.goneFindings) gone, \(report.vulnerable) vulnerable in all")
                for c in report.changed {
                    var images = c.images.isEmpty ? "no image path" : c.images.joined(separator: ", ")
                    if !c.vms.isEmpty { images += "; VMs " + c.vms.map { "\($0.name) \($0.id)" }.joined(separator: ", ") }
                    out.line(oneLine("\(c.inventory) (\(images))\(c.firstAssessment ? " first assessment" : ""): +\(c.newFindings.count) -\(c.goneFindings.count), \(c.vulnerable) vulnerable"))
                    for f in c.newFindings.prefix(limit) {
                        out.line(oneLine("  + \(f.severity) \(f.package) \(f.installedVersion) \(f.advisory) \(f.fixedVersion.map { "fixed in \($0)" } ?? "no fix yet")"))
                    }
                    if c.newFindings.count > limit { out.line("  + … \(c.newFindings.count - limit) more") }
                    for f in c.goneFindings.prefix(limit) {
                        out.line(oneLine("  - \(f.severity) \(f.package) \(f.installedVersion) \(f.advisory)"))
                    }
                    if c.goneFindings.count > limit { out.line("  - … \(c.goneFindings.count - limit) more") }
                }
                for u in report.unassessable.prefix(limit) { out.line("not assessable (no advisory feed for its OS): \(u)") }
                if timing { phases.lap("print"); Output.note(phases.lines.last ?? "") }
            }
            // A VM that should be shielded and could not be: the command fails.
            if shieldFailures > 0 { Output.stdout.flush(); throw ExitCode(5) }
        }
    }
}

/// Wall and process CPU time between successive laps, for hidden `--timing` flags.
struct PhaseClock {
    private var wall0 = DispatchTime.now().uptimeNanoseconds
    private var cpu0 = PhaseClock.cpu()
    private(set) var lines: [String] = []

    static func cpu() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) * 1e3 + Double(ts.tv_nsec) / 1e6
    }

    mutating func lap(_ name: String) {
        let w = DispatchTime.now().uptimeNanoseconds, c = Self.cpu()
        lines.append(name + String(format: ": %.1f ms wall, %.1f ms cpu", Double(w - wall0) / 1e6, c - cpu0))
        wall0 = w; cpu0 = c
    }
}
