import ArgumentParser
import Foundation
import Simulation
import WardenCore

/// `warden dev simulate …`: the simulations behind docs/simulation.md.
struct DevSimulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Simulations of the paper's claims (docs/simulation.md).",
        subcommands: [Worm.self]
    )

    /// `warden dev simulate worm`: a worm in a static or transient fleet, with or without admission control.
    struct Worm: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "worm",
            abstract: "Simulate a worm in a fleet of VMs that run all the time or come and go (seeded, reproducible).",
            discussion: """
            An agent-based SIR model: running VMs mix uniformly; patching and clean-up reach only running \
            VMs; transient VMs sleep for log-normal dormant periods; new VMs are copied from the old, \
            unpatched image; with --admission every start is scanned (taking --scan-delay-hours) and a \
            vulnerable or infected VM is quarantined until remediated. Defaults and their sources: \
            docs/simulation.md.

            Examples:
              warden dev simulate worm --fleet static --csv static.csv
              warden dev simulate worm --fleet transient --admission --scan-delay-hours 6 --json
            """
        )

        enum Fleet: String, ExpressibleByArgument, CaseIterable { case `static`, transient }

        @Option(help: "Starting point for the parameters: static (every VM runs all the time) or transient (60% come and go, 0.1% of the fleet copied in each day).")
        var fleet: Fleet = .static
        @Option(help: "VMs at the start.") var vms: Int?
        @Option(help: "Simulated days.") var days: Double?
        @Option(help: "Step of the infection process, in hours.") var stepHours: Double?
        @Option(help: "One CSV row every this many hours.") var sampleHours: Double?
        @Option(help: "Seed of the random stream.") var seed: UInt64?
        @Option(help: "VMs infected at the start.") var initialInfected: Int?
        @Option(help: "Infections per hour caused by one running infected VM among vulnerable ones (β).") var contactRate: Double?
        @Option(help: "Mean hours to detect and clean a running infected VM (1/γ).") var cleanupHours: Double?
        @Option(help: "Mean hours for a running vulnerable VM to be patched (0: no patching).") var patchHours: Double?
        @Option(help: "Share of VMs that come and go (0…1).") var transient: Double?
        @Option(help: "Mean hours a transient VM runs.") var onHours: Double?
        @Option(help: "Median days a transient VM lies dormant.") var offMedianDays: Double?
        @Option(help: "Log-scale spread of the dormant periods.") var offSigma: Double?
        @Option(help: "New VMs per day, copied from the unpatched image.") var arrivalsPerDay: Double?
        @Flag(help: "Scan every VM when it starts; quarantine it until remediated if vulnerable or infected.") var admission = false
        @Option(help: "Hours the admission scan takes (the VM runs meanwhile).") var scanDelayHours: Double?
        @Option(help: "Mean hours a quarantined VM waits to be patched and cleaned.") var remediateHours: Double?
        @Option(help: "Write the samples as CSV to this file.") var csv: String?
        @Flag(help: "Print the summary as JSON.") var json = false

        func parameters() -> WormParameters {
            var p: WormParameters = fleet == .static ? .staticFleet : .transientFleet
            if let vms {
                // The transient preset's arrivals scale with the fleet.
                if fleet == .transient, arrivalsPerDay == nil { p.arrivalsPerDay = p.arrivalsPerDay / Double(p.vms) * Double(vms) }
                p.vms = vms
            }
            if let days { p.days = days }
            if let stepHours { p.stepHours = stepHours }
            if let sampleHours { p.sampleHours = sampleHours }
            if let seed { p.seed = seed }
            if let initialInfected { p.initialInfected = initialInfected }
            if let contactRate { p.contactRate = contactRate }
            if let cleanupHours { p.cleanupHours = cleanupHours }
            if let patchHours { p.patchHours = patchHours }
            if let transient { p.transientFraction = transient }
            if let onHours { p.onHours = onHours }
            if let offMedianDays { p.offMedianDays = offMedianDays }
            if let offSigma { p.offSigma = offSigma }
            if let arrivalsPerDay { p.arrivalsPerDay = arrivalsPerDay }
            p.admission = admission
            if let scanDelayHours { p.scanDelayHours = scanDelayHours }
            if let remediateHours { p.remediateHours = remediateHours }
            return p
        }

        /// docs/json-schemas/worm-simulation.v1.json
        struct Summary: Encodable {
            var schema = "warden.worm-simulation/v1"
            var parameters: WormParameters
            var peakInfected: Int
            var peakDay: Double
            var eradicatedDay: Double?
            var lastInfectionDay: Double
            var infections: Int
            var infectedVmDays: Double
            var quarantines: Int
            var finalInfected: Int
            var finalVms: Int
            var seconds: Double
        }

        func run() throws {
            let p = parameters()
            // One line naming the parameter, exit 2 (not a usage dump): the values can come from scripts.
            try p.validate()
            let clock = ContinuousClock()
            let started = clock.now
            let result = try WormSimulation.run(p)
            let elapsed = clock.now - started
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            if let csv {
                try FileDescriptorIO.replaceFile(csv, with: Array(result.csv().utf8), mode: 0o644, syncFolder: false)
            }
            let summary = Summary(parameters: p, peakInfected: result.peakInfected, peakDay: result.peakHour / 24,
                                  eradicatedDay: result.eradicatedDay, lastInfectionDay: result.lastInfectionHour / 24, infections: result.infections,
                                  infectedVmDays: result.infectedVMHours / 24, quarantines: result.quarantines,
                                  finalInfected: result.finalInfected, finalVms: result.finalVMs, seconds: seconds)
            try Output.render(summary, json: json) {
                let out = Output.stdout
                out.line("fleet          \(p.vms) VMs, \(Int(p.transientFraction * 100))% transient, \(p.arrivalsPerDay) new/day, "
                         + (p.admission ? "admission scan \(p.scanDelayHours) h" : "no admission control"))
                out.line("peak           \(result.peakInfected) infected on day \(String(format: "%.2f", result.peakHour / 24))")
                out.line("eradicated     " + (result.eradicatedDay.map { String(format: "day %.2f", $0) }
                                              ?? "no: \(result.finalInfected) infected after \(p.days) days"))
                out.line(String(format: "last infection day %.2f", result.lastInfectionHour / 24))
                out.line("infections     \(result.infections) (\(String(format: "%.0f", result.infectedVMHours / 24)) infected VM-days)")
                if p.admission { out.line("quarantines    \(result.quarantines)") }
                out.line("VMs at the end \(result.finalVMs)")
                out.line(String(format: "took           %.2f s", seconds))
            }
            Output.stdout.flush()
        }
    }
}
