import Agent
import ArgumentParser
import Foundation
import WardenCore
import Server

/// `warden dev ingest-load`: simulated agents pushing events to `warden serve`, for the fleet
/// benchmark (scripts/bench-fleet). Bounded: `--agents` concurrent senders, `--events` each.
struct DevIngestLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest-load", abstract: "Simulated agents pushing events to a server (needs an admin token in $WARDEN_TOKEN).",
            discussion: """
                Example:
                  WARDEN_TOKEN=… warden dev ingest-load --server http://127.0.0.1:8480 --agents 50
                """)
    @Option(help: "The server URL.") var server: String
    @Option(help: "Concurrent simulated agents (each reports as host load-N).") var agents: Int = 100
    @Option(help: "Events per agent.") var events: Int = 2000
    @Option(help: "Events per request.") var batch: Int = 500
    @Option(help: "Total events per second to offer, paced evenly over the agents (0: as fast as the server answers).") var rate: Double = 0

    func validate() throws {
        guard (1...1000).contains(agents), (1...10_000_000).contains(events), (1...FleetAPI.maxEventsPerRequest).contains(batch) else {
            throw ValidationError("--agents 1-1000, --events 1-10000000, --batch 1-1000")
        }
    }

    struct Result: Encodable {
        var agents: Int; var events: Int; var seconds: Double; var eventsPerSecond: Double
        var requests: Int; var p50Ms: Double; var p99Ms: Double; var maxMs: Double
    }

    func run() throws {
        guard let token = ProcessInfo.processInfo.environment["WARDEN_TOKEN"] else { throw ValidationError("set $WARDEN_TOKEN to an admin token") }
        let (agents, events, batch, server, rate) = (self.agents, self.events, self.batch, self.server, self.rate)
        // Paced: each agent sends one batch every agents × batch / rate seconds, starting spread out.
        let period: Double = rate > 0 ? Double(agents * batch) / rate : 0
        let result: Result = try runAsync {
            let client = FleetClient(server: server, token: token)
            let start = ContinuousClock.now
            let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
                for a in 0..<agents {
                    group.addTask {
                        var lat: [Double] = []
                        var sent = 0
                        let begin = ContinuousClock.now + .milliseconds(Int(period * 1000 * Double(a) / Double(agents)))
                        var round = 0
                        while sent < events {
                            if period > 0 {
                                try await Task.sleep(until: begin + .milliseconds(Int(period * 1000 * Double(round))), clock: .continuous)
                                round += 1
                            }
                            let n = min(batch, events - sent)
                            struct E: Encodable { var id: String; var kind = "started"; var payload: [String: Int] }
                            struct B: Encodable { var events: [E] }
                            let body = B(events: (0..<n).map { E(id: "load-\(a)-\(sent + $0)", payload: ["i": sent + $0]) })
                            let t0 = ContinuousClock.now
                            struct Answer: Decodable { var results: [Ignored]; struct Ignored: Decodable {} }
                            let _: Answer = try await client.call(.POST, "/v1/hosts/load-\(a)/events", body: body)
                            let d = ContinuousClock.now - t0
                            lat.append(Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15)
                            sent += n
                        }
                        return lat
                    }
                }
                var all: [Double] = []
                for try await l in group { all += l }
                return all
            }
            let took = ContinuousClock.now - start
            await client.shutdown()
            let seconds = Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18
            let sorted = latencies.sorted()
            func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
            return Result(agents: agents, events: agents * events, seconds: seconds, eventsPerSecond: Double(agents * events) / seconds,
                          requests: sorted.count, p50Ms: pct(0.5), p99Ms: pct(0.99), maxMs: sorted.last ?? 0)
        }
        Output.stdout.line(try Output.json(result))
    }
}

