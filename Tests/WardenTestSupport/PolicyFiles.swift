import Foundation

/// Policy files for tests: the texts several suites share, and one way to write them.
public enum PolicyFiles {
    /// Writes `text` as `dir/policy/NAME` (creating the folder) and returns the folder.
    @discardableResult
    public static func write(_ text: String, in dir: String, name: String = "p.yaml") throws -> String {
        let pdir = dir + "/policy"
        try FileManager.default.createDirectory(atPath: pdir, withIntermediateDirectories: true)
        try text.write(toFile: pdir + "/" + name, atomically: true, encoding: .utf8)
        return pdir
    }

    /// Writes `text` as the single file `path` (a policy location may be one file).
    public static func writeFile(_ text: String, at path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// No rules: everything allowed (and recorded).
    public static let allowAll = "apiVersion: warden/v1\nkind: Policy\nrules: []\n"

    /// Every operation denied.
    public static let denyAll = """
    apiVersion: warden/v1
    kind: Policy
    defaultEffect: deny
    rules: []
    """

    /// Starts denied while the VM has an open critical finding (from the advisory store).
    public static let noCriticalsOnline = """
    apiVersion: warden/v1
    kind: Policy
    rules:
      - name: no-criticals-online
        on: [start]
        deny: { findings: { severity: critical } }
    """

    /// At most `n` live VMs in a lineage family after a copy or clone.
    public static func maxReplicas(_ n: Int) -> String {
        """
        apiVersion: warden/v1
        kind: Policy
        rules:
          - name: at-most-\(n)
            on: [copy, clone]
            require: {maxReplicas: \(n)}
        """
    }
}
