import Crypto
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// A signed statement that the ledger's log had `treeSize` entries with Merkle root `root`.
///
/// The signature is Ed25519 over the UTF-8 bytes of ``signedText``:
///
/// ```
/// warden-checkpoint/v1
/// <host>
/// <tree size, decimal>
/// <root, 64 lower-case hex digits>
/// <time, RFC 3339 with six fractional digits, UTC>
/// ```
///
/// (five lines, each ending in a single `\n`).
public struct SignedCheckpoint: Codable, Sendable, Equatable {
    public var treeSize: Int64
    public var root: Data
    /// Microseconds since the Unix epoch.
    public var timeMicros: Int64
    public var host: HostName
    public var signature: Data

    public init(treeSize: Int64, root: Data, timeMicros: Int64, host: HostName, signature: Data) {
        self.treeSize = treeSize; self.root = root; self.timeMicros = timeMicros; self.host = host; self.signature = signature
    }

    public static let header = "warden-checkpoint/v1"

    public static func signedText(treeSize: Int64, root: Data, timeMicros: Int64, host: HostName) -> String {
        "\(header)\n\(host.value)\n\(treeSize)\n\(root.hexEncoded)\n\(LedgerTime.rfc3339(timeMicros))\n"
    }

    public var signedText: String {
        Self.signedText(treeSize: treeSize, root: root, timeMicros: timeMicros, host: host)
    }

    public static func sign(treeSize: Int64, root: Data, timeMicros: Int64, key: HostKey) throws -> SignedCheckpoint {
        let text = signedText(treeSize: treeSize, root: root, timeMicros: timeMicros, host: key.host)
        let sig = try key.sign(Data(text.utf8))
        return SignedCheckpoint(treeSize: treeSize, root: root, timeMicros: timeMicros, host: key.host, signature: sig)
    }

    /// True when `signature` is a valid Ed25519 signature by `publicKey` (raw 32 bytes).
    public func isValid(publicKey: Data) -> Bool {
        guard let pk = try? Curve25519.Signing.PublicKey(rawRepresentation: publicKey) else { return false }
        return pk.isValidSignature(signature, for: Data(signedText.utf8))
    }

    /// The JSON form used by the witness file and `warden ledger checkpoint --json`.
    public struct JSONForm: Codable, Sendable {
        public var schema: String
        public var treeSize: Int64
        public var rootHex: String
        public var time: String
        public var timeMicros: Int64
        public var host: String
        public var signatureHex: String
        public var signedText: String
        public var publicKeyHex: String?
    }

    public func jsonForm(publicKey: Data? = nil) -> JSONForm {
        JSONForm(schema: "warden.ledger.checkpoint/v1", treeSize: treeSize, rootHex: root.hexEncoded, time: LedgerTime.rfc3339(timeMicros),
                 timeMicros: timeMicros, host: host.value, signatureHex: signature.hexEncoded, signedText: signedText,
                 publicKeyHex: publicKey?.hexEncoded)
    }

    public init(jsonForm j: JSONForm) throws {
        guard let root = Data(hexEncoded: j.rootHex), root.count == 32, let sig = Data(hexEncoded: j.signatureHex), sig.count == 64,
              let host = HostName(j.host), j.treeSize >= 0 else {
            throw WardenError(.corrupt, "malformed checkpoint")
        }
        self.init(treeSize: j.treeSize, root: root, timeMicros: j.timeMicros, host: host, signature: sig)
    }
}

/// A host's Ed25519 signing key, kept in `<keys>/<host>.ed25519` (mode 0600).
///
/// The file holds the base64 of the 32-byte private key and a newline. It is made on first
/// use with `O_EXCL`; a key file readable by group or others is refused, as ssh does. Key
/// bytes never appear in errors or logs.
public struct HostKey: Sendable {
    public let host: HostName
    /// The raw 32-byte private key (never printed).
    private let secret: Data
    public let publicKey: Data

    public init(host: HostName, key: Curve25519.Signing.PrivateKey) {
        self.host = host; self.secret = key.rawRepresentation; self.publicKey = key.publicKey.rawRepresentation
    }

    public func sign(_ message: Data) throws -> Data {
        do { return try Curve25519.Signing.PrivateKey(rawRepresentation: secret).signature(for: message) } catch {
            throw WardenError(.internal, "cannot sign a checkpoint")
        }
    }

    /// The keys folder: `$WARDEN_KEYS`, else `keys/` beside the database (which is
    /// `$WARDEN_HOME/keys` or `~/.local/share/warden/keys` for the default database).
    public static func directory(databasePath: String,
                                 environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let k = environment["WARDEN_KEYS"], !k.isEmpty { return k }
        let dir = (databasePath as NSString).deletingLastPathComponent
        return (dir.isEmpty ? "." : dir) + "/keys"
    }

    public static func path(directory: String, host: HostName) -> String {
        directory + "/" + host.value + ".ed25519"
    }

    /// Loads the host's key, or makes one if none exists yet.
    public static func loadOrCreate(directory: String, host: HostName = .current) throws -> HostKey {
        if let k = try load(directory: directory, host: host) { return k }
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw WardenError(.io, "cannot create the keys folder", file: directory)
        }
        let file = path(directory: directory, host: host)
        // Written whole to a temporary file, synced, then linked into place: a crash never
        // leaves a half-written key, and of two racing writers exactly one key wins.
        let tmp = file + ".tmp-\(getpid())"
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw WardenError(.io, "cannot create the signing key: \(String(cString: strerror(errno)))", file: file)
        }
        defer { unlink(tmp) }
        let key = Curve25519.Signing.PrivateKey()
        let text = Array((key.rawRepresentation.base64EncodedString() + "\n").utf8)
        do {
            defer { close(fd) }
            _ = fchmod(fd, 0o600)
            try text.withUnsafeBytes { try FileDescriptorIO.writeAll(fd, $0, name: file) }
            guard fsync(fd) == 0 else { throw WardenError(.io, "cannot sync the signing key", file: file) }
        }
        if link(tmp, file) != 0 {
            if errno == EEXIST, let k = try load(directory: directory, host: host) { return k }
            throw WardenError(.io, "cannot create the signing key: \(String(cString: strerror(errno)))", file: file)
        }
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
        return HostKey(host: host, key: key)
    }

    /// Loads the host's key; nil when there is none.
    public static func load(directory: String, host: HostName = .current) throws -> HostKey? {
        let file = path(directory: directory, host: host)
        var st = stat()
        guard stat(file, &st) == 0 else {
            if errno == ENOENT { return nil }
            throw WardenError(.io, "cannot read the signing key: \(String(cString: strerror(errno)))", file: file)
        }
        guard st.st_mode & 0o077 == 0 else {
            throw WardenError(.denied, "the signing key is readable by others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it", file: file)
        }
        guard st.st_size < 4096, let data = FileManager.default.contents(atPath: file) else {
            throw WardenError(.corrupt, "the signing key file cannot be read", file: file)
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let raw = Data(base64Encoded: text), raw.count == 32,
              let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else {
            throw WardenError(.corrupt, "the signing key file is not a base64 Ed25519 key", file: file)
        }
        return HostKey(host: host, key: key)
    }
}

/// The latest signed checkpoint, kept outside the database (`<keys>/<db file name>.witness`),
/// so that deleting log rows together with their checkpoints is still detected.
public struct Witness: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    public init(keysDirectory: String, databasePath: String) {
        path = keysDirectory + "/" + (databasePath as NSString).lastPathComponent + ".witness"
    }

    public func read() throws -> SignedCheckpoint? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path), data.count < 65536 else {
            throw WardenError(.corrupt, "the witness file cannot be read", file: path)
        }
        do {
            return try SignedCheckpoint(jsonForm: JSONDecoder.snake.decode(SignedCheckpoint.JSONForm.self, from: data))
        } catch {
            throw WardenError(.corrupt, "the witness file is not a checkpoint", file: path)
        }
    }

    /// Replaces the witness with `checkpoint` if it is larger than the one there, under a file
    /// lock; written to a temporary file, synced and renamed, so it is always whole.
    public func advance(to checkpoint: SignedCheckpoint, publicKey: Data) throws {
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let lockFD = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else { throw WardenError(.io, "cannot lock the witness file", file: path) }
        defer { close(lockFD) }
        while flock(lockFD, LOCK_EX) != 0 { if errno != EINTR { throw WardenError(.io, "cannot lock the witness file", file: path) } }
        if let old = try? read(), old.treeSize >= checkpoint.treeSize { return }
        let enc = JSONEncoder.snake
        let data = try enc.encode(checkpoint.jsonForm(publicKey: publicKey)) + Data("\n".utf8)
        // Every signed write advances the witness; a witness that lags after a crash is accepted.
        try FileDescriptorIO.replaceFile(path, with: Array(data), syncFolder: false)
    }
}

extension JSONEncoder {
    static var snake: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.keyEncodingStrategy = .convertToSnakeCase
        return e
    }
}

extension JSONDecoder {
    static var snake: JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }
}

