import Foundation
import Testing
import WardenTestSupport

/// The test harness's own process runner: every oracle and fixture goes through it, so a
/// hang or a leaked descriptor there stalls the whole suite.
@Suite struct ToolRunTests {
    @Test func capturesOutputStatusAndInput() throws {
        let r = try Tool.run(["sh", "-c", "cat; echo err >&2; exit 3"], stdin: Data("in\n".utf8), check: false)
        #expect(r.status == 3)
        #expect(r.stdoutText == "in\n")
        #expect(r.stderr == "err\n")
        #expect(throws: ToolError.self) { try Tool.run(["false"]) }
    }

    @Test func runsInTheGivenDirectory() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let r = try Tool.run(["pwd", "-P"], cwd: dir)
            let want = URL(fileURLWithPath: dir).resolvingSymlinksInPath().path
            #expect(r.stdoutText == want + "\n")
        }
    }

    /// A daemon started by the tool must not inherit anything of the test process: only
    /// the three standard descriptors reach the child.
    @Test func childGetsOnlyTheStandardDescriptors() throws {
        let r = try Tool.run(["sh", "-c", "ls /proc/$$/fd"])
        let fds = Set(r.stdoutText.split(separator: "\n").map(String.init))
        #expect(fds == ["0", "1", "2"], "descriptors: \(fds.sorted())")
    }

    /// The tool exits but leaves a background process holding its output pipe: the call
    /// returns with what the tool printed instead of waiting for the background process.
    @Test func backgroundChildHoldingThePipeDoesNotBlock() throws {
        let r = try Tool.run(["sh", "-c", "sleep 600 & echo $!; echo done"])
        let lines = r.stdoutText.split(separator: "\n")
        #expect(lines.last == "done")
        if let pid = lines.first.flatMap({ Int32($0) }) { kill(pid, SIGKILL) }
    }

    @Test func aHangingToolIsKilledAndReported() throws {
        do {
            try Tool.run(["sleep", "600"], timeout: 1)
            Issue.record("sleep 600 returned")
        } catch let e as ToolError {
            #expect(e.description.contains("timed out after 1 s"), "\(e)")
        }
    }
}
