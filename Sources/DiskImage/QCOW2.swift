import WardenCore

/// qcow2 (QEMU copy-on-write v2/v3). Placeholder until the reader lands.
public enum QCOW2 {
    static func open(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        throw WardenError.unsupported("qcow2 reader not built yet", file: file.path)
    }
}
