import ArgumentParser
import Foundation
import Testing
import WardenTestSupport
@testable import WardenCommands

/// Exit codes are API: 0 ok, 1 a check found something, 2 bad input or usage, 3 denied, 4 internal.
@Suite struct ExitCodeTests {
    struct Unforeseen: Error {}

    @Test func unforeseenErrorsAreInternal() {
        #expect(Warden.exitStatus(forUnexpected: Unforeseen(), parserCode: .failure) == 4)
        #expect(Warden.exitStatus(forUnexpected: CocoaError(.fileReadUnknown), parserCode: .failure) == 4)
        #expect(Warden.exitStatus(forUnexpected: ValidationError("bad"), parserCode: .validationFailure) == 2)
    }

    @Test func commandsMapFailuresToTheDocumentedCodes() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            #expect(try WardenRun.run(["image", "info", tmp + "/missing.qcow2"]).status == 2)       // bad input
            #expect(try WardenRun.run(["vm", "list", "--no-such-flag"]).status == 2)               // usage
            #expect(try WardenRun.run(["vm", "list", "--db", tmp + "/none.db"]).status == 4)       // unavailable: internal
            try "garbage".write(toFile: tmp + "/bad.db", atomically: true, encoding: .utf8)
            let corrupt = try WardenRun.run(["vm", "list", "--db", tmp + "/bad.db"])
            #expect(corrupt.status == 2 || corrupt.status == 4, "\(corrupt.stderr)")
        }
    }
}
