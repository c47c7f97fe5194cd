import Foundation
import WardenCore

/// Browser sessions for the dashboard. A token holder asks the API for a one-time login link
/// (`POST /v1/login-links`, valid 60 s, usable once); opening it sets an HttpOnly, SameSite=Strict
/// session cookie for the same principal (8 hours). A browser never sees the bearer token, and a
/// logged link is worthless once used. Sessions live in memory: a restart logs everyone out.
public final class Sessions: Sendable {
    struct Entry: Sendable { var principal: Principal; var expires: Date }
    private let links = Locked<[String: Entry]>([:])
    private let sessions = Locked<[String: Entry]>([:])
    static let linkLifetime: TimeInterval = 60
    static let sessionLifetime: TimeInterval = 8 * 3600
    static let maxEntries = 10_000

    public init() {}

    static func secret() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
    }

    /// A one-time link secret for `principal`.
    func link(for principal: Principal, now: Date = Date()) -> String {
        let s = Self.secret()
        links.withLock { l in
            l = l.filter { $0.value.expires > now }
            if l.count < Self.maxEntries { l[s] = Entry(principal: principal, expires: now.addingTimeInterval(Self.linkLifetime)) }
        }
        return s
    }

    /// Consumes a link; returns a new session id, or nil when the link is unknown, used or expired.
    func redeem(_ link: String, now: Date = Date()) -> String? {
        guard let e = links.withLock({ $0.removeValue(forKey: link) }), e.expires > now else { return nil }
        let s = Self.secret()
        sessions.withLock { all in
            all = all.filter { $0.value.expires > now }
            if all.count < Self.maxEntries { all[s] = Entry(principal: e.principal, expires: now.addingTimeInterval(Self.sessionLifetime)) }
        }
        return s
    }

    func principal(session: String, now: Date = Date()) -> Principal? {
        sessions.withLock { all in
            guard let e = all[session] else { return nil }
            if e.expires <= now { all[session] = nil; return nil }
            return e.principal
        }
    }

    func end(_ session: String) { sessions.withLock { $0[session] = nil } }
}
