import Testing
import WardenBuildInfo
import WardenTestSupport

@Suite struct CLITests {
    @Test func versionRuns() throws {
        let r = try Tool.run([Fixtures.wardenBinary, "--version"])
        #expect(r.stdoutText.hasPrefix(WardenVersion.version + " (commit "))
    }

    @Test func usageErrorsExitTwo() throws {
        let r = try Tool.run([Fixtures.wardenBinary, "image", "info"], check: false)
        #expect(r.status == 2)
        let missing = try Tool.run([Fixtures.wardenBinary, "image", "info", "/nonexistent.qcow2"], check: false)
        #expect(missing.status == 2)
        #expect(missing.stderr == "warden: /nonexistent.qcow2: cannot open: No such file or directory\n")
    }
}
