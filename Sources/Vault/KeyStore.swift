import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// Wrapped data keys on disk: `<vault>/keys/<vm>/<layer>.json`, 0600 files in 0700 directories.
/// Nothing else holds them — not the ledger, not a database with a WAL — so destroying one is
/// overwriting and unlinking one small file (``shred(_:)``).
public struct KeyStore: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public func vmDirectory(_ vm: VMID) -> String { directory + "/keys/" + vm.description }
    func path(_ c: KeyContext) -> String { vmDirectory(c.vm) + "/" + c.layer + ".json" }

    static func isValidLayer(_ layer: String) -> Bool {
        (1...64).contains(layer.utf8.count) && layer.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d }
    }

    public func put(_ key: WrappedKey, for c: KeyContext) throws {
        guard Self.isValidLayer(c.layer) else { throw WardenError(.invalidArgument, "not a layer name: \(c.layer)") }
        try FileDescriptorIO.ensurePrivateDirectory(directory, what: "the vault directory")
        try FileDescriptorIO.ensurePrivateDirectory(directory + "/keys", what: "the vault directory")
        try FileDescriptorIO.ensurePrivateDirectory(vmDirectory(c.vm), what: "the vault directory")
        guard !FileManager.default.fileExists(atPath: path(c)) else {
            throw WardenError(.conflict, "\(c.vm) already has a key for \(c.layer)")
        }
        try FileDescriptorIO.replaceFile(path(c), with: Array(try Self.encode(key)))
    }

    /// Replaces a stored key with `key` (re-wrapped, or a new key for the same layer): a new file
    /// renamed over the old.
    public func replace(_ key: WrappedKey, for c: KeyContext) throws {
        guard FileManager.default.fileExists(atPath: path(c)) else { throw WardenError(.notFound, "\(c.vm) has no key for \(c.layer)") }
        try FileDescriptorIO.replaceFile(path(c), with: Array(try Self.encode(key)))
    }

    static func encode(_ key: WrappedKey) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        enc.dateEncodingStrategy = .iso8601
        return try enc.encode(key)
    }

    public func get(_ c: KeyContext) throws -> WrappedKey? {
        guard Self.isValidLayer(c.layer) else { return nil }
        let p = path(c)
        guard FileManager.default.fileExists(atPath: p) else { return nil }
        guard let data = FileManager.default.contents(atPath: p), data.count <= 4096 else {
            throw WardenError(.invalidArgument, "cannot read the wrapped key (or it is over 4 KiB)", file: p)
        }
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .iso8601
        do { return try dec.decode(WrappedKey.self, from: data) } catch {
            throw WardenError(.invalidArgument, "not a wrapped key Warden wrote", file: p)
        }
    }

    /// Every layer with a key, per VM.
    public func list() -> [(vm: VMID, layer: String, key: WrappedKey)] {
        var out: [(VMID, String, WrappedKey)] = []
        let root = directory + "/keys"
        for v in ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).sorted() {
            guard let vm = VMID(v) else { continue }
            for f in ((try? FileManager.default.contentsOfDirectory(atPath: root + "/" + v)) ?? []).sorted() where f.hasSuffix(".json") {
                let layer = String(f.dropLast(5))
                if let k = try? get(KeyContext(vm: vm, layer: layer)) { out.append((vm, layer, k)) }
            }
        }
        return out
    }

    /// Destroys a wrapped key: the file is overwritten with zeros and synced, then unlinked and
    /// the directory synced. Returns the destroyed key's id (nil when there was none).
    @discardableResult
    public func shred(_ c: KeyContext) throws -> String? {
        guard let key = try get(c) else { return nil }
        try FileShred.overwriteAndRemove(path(c))
        return key.id
    }
}
