import Foundation
import WardenCore

/// One row of a run's output: the fleet at `hour`.
public struct WormSample: Sendable, Codable, Equatable {
    public var hour: Double
    /// Vulnerable (not yet patched, not infected), infected, and patched-or-cleaned VMs: S, I, R.
    public var susceptible: Int
    public var infected: Int
    public var recovered: Int
    /// VMs running (including those held in quarantine), and the infected ones running outside
    /// quarantine (the ones spreading the worm).
    public var running: Int
    public var infectedSpreading: Int
    public var quarantined: Int
    /// Infections so far (the initial ones included).
    public var infections: Int
    public var vms: Int { susceptible + infected + recovered }
}

/// What a run found.
public struct WormResult: Sendable, Codable {
    public var parameters: WormParameters
    public var samples: [WormSample]
    /// The most VMs infected at once (running or dormant), and when.
    public var peakInfected: Int
    public var peakHour: Double
    /// The first time no VM was infected anywhere, running or dormant; nil if the worm outlived the run.
    public var eradicatedHour: Double?
    /// The last new infection (the worm can still lie dormant in VMs after it).
    public var lastInfectionHour: Double
    public var infections: Int
    /// The integral of the infected count over time.
    public var infectedVMHours: Double
    /// VMs held in quarantine by admission control.
    public var quarantines: Int
    public var finalInfected: Int
    public var finalVMs: Int
    public var eradicatedDay: Double? { eradicatedHour.map { $0 / 24 } }
}

/// A seeded, agent-based worm simulation over a fleet of VMs that run all the time or come and go
/// (docs/simulation.md).
///
/// Each VM is susceptible, infected or recovered (patched or cleaned), and off, running, running
/// while its admission scan is under way, or quarantined. Running VMs mix uniformly: in a step of
/// `stepHours` each running susceptible VM is infected with probability `1 − exp(−β·I/N·dt)`,
/// where I and N count the running, unquarantined VMs (the infected and all of them). Everything
/// else is a timer on the VM: its next start or stop, its patch or clean-up, the end of its scan
/// or quarantine. Patch and clean-up clocks run only while the VM runs, which is the paper's
/// point: dormant VMs skip the campaign and come back as they were.
public struct WormSimulation {
    enum Health: UInt8 { case susceptible, infected, recovered }
    enum Mode: UInt8 { case off, running, scanning, quarantined }
    enum Kind: UInt8 { case powerOn, powerOff, patch, clean, scanDone, remediated }
    struct Event { var vm: Int32; var gen: UInt32; var kind: Kind }

    public let parameters: WormParameters
    private var draws: Draws
    private var health: [Health] = []
    private var mode: [Mode] = []
    private var transient: [Bool] = []
    private var generation: [UInt32] = []
    private var runningSusceptible: IndexSet32
    private var buckets: [[Event]]
    private var step = 0
    private let dt: Double

    // Counts kept as the states change.
    private var susceptible = 0, infected = 0, recovered = 0
    private var active = 0            // running and not quarantined (N of the infection step)
    private var infectedActive = 0    // I of the infection step
    private var running = 0, quarantined = 0, infections = 0, quarantines = 0
    private var lastInfectionStep = 0

    public init(_ parameters: WormParameters) throws {
        try parameters.validate()
        self.parameters = parameters
        dt = parameters.stepHours
        draws = Draws(seed: parameters.seed)
        runningSusceptible = IndexSet32(capacity: parameters.vms)
        buckets = Array(repeating: [], count: parameters.steps + 1)
    }

    /// Runs the whole simulation; `progress` is called with the fraction done about a hundred times.
    public static func run(_ parameters: WormParameters, progress: ((Double) -> Void)? = nil) throws -> WormResult {
        var sim = try WormSimulation(parameters)
        return sim.simulate(progress: progress)
    }

    // MARK: - The run

    private mutating func simulate(progress: ((Double) -> Void)?) -> WormResult {
        let p = parameters
        let n = p.vms
        health = Array(repeating: .susceptible, count: n)
        mode = Array(repeating: .off, count: n)
        transient = Array(repeating: false, count: n)
        generation = Array(repeating: 0, count: n)
        susceptible = n
        // The share of time a transient VM runs, from the means of its two periods.
        let meanOffHours = p.offMedianDays * 24 * exp(p.offSigma * p.offSigma / 2)
        let runningShare = p.onHours / (p.onHours + meanOffHours)
        let transientCount = Int((Double(n) * p.transientFraction).rounded())
        for v in 0..<n {
            transient[v] = v < transientCount
        }
        // Infected at time 0: distinct VMs, running or not.
        var chosen = 0
        while chosen < p.initialInfected {
            let v = draws.below(n)
            if health[v] == .susceptible { health[v] = .infected; chosen += 1 }
        }
        susceptible -= chosen; infected = chosen; infections = chosen
        // Transient VMs start in their stationary on/off share; a dormant one's remaining dormancy
        // is a uniform part of a fresh dormant period.
        for v in 0..<n {
            if transient[v] && draws.unit() >= runningShare {
                schedule(v, .powerOn, after: draws.unit() * draws.logNormal(median: p.offMedianDays * 24, sigma: p.offSigma))
                continue
            }
            mode[v] = .running
            running += 1
            join(v)
            armHealth(v)
            if transient[v] { schedule(v, .powerOff, after: draws.exponential(mean: p.onHours)) }
        }

        let sampleEvery = max(1, Int((p.sampleHours / dt).rounded()))
        let arrivalsPerStep = p.arrivalsPerDay * dt / 24
        var samples: [WormSample] = []
        samples.reserveCapacity(p.steps / sampleEvery + 2)
        var peak = infected, peakStep = 0
        var eradicated: Int? = infected == 0 ? 0 : nil
        var infectedHours = 0.0
        let progressEvery = max(1, p.steps / 100)

        for s in 0...p.steps {
            step = s
            // Timers due now.
            var i = 0
            while i < buckets[s].count {
                let e = buckets[s][i]
                i += 1
                fire(e)
            }
            buckets[s] = []
            // New VMs copied from the old image.
            if arrivalsPerStep > 0 {
                for _ in 0..<draws.poisson(mean: arrivalsPerStep) { arrive() }
            }
            if infected > peak { peak = infected; peakStep = s }
            if eradicated == nil && infected == 0 { eradicated = s }
            if s % sampleEvery == 0 || s == p.steps { samples.append(sample()) }
            if s == p.steps { break }
            infectedHours += Double(infected) * dt
            // Infection over [t, t + dt).
            if infectedActive > 0 && runningSusceptible.count > 0 {
                let pInfect = -expm1(-p.contactRate * Double(infectedActive) / Double(active) * dt)
                let k = draws.binomial(runningSusceptible.count, pInfect)
                for _ in 0..<k {
                    let v = Int(runningSusceptible.members[draws.below(runningSusceptible.count)])
                    infect(v)
                }
            }
            if let progress, s % progressEvery == 0 { progress(Double(s) / Double(p.steps)) }
        }
        return WormResult(parameters: p, samples: samples, peakInfected: peak, peakHour: Double(peakStep) * dt,
                          eradicatedHour: eradicated.map { Double($0) * dt },
                          lastInfectionHour: Double(lastInfectionStep) * dt, infections: infections,
                          infectedVMHours: infectedHours, quarantines: quarantines,
                          finalInfected: infected, finalVMs: health.count)
    }

    private func sample() -> WormSample {
        WormSample(hour: Double(step) * dt, susceptible: susceptible, infected: infected, recovered: recovered,
                   running: running, infectedSpreading: infectedActive, quarantined: quarantined,
                   infections: infections)
    }

    // MARK: - Timers

    private mutating func schedule(_ v: Int, _ kind: Kind, after hours: Double) {
        let steps = max(1.0, (hours / dt).rounded(.up))
        guard steps <= Double(parameters.steps - step) else { return }
        buckets[step + Int(steps)].append(Event(vm: Int32(v), gen: generation[v], kind: kind))
    }

    private mutating func fire(_ e: Event) {
        let v = Int(e.vm)
        switch e.kind {
        case .powerOn:
            guard mode[v] == .off else { return }
            start(v)
        case .powerOff:
            guard mode[v] != .off else { return }
            if mode[v] != .quarantined { leave(v) } else { quarantined -= 1 }
            mode[v] = .off
            running -= 1
            generation[v] &+= 1   // dormant VMs skip the campaign
            schedule(v, .powerOn, after: draws.logNormal(median: parameters.offMedianDays * 24, sigma: parameters.offSigma))
        case .patch:
            guard e.gen == generation[v], mode[v] == .running || mode[v] == .scanning, health[v] == .susceptible else { return }
            runningSusceptible.remove(v)
            health[v] = .recovered; susceptible -= 1; recovered += 1
        case .clean:
            guard e.gen == generation[v], mode[v] == .running || mode[v] == .scanning, health[v] == .infected else { return }
            infectedActive -= 1
            health[v] = .recovered; infected -= 1; recovered += 1
        case .scanDone:
            guard e.gen == generation[v], mode[v] == .scanning else { return }
            scanned(v)
        case .remediated:
            guard e.gen == generation[v], mode[v] == .quarantined else { return }
            if health[v] == .susceptible { susceptible -= 1 } else if health[v] == .infected { infected -= 1 }
            if health[v] != .recovered { recovered += 1 }
            health[v] = .recovered
            quarantined -= 1
            mode[v] = .running
            join(v)
        }
    }

    // MARK: - State changes

    /// A VM starts: with admission control it is scanned first (running meanwhile), else it simply runs.
    private mutating func start(_ v: Int) {
        running += 1
        if transient[v] { schedule(v, .powerOff, after: draws.exponential(mean: parameters.onHours)) }
        mode[v] = parameters.admission ? .scanning : .running
        join(v)
        // The fleet's patch campaign and clean-up reach the VM while it runs, scan or no scan.
        armHealth(v)
        if parameters.admission {
            if parameters.scanDelayHours <= 0 { scanned(v) } else { schedule(v, .scanDone, after: parameters.scanDelayHours) }
        }
    }

    /// The admission scan's verdict: a patched VM joins; a vulnerable or infected one is quarantined until remediated.
    private mutating func scanned(_ v: Int) {
        if health[v] == .recovered {
            mode[v] = .running
            return
        }
        leave(v)
        mode[v] = .quarantined
        quarantined += 1
        quarantines += 1
        generation[v] &+= 1
        schedule(v, .remediated, after: draws.exponential(mean: parameters.remediateHours))
    }

    private mutating func arrive() {
        let v = health.count
        health.append(.susceptible); mode.append(.off); transient.append(true); generation.append(0)
        runningSusceptible.grow(to: v + 1)
        susceptible += 1
        start(v)
    }

    private mutating func infect(_ v: Int) {
        runningSusceptible.remove(v)
        health[v] = .infected
        susceptible -= 1; infected += 1; infections += 1
        infectedActive += 1
        lastInfectionStep = step
        armHealth(v)
    }

    /// Joins the mixing population (running, not quarantined).
    private mutating func join(_ v: Int) {
        active += 1
        switch health[v] {
        case .susceptible: runningSusceptible.insert(v)
        case .infected: infectedActive += 1
        case .recovered: break
        }
    }

    private mutating func leave(_ v: Int) {
        active -= 1
        switch health[v] {
        case .susceptible: runningSusceptible.remove(v)
        case .infected: infectedActive -= 1
        case .recovered: break
        }
    }

    /// The running VM's patch or clean-up clock. Stopping the VM or quarantining it voids the
    /// clocks (a new generation); an infection needs no voiding, since a patch timer then finds
    /// the VM no longer susceptible.
    private mutating func armHealth(_ v: Int) {
        switch health[v] {
        case .susceptible where parameters.patchHours > 0:
            schedule(v, .patch, after: draws.exponential(mean: parameters.patchHours))
        case .infected:
            schedule(v, .clean, after: draws.exponential(mean: parameters.cleanupHours))
        default: break
        }
    }
}

extension WormResult {
    /// The CSV header; ``csv()`` writes one row per sample under it.
    public static let csvHeader = "hour,day,susceptible,infected,recovered,running,infected_spreading,quarantined,infections,vms"

    public func csv() -> String {
        var out = Self.csvHeader + "\n"
        out.reserveCapacity(samples.count * 64)
        for s in samples {
            let day = (s.hour / 24 * 10_000).rounded() / 10_000
            out += "\(s.hour),\(day),\(s.susceptible),\(s.infected),\(s.recovered),\(s.running),"
            out += "\(s.infectedSpreading),\(s.quarantined),\(s.infections),\(s.vms)\n"
        }
        return out
    }
}
