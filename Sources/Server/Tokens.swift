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
    /// How the caller proved who it is.
    public var credential: Credential = .token

    public enum Credential: Sendable, Equatable {
        /// A bearer token (people, tools; for hosts, only to enrol).
        case token
        /// A client certificate this server's CA issued (hosts, after enrolment).
        case certificate
        /// The dashboard's session cookie.
        case session
    }
}

/// Bearer tokens, kept in a JSON file (0600 in a 0700 folder) as SHA-256 hashes only: the token
/// itself is printed once, when it is made, and never stored, logged or returned again.
///
/// The server re-reads the file whenever its size or modification time changes, so a revoked
/// token is refused from the next request on, without a restart.
///
/// **Host tokens are one-time enrolment tokens.** They are good for `POST /v1/enrol` only, once:
/// the host then speaks with the client certificate the server issued (docs/fleet.md).
public final class TokenStore: Sendable {
    public var path: String { file.path }

    struct Entry: Codable, Sendable {
        var name: String
        var role: Role
        var sha256: String
        var owner: String?
        var host: String?
        var created: Date
        var revoked: Date?
        /// For host tokens: when the host enrolled with it (it is spent).
        var used: Date?
    }
    struct File: Codable, Sendable { var tokens: [Entry] }

    private let file: WatchedJSONFile<File>

    public init(path: String) { file = WatchedJSONFile(path: path, what: "the token file", empty: File(tokens: [])) }

    /// The principal for a presented bearer token, or nil (unknown, revoked, spent, or no token file).
    public func principal(forToken token: String) -> Principal? {
        guard token.hasPrefix("wdn_"), token.utf8.count <= 128 else { return nil }
        let hash = Self.hash(token)
        guard let e = file.current().tokens.first(where: { $0.sha256 == hash }), e.revoked == nil, e.used == nil else { return nil }
        return Principal(name: e.name, role: e.role, owner: e.owner, host: e.host.flatMap(HostName.init))
    }

    /// Spends a host's enrolment token: nil when it is not a live, unspent host token (two
    /// enrolments racing with one token: one wins).
    public func spendEnrolment(token: String, at now: Date = Date()) throws -> HostName? {
        guard token.hasPrefix("wdn_"), token.utf8.count <= 128 else { return nil }
        let hash = Self.hash(token)
        return try file.update { f -> HostName? in
            guard let i = f.tokens.firstIndex(where: { $0.sha256 == hash }), f.tokens[i].role == .host,
                  f.tokens[i].revoked == nil, f.tokens[i].used == nil, let host = f.tokens[i].host.flatMap(HostName.init) else { return nil }
            f.tokens[i].used = now
            return host
        }
    }

    /// Whether a live (not revoked) token named `name` exists: sessions opened with a token end
    /// when it is revoked.
    public func isLive(name: String) -> Bool {
        file.current().tokens.contains { $0.name == name && $0.revoked == nil }
    }

    static func hash(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).hexString
    }

    // MARK: Managing tokens (`warden serve token …`)

    /// A listed token (no secret, no hash).
    public struct Listed: Codable, Sendable {
        public var name: String
        public var role: Role
        public var owner: String?
        public var host: String?
        public var created: Date
        public var revoked: Date?
        public var used: Date?
    }

    public func list() throws -> [Listed] {
        try file.read().tokens.map { Listed(name: $0.name, role: $0.role, owner: $0.owner, host: $0.host, created: $0.created, revoked: $0.revoked, used: $0.used) }
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
        try file.update { f in
            if f.tokens.contains(where: { $0.name == name && $0.revoked == nil && $0.used == nil }) {
                throw WardenError(.conflict, "a token named \(name) exists; revoke it first")
            }
            f.tokens.append(Entry(name: name, role: role, sha256: Self.hash(token), owner: owner, host: host?.value,
                                  created: Date(), revoked: nil, used: nil))
        }
        return token
    }

    /// Revokes every live token named `name`.
    public func revoke(name: String) throws {
        try file.update { f in
            var found = false
            for i in f.tokens.indices where f.tokens[i].name == name && f.tokens[i].revoked == nil {
                f.tokens[i].revoked = Date(); found = true
            }
            if !found { throw WardenError(.notFound, "no live token named \(name)") }
        }
    }
}
