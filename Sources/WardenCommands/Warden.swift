import ArgumentParser
import Foundation
import WardenBuildInfo
import WardenConfig
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// The `warden` command line: a thin layer over the library modules.
public struct Warden: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "warden",
        abstract: "Security and management layer beside the hypervisor.",
        discussion: """
        Warden treats each VM as a first-class object: it reads disk images offline (no booting, \
        no mounting), keeps a tamper-evident ledger of every VM's history, scans guests against \
        advisories, enforces policy at the hypervisor (the libvirt hook and `vm start`), refreshes \
        identities on clone and tells the guest when it is rolled back.

        Every command also takes --log-level LEVEL and --progress auto|always|never. Settings \
        come from flags, then WARDEN_* environment variables, then ~/.config/warden/config.yaml, \
        then /etc/warden/config.yaml (`warden config show` prints them). Exit codes: 0 ok, 1 a \
        check found something, 2 bad input or usage, 3 denied by policy, 4 internal or \
        unavailable (docs/exit-codes.md).

        Examples:
          warden inspect disk.qcow2
          warden vm register disk.qcow2 --name web --owner alice
          warden scan /srv/vms/web.qcow2
        """,
        version: WardenVersion.description,
        subcommands: [ImageCommand.self, InspectCommand.self, VersionCommand.self, DevCommand.self,
                      VMCommand.self, HostCommand.self, EventCommand.self, ExposureCommand.self,
                      CensusCommand.self, DiscoverCommand.self, ConfigCommand.self, PolicyCommand.self, LibvirtCommand.self,
                      LibvirtHookCommand.self, AdvisoriesCommand.self, ScanCommand.self, FleetCommand.self,
                      LedgerCommand.self, DoctorCommand.self, ServeCommand.self, AgentCommand.self, NetCommand.self, VaultCommand.self, KeysCommand.self, MalwareCommand.self, RegistryCommand.self, InternalCommand.self]
    )
    public init() {}

    // Shown in `warden --help` and the man page; taken out of the arguments before parsing
    // (GlobalOptions), so every command accepts them anywhere.
    @Option(help: ArgumentHelp("Least severe log message written: trace, debug, info, notice, warning, error or critical (default notice; $WARDEN_LOG).", valueName: "level"))
    var logLevel: String?
    @Option(help: ArgumentHelp("Progress of long work on standard error: auto (when it is a terminal), always or never ($WARDEN_PROGRESS).", valueName: "mode"))
    var progress: String?

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
            let args = try GlobalOptions.extract(arguments ?? Array(CommandLine.arguments.dropFirst()))
            // Flags are in the environment now; the files fill in only what is still unset.
            try Configuration.load().exportToEnvironment()
            WardenLog.bootstrap()
            var command = try parseAsRoot(args)
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
