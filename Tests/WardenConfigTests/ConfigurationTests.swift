import Foundation
import Logging
import Testing
import WardenConfig
import WardenCore
import WardenTestSupport

@Suite struct ConfigurationTests {
    @Test func parsesKnownKeysWithTheirLines() throws {
        let text = """
        # Warden
        home: /srv/warden
        log_level: info

        advisories:
          osv_url: https://mirror.example/osv
        progress: never
        """
        let v = try Configuration.parse(text, file: "c.yaml")
        #expect(v["home"]?.value == "/srv/warden" && v["home"]?.line == 2)
        #expect(v["log_level"]?.value == "info" && v["log_level"]?.line == 3)
        #expect(v["advisories.osv_url"]?.value == "https://mirror.example/osv" && v["advisories.osv_url"]?.line == 6)
        #expect(v["progress"]?.value == "never")
        #expect(try Configuration.parse("", file: "e.yaml").isEmpty)
        #expect(try Configuration.parse("# only a comment\n", file: "e.yaml").isEmpty)
    }

    @Test(arguments: [
        ("home: /a\nhomme: /b\n", "c.yaml:2:1: unknown key 'homme'"),
        ("advisories:\n  osv: https://x\n", "c.yaml:2:3: unknown key 'advisories.osv'"),
        ("log_level: loud\n", "c.yaml:1:12: log_level is one of trace"),
        ("progress: sometimes\n", "c.yaml:1:11: progress is one of auto, always, never"),
        ("advisories: https://x\n", "c.yaml:1:13: advisories is a mapping"),
        ("home: [a, b]\n", "c.yaml:1:7: home takes one value"),
        ("- home\n", "c.yaml:1:1: the configuration is a mapping"),
        ("database_url: mysql://x\n", "c.yaml:1:15: database_url is a postgres:// URL"),
        ("advisories:\n  osv_url: ftp://x\n", "c.yaml:2:12: advisories.osv_url is an http:// or https:// URL"),
        ("home: /a\nhome: /b\n", "c.yaml:2:1: home is set twice"),
        ("home: ''\n", "c.yaml:1:7: home is empty"),
    ])
    func badFilesNameFileLineAndColumn(text: String, expected: String) throws {
        let e = try #require(throws: WardenError.self) { try Configuration.parse(text, file: "c.yaml") }
        #expect(e.description.hasPrefix(expected), "\(e.description)")
        #expect(e.exitCode == 2)
        #expect(!e.description.contains("\n"))
    }

    @Test func deepOrHugeFilesAreRefusedBeforeParsing() throws {
        let deep = String(repeating: "[", count: 100_000)
        #expect(throws: WardenError.self) { try Configuration.parse("home: " + deep, file: "d.yaml") }
        let huge = "home: " + String(repeating: "a", count: Configuration.maxFileSize)
        #expect(throws: WardenError.self) { try Configuration.parse(huge, file: "h.yaml") }
    }

    @Test func environmentBeatsUserFileBeatsSystemFileAndWardenConfigNamesOneFile() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try FileManager.default.createDirectory(atPath: tmp + "/xdg/warden", withIntermediateDirectories: true)
            try "home: /user\nprogress: never\n".write(toFile: tmp + "/xdg/warden/config.yaml", atomically: true, encoding: .utf8)
            var env = ["XDG_CONFIG_HOME": tmp + "/xdg", "HOME": tmp]
            var c = try Configuration.load(environment: env)
            #expect(c.values["home"] == .init(text: "/user", source: .file(path: tmp + "/xdg/warden/config.yaml", line: 1)))
            #expect(c.files.last == tmp + "/xdg/warden/config.yaml")
            env["WARDEN_HOME"] = "/env"
            c = try Configuration.load(environment: env)
            #expect(c.values["home"] == .init(text: "/env", source: .environment("WARDEN_HOME")))
            #expect(c.values["progress"]?.text == "never")
            // $WARDEN_CONFIG: that file only; empty: none; missing: an error.
            try "log_level: debug\n".write(toFile: tmp + "/one.yaml", atomically: true, encoding: .utf8)
            c = try Configuration.load(environment: ["WARDEN_CONFIG": tmp + "/one.yaml", "XDG_CONFIG_HOME": tmp + "/xdg"])
            #expect(c.files == [tmp + "/one.yaml"] && c.values["home"] == nil && c.values["log_level"]?.text == "debug")
            c = try Configuration.load(environment: ["WARDEN_CONFIG": "", "XDG_CONFIG_HOME": tmp + "/xdg"])
            #expect(c.files.isEmpty && c.values.isEmpty)
            #expect(throws: WardenError.self) { try Configuration.load(environment: ["WARDEN_CONFIG": tmp + "/none.yaml"]) }
        }
    }

    @Test func passwordsInURLsAreNotShown() {
        let key = ConfigKey.named("database_url")!
        #expect(Configuration.shown(key, "postgres://warden:s3cret@db:5432/fleet") == "postgres://warden:***@db:5432/fleet")
        #expect(Configuration.shown(key, "postgres://db/fleet") == "postgres://db/fleet")
        #expect(Configuration.shown(ConfigKey.named("home")!, "/a:b@c") == "/a:b@c")
    }

    @Test func constantDefaultsAndTrimmedURLs() {
        #expect(ConfigKey.osvURL.value(environment: [:]) == "https://osv-vulnerabilities.storage.googleapis.com")
        #expect(ConfigKey.osvURL.value(environment: ["WARDEN_OSV_URL": "http://127.0.0.1:9/osv//"]) == "http://127.0.0.1:9/osv")
        #expect(ConfigKey.named("log_level")!.value(environment: [:]) == "notice")
    }
}

@Suite struct ProgressMeterTests {
    final class Clock: @unchecked Sendable { var t = 0.0 }
    final class Sink: @unchecked Sendable {
        let lines = Locked<[String]>([])
        func write(_ s: String) { lines.withLock { $0.append(s) } }
    }

    @Test func modes() {
        #expect(ProgressMode.auto.shows(terminal: true) && !ProgressMode.auto.shows(terminal: false))
        #expect(ProgressMode.always.shows(terminal: false) && !ProgressMode.never.shows(terminal: true))
    }

    @Test func terminalRedrawsInPlaceWithRateAndETAThenClears() {
        let clock = Clock(), sink = Sink()
        let m = ProgressMeter("export", total: 4 << 30, mode: .auto, terminal: true, write: { sink.write($0) }, now: { clock.t })
        clock.t = 0.1; m.advance(by: 1 << 30)
        #expect(sink.lines.withLock { $0 }.isEmpty) // quick work draws nothing
        clock.t = 1.0; m.set(done: 1 << 30)
        clock.t = 1.1; m.advance(by: 1)             // within 0.2 s of the last draw
        clock.t = 2.0; m.set(done: 2 << 30)
        m.finish()
        let lines = sink.lines.withLock { $0 }
        #expect(lines == ["\r\u{1B}[Kwarden: export: 1.0 GiB of 4.0 GiB (25%), 1.0 GiB/s, ETA 0:03",
                          "\r\u{1B}[Kwarden: export: 2.0 GiB of 4.0 GiB (50%), 1.0 GiB/s, ETA 0:02",
                          "\r\u{1B}[K"])
    }

    @Test func plainLinesEveryFiveSecondsWhenForcedAndNothingWhenNever() {
        let clock = Clock(), sink = Sink()
        let m = ProgressMeter("discover", total: 100, unit: .items("disks"), mode: .always, terminal: false,
                              write: { sink.write($0) }, now: { clock.t })
        for i in 1...100 { clock.t = Double(i) / 10; m.advance() }
        m.finish()
        let lines = sink.lines.withLock { $0 }
        #expect(lines.count == 3)
        #expect(lines.first == "warden: discover: 50 of 100 disks (50%), 10/s, ETA 0:05\n")
        #expect(lines.last == "warden: discover: 100 of 100 disks (100%), 10/s\n")
        let quiet = Sink()
        let n = ProgressMeter("x", total: 1, mode: .never, terminal: true, write: { quiet.write($0) }, now: { clock.t += 10; return clock.t })
        n.advance(); n.finish()
        #expect(quiet.lines.withLock { $0 }.isEmpty)
    }
}

@Suite struct LogLineTests {
    @Test func plainAndJournaldLines() {
        let plain = LineLogHandler(label: "warden", journald: false)
        #expect(plain.format(level: .notice, message: "using partition 2", metadata: nil) == "warden: using partition 2")
        #expect(plain.format(level: .warning, message: "slow", metadata: ["vm": "web"]) == "warden: warning: slow vm=web")
        #expect(plain.format(level: .info, message: "a\nb\u{1B}[2J", metadata: nil).contains("\n") == false)
        let journal = LineLogHandler(label: "warden.serve", journald: true)
        #expect(journal.format(level: .error, message: "db down", metadata: nil) == "<3>db down")
        #expect(LineLogHandler.priority(.debug) == 7 && LineLogHandler.priority(.critical) == 2)
    }
}
