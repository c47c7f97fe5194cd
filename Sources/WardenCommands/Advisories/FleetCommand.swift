import ArgumentParser
import Foundation
import WardenCore
import Advisories
import Ledger

/// `warden fleet rescan`: re-assess every stored inventory without reading any image.
struct FleetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "Fleet-wide operations on stored inventories.",
        subcommands: [Rescan.self]
    )

    struct Rescan: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-match every stored inventory against the current advisories; report new and gone findings.",
            discussion: """
            No image is opened: inventories stored by `warden scan` are enough. Reports, per inventory \
            whose findings changed since its last assessment, the findings that appeared and the ones \
            that went away, with the images (and VMs) that carry that content. JSON shape: docs/advisories.md.
            """
        )
        @OptionGroup var database: DatabaseOption
        @Flag(help: "Print JSON.") var json = false
        @Option(help: ArgumentHelp("Findings listed per changed inventory in human output.", valueName: "n"))
        var limit: Int = 20

        func run() throws {
            let store = AdvisoryStore(try database.open())
            let report = try store.rescan()
            if json {
                Output.stdout.line(try Output.json(report))
                return
            }
            let out = Output.stdout
            out.line("rescanned \(report.inventories) inventories against \(report.advisoryEntries) advisory entries in \(String(format: "%.2f", report.seconds)) s: \(report.changed.count) changed, \(report.newFindings) new findings, \(report.goneFindings) gone, \(report.vulnerable) vulnerable in all")
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
        }
    }
}
