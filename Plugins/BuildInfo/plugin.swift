import Foundation
import PackagePlugin

/// Writes the commit Warden is built from into the WardenBuildInfo module before each build
/// (scripts/build-info; the file changes only when the commit does, so nothing recompiles).
@main
struct BuildInfo: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let out = context.pluginWorkDirectoryURL.appending(path: "generated")
        return [.prebuildCommand(
            displayName: "Warden build info",
            executable: URL(fileURLWithPath: "/bin/sh"),
            arguments: [context.package.directoryURL.appending(path: "scripts/build-info").path(percentEncoded: false),
                        context.package.directoryURL.path(percentEncoded: false),
                        out.path(percentEncoded: false)],
            outputFilesDirectory: out)]
    }
}
