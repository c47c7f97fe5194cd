import Foundation
import Testing
import WardenTestSupport
@testable import Advisories


/// Runs an oracle once over all pairs: writes `a b` lines to a file and runs `script`
/// with the file as $PAIRS; the script prints one answer per line.
func oracleAnswers(_ pairs: [(String, String)], script: String) throws -> [String] {
    try Fixtures.withTemporaryDirectory { dir in
        let file = dir + "/pairs"
        let text = pairs.map { "\($0.0) \($0.1)\n" }.joined()
        try Fixtures.write(Array(text.utf8), to: file)
        let r = try Tool.sh("PAIRS=\"\(file)\"\n" + script)
        let lines = r.stdoutText.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        #expect(lines.count == pairs.count, "oracle printed \(lines.count) answers for \(pairs.count) pairs; stderr: \(r.stderr.prefix(500))")
        return lines
    }
}

/// Every pair of the curated list (both orders), plus `random` generated pairs.
func pairs(curated: [String], random: Int, seed: UInt64, generate: (inout SeededRandom) -> String) -> [(String, String)] {
    var out: [(String, String)] = []
    for a in curated { for b in curated { out.append((a, b)) } }
    var rng = SeededRandom(seed: seed)
    for _ in 0..<random {
        let a = generate(&rng)
        // Half the time B is A with one byte changed: close pairs find ordering bugs.
        let b: String
        if Bool.random(using: &rng), !a.isEmpty {
            var bytes = Array(a.utf8)
            let i = Int.random(in: 0..<bytes.count, using: &rng)
            bytes[i] = Array(generate(&rng).utf8).first ?? bytes[i]
            b = String(decoding: bytes, as: UTF8.self)
        } else {
            b = generate(&rng)
        }
        out.append((a, b))
    }
    return out
}

func randomString(_ pieces: [String], count: ClosedRange<Int>, _ rng: inout SeededRandom) -> String {
    (0..<Int.random(in: count, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined()
}

func mismatchReport(_ bad: [String]) -> Comment {
    Comment(rawValue: "\(bad.count) mismatches, first ones:\n" + bad.prefix(25).joined(separator: "\n"))
}

let longDigits = "123456789012345678901234567890"   // beyond 64 bits

@Suite struct DebianVersionTests {
    static let curated = [
        "1.0", "1.0-1", "1.0-0", "1:1.0", "0:1.0", "2:0.1", "1.0~rc1", "1.0~~", "1.0~", "1.0+b1",
        "1.0a", "1.0A", "1.0.", "1.0-1~bpo1", "1.00", "1.000001", "1.1", "01.1", "1.0-1.1",
        "1.0+dfsg-1ubuntu1", "1.0-a", "a1.0", "~1", "1.0:2-3", "1.0-2-3", longDigits, "\(longDigits)1",
        "1:\(longDigits)", "99999999999999999999:1", "2147483647:1", "2147483648:1", "1.0!", "1.0-!",
        "1.0-", ":1.0", "a:1.0", "1:", "1.0_1", "1:2:3", "1.0-1-",
    ]

    static func generate(_ rng: inout SeededRandom) -> String {
        let pieces = ["0", "1", "2", "9", "00", "10", "123", longDigits, ".", ".", "+", "~", "~", "-", "a", "b", "Z", "z", ":", "_"]
        var s = randomString(pieces, count: 1...7, &rng)
        if Int.random(in: 0..<4, using: &rng) == 0 { s = "\(Int.random(in: 0...3, using: &rng)):" + s }
        while s.hasPrefix("-") { s.removeFirst() }   // dpkg would read it as an option
        return s.isEmpty ? "0" : s
    }

    @Test func matchesDpkg() throws {
        let all = pairs(curated: Self.curated, random: 2500, seed: 0xDEB, generate: Self.generate)
            .filter { !$0.0.hasPrefix("-") && !$0.1.hasPrefix("-") }
        #expect(all.count > 3000)
        // dpkg exits 0 when the relation holds, 1 when not, 2 on a syntax error.
        let answers = try oracleAnswers(all, script: """
        while read -r a b; do
          if dpkg --compare-versions "$a" lt "$b" 2>/dev/null; then echo '<'
          else rc=$?
            if [ "$rc" != 1 ]; then echo '!'
            elif dpkg --compare-versions "$a" eq "$b" 2>/dev/null; then echo '='
            else echo '>'; fi
          fi
        done < "$PAIRS"
        """)
        var bad: [String] = []
        for (i, (a, b)) in all.enumerated() where i < answers.count {
            let mine: String
            do { mine = try VersionScheme.deb.compare(a, b).rawValue } catch { mine = "!" }
            if mine != answers[i] { bad.append("\(a) \(b): dpkg \(answers[i]), warden \(mine)") }
        }
        #expect(bad.count == 0, mismatchReport(bad))
    }

    @Test func errorsAndParts() throws {
        #expect(throws: (any Error).self) { try DebianVersion("") }
        #expect(throws: (any Error).self) { try DebianVersion("x:1.0") }
        let v = try DebianVersion(" 3:1.2-3-4 ")
        #expect(v.epoch == 3 && v.upstream == "1.2-3" && v.revision == "4")
        #expect(try DebianVersion("1.0~rc1") < DebianVersion("1.0"))
    }
}

@Suite struct RPMVersionTests {
    static let curated = [
        "1.0", "1.0-1", "1.0-0", "1:1.0", "0:1.0", ":1.0", "2:0.1", "1.0~rc1", "1.0~", "1.0~~", "1.0^", "1.0^1",
        "1.0^git1-1", "1.0.1", "1.0~rc1^1", "1.0a", "1.0A", "1.0.a", "1.00", "1.01", "01.1", "1.1", "a",
        "1.0_1", "1.0+1", "1..0", "1.0.", longDigits, "\(longDigits).1", "1:\(longDigits)", "\(longDigits):1",
        "1.0-1.el8", "1.0-1.el8_2", "1.0-1~el8", "1.0-", "1.0-a-b", "^", "~", "1é", "1.0-1^",
    ]

    static func generate(_ rng: inout SeededRandom) -> String {
        let pieces = ["0", "1", "2", "9", "00", "10", "123", longDigits, ".", ".", "~", "^", "a", "b", "Z", "rc", "_", "+", "-"]
        var s = randomString(pieces, count: 1...7, &rng)
        if Int.random(in: 0..<4, using: &rng) == 0 { s = "\(Int.random(in: 0...3, using: &rng)):" + s }
        return s
    }

    /// System python3 with python3-rpm (a pyenv python3 may come first on PATH).
    static func python() throws -> String {
        for p in ["/usr/bin/python3", "python3"] {
            if (try? Tool.run([p, "-c", "import rpm"], check: false))?.status == 0 { return p }
        }
        throw WardenTestError("python3-rpm is not installed (apt-get install python3-rpm)")
    }

    @Test func matchesRpmLabelCompare() throws {
        let all = pairs(curated: Self.curated, random: 2500, seed: 0x52504D, generate: Self.generate)
            .filter { (try? RPMVersion($0.0)) != nil && (try? RPMVersion($0.1)) != nil }
        #expect(all.count > 3000)
        let py = try Self.python()
        // Split as RPMVersion documents: epoch before the first ':', release after the last '-'.
        let answers = try oracleAnswers(all, script: """
        \(py) - "$PAIRS" <<'PY'
        import rpm, sys
        def evr(s):
            e = "0"
            if ":" in s:
                e, s = s.split(":", 1)
                e = e or "0"
            r = ""
            if "-" in s:
                s, r = s.rsplit("-", 1)
            return (e, s, r)
        for line in open(sys.argv[1], encoding="utf-8"):
            a, b = line.rstrip("\\n").split(" ")
            print({-1: "<", 0: "=", 1: ">"}[rpm.labelCompare(evr(a), evr(b))])
        PY
        """)
        var bad: [String] = []
        for (i, (a, b)) in all.enumerated() where i < answers.count {
            let mine = (try? VersionScheme.rpm.compare(a, b).rawValue) ?? "!"
            if mine != answers[i] { bad.append("\(a) \(b): rpm \(answers[i]), warden \(mine)") }
        }
        #expect(bad.count == 0, mismatchReport(bad))
    }

    @Test func errorsAndParts() throws {
        #expect(throws: (any Error).self) { try RPMVersion("") }
        #expect(throws: (any Error).self) { try RPMVersion("x:1.0") }
        #expect(throws: (any Error).self) { try RPMVersion("1:-1") }
        let v = try RPMVersion("2:1.0-3.el9")
        #expect(v.epoch == "2" && v.version == "1.0" && v.release == "3.el9")
        #expect(RPMVersion.rpmvercmp("1.0~rc1", "1.0") == .less)
        #expect(RPMVersion.rpmvercmp("1.0^1", "1.0") == .greater)
        #expect(RPMVersion.rpmvercmp("1.0^1", "1.0.1") == .less)
    }
}

@Suite struct APKVersionTests {
    static let curated = [
        "1.0", "1.0-r0", "1.0-r1", "1.0-r10", "1.0a", "1.0b", "1.0_rc1", "1.0_rc", "1.0_p1", "1.0_p", "1.0_alpha",
        "1.0_beta2", "1.0_pre1", "1.0_cvs", "1.0_svn", "1.0_git20240101", "1.0_hg", "1.0_rc1_p2", "1.0_patch1",
        "1.0_x", "1", "1.", "1..0", "1.00", "1.01", "1.001", "1.1", "01.1", "0", "00", "1.0-r", "1.0-1", "1.0~abc",
        "1a2", "a", "1.0A", "1.0-r1-r2", longDigits, "12345678901234567", "123456789012345678", "1.\(longDigits)",
        "1.0_rc\(longDigits)", "1.0-r\(longDigits)", "1_p1", "1.0__rc",
    ]

    static func generate(_ rng: inout SeededRandom) -> String {
        let pieces = ["0", "1", "2", "9", "00", "01", "10", "123", ".", ".", ".", "a", "z", "_alpha", "_beta", "_pre",
                      "_rc", "_cvs", "_svn", "_git", "_hg", "_p", "_x", "_", "-r", "-r1", "-", "~", "A", longDigits]
        var s = randomString(pieces, count: 1...7, &rng)
        while s.hasPrefix("-") { s.removeFirst() }
        return s.isEmpty ? "1" : s
    }

    /// `apk version -t/-c` from apk-tools. Debian 12 does not package apk-tools, so this
    /// oracle runs only where `apk` is installed (an Alpine host or a later Debian).
    static var apkAvailable: Bool {
        (try? Tool.run(["sh", "-c", "command -v apk"], check: false))?.status == 0
    }

    static func oracle() -> (test: String, check: String) {
        (#"while read -r a b; do apk version -t "$a" "$b"; done < "$PAIRS""#,
         #"while read -r v x; do if apk version -c "$v" >/dev/null 2>&1; then echo 1; else echo 0; fi; done < "$PAIRS""#)
    }

    /// The ordering apk-tools documents for suffixes, letters and revisions (apk-version(8)
    /// and the apk spec): pre-release suffixes sort before the release, post-release after.
    @Test func documentedApkOrdering() throws {
        let ascending = ["1.0_alpha", "1.0_alpha2", "1.0_beta", "1.0_pre", "1.0_rc", "1.0_rc2", "1.0", "1.0-r1",
                         "1.0-r2", "1.0_cvs", "1.0_svn", "1.0_git", "1.0_hg", "1.0_p1", "1.0_p2", "1.0a", "1.0b", "1.0.1", "1.1", "2"]
        for (i, a) in ascending.enumerated() {
            for (j, b) in ascending.enumerated() {
                let want = i < j ? "<" : i == j ? "=" : ">"
                #expect(try VersionScheme.apk.compare(a, b).rawValue == want, "\(a) vs \(b)")
            }
        }
        for v in ["1.0", "1.0_rc1", "1.0-r3", "2.38.1_p1-r0", "1.0a"] { #expect(APKVersion(v).isValid, "\(v)") }
        for v in ["1.0_x", "1.0-1", "1.0_rc_x"] { #expect(!APKVersion(v).isValid, "\(v)") }
    }

    /// Pairs from apk-tools' own version test data (test/version.data) that apk-tools 2.x and
    /// the current version.c order differently: leading-zero digit components compare as
    /// strings, `~` parts compare as strings and the `-rN` after them still counts.
    @Test func apkToolsLeadingZerosAndCommitHashes() throws {
        let less: [(String, String)] = [
            ("8.2.0", "8.2.001"), ("8.2.0015", "8.2.002"), ("8.2.001", "8.2.0015"), ("1.0~1234", "1.0~2345"),
            ("1.0~1234-r0", "1.0~1234-r1"), ("1.0~1234-r5", "1.0~2345-r0"), ("1.0~abc", "1.0~abd"), ("1.0~abc", "1.0~abca"),
            ("1.01", "1.1"), ("1.09", "1.1"), ("1.0", "1.00"), ("1.001", "1.01"), ("1.0.0", "1.0.01"),
            ("1.0", "1.0~1"), ("1.0_rc1", "1.0_rc1~ab"), ("1.2", "1.10"), ("1.9", "1.10"),
        ]
        for (a, b) in less {
            #expect(try VersionScheme.apk.compare(a, b) == .less, "\(a) < \(b)")
            #expect(try VersionScheme.apk.compare(b, a) == .greater, "\(b) > \(a)")
        }
        for v in ["1.0~1234", "1.0~1234-r2", "1.0_rc1~ab", "1.0a~ff", "8.2.0015"] { #expect(APKVersion(v).isValid, "\(v)") }
        for v in ["1.0~ab.1", "1.0~ab_rc", "1.0-r1~ab", "1.0~AB"] { #expect(!APKVersion(v).isValid, "\(v)") }
        #expect(try VersionScheme.apk.compare("1.0~1234", "1.0~1234") == .equal)
        #expect(try VersionScheme.apk.compare("8.2.002", "8.2.002") == .equal)
    }

    @Test(.enabled(if: APKVersionTests.apkAvailable, "needs apk-tools' apk binary (not packaged in Debian 12)"))
    func matchesApkTools() throws {
        let all = pairs(curated: Self.curated, random: 2500, seed: 0xA9C, generate: Self.generate)
        #expect(all.count > 3000)
        let oracle = Self.oracle()
        let answers = try oracleAnswers(all, script: oracle.test)
        var bad: [String] = []
        for (i, (a, b)) in all.enumerated() where i < answers.count {
            let mine = (try? VersionScheme.apk.compare(a, b).rawValue) ?? "!"
            if mine != answers[i] { bad.append("\(a) \(b): apk \(answers[i]), warden \(mine)") }
        }
        #expect(bad.count == 0, mismatchReport(bad))

        var versions = Self.curated
        for (a, b) in all.prefix(1500) { versions.append(a); versions.append(b) }
        let valid = try oracleAnswers(versions.map { ($0, "x") }, script: oracle.check)
        var badValid: [String] = []
        for (i, v) in versions.enumerated() where i < valid.count {
            let mine = APKVersion(v).isValid ? "1" : "0"
            if mine != valid[i] { badValid.append("\(v): apk \(valid[i]), warden \(mine)") }
        }
        #expect(badValid.count == 0, mismatchReport(badValid))
    }
}

struct WardenTestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
