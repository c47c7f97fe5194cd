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
            // A ledger with one VM, and a deny-all policy: each documented code from real commands.
            let db = tmp + "/w.db"
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/b.qcow2"])
            #expect(try WardenRun.run(["vm", "register", tmp + "/b.qcow2", "--name", "web", "--owner", "o", "--db", db]).status == 0)
            let deny = try PolicyFiles.write(PolicyFiles.denyAll, in: tmp)
            let table: [([String], Int32)] = [
                (["vm", "show", "nosuch", "--db", db], 2),                          // not found: bad input
                (["image", "cat", tmp + "/b.qcow2", "/nonexistent"], 2),           // no such guest file
                (["image", "info", tmp + "/b.qcow2", "--format", "vmdk"], 2),      // forced wrong format
                (["ledger", "verify", "--db", tmp + "/missing.db"], 4),            // no database: unavailable
                (["vm", "retire", "web", "--policy", deny, "--db", db], 3),        // denied by policy
                (["policy", "check", "--op", "start", "web", "--policy", deny, "--db", db], 3),
            ]
            for (args, code) in table {
                let r = try WardenRun.run(args)
                #expect(r.status == code, "warden \(args.joined(separator: " ")): \(r.status) \(r.stderr)")
                #expect(r.stderr.isEmpty || r.stderr.hasPrefix("warden: "), "\(r.stderr)")
            }
            try "garbage".write(toFile: tmp + "/bad.db", atomically: true, encoding: .utf8)
            let corrupt = try WardenRun.run(["vm", "list", "--db", tmp + "/bad.db"])
            #expect(corrupt.status == 2 || corrupt.status == 4, "\(corrupt.stderr)")
        }
    }

    /// Every command in the tree `warden --experimental-dump-help` prints, leaf by leaf.
    static func leafCommands() throws -> [String] {
        let r = try WardenRun.run(["--experimental-dump-help"])
        #expect(r.status == 0)
        let tree = try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any]
        var out: [String] = []
        func walk(_ c: [String: Any], _ path: [String]) {
            let subs = c["subcommands"] as? [[String: Any]] ?? []
            if subs.isEmpty { out.append(path.joined(separator: " ")) }
            for s in subs { walk(s, path + [s["commandName"] as? String ?? "?"]) }
        }
        walk(tree?["command"] as? [String: Any] ?? [:], [])
        return out
    }

    @Test func everyCommandHasDocumentedExitCodesAndRejectsUnknownFlagsWith2() throws {
        let leaves = try Self.leafCommands()
        #expect(leaves.count > 100)
        #expect(Set(leaves) == Set(ExitCodeDoc.table.keys), "docs/exit-codes.md and the command tree differ: missing \(Set(leaves).subtracting(ExitCodeDoc.table.keys).sorted()), stale \(Set(ExitCodeDoc.table.keys).subtracting(leaves).sorted())")
        for (command, codes) in ExitCodeDoc.table {
            #expect(codes.contains(0) && codes.isSubset(of: [0, 1, 2, 3, 4]), "\(command): \(codes)")
        }
        for leaf in leaves where leaf != "help" {
            let words = leaf.split(separator: " ").map(String.init)
            let bad = try WardenRun.run(words + ["--warden-no-such-flag"])
            #expect(bad.status == 2, "warden \(leaf) --warden-no-such-flag: \(bad.status)")
            #expect(bad.stdout.isEmpty)
            // The hook passes everything after its options to the decision as libvirt's
            // arguments (a domain may be named --help): it fails closed instead.
            guard leaf != "libvirt-hook" else { continue }
            let help = try WardenRun.run(words + ["--help"])
            #expect(help.status == 0 && help.stdoutText.contains("USAGE:"), "warden \(leaf) --help: \(help.status)")
        }
        // Global options and the configuration file fail every command the same way.
        #expect(try WardenRun.run(["--log-level", "loud", "vm", "list"]).status == 2)
        #expect(try WardenRun.run(["vm", "list", "--progress=sometimes"]).status == 2)
        #expect(try WardenRun.run(["--version"]).status == 0)
    }
}
