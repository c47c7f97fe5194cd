import ArgumentParser
import Foundation
import WardenCore
import Advisories

extension VersionScheme: ExpressibleByArgument {}

/// `warden version compare|check`: package version ordering as dpkg, rpm and apk do it.
struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Compare and check package versions as dpkg, rpm or apk would.",
        subcommands: [Compare.self, Check.self]
    )

    struct Compare: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "compare",
            abstract: "Print <, = or > for version A against version B.",
            discussion: """
            deb orders as `dpkg --compare-versions`, rpm as `rpm.labelCompare` (missing epoch = 0), \
            apk as `apk version -t`. A version deb or rpm cannot parse exits 2 with a one-line \
            message; apk, like apk-tools, orders every version, even invalid ones.

            With no A B, reads lines `A B` from standard input and prints one result per line. A line \
            that cannot be ordered (bad version, not exactly two fields) prints `error: …` in its place \
            and processing continues. Blank lines are skipped. Exits 0 unless every non-blank line \
            failed, then 2 (empty input exits 0).
            
            Example:
              warden version compare --scheme deb 1:9.2p1-2+deb12u2 1:9.2p1-2+deb12u3
            """
        )

        @Option(help: ArgumentHelp("Version scheme.", valueName: "deb|rpm|apk"))
        var scheme: VersionScheme

        @Argument(help: "Versions A and B (both or neither).")
        var versions: [String] = []

        func validate() throws {
            if versions.count != 0 && versions.count != 2 {
                throw ValidationError("give two versions A B, or none to read pairs from standard input")
            }
        }

        func run() throws {
            if versions.count == 2 {
                Output.stdout.line(try scheme.compare(versions[0], versions[1]).rawValue)
                return
            }
            var lines = 0, failed = 0
            while let line = readLine(strippingNewline: true) {
                let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
                if fields.isEmpty { continue }
                lines += 1
                guard fields.count == 2 else {
                    failed += 1
                    Output.stdout.line("error: expected two versions 'A B', got \(fields.count) field(s)")
                    continue
                }
                do {
                    Output.stdout.line(try scheme.compare(String(fields[0]), String(fields[1])).rawValue)
                } catch let e as WardenError {
                    failed += 1
                    Output.stdout.line("error: \(e.message)")
                }
            }
            if lines > 0 && failed == lines {
                Output.stdout.flush()
                throw WardenError(.invalidArgument, "no line of standard input could be ordered")
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "check",
            abstract: "Print valid or invalid for a version; exit 0 when valid, 1 when invalid.",
            discussion: """
                apk checks as `apk version -c`; deb and rpm check that the version parses.
                
                Example:
                  warden version check --scheme rpm 1.2.3-1.el9
                """
        )

        @Option(help: ArgumentHelp("Version scheme.", valueName: "deb|rpm|apk"))
        var scheme: VersionScheme

        @Argument(help: "The version to check.")
        var version: String

        func run() throws {
            let ok = scheme.isValid(version)
            Output.stdout.line(ok ? "valid" : "invalid")
            if !ok { throw ExitCode(1) }
        }
    }
}
