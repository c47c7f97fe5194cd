import Foundation
import Testing
import WardenTestSupport

@Suite struct VersionCommandTests {
    @Test func comparesOnePair() throws {
        let cases: [(String, String, String, String)] = [
            ("deb", "1.0~rc1", "1.0", "<"), ("deb", "1:0.1", "2.0", ">"), ("deb", "1.0", "1.0-0", "="),
            ("rpm", "1.0^1", "1.0.1", "<"), ("rpm", "1.0", "0:1.0", "="), ("apk", "1.0_p1", "1.0_rc1", ">"),
        ]
        for (scheme, a, b, want) in cases {
            let r = try WardenRun.run(["version", "compare", "--scheme", scheme, a, b])
            #expect(r.status == 0, "\(scheme) \(a) \(b): \(r.stderr)")
            #expect(r.stdoutText == want + "\n", "\(scheme) \(a) \(b)")
        }
    }

    @Test func unorderableVersionExitsTwo() throws {
        let r = try WardenRun.run(["version", "compare", "--scheme", "deb", "a:1", "1.0"])
        #expect(r.status == 2)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr.split(separator: "\n").count == 1)
        #expect(r.stderr.contains("epoch"))
    }

    @Test func bulkStdinContinuesPastBadLines() throws {
        let input = "1.0 1.1\n1:2 x:1\n\nonly-one\n2.0 1.0\n1.0 1.0\n"
        let r = try Tool.run([Fixtures.wardenBinary, "version", "compare", "--scheme", "deb"],
                             stdin: Data(input.utf8), check: false)
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdoutText.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.count == 6)
        guard lines.count == 6 else { return }
        #expect(lines[0] == "<")
        #expect(lines[1].hasPrefix("error: "))
        #expect(lines[2].hasPrefix("error: "))
        #expect(lines[3] == ">")
        #expect(lines[4] == "=")
        #expect(lines[5] == "")

        let allBad = try Tool.run([Fixtures.wardenBinary, "version", "compare", "--scheme", "rpm"],
                                  stdin: Data("x:1 1\nnope\n".utf8), check: false)
        #expect(allBad.status == 2)
        #expect(allBad.stdoutText.split(separator: "\n").allSatisfy { $0.hasPrefix("error: ") })
    }

    @Test func checkApk() throws {
        let ok = try WardenRun.run(["version", "check", "--scheme", "apk", "1.2.3_rc1-r4"])
        #expect(ok.status == 0)
        #expect(ok.stdoutText == "valid\n")
        let bad = try WardenRun.run(["version", "check", "--scheme", "apk", "1.2_foo"])
        #expect(bad.status == 1)
        #expect(bad.stdoutText == "invalid\n")
    }
}
