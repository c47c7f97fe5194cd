import WardenCore

/// The parameters of one worm simulation (docs/simulation.md names the source of each default).
///
/// Times are in hours unless the name says days. Every field is checked by ``validate()``
/// before a run: the parameters come from the command line and from files, and a run
/// allocates in proportion to them.
public struct WormParameters: Sendable, Codable, Equatable {
    /// VMs in the fleet at the start.
    public var vms: Int = 100_000
    /// Simulated time.
    public var days: Double = 365
    /// The step of the infection process (tau-leaping); timers are rounded up to it.
    public var stepHours: Double = 0.25
    /// Rows written to the CSV: one every `sampleHours`.
    public var sampleHours: Double = 24
    public var seed: UInt64 = 1
    /// VMs infected at time 0 (drawn among all VMs, running or not).
    public var initialInfected: Int = 10
    /// Infections caused per hour by one running infected VM when every running VM is
    /// vulnerable (β of SIR; 1.8/h is the logistic fit to Code Red v2).
    public var contactRate: Double = 1.8
    /// Mean time to detect and clean a running infected VM (1/γ of SIR).
    public var cleanupHours: Double = 48
    /// Mean time for a running vulnerable VM to receive the patch (the patch exists from time 0,
    /// as for Code Red and Slammer). 0 turns patching off.
    public var patchHours: Double = 72
    /// Share of the VMs that come and go; the rest run all the time.
    public var transientFraction: Double = 0
    /// Mean length of a transient VM's running period (exponential).
    public var onHours: Double = 8
    /// Median and log-scale spread of a transient VM's dormant period (log-normal).
    public var offMedianDays: Double = 3
    public var offSigma: Double = 1.5
    /// New VMs per day, copied from the old, unpatched image (transient like the others).
    public var arrivalsPerDay: Double = 0
    /// Admission control: scan every VM when it starts.
    public var admission: Bool = false
    /// How long the scan at start takes; the VM runs (and can infect or be infected) meanwhile.
    public var scanDelayHours: Double = 0
    /// Mean time a VM found vulnerable or infected stays quarantined before it is patched and cleaned.
    public var remediateHours: Double = 4

    public init() {}

    /// The static fleet of the paper's "conventional network": every VM runs all the time.
    public static var staticFleet: WormParameters { WormParameters() }

    /// A transient fleet: most VMs come and go, and new ones are copied from the old image.
    public static var transientFleet: WormParameters {
        var p = WormParameters()
        p.transientFraction = 0.6
        p.arrivalsPerDay = 0.001 * Double(p.vms)
        return p
    }

    /// The largest fleet a run accepts, counting arrivals (about 22 bytes each plus events).
    public static let maxVMs = 50_000_000
    /// The most steps a run takes (ten years of quarter-hours).
    public static let maxSteps = 350_400

    public var steps: Int { Int((days * 24 / stepHours).rounded(.up)) }

    /// Throws `invalidArgument` naming the first parameter out of range.
    public func validate() throws {
        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw WardenError(.invalidArgument, "worm simulation: \(what)") }
        }
        func finite(_ values: [(String, Double)]) throws {
            for (name, v) in values where !v.isFinite {
                throw WardenError(.invalidArgument, "worm simulation: \(name) must be a finite number")
            }
        }
        try finite([("days", days), ("step-hours", stepHours), ("sample-hours", sampleHours), ("contact-rate", contactRate),
                    ("cleanup-hours", cleanupHours), ("patch-hours", patchHours), ("transient", transientFraction),
                    ("on-hours", onHours), ("off-median-days", offMedianDays), ("off-sigma", offSigma),
                    ("arrivals-per-day", arrivalsPerDay), ("scan-delay-hours", scanDelayHours), ("remediate-hours", remediateHours)])
        try check(vms >= 1 && vms <= Self.maxVMs, "vms must be 1…\(Self.maxVMs)")
        try check(days > 0 && days <= 3650, "days must be in (0, 3650]")
        try check(stepHours >= 0.001 && stepHours <= 24, "step-hours must be in [0.001, 24]")
        try check(steps <= Self.maxSteps, "days/step-hours gives more than \(Self.maxSteps) steps")
        try check(sampleHours >= stepHours && sampleHours <= days * 24, "sample-hours must be between step-hours and the whole run")
        try check(initialInfected >= 0 && initialInfected <= vms, "initial-infected must be 0…vms")
        try check(contactRate >= 0 && contactRate <= 1000, "contact-rate must be in [0, 1000] per hour")
        try check(cleanupHours > 0 && cleanupHours <= 1e6, "cleanup-hours must be in (0, 1e6]")
        try check(patchHours >= 0 && patchHours <= 1e6, "patch-hours must be in [0, 1e6] (0: no patching)")
        try check(transientFraction >= 0 && transientFraction <= 1, "transient must be a share in [0, 1]")
        try check(onHours > 0 && onHours <= 1e5, "on-hours must be in (0, 1e5]")
        try check(offMedianDays > 0 && offMedianDays <= 3650, "off-median-days must be in (0, 3650]")
        try check(offSigma >= 0 && offSigma <= 4, "off-sigma must be in [0, 4]")
        try check(arrivalsPerDay >= 0, "arrivals-per-day must not be negative")
        try check(Double(vms) + arrivalsPerDay * days * 1.5 + 1000 <= Double(Self.maxVMs),
                  "vms plus arrivals over the run must stay under \(Self.maxVMs)")
        try check(scanDelayHours >= 0 && scanDelayHours <= 24 * 365, "scan-delay-hours must be in [0, 8760]")
        try check(remediateHours > 0 && remediateHours <= 1e5, "remediate-hours must be in (0, 1e5]")
    }
}
