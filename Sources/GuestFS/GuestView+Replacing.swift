import WardenCore

extension GuestView {
    /// The same mounts served by other filesystem objects (by mount point): used to read a
    /// guest through its writable filesystems, so reads see earlier writes. Mount points
    /// not in `replacement` keep their current filesystem.
    public func replacingFilesystems(_ replacement: [String: any FileSystem]) -> GuestView {
        var map: [String: any FileSystem] = [:]
        for m in mounts {
            if let fs = replacement[m.path] ?? filesystem(at: m.path) { map[m.path] = fs }
        }
        return GuestView(root: map["/"] ?? root, mounts: mounts, filesystems: map, problems: problems)
    }
}
