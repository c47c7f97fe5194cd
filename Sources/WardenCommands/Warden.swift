import ArgumentParser
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// The `warden` command line: a thin layer over the library modules.
public struct Warden: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "warden",
        abstract: "Security and management layer beside the hypervisor.",
        version: "0.1.0",
        subcommands: [ImageCommand.self, InspectCommand.self, VersionCommand.self, DevCommand.self,
                      VMCommand.self, HostCommand.self, EventCommand.self, ExposureCommand.self,
                      CensusCommand.self, DiscoverCommand.self, PolicyCommand.self, LibvirtCommand.self,
                      LibvirtHookCommand.self, AdvisoriesCommand.self, ScanCommand.self, FleetCommand.self,
                      LedgerCommand.self, DoctorCommand.self, ServeCommand.self, AgentCommand.self, NetCommand.self, VaultCommand.self, KeysCommand.self, MalwareCommand.self, RegistryCommand.self, InternalCommand.self]
    )
    public init() {}

    /// The exit status for an error that is neither a ``WardenError`` nor an `ExitCode`:
    /// usage errors (the argument parser's validation failures) are bad input, 2; anything
    /// else is a failure Warden did not foresee, an internal error, 4.
    static func exitStatus(forUnexpected error: Error, parserCode: ExitCode) -> Int32 {
        if error is ValidationError || parserCode == .validationFailure { return 2 }
        return 4
    }

    /// Parses `arguments`, runs the command and exits with Warden's exit codes:
    /// 0 ok, 1 a check found something, 2 bad input or usage, 3 denied by policy, 4 internal error.
    public static func runMain(_ arguments: [String]? = nil) -> Never {
        let timer = PhaseTimer.shared // the lap origin: main entered
        // Whatever the caller's umask, what Warden creates is private: disks, exports, overlays
        // and folders hold guest data (host keys, /etc/shadow clusters). Modes that must be
        // wider (the libvirt hook file) are set explicitly (docs/decisions.md).
        umask(0o077)
        do {
            var command = try parseAsRoot(arguments)
            timer.lap("parse-arguments")
            try command.run()
            Output.stdout.flush()
            timer.lap("output")
            timer.report()
            Glibc.exit(0)
        } catch let e as WardenError {
            Output.stdout.flush()
            Output.error(e.description)
            Glibc.exit(e.exitCode)
        } catch let e as ExitCode {
            Output.stdout.flush()
            Glibc.exit(e.rawValue)
        } catch {
            Output.stdout.flush()
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Glibc.exit(0)
            }
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            Glibc.exit(exitStatus(forUnexpected: error, parserCode: code))
        }
    }
}
