import WardenCore
import DiskImage

// TEMPORARY: replaced by the real reader when the ext4 branch merges.
public enum EXT4 {
    public static func open(_ device: any BlockDevice) throws -> any FileSystem {
        throw WardenError.unsupported("ext4 reader not merged yet")
    }
}
