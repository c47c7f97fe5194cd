/// Warden's version (the one place it is set; scripts/package names the .deb from it) and,
/// from the BuildInfo plugin, the commit the binary was built from.
public enum WardenVersion {
    public static let version = "0.2.0"
    /// `0.2.0 (commit 1a2b3c4d5e6f)`, as `warden --version` prints it.
    public static var description: String { "\(version) (commit \(commit))" }
}
