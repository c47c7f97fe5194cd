import Foundation
import WardenCore

/// A registry reference: `host[:port]/repository[:tag][@sha256:…]`, as the OCI distribution
/// spec and the Docker CLI write them. The registry host is required (Warden has no default
/// registry), and every part is checked against the spec's grammar before any request is made.
public struct ImageReference: Sendable, Hashable, CustomStringConvertible {
    /// `host` or `host:port`.
    public var registry: String
    /// `team/web1`: lower-case path components.
    public var repository: String
    public var tag: String?
    public var digest: String?

    public init(registry: String, repository: String, tag: String? = nil, digest: String? = nil) {
        self.registry = registry; self.repository = repository; self.tag = tag; self.digest = digest
    }

    /// Parses `text`; throws `.invalidArgument` naming the part that is wrong.
    public init(parsing text: String) throws {
        func bad(_ why: String) -> WardenError { WardenError(.invalidArgument, "registry reference \(text.debugDescription): \(why)") }
        guard !text.isEmpty, text.utf8.count <= 1024 else { throw bad("empty or longer than 1024 bytes") }
        guard text.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else { throw bad("only printable ASCII without spaces") }
        var rest = Substring(text)
        if let at = rest.firstIndex(of: "@") {
            let d = String(rest[rest.index(after: at)...])
            guard Self.isDigest(d) else { throw bad("the digest must be sha256: and 64 lower-case hex digits") }
            digest = d
            rest = rest[..<at]
        }
        guard let slash = rest.firstIndex(of: "/") else { throw bad("name the registry, e.g. localhost:5000/team/vm:tag") }
        let host = String(rest[..<slash])
        guard host.contains(".") || host.contains(":") || host == "localhost" else {
            throw bad("the first part must be a registry host (with a dot or a port, or localhost)")
        }
        guard Self.isHost(host) else { throw bad("\(host.debugDescription) is not a registry host[:port]") }
        registry = host
        var path = rest[rest.index(after: slash)...]
        if let colon = path.lastIndex(of: ":"), !path[colon...].contains("/") {
            let t = String(path[path.index(after: colon)...])
            guard Self.isTag(t) else { throw bad("the tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -") }
            tag = t
            path = path[..<colon]
        }
        let repo = String(path)
        guard Self.isRepository(repo) else {
            throw bad("the repository must be lower-case components of [a-z0-9] joined by . _ __ or -, separated by /")
        }
        repository = repo
        if tag == nil && digest == nil { tag = "latest" }
    }

    /// The tag or digest to fetch: the digest when both are given.
    public var reference: String { digest ?? tag ?? "latest" }

    public var description: String {
        var s = registry + "/" + repository
        if let tag { s += ":" + tag }
        if let digest { s += "@" + digest }
        return s
    }

    /// `host/repository`, the name a signature's identity claims.
    public var name: String { registry + "/" + repository }

    public func with(digest: String) -> ImageReference { ImageReference(registry: registry, repository: repository, tag: nil, digest: digest) }
    public func with(tag: String) -> ImageReference { ImageReference(registry: registry, repository: repository, tag: tag, digest: nil) }

    static func isDigest(_ s: String) -> Bool {
        guard s.hasPrefix("sha256:") else { return false }
        let hex = s.utf8.dropFirst(7)
        return hex.count == 64 && hex.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    static func isTag(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard (1...128).contains(u.count), u[0] != 0x2E, u[0] != 0x2D else { return false }
        return u.allSatisfy { isAlnum($0) || $0 == 0x5F || $0 == 0x2E || $0 == 0x2D }
    }

    static func isHost(_ s: String) -> Bool {
        var host = Substring(s)
        if let c = s.lastIndex(of: ":") {
            let port = s[s.index(after: c)...]
            guard let p = Int(port), (1...65535).contains(p), port.allSatisfy(\.isNumber) else { return false }
            host = s[..<c]
        }
        guard !host.isEmpty, host.utf8.count <= 253 else { return false }
        return host.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            let u = Array(label.utf8)
            return !u.isEmpty && u.count <= 63 && u.first != 0x2D && u.last != 0x2D && u.allSatisfy { isAlnum($0) || $0 == 0x2D }
        }
    }

    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` per component, components joined by `/`.
    static func isRepository(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 255 else { return false }
        for comp in s.split(separator: "/", omittingEmptySubsequences: false) {
            let u = Array(comp.utf8)
            guard let f = u.first, let l = u.last, isLowerAlnum(f), isLowerAlnum(l) else { return false }
            var i = 0
            while i < u.count {
                if isLowerAlnum(u[i]) { i += 1; continue }
                var j = i
                while j < u.count, !isLowerAlnum(u[j]) { j += 1 }
                let sep = Array(u[i..<j])
                let ok = sep == [0x2E] || sep == [0x5F] || sep == [0x5F, 0x5F] || sep.allSatisfy { $0 == 0x2D }
                guard ok else { return false }
                i = j
            }
        }
        return true
    }

    static func isAlnum(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) }
    static func isLowerAlnum(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7A) }
}
