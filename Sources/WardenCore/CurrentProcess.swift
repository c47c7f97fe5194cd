import Foundation

/// Facts about this process that several commands need.
public enum CurrentProcess {
    /// This process's executable, links resolved (`/proc/self/exe`): the `warden` binary when
    /// run as the CLI, which starts itself again as a helper (the state server, the libvirt
    /// hook, the mirror pipe of a maintenance boot).
    public static var executable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}
