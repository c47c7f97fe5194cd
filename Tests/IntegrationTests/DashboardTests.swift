import Foundation
import Testing
import WardenCore
import WardenTestSupport

/// The dashboard in headless Chromium (Debian's `chromium`), against a server seeded with a
/// synthetic fleet: each page loads after a one-time sign-in link, and its DOM holds what the
/// ledger says. Screenshots go to docs/dashboard/ when WARDEN_UPDATE_SCREENSHOTS=1.
@Suite struct DashboardTests {
    static let chromium = "/usr/bin/chromium"

    /// Runs Chromium (as `nobody` when the tests run as root: it needs no privilege).
    static func chromium(_ args: [String], profile: String) throws -> ToolResult {
        let owner = getuid() == 0 ? ["runuser", "-u", "nobody", "--"] : []
        return try Tool.run(owner + [chromium, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                                     "--user-data-dir=\(profile)", "--hide-scrollbars"] + args, timeout: 120)
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: DashboardTests.chromium), "needs chromium"))
    func pagesRenderInChromium() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("warden-dash-\(UUID().uuidString.prefix(8))").path
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try FileManager.default.createDirectory(atPath: tmp + "/srv", withIntermediateDirectories: true)
        for profile in ["chrome", "chrome-none", "chrome-again"] {
            try FileManager.default.createDirectory(atPath: "\(tmp)/\(profile)", withIntermediateDirectories: true)
            _ = chmod("\(tmp)/\(profile)", 0o777)
        }
        _ = chmod(tmp, 0o755)
        try Tool.run([Fixtures.wardenBinary, "dev", "synth", "--db", tmp + "/srv/warden.db", "--vms", "80", "--events", "4000",
                      "--hosts", "4", "--seed", "3"])
        let server = ServeProcess(dir: tmp + "/srv", listen: "127.0.0.1:0", database: nil, tls: false)
        let token = try server.token("viewer", role: "auditor")
        try server.start()
        defer { server.kill9() }
        // A VM with both a parent and a child: its page draws a three-level lineage.
        let vms = try #require(try server.get("/v1/vms", token: token) as? [[String: Any]])
        let parents = Set(vms.compactMap { $0["parent"] as? String })
        let middle = try #require(vms.first { ($0["parent"] as? String) != nil && parents.contains($0["id"] as? String ?? "") })
        let id = middle["id"] as! String, parent = middle["parent"] as! String

        func link(_ next: String) throws -> String {
            try Tool.run([Fixtures.wardenBinary, "serve", "login-link", "--server", server.url, "--next", next],
                         environment: ["WARDEN_TOKEN": token]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let pages: [(name: String, path: String, expect: [String])] = [
            ("census", "/", [#"id="live""#, "Growth", #"class="chart growth""#, #"id="dormant""#]),
            ("findings", "/findings", ["VMs by worst severity", #"id="vms""#, "critical"]),
            ("vm", "/vms/\(id)", [#"class="lineage""#, #"data-vm="\#(parent)""#, #"class="node self" data-vm="\#(id)""#, #"id="residency""#, #"id="history""#]),
            ("exposure", "/exposure?host=synth-host-00&from=2020-01-01&to=2030-01-01", [#"id="exposed-count""#, #"id="exposed""#]),
            ("decisions", "/decisions", [#"id="denied-count""#, #"class="deny""#]),
        ]
        for page in pages {
            let url = try link(page.path)
            let dom = try Self.chromium(["--dump-dom", url], profile: tmp + "/chrome").stdoutText
            for needle in page.expect { #expect(dom.contains(needle), "\(page.name): no \(needle) in \(dom.prefix(600))") }
            #expect(!dom.contains("Sign in"), "\(page.name) asked to sign in")
            if page.name == "decisions" {
                // Denials first.
                let firstRow = dom.range(of: "<tbody>").map { String(dom[$0.upperBound...].prefix(400)) } ?? ""
                #expect(firstRow.contains(#"class="deny""#), "\(firstRow)")
            }
            let shot = tmp + "/chrome/\(page.name).png"
            _ = try Self.chromium(["--window-size=1280,1000", "--screenshot=\(shot)", try link(page.path)], profile: tmp + "/chrome")
            let png = try #require(FileManager.default.contents(atPath: shot), "\(page.name): no screenshot")
            #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]) && png.count > 10_000)
            if ProcessInfo.processInfo.environment["WARDEN_UPDATE_SCREENSHOTS"] == "1" {
                let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                    .appendingPathComponent("docs/dashboard")
                try FileManager.default.createDirectory(at: docs, withIntermediateDirectories: true)
                try png.write(to: docs.appendingPathComponent("\(page.name).png"))
            }
        }
        // Without a session: the sign-in page; a used link does not sign in again.
        let plain = try Self.chromium(["--dump-dom", server.url + "/findings"], profile: tmp + "/chrome-none").stdoutText
        #expect(plain.contains("Sign in") && !plain.contains(#"id="vms""#))
        let once = try link("/")
        _ = try Self.chromium(["--dump-dom", once], profile: tmp + "/chrome")
        let again = try Self.chromium(["--dump-dom", once], profile: tmp + "/chrome-again").stdoutText
        #expect(again.contains("unknown, used or expired"))
    }
}
