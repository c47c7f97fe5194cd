import Foundation
import Testing
import WardenTestSupport
@testable import Advisories

@Suite struct CVSSTests {
    static let oracleAvailable: Bool = (try? Tool.run(["python3", "-c", "import cvss"], check: false).status) == 0

    @Test func knownScores() {
        #expect(CVSS3.baseScore("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == 9.8)
        #expect(CVSS3.baseScore("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N") == 6.1)
        #expect(CVSS3.baseScore("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H") == 7.8)
        #expect(CVSS3.baseScore("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H") == 10.0)
        #expect(CVSS3.baseScore("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N") == 0.0)
        #expect(CVSS3.baseScore("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/E:P") == 9.8, "temporal metrics do not change the base")
        #expect(CVSS3.baseScore("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N") == nil)
        #expect(CVSS3.baseScore("CVSS:3.1/AV:N/AC:L") == nil)
        #expect(CVSS3.baseScore("CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == nil)
        #expect(CVSS3.baseScore("CVSS:3.1/AV:N/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == nil)
    }

    /// Every one of the 2,592 CVSS v3.1 base vectors, against Red Hat's `cvss` library.
    @Test(.enabled(if: oracleAvailable, "needs the python3 cvss library (scripts/install-deps)"))
    func allBaseVectorsMatchTheCvssLibrary() throws {
        var vectors: [String] = []
        for av in ["N", "A", "L", "P"] { for ac in ["L", "H"] { for pr in ["N", "L", "H"] { for ui in ["N", "R"] {
            for s in ["U", "C"] { for c in ["H", "L", "N"] { for i in ["H", "L", "N"] { for a in ["H", "L", "N"] {
                vectors.append("CVSS:3.1/AV:\(av)/AC:\(ac)/PR:\(pr)/UI:\(ui)/S:\(s)/C:\(c)/I:\(i)/A:\(a)")
            } } } } } } } }
        #expect(vectors.count == 2592)
        let r = try Tool.run(["python3", "-c", """
        import sys
        from cvss import CVSS3
        for line in sys.stdin:
            print(CVSS3(line.strip()).base_score)
        """], stdin: Data(vectors.joined(separator: "\n").utf8))
        let expected = r.stdoutText.split(separator: "\n").map { Double($0)! }
        #expect(expected.count == vectors.count)
        var mismatches: [String] = []
        for (v, e) in zip(vectors, expected) where CVSS3.baseScore(v) != e {
            mismatches.append("\(v): \(CVSS3.baseScore(v).map { "\($0)" } ?? "nil") vs \(e)")
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first: \(mismatches.prefix(5))")
    }
}
