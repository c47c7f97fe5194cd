import ArgumentParser

/// The `warden` command line: a thin layer over the library modules.
public struct Warden: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "warden",
        abstract: "Security and management layer beside the hypervisor.",
        version: "0.1.0",
        subcommands: []
    )
    public init() {}
}
