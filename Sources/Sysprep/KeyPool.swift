import Crypto
import _CryptoExtras
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// RSA-3072 host keys made ahead of time (docs/sysprep.md, "The key pool"): a clone takes one
/// instead of waiting a few hundred milliseconds for a prime search. Each key is a DER file,
/// 0600 in a 0700 directory; taking one renames it to a claimed name first (so two clones can
/// never get the same key), reads it, then overwrites and removes the file: every key is used
/// exactly once. An empty pool falls back to generating; `warden keys refill` fills it, and
/// Warden refills it in the background after a clone took from it.
public struct KeyPool: Sendable {
    public let directory: String
    /// How many keys a refill keeps ready.
    public static let defaultSize = 8

    public init(directory: String) { self.directory = directory }

    var rsaDirectory: String { directory + "/rsa" }

    /// Keys ready now.
    public var count: Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: rsaDirectory)) ?? []).filter { $0.hasSuffix(".der") && !$0.hasPrefix(".") }.count
    }

    static func ensurePrivate(_ path: String) throws {
        try FileDescriptorIO.ensurePrivateDirectory(path, what: "the key pool directory")
    }

    /// Takes one RSA key, or nil when the pool is empty (or unusable: a clone then generates).
    public func takeRSA() -> _RSA.Signing.PrivateKey? {
        guard (try? Self.ensurePrivate(directory)) != nil, (try? Self.ensurePrivate(rsaDirectory)) != nil else { return nil }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: rsaDirectory)) ?? []).filter { $0.hasSuffix(".der") && !$0.hasPrefix(".") }
        for name in names.shuffled() {
            let claimed = rsaDirectory + "/.claimed-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
            // rename(2) is atomic: of two clones racing for one file, one gets ENOENT.
            guard rename(rsaDirectory + "/" + name, claimed) == 0 else { continue }
            defer { try? FileShred.overwriteAndRemove(claimed) }
            var st = stat()
            guard lstat(claimed, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_mode & 0o077 == 0, st.st_size > 0, st.st_size < 8192,
                  let der = FileManager.default.contents(atPath: claimed),
                  let key = try? _RSA.Signing.PrivateKey(derRepresentation: der), key.keySizeInBits == 3072 else { continue }
            return key
        }
        return nil
    }

    /// Generates keys until `size` are ready; returns how many were made.
    @discardableResult
    public func refill(to size: Int = KeyPool.defaultSize) throws -> Int {
        try Self.ensurePrivate(directory)
        try Self.ensurePrivate(rsaDirectory)
        var made = 0
        while count < size {
            let key = try _RSA.Signing.PrivateKey(keySize: .bits3072)
            let name = "k-\(UInt64.random(in: 0...UInt64.max)).der"
            try FileDescriptorIO.replaceFile(rsaDirectory + "/" + name, with: Array(key.derRepresentation))
            made += 1
        }
        return made
    }
}
