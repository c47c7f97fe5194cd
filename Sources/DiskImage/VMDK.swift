import WardenCore

/// VMware VMDK. Placeholder until the reader lands.
public enum VMDK {
    static func open(file: ImageFile, context: ChainContext) throws -> OpenedImage {
        throw WardenError.unsupported("VMDK reader not built yet", file: file.path)
    }
}
