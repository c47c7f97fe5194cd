import ArgumentParser
import Foundation
import Ledger
import WardenCore

/// `warden census`: the transience picture of the fleet.
struct CensusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "census",
        abstract: "Counts by state, owner and OS; VMs appeared and gone per week; dormant VMs; stale scans; growth.",
        discussion: """
            Definitions: docs/ledger.md, section Census. JSON schema: docs/json-schemas/census.v1.json.
            
            Example:
              warden census --dormant-days 30
            """)
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "Print JSON.") var json = false
    @Option(help: "A live VM not started for this many days is dormant.") var dormantDays = 30
    @Option(help: "A live VM not scanned for this many days has a stale scan.") var staleScanDays = 7
    @Option(help: "How many ISO weeks to show, the current one included.") var weeks = 12
    @Option(help: "At most this many VMs in each list.") var limit = 100

    func validate() throws {
        guard dormantDays >= 0, dormantDays <= 36_500, staleScanDays >= 0, staleScanDays <= 36_500 else {
            throw ValidationError("days must be between 0 and 36500")
        }
        guard weeks >= 1, weeks <= 5200 else { throw ValidationError("--weeks must be between 1 and 5200") }
        guard limit >= 0, limit <= 1_000_000 else { throw ValidationError("--limit must be between 0 and 1000000") }
    }

    func run() throws {
        let store = try database.open(create: false)
        let c = try store.census(now: Date(), weeks: weeks, dormantDays: dormantDays, staleScanDays: staleScanDays, limit: limit)
        try Output.render(c, json: json, style: .ledger) {
            let o = Output.stdout
            o.line("VMs: \(c.total) (\(c.live) live)")
            func counts(_ title: String, _ m: [String: Int]) {
                o.line("\(title):")
                for (k, v) in m.sorted(by: { ($1.value, $0.key) < ($0.value, $1.key) }) where v > 0 { o.line(oneLine("  \(k)  \(v)")) }
            }
            counts("by state", c.byState)
            counts("by owner (live)", c.byOwner)
            counts("by OS (live)", c.byOs)
            o.line("per week:")
            for l in table([["WEEK", "APPEARED", "GONE", "LIVE AT END"]] + c.weeks.map { [$0.week, "\($0.appeared)", "\($0.disappeared)", "\($0.liveAtEnd)"] }) {
                o.line("  " + l)
            }
            let pct = c.growth.percentPerWeek.map { String(format: " (%+.2f%% per week)", $0) } ?? ""
            o.line(String(format: "growth: %+.2f VMs per week over %d weeks", c.growth.netPerWeek, c.growth.weeks) + pct)
            func list(_ title: String, _ l: CensusList, _ event: String) {
                o.line("\(title): \(l.count) (\(l.never) never \(event))")
                for v in l.vms {
                    o.line(oneLine("  \(shortID(v.id))  \(v.name)  \(v.owner)  \(v.state.rawValue)  last \(event): \(v.last.map(TimeArgument.format) ?? "never")"))
                }
                if l.truncated { o.line("  … \(l.count - l.vms.count) more (--limit)") }
            }
            list("dormant (not started for \(dormantDays) days)", c.dormant, "started")
            list("stale scans (older than \(staleScanDays) days)", c.staleScans, "scanned")
            let m = c.malware
            o.line("malware: \(m.infected) infected by their latest scan, \(m.scanned) scanned, \(m.never) never scanned for malware")
            for v in m.vms {
                o.line(oneLine("  \(shortID(v.id))  \(v.name)  \(v.owner)  \(v.state.rawValue)  scanned \(v.last.map(TimeArgument.format) ?? "never")"))
            }
            if m.truncated { o.line("  … \(m.infected - m.vms.count) more (--limit)") }
        }
    }
}
