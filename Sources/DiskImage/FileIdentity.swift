#if canImport(Glibc)
import Glibc
#endif

extension ImageFile.FileIdentity {
    /// The device and inode of the file at `path` (following links), or nil if it cannot be stat'ed.
    public static func of(path: String) -> ImageFile.FileIdentity? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return ImageFile.FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }
}
