import Foundation
import Testing
import WardenTestSupport

/// `warden dev simulate worm` as scripts/simulate-worm runs it: JSON by its schema, the CSV,
/// and hostile parameters refused in one line.
@Suite struct SimulationCommandTests {
    @Test func jsonMatchesItsSchemaAndTheCSVHasOneRowPerDay() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let r = try WardenRun.run(["dev", "simulate", "worm", "--fleet", "transient", "--vms", "3000", "--days", "30",
                                       "--admission", "--scan-delay-hours", "1", "--csv", dir + "/run.csv", "--json"])
            #expect(r.status == 0, "\(r.stderr)")
            try JSONSchemaTests().validate(r.stdout, schema: "worm-simulation.v1.json")
            let doc = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
            let params = try #require(doc["parameters"] as? [String: Any])
            // The transient preset's arrivals scale with --vms (0.1% of the fleet a day).
            #expect(params["arrivals_per_day"] as? Double == 3 && params["admission"] as? Bool == true)
            #expect((doc["peak_infected"] as? Int ?? 0) >= 10 && (doc["quarantines"] as? Int ?? 0) > 0)
            let rows = try String(contentsOfFile: dir + "/run.csv", encoding: .utf8).split(separator: "\n")
            #expect(rows.first == "hour,day,susceptible,infected,recovered,running,infected_spreading,quarantined,infections,vms")
            #expect(rows.count == 1 + 31)
            let last = rows.last!.split(separator: ",").map(String.init)
            #expect(last[0] == "720.0" && Int(last[9]) == doc["final_vms"] as? Int)
        }
    }

    @Test(arguments: [(["--vms", "0"], "vms"), (["--days", "nan"], "days"), (["--transient", "2"], "transient"),
                      (["--vms", "40000000", "--fleet", "transient", "--days", "3650", "--arrivals-per-day", "9000000"], "arrivals")])
    func badParametersAreOneLineAndNothingIsWritten(args: [String], names: String) throws {
        try Fixtures.withTemporaryDirectory { dir in
            let r = try WardenRun.run(["dev", "simulate", "worm", "--csv", dir + "/out.csv"] + args)
            let lines = r.stderr.split(separator: "\n")
            #expect(r.status == 2 && lines.count == 1 && lines[0].contains(names), "\(r.status) \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/out.csv"))
        }
    }
}
