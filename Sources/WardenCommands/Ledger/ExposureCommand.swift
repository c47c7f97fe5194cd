import ArgumentParser
import Foundation
import Ledger
import WardenCore

/// `warden exposure --host H --from T1 --to T2`: which VMs may have been backdoored by H's compromise.
struct ExposureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exposure",
        abstract: "VMs that ran or were stored on a host in a time window, and every copy made from them since.",
        discussion: """
            Exact semantics: docs/ledger.md, section Exposure. JSON schema: docs/json-schemas/exposure.v1.json.
            
            Example:
              warden exposure --host hv2 --from 2026-11-01 --to 2026-11-30
            """)
    @OptionGroup var database: DatabaseOptions
    @Option(help: "The host.") var host: String
    @Option(help: "Start of the window (RFC 3339 with a zone, a date, @EPOCH or now).") var from: String
    @Option(help: "End of the window, included (default: now).") var to: String = "now"
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: .hidden) var timing = false

    func validate() throws {
        guard HostName(host) != nil else { throw ValidationError("not a host name: \(oneLine(host))") }
    }

    func run() throws {
        let now = Date()
        let t1 = try TimeArgument.parse(from, now: now), t2 = try TimeArgument.parse(to, now: now)
        guard t1 <= t2 else { throw WardenError(.invalidArgument, "--from is after --to") }
        let store = try database.open(create: false)
        let (report, wall, cpu) = try timed { try store.exposure(host: HostName(host)!, from: t1, to: t2, now: now) }
        if timing { Output.note(String(format: "exposure: %.3f ms wall, %.3f ms cpu, %d VMs", wall, cpu, report.vms.count)) }
        if json {
            // Written by hand and streamed (the same bytes as Output.ledgerJSON): JSONEncoder
            // took seconds for an answer of 20,000 VMs.
            let (_, jwall, jcpu) = try timed {
                try report.writeJSON { try Output.stdout.write($0) }
                Output.stdout.flush()
            }
            if timing { Output.note(String(format: "exposure json: %.3f ms wall, %.3f ms cpu", jwall, jcpu)) }
            return
        }
        var rows = [["VM", "NAME", "OWNER", "STATE", "EXPOSED SINCE", "HOW", "FROM"]]
        for v in report.vms {
            let via = v.steps == 0 ? "-" : "\(shortID(v.source)) +\(v.steps)"
            rows.append([shortID(v.vm), oneLine(v.name), oneLine(v.owner), v.state.rawValue,
                         TimeArgument.format(v.exposedSince), v.how, via])
        }
        for l in table(rows) { Output.stdout.line(l) }
        Output.note("\(report.vms.count) VM\(report.vms.count == 1 ? "" : "s") exposed to \(host) between \(TimeArgument.format(t1)) and \(TimeArgument.format(t2))")
    }
}
