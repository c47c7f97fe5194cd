import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Policy

/// The issue's example policy, in the final documented shape.
let issueExample = """
apiVersion: warden/v1
kind: Policy
rules:
  - name: sensitive-only-in-secure-zone
    match: { labels: { sensitivity: high } }
    on: [start, migrate, restore]
    require: { host: { labels: { zone: secure } } }
  - name: office-hours
    match: { labels: { sensitivity: high } }
    on: [start]
    require: { window: { days: Mon-Fri, hours: "08:00-18:00", timezone: Europe/Berlin } }
  - name: never-on-removable-media
    match: { labels: { sensitivity: high } }
    on: [export, copy]
    deny: { destination: { removable: true } }
  - name: at-most-two-live-copies
    match: { labels: { sensitivity: high } }
    on: [copy, clone]
    require: { maxReplicas: 2 }
  - name: dormant-vms-rescan-first
    on: [start]
    require: { scanAge: 7d }
    otherwise: quarantine
  - name: no-criticals-online
    on: [start]
    deny: { findings: { severity: critical } }
  - name: rollback-must-not-reexpose
    on: [rollback]
    deny: { reexposes: { severity: high } }

"""

@Suite struct PolicyParserTests {
    func errors(_ text: String) -> [PolicyDiagnostic] {
        PolicyParser.parse(text, file: "p.yaml").1.filter { $0.level == .error }
    }

    @Test func issueExampleParses() throws {
        let set = try PolicySet.parse(issueExample)
        #expect(set.rules.count == 7)
        let office = try #require(set.rules.first { $0.name == "office-hours" })
        #expect(office.kind == .require)
        #expect(office.on == [.start])
        #expect(office.match.labels == ["sensitivity": ["high"]])
        let w = try #require(office.conditions.window?.first)
        #expect(w.daysText == "Mon,Tue,Wed,Thu,Fri")
        #expect(w.hoursText == "08:00-18:00")
        #expect(w.timeZone == "Europe/Berlin")
        let dormant = try #require(set.rules.first { $0.name == "dormant-vms-rescan-first" })
        #expect(dormant.otherwise == .quarantine)
        #expect(dormant.conditions.scanAge == PolicyDuration("7d"))
        #expect(set.rules.first { $0.name == "no-criticals-online" }?.conditions.findings == SeverityCondition(severity: .critical))
        #expect(set.rules.first { $0.name == "office-hours" }?.source == "policy.yaml:8")
        #expect(set.revision.hasPrefix("sha256:") && set.revision.count == 71)
        #expect(set.defaultEffect == .allow)
    }

    @Test func unknownKeysAreErrorsWithLines() {
        let d = errors("""
        apiVersion: warden/v1
        kind: Policy
        rules:
          - name: a
            on: [start]
            requires: { scanAge: 7d }
        """)
        #expect(d.contains { $0.line == 6 && $0.message.contains("unknown key 'requires'") })
        let d2 = errors("""
        apiVersion: warden/v1
        kind: Policy
        rules:
          - name: a
            on: [start]
            require: { scanAge: 7d, colour: blue }
        """)
        #expect(d2.count == 1)
        #expect(d2.first?.line == 6)
        #expect(d2.first?.message.contains("unknown key 'colour'") == true)
        #expect(d2.first?.description.hasPrefix("p.yaml:6:") == true)
    }

    @Test func badValuesAreErrors() {
        func one(_ cond: String, on: String = "[start]") -> [PolicyDiagnostic] {
            errors("apiVersion: warden/v1\nkind: Policy\nrules:\n  - name: r\n    on: \(on)\n    require: \(cond)\n")
        }
        #expect(one("{ scanAge: 7 }").first?.message.contains("not a duration") == true)
        #expect(one("{ scanAge: 7x }").first?.message.contains("not a duration") == true)
        #expect(one("{ scanAge: 0d }").first?.message.contains("not a duration") == true)
        #expect(one("{ scanAge: 1d1d }").first?.message.contains("not a duration") == true)
        #expect(one("{ window: { hours: \"08:00-18:00\", timezone: Europe/Berlinn } }").first?.message.contains("unknown time zone") == true)
        #expect(one("{ window: { hours: \"08:00-18:00\", timezone: CET } }").first?.message.contains("unknown time zone") == true)
        #expect(one("{ window: { hours: \"8-18\", timezone: UTC } }").first?.message.contains("HH:MM-HH:MM") == true)
        #expect(one("{ window: { hours: \"08:00-08:00\", timezone: UTC } }").first?.message.contains("HH:MM-HH:MM") == true)
        #expect(one("{ window: { hours: \"25:00-26:00\", timezone: UTC } }").first?.message.contains("HH:MM-HH:MM") == true)
        #expect(one("{ window: { days: Mon-Fryday, timezone: UTC } }").first?.message.contains("day list") == true)
        #expect(one("{ maxReplicas: 0 }").first?.message.contains("whole number") == true)
        #expect(one("{ maxReplicas: two }").first?.message.contains("whole number") == true)
        #expect(one("{ findings: { severity: awful } }").first?.message.contains("severity must be") == true)
        #expect(one("{ ownerPresent: yes }").first?.message.contains("true or false") == true)
        #expect(one("{ destination: { removable: true } }").first?.message.contains("have no destination") == true)
        #expect(one("{ destination: { roots: [relative/dir] } }", on: "[copy]").first?.message.contains("absolute path") == true)
        #expect(one("{ reexposes: { severity: high } }").first?.message.contains("only rollback") == true)
        #expect(one("{ reexposes: { severity: high } }", on: "[rollback]").isEmpty)
        #expect(one("{ scanAge: 7d }", on: "[start, teleport]").first?.message.contains("unknown operation 'teleport'") == true)
        #expect(one("{}").first?.message.contains("at least one condition") == true)
        #expect(one("{ host: {} }").first?.message.contains("names or labels") == true)
    }

    @Test func ruleShapeErrors() {
        let head = "apiVersion: warden/v1\nkind: Policy\nrules:\n"
        #expect(errors(head + "  - name: r\n    require: { scanAge: 7d }\n").first?.message.contains("missing 'on'") == true)
        #expect(errors(head + "  - name: r\n    on: [start]\n").first?.message.contains("exactly one of") == true)
        #expect(errors(head + "  - name: r\n    on: [start]\n    deny: {}\n    allow: {}\n").first?.message.contains("exactly one of") == true)
        #expect(errors(head + "  - name: r\n    on: [start]\n    deny: {}\n    otherwise: quarantine\n").first?.message.contains("only meaningful with require") == true)
        #expect(errors(head + "  - name: r\n    on: [start]\n    require: { scanAge: 1d }\n    otherwise: allow\n").first?.message.contains("deny or quarantine") == true)
        let dup = errors(head + "  - name: r\n    on: [start]\n    deny: {}\n  - name: r\n    on: [copy]\n    deny: {}\n")
        #expect(dup.first?.message.contains("already defined on line 4") == true)
        #expect(dup.first?.line == 7)
        #expect(errors(head + "  - name: 'bad name'\n    on: [start]\n    deny: {}\n").first?.message.contains("rule name") == true)
        #expect(errors("apiVersion: warden/v2\nkind: Policy\nrules: []\n").first?.message.contains("apiVersion must be warden/v1") == true)
        #expect(errors("apiVersion: warden/v1\nkind: Policies\nrules: []\n").first?.message.contains("kind must be Policy") == true)
        #expect(errors("apiVersion: warden/v1\nkind: Policy\n").first?.message.contains("missing 'rules'") == true)
        #expect(errors("apiVersion: warden/v1\nkind: Policy\ndefaultEffect: maybe\nrules: []\n").first?.message.contains("defaultEffect") == true)
        #expect(errors("apiVersion: warden/v1\nkind: Policy\nrules: []\nrules: []\n").first?.message.contains("duplicate key") == true)
        // A YAML syntax error names its line.
        let syntax = errors("apiVersion: warden/v1\nkind: Policy\nrules:\n  - name: r\n    on: [start\n")
        #expect(syntax.first?.message.hasPrefix("YAML:") == true)
        #expect((syntax.first?.line ?? 0) >= 5)
        #expect(errors("").first?.message.contains("empty") == true)
        #expect(errors("- just\n- a list\n").first?.message.contains("must be a mapping") == true)
    }

    @Test func mirrorsBelongToPatch() throws {
        let head = "apiVersion: warden/v1\nkind: Policy\nrules:\n"
        #expect(errors(head + "  - name: r\n    on: [patch]\n    require: { mirrors: [\"dir:/srv/*\"] }\n").isEmpty)
        #expect(errors(head + "  - name: r\n    on: [start, patch]\n    require: { mirrors: [\"dir:/srv/*\"] }\n").first?.message.contains("only patch has a mirror, not start") == true)
        #expect(errors(head + "  - name: r\n    on: [patch]\n    require: { mirrors: [] }\n").first?.message.contains("empty list") == true)
        let (set, _) = PolicyParser.parse(head + "  - name: r\n    on: [patch]\n    require: { mirrors: [\"http://mirror.corp/*\"] }\n", file: "p.yaml")
        #expect(set?.rules.first?.conditions.mirrors == ["http://mirror.corp/*"])
    }

    @Test func registryConditionsBelongToPushAndPull() throws {
        let head = "apiVersion: warden/v1\nkind: Policy\nrules:\n"
        #expect(errors(head + "  - name: r\n    on: [push, pull]\n    require: { registries: [\"reg.example/*\"], encrypted: true }\n").isEmpty)
        #expect(errors(head + "  - name: r\n    on: [pull]\n    allow: { signature: [unsigned], keepIdentity: true }\n").isEmpty)
        #expect(errors(head + "  - name: r\n    on: [start, push]\n    require: { registries: [\"x/*\"] }\n").first?.message.contains("only push and pull have a registry, not start") == true)
        #expect(errors(head + "  - name: r\n    on: [push]\n    allow: { signature: [unsigned] }\n").first?.message.contains("only pull has a signature") == true)
        #expect(errors(head + "  - name: r\n    on: [pull]\n    allow: { signature: [maybe] }\n").first?.message.contains("maybe is not trusted, unsigned or invalid") == true)
        #expect(errors(head + "  - name: r\n    on: [clone]\n    allow: { keepIdentity: true }\n").first?.message.contains("only pull keeps") == true)
        #expect(errors(head + "  - name: r\n    on: [copy]\n    require: { encrypted: true }\n").first?.message.contains("only push and pull") == true)
    }

    @Test func onIsAStringKeyNotABoolean() throws {
        // YAML 1.1 reads `on` as true; the parser reads scalar text, so this is the key "on".
        let set = try PolicySet.parse("apiVersion: warden/v1\nkind: Policy\nrules:\n  - name: r\n    on: start\n    deny: {}\n")
        #expect(set.rules.first?.on == [.start])
    }

    @Test func durations() {
        #expect(PolicyDuration("7d")?.seconds == 604_800)
        #expect(PolicyDuration("1d12h")?.seconds == 129_600)
        #expect(PolicyDuration("2w")?.seconds == 1_209_600)
        #expect(PolicyDuration("90m")?.description == "1h30m")
        #expect(PolicyDuration("30s")?.seconds == 30)
        for bad in ["", "d", "7", "7 d", "-1d", "1.5d", "99999999999999999999d", "200000w", "１d"] {
            #expect(PolicyDuration(bad) == nil, "\(bad)")
        }
    }

    @Test func days() {
        #expect(TimeWindow.parseDays(["Mon-Fri"]) == 0b0011_1110)
        #expect(TimeWindow.parseDays(["Sat", "Sun"]) == 0b1100_0000)
        #expect(TimeWindow.parseDays(["Fri-Mon"]) == 0b1110_0010)
        #expect(TimeWindow.parseDays(["mon,wed,friday"]) == 0b0010_1010)
        #expect(TimeWindow.parseDays(["daily"]) == 0b1111_1110)
        #expect(TimeWindow.parseDays(["Mo"]) == nil)
        #expect(TimeWindow.parseDays(["Mon-"]) == nil)
    }

    @Test func revisionIgnoresLayoutButNotMeaning() throws {
        let a = try PolicySet.parse(issueExample)
        let b = try PolicySet.parse("# a comment\n" + issueExample.replacingOccurrences(of: "{ labels: { sensitivity: high } }", with: "\n      labels:\n        sensitivity: \"high\""))
        #expect(a.revision == b.revision)
        let c = try PolicySet.parse(issueExample.replacingOccurrences(of: "scanAge: 7d", with: "scanAge: 8d"))
        #expect(a.revision != c.revision)
    }

    @Test func directoryLoadingAndLint() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try issueExample.write(toFile: dir + "/10-main.yaml", atomically: true, encoding: .utf8)
            try "apiVersion: warden/v1\nkind: Policy\ndefaultEffect: deny\nrules:\n  - name: allow-all-start\n    on: [start]\n    allow: {}\n"
                .write(toFile: dir + "/20-default.yml", atomically: true, encoding: .utf8)
            try "not a policy".write(toFile: dir + "/notes.txt", atomically: true, encoding: .utf8)
            try "apiVersion: warden/v1\nkind: PolicyTest\ntests: []\n".write(toFile: dir + "/x_test.yaml", atomically: true, encoding: .utf8)
            let set = try PolicySet.load(directory: dir)
            #expect(set.rules.count == 8)
            #expect(set.defaultEffect == .deny)
            #expect(set.documents.map { ($0.file as NSString).lastPathComponent } == ["10-main.yaml", "20-default.yml"])
            // Same content elsewhere: same revision.
            try Fixtures.withTemporaryDirectory { other in
                try FileManager.default.copyItem(atPath: dir + "/10-main.yaml", toPath: other + "/10-main.yaml")
                try FileManager.default.copyItem(atPath: dir + "/20-default.yml", toPath: other + "/20-default.yml")
                #expect(try PolicySet.load(directory: other).revision == set.revision)
                // A rule name used in two files is an error naming both places.
                try "apiVersion: warden/v1\nkind: Policy\nrules:\n  - name: office-hours\n    on: [copy]\n    deny: {}\n"
                    .write(toFile: other + "/30-dup.yaml", atomically: true, encoding: .utf8)
                let (_, diags) = try PolicySet.lint(directory: other)
                #expect(diags.contains { $0.file.hasSuffix("30-dup.yaml") && $0.line == 4 && $0.message.contains("10-main.yaml:8") })
                #expect(throws: WardenError.self) { try PolicySet.load(directory: other) }
            }
        }
        #expect(throws: WardenError.self) { try PolicySet.load(directory: "/nonexistent/policy") }
    }

    @Test func defaultDirectory() {
        #expect(PolicySet.defaultDirectory(environment: ["WARDEN_HOME": "/w"]) == "/w/policy")
        #expect(PolicySet.defaultDirectory(environment: ["WARDEN_HOME": "/w", "WARDEN_POLICY": "/p"]) == "/p")
        #expect(PolicySet.defaultDirectory(explicit: "/x", environment: ["WARDEN_POLICY": "/p"]) == "/x")
        #expect(PolicySet.defaultDirectory(environment: ["HOME": "/home/a"]) == "/home/a/.local/share/warden/policy")
    }
}
