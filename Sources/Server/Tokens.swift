import Crypto
import Foundation
import WardenCore

/// Who may do what through the server (docs/fleet.md, "Roles").
public enum Role: String, Codable, Sendable, CaseIterable {
    /// Everything.
    case admin
    /// Reads the fleet; acts on the VMs it owns (`owner` of the token).
    case `operator`
    /// Reads everything, changes nothing.
    case auditor
    /// A libvirt host's agent: reports its own events, nothing else.
    case host
}

/// The caller of one request, once its token was checked.
public struct Principal: Sendable, Equatable {
    public var name: String
    public var role: Role
    /// For operators: the owner name their VMs carry.
    public var owner: String?
    /// For hosts: the host whose events this principal may report.
    public var host: HostName?
}

/// Bearer tokens, kept in a JSON file (0600 in a 0700 folder) as SHA-256 hashes only: the token
/// itself is printed once, when it is made, and never stored, logged or returned again.
///
/// The server re-reads the file whenever its size or modification time changes, so a revoked
/// token is refused from the next request on, without a restart.
public final class TokenStore: Sendable {
    public let path: String

    struct Entry: Codable, Sendable {
        var name: String
        var role: Role
        var sha256: String
        var owner: String?
        var host: String?
        var created: Date
        var revoked: Date?
    }
    struct File: Codable, Sendable { var tokens: [Entry] }

    private struct Loaded: Sendable {
        var stamp: (size: Int64, mtime: Int64, ino: UInt64)?
        var byHash: [String: Entry] = [:]
    }
    private let state = Locked(Loaded())

    public init(path: String) { self.path = path }

    /// The principal for a presented bearer token, or nil (unknown, revoked, or no token file).
    public func principal(forToken token: String) -> Principal? {
        guard token.hasPrefix("wdn_"), token.utf8.count <= 128 else { return nil }
        let hash = Self.hash(token)
        let entries = current()
        guard let e = entries[hash], e.revoked == nil else { return nil }
        return Principal(name: e.name, role: e.role, owner: e.owner, host: e.host.flatMap(HostName.init))
    }

    /// Whether a live (not revoked) token named `name` exists: sessions opened with a token end
    /// when it is revoked.
    public func isLive(name: String) -> Bool {
        current().values.contains { $0.name == name && $0.revoked == nil }
    }

    /// The file's entries, re-read when it changed (a missing or unreadable file: no tokens at all).
    private func current() -> [String: Entry] {
        var st = stat()
        let now: (Int64, Int64, UInt64)? = stat(path, &st) == 0
            ? (Int64(st.st_size), Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec), UInt64(st.st_ino)) : nil
        return state.withLock { s in
            if let a = s.stamp, let b = now, a == b { return s.byHash }
            if s.stamp == nil, now == nil { return s.byHash }
            s.stamp = now
            s.byHash = [:]
            if now != nil, let file = try? Self.read(path) {
                for e in file.tokens { s.byHash[e.sha256] = e }
            }
            return s.byHash
        }
    }

    static func hash(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    static func read(_ path: String) throws -> File {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw WardenError(.unavailable, "cannot read the token file", file: path)
        }
        guard data.count <= 16 << 20 else { throw WardenError(.invalidArgument, "the token file is larger than 16 MiB", file: path) }
        do { return try Self.decoder.decode(File.self, from: data) } catch {
            throw WardenError(.corrupt, "the token file is not a Warden token list", file: path)
        }
    }

    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }()

    // MARK: Managing tokens (`warden serve token …`)

    /// A listed token (no secret, no hash).
    public struct Listed: Codable, Sendable {
        public var name: String
        public var role: Role
        public var owner: String?
        public var host: String?
        public var created: Date
        public var revoked: Date?
    }

    public func list() throws -> [Listed] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        return try Self.read(path).tokens.map { Listed(name: $0.name, role: $0.role, owner: $0.owner, host: $0.host, created: $0.created, revoked: $0.revoked) }
    }

    /// Makes a token and records its hash; returns the token (shown once).
    public func add(name: String, role: Role, owner: String?, host: HostName?) throws -> String {
        guard (1...64).contains(name.utf8.count), name.unicodeScalars.allSatisfy({ $0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-@".unicodeScalars.contains($0) }) else {
            throw WardenError(.invalidArgument, "a token name is 1-64 letters, digits and . _ - @")
        }
        if role == .host, host == nil { throw WardenError(.invalidArgument, "a host token needs --host") }
        if role == .operator, owner == nil { throw WardenError(.invalidArgument, "an operator token needs --owner (the owner its VMs carry)") }
        var bytes = [UInt8](repeating: 0, count: 32)
        var g = SystemRandomNumberGenerator()
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255, using: &g) }
        let token = "wdn_" + Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        try update { file in
            if file.tokens.contains(where: { $0.name == name && $0.revoked == nil }) {
                throw WardenError(.conflict, "a token named \(name) exists; revoke it first")
            }
            file.tokens.append(Entry(name: name, role: role, sha256: Self.hash(token), owner: owner, host: host?.value,
                                     created: Date(), revoked: nil))
        }
        return token
    }

    /// Revokes every live token named `name`.
    public func revoke(name: String) throws {
        try update { file in
            var found = false
            for i in file.tokens.indices where file.tokens[i].name == name && file.tokens[i].revoked == nil {
                file.tokens[i].revoked = Date(); found = true
            }
            if !found { throw WardenError(.notFound, "no live token named \(name)") }
        }
    }

    /// Reads, changes and atomically replaces the file (0600, folder 0700), under a lock.
    private func update(_ change: (inout File) throws -> Void) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let lockFD = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else { throw WardenError(.io, "cannot lock the token file", file: path) }
        defer { close(lockFD) }
        while flock(lockFD, LOCK_EX) != 0 { if errno != EINTR { throw WardenError(.io, "cannot lock the token file", file: path) } }
        var file = FileManager.default.fileExists(atPath: path) ? try Self.read(path) : File(tokens: [])
        try change(&file)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.dateEncodingStrategy = .iso8601
        try FileDescriptorIO.replaceFile(path, with: Array(try enc.encode(file)))
    }
}
