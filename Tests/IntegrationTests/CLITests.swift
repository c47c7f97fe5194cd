import Testing
import WardenTestSupport

@Suite struct CLITests {
    @Test func versionRuns() throws {
        let r = try Tool.run([Fixtures.wardenBinary, "--version"])
        #expect(r.stdoutText.contains("0.1.0"))
    }

    @Test func usageErrorsExitTwo() throws {
        let r = try Tool.run([Fixtures.wardenBinary, "image", "info"], check: false)
        #expect(r.status == 2)
        let missing = try Tool.run([Fixtures.wardenBinary, "image", "info", "/nonexistent.qcow2"], check: false)
        #expect(missing.status == 2)
        #expect(missing.stderr == "warden: /nonexistent.qcow2: cannot open: No such file or directory\n")
    }
}
