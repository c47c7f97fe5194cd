import Testing
import WardenTestSupport

@Suite struct CLITests {
    @Test func versionRuns() throws {
        let r = try Tool.run([Fixtures.wardenBinary, "--version"])
        #expect(r.stdoutText.contains("0.1.0"))
    }
}
