import Foundation
import Simulation
import Testing
import WardenCore
import WardenTestSupport

/// The worm simulation against the classic SIR equations (solved by scipy), and its claims.
@Suite struct WormSimulationTests {
    /// The SIR model with patching, solved by scipy's `solve_ivp` (an independent numerical
    /// solution): s' = −βsi − ps, i' = βsi − γi, r' = γi + ps, on fractions of the fleet.
    static let oracle = """
    import sys
    from scipy.integrate import solve_ivp
    beta, gamma, patch, i0, hours = map(float, sys.argv[1:6])
    def f(t, y):
        s, i, r = y
        return [-beta * s * i - patch * s, beta * s * i - gamma * i, gamma * i + patch * s]
    ts = list(range(0, int(hours) + 1))
    sol = solve_ivp(f, (0, hours), [1 - i0, i0, 0], method="DOP853", t_eval=ts, rtol=1e-10, atol=1e-12)
    assert sol.success, sol.message
    for t, s, i, r in zip(sol.t, *sol.y):
        print(f"{t},{s},{i},{r}")
    """

    /// With transience, arrivals and admission off, the stochastic run follows the SIR equations:
    /// the fractions S, I and R stay within 0.02 of scipy's solution at every hour of 20 days,
    /// and the final share never infected within 0.01. (The tolerance covers the noise of the
    /// first generations, about 1/√I₀ in timing, and the tau-leap's O(β·dt) bias; both are
    /// measured in docs/simulation.md.)
    @Test func matchesTheSIREquationsWithTransienceOff() throws {
        var p = WormParameters.staticFleet
        p.vms = 200_000
        p.initialInfected = 2_000
        p.contactRate = 0.25
        p.cleanupHours = 24
        p.patchHours = 96
        p.days = 20
        p.stepHours = 0.05
        p.sampleHours = 1
        p.seed = 7
        let run = try WormSimulation.run(p)
        let rows = try Fixtures.withTemporaryDirectory { dir -> [[Double]] in
            let script = dir + "/sirode.py"
            try Fixtures.write(Array(Self.oracle.utf8), to: script)
            let out = try Tool.run(["python3", script, "0.25", "\(1.0 / 24)", "\(1.0 / 96)", "0.01", "480"]).stdoutText
            return out.split(separator: "\n").map { $0.split(separator: ",").compactMap { Double($0) } }
        }
        #expect(rows.count == 481)
        #expect(run.samples.count == 481)
        var worst = 0.0
        for (row, sample) in zip(rows, run.samples) {
            #expect(row[0] == sample.hour)
            let n = Double(sample.vms)
            for (ode, sim) in [(row[1], sample.susceptible), (row[2], sample.infected), (row[3], sample.recovered)] {
                worst = max(worst, abs(ode - Double(sim) / n))
            }
        }
        #expect(worst < 0.02, "largest deviation from the ODE: \(worst)")
        let last = run.samples.last!, odeLast = rows.last!
        #expect(abs(Double(last.susceptible) / Double(last.vms) - odeLast[1]) < 0.01)
        // The epidemic really happened: a sizeable peak, not a trivial agreement at zero.
        #expect(run.peakInfected > 20_000)
    }

    @Test func aRunReproducesFromItsSeed() throws {
        var p = WormParameters.transientFleet
        p.vms = 5_000
        p.arrivalsPerDay = 5
        p.days = 60
        p.admission = true
        p.scanDelayHours = 2
        let a = try WormSimulation.run(p), b = try WormSimulation.run(p)
        #expect(a.csv() == b.csv())
        p.seed = 2
        #expect(try WormSimulation.run(p).csv() != a.csv())
    }

    /// Every sample keeps S + I + R equal to the fleet, and the running and quarantined counts inside it.
    @Test func countsStayConsistent() throws {
        var p = WormParameters.transientFleet
        p.vms = 4_000
        p.arrivalsPerDay = 20
        p.days = 90
        p.sampleHours = 6
        p.admission = true
        p.scanDelayHours = 6
        let run = try WormSimulation.run(p)
        var lastVMs = 0
        for s in run.samples {
            #expect(s.susceptible >= 0 && s.infected >= 0 && s.recovered >= 0)
            #expect(s.running <= s.vms && s.quarantined <= s.running && s.infectedSpreading <= s.infected)
            #expect(s.vms >= lastVMs)
            lastVMs = s.vms
        }
        #expect(run.finalVMs > 4_000 + 90 * 20 / 2, "arrivals joined the fleet")
        #expect(run.quarantines > 0)
    }

    /// The paper's claim on a small fleet: a transient fleet keeps the worm far longer than a
    /// static one, and admission control at start takes that back.
    @Test func transienceProlongsTheWormAndAdmissionEndsIt() throws {
        func run(_ preset: WormParameters, admission: Bool = false) throws -> WormResult {
            var p = preset
            p.vms = 20_000
            if p.transientFraction > 0 { p.arrivalsPerDay = 20 }
            p.days = 180
            p.admission = admission
            return try WormSimulation.run(p)
        }
        let still = try run(.staticFleet)
        let transient = try run(.transientFleet)
        let admitted = try run(.transientFleet, admission: true)
        let staticEnd = try #require(still.eradicatedDay)
        #expect(staticEnd < 40)
        #expect((transient.eradicatedDay ?? 181) > staticEnd * 2)
        #expect(transient.infectedVMHours > still.infectedVMHours)
        #expect((admitted.eradicatedDay ?? 181) < (transient.eradicatedDay ?? 181))
        #expect(admitted.infectedVMHours < transient.infectedVMHours)
    }

    static func absurd(_ name: String) -> WormParameters {
        var p = WormParameters.staticFleet
        switch name {
        case "vms": p.vms = 0
        case "vms ": p.vms = 60_000_000
        case "days": p.days = .nan
        case "step-hours": p.stepHours = 0.000001
        case "contact-rate": p.contactRate = -1
        case "transient": p.transientFraction = 1.5
        case "initial-infected": p.initialInfected = 200_000
        case "arrivals": p.arrivalsPerDay = 1e9
        default: p.offSigma = .infinity
        }
        return p
    }

    @Test(arguments: ["vms", "vms ", "days", "step-hours", "contact-rate", "transient", "initial-infected", "arrivals", "off-sigma"])
    func absurdParametersAreRefusedBeforeAnyAllocation(name: String) throws {
        let p = Self.absurd(name)
        let error = try #require(throws: WardenError.self) { try WormSimulation.run(p) }
        #expect(error.code == .invalidArgument)
        #expect(error.message.contains(name.trimmingCharacters(in: .whitespaces)))
    }
}
