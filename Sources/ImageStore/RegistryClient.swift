import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import WardenCore

/// How to reach a registry.
public struct RegistryOptions: Sendable {
    /// Talk plain HTTP (`--plain-http`). Refused with credentials unless the host is loopback.
    public var plainHTTP = false
    /// Trust only this CA (PEM) instead of the system's roots.
    public var caFile: String?
    /// Read logins from this file only (`--auth-file`).
    public var authFile: String?
    /// Seconds for one request (uploads of one chunk, manifest fetches).
    public var requestTimeout: Int64 = 120
    /// Attempts for a request that failed for a transient reason (connection lost, 5xx, 429).
    public var attempts = 3
    public init() {}
}

/// A client of one registry, speaking the OCI distribution spec (v2 API) over async-http-client:
/// bearer-token and basic auth (logins from auth.json), TLS with the system's roots or a CA file,
/// monolithic and chunked uploads, cross-repository mounts. Every body it reads is bounded, and
/// every blob it returns has been checked against its digest.
public final class RegistryClient: Sendable {
    public let registry: String
    let base: String
    let http: HTTPClient
    let credential: RegistryCredential?
    let options: RegistryOptions
    /// Bearer tokens by scope.
    let tokens = Locked<[String: String]>([:])
    /// The challenge the registry answered with last (so later requests authenticate up front).
    let challenge = Locked<Challenge?>(nil)

    public init(registry: String, options: RegistryOptions = RegistryOptions()) throws {
        self.registry = registry
        self.options = options
        credential = try RegistryCredential.lookup(registry: registry, authFile: options.authFile)
        let host = registry.split(separator: ":").first.map(String.init) ?? registry
        if options.plainHTTP {
            guard credential == nil || ["localhost", "127.0.0.1", "::1"].contains(host) else {
                throw WardenError(.denied, "refusing to send the login for \(registry) over plain HTTP (only to a loopback registry)")
            }
        }
        base = (options.plainHTTP ? "http://" : "https://") + registry
        var c = HTTPClient.Configuration()
        if let ca = options.caFile {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.minimumTLSVersion = .tlsv12
            do {
                let roots = try NIOSSLCertificate.fromPEMFile(ca)
                guard !roots.isEmpty else { throw WardenError(.corrupt, "no certificate") }
                tls.trustRoots = .certificates(roots)
            } catch {
                throw WardenError(.invalidArgument, "not a PEM CA certificate", file: ca)
            }
            c.tlsConfiguration = tls
        }
        c.timeout = .init(connect: .seconds(10), read: .seconds(options.requestTimeout))
        c.redirectConfiguration = .follow(max: 3, allowCycles: false)
        c.decompression = .disabled
        // A refused connection fails the request now; ``send`` retries it (a bounded number of
        // times, with backoff) rather than the pool retrying until the request's deadline.
        c.connectionPool.retryConnectionEstablishment = false
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
    }

    public func shutdown() async { try? await http.shutdown() }

    /// Runs `body` with a client of `registry`, shut down afterwards whether it threw or not.
    public static func with<T: Sendable>(registry: String, options: RegistryOptions,
                                         _ body: (RegistryClient) async throws -> T) async throws -> T {
        let client = try RegistryClient(registry: registry, options: options)
        do {
            let out = try await body(client)
            await client.shutdown()
            return out
        } catch {
            await client.shutdown()
            throw error
        }
    }

    // MARK: - Requests

    public struct Response: Sendable {
        public var status: Int
        public var headers: HTTPHeaders
        public var body: [UInt8]
    }

    struct Challenge: Sendable {
        var scheme: String
        var parameters: [String: String]
    }

    enum Body: Sendable {
        case none
        case bytes([UInt8])
    }

    /// Sends a request, authenticating when challenged, retrying transient failures. `expect`
    /// are the statuses that count as answers (others become errors naming `what`).
    func send(_ method: HTTPMethod, _ url: String, repository: String, push: Bool = false, headers: [(String, String)] = [],
              body: Body = .none, expect: Set<Int>, limit: Int = RegistryLimits.smallBody, what: String) async throws -> Response {
        var lastError: WardenError?
        // Upload steps (POST, PATCH, PUT to an upload session) change the session's state and
        // are not repeated here; the push retries the whole blob with a new session instead.
        let idempotent = !(method == .POST || method == .PATCH || (method == .PUT && url.contains("/blobs/uploads/")))
        for attempt in 0..<(idempotent ? max(1, options.attempts) : 1) {
            if attempt > 0 { try await Task.sleep(for: .milliseconds(200 << attempt)) }
            do {
                var response = try await once(method, url, repository: repository, push: push, headers: headers, body: body, limit: limit)
                if response.status == 401 {
                    try await authenticate(response, repository: repository, push: push, what: what)
                    response = try await once(method, url, repository: repository, push: push, headers: headers, body: body, limit: limit)
                }
                if expect.contains(response.status) { return response }
                let error = Self.error(response, what: what, registry: registry)
                if response.status == 429 || response.status >= 500 { lastError = error; continue }
                throw error
            } catch let e as WardenError where e.code == .unavailable {
                lastError = e
                continue
            }
        }
        throw lastError ?? WardenError(.unavailable, "\(registry): \(what) failed")
    }

    func once(_ method: HTTPMethod, _ url: String, repository: String, push: Bool, headers: [(String, String)], body: Body,
              limit: Int) async throws -> Response {
        var req = HTTPClientRequest(url: url.hasPrefix("http") ? url : base + url)
        req.method = method
        for (k, v) in headers { req.headers.add(name: k, value: v) }
        if let auth = authorization(repository: repository, push: push) { req.headers.add(name: "Authorization", value: auth) }
        switch body {
        case .none:
            if method == .PUT || method == .POST || method == .PATCH { req.headers.add(name: "Content-Length", value: "0") }
        case .bytes(let b):
            req.body = .bytes(ByteBuffer(bytes: b))
        }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(req, timeout: .seconds(options.requestTimeout))
        } catch let e as NIOSSLError {
            throw WardenError(.denied, "\(registry): TLS failed: \(e)", cause: e)
        } catch {
            throw WardenError(.unavailable, "cannot reach the registry \(registry): \(Self.describe(error))", cause: error)
        }
        var bytes: [UInt8] = []
        if method != .HEAD {
            do {
                let buffer = try await response.body.collect(upTo: limit)
                bytes = Array(buffer.readableBytesView)
            } catch is NIOTooManyBytesError {
                throw WardenError(.limitExceeded, "\(registry): the answer to \(method) \(url.prefix(200)) is larger than \(limit) bytes")
            } catch {
                throw WardenError(.unavailable, "\(registry): the connection broke while reading: \(Self.describe(error))", cause: error)
            }
        }
        return Response(status: Int(response.status.code), headers: response.headers, body: bytes)
    }

    static func describe(_ error: any Error) -> String {
        let s = "\(error)"
        for (needle, text) in [("Connection refused", "connection refused"), ("errno: 111", "connection refused"),
                               ("Connection reset", "connection reset"), ("remoteConnectionClosed", "the registry closed the connection"),
                               ("connectTimeout", "connection timed out"), ("readTimeout", "no answer in time"), ("deadlineExceeded", "no answer in time"),
                               ("NXDOMAIN", "no such host"), ("lookup", "the host name does not resolve")] where s.contains(needle) {
            return text
        }
        return s.count > 200 ? String(s.prefix(200)) + "…" : s
    }

    func scope(_ repository: String, push: Bool) -> String { "repository:\(repository):" + (push ? "pull,push" : "pull") }

    func authorization(repository: String, push: Bool) -> String? {
        guard let c = challenge.withLock({ $0 }) else { return nil }
        if c.scheme == "basic" { return credential?.basicAuthorization }
        return tokens.withLock { $0[scope(repository, push: push)] }.map { "Bearer " + $0 }
    }

    /// Answers a 401: basic (with the login) or bearer (a token from the realm, for this scope).
    func authenticate(_ response: Response, repository: String, push: Bool, what: String) async throws {
        guard let header = response.headers.first(name: "WWW-Authenticate"), let c = Self.parseChallenge(header) else {
            throw WardenError(.denied, "\(registry) refused \(what) (401) without saying how to authenticate")
        }
        challenge.withLock { $0 = c }
        if c.scheme == "basic" {
            guard credential != nil else {
                throw WardenError(.denied, "\(registry) needs a login for \(what): run `podman login \(registry)` (or docker login), or give --auth-file")
            }
            return
        }
        guard c.scheme == "bearer", let realm = c.parameters["realm"], var comps = URLComponents(string: realm),
              comps.scheme == "https" || (comps.scheme == "http" && options.plainHTTP) else {
            throw WardenError(.denied, "\(registry): unsupported authentication challenge for \(what)")
        }
        var items = comps.queryItems ?? []
        if let s = c.parameters["service"] { items.append(URLQueryItem(name: "service", value: s)) }
        items.append(URLQueryItem(name: "scope", value: scope(repository, push: push)))
        comps.queryItems = items
        guard let url = comps.string else { throw WardenError(.denied, "\(registry): the token realm is not a URL") }
        var req = HTTPClientRequest(url: url)
        if let credential { req.headers.add(name: "Authorization", value: credential.basicAuthorization) }
        let r: HTTPClientResponse
        do { r = try await http.execute(req, timeout: .seconds(30)) } catch {
            throw WardenError(.unavailable, "cannot reach the token service of \(registry): \(Self.describe(error))", cause: error)
        }
        let body = Array((try? await r.body.collect(upTo: RegistryLimits.smallBody))?.readableBytesView ?? ByteBuffer().readableBytesView)
        guard r.status.code == 200 else {
            throw WardenError(.denied, "the token service of \(registry) refused \(credential == nil ? "an anonymous" : "the") login (HTTP \(r.status.code))")
        }
        struct Token: Decodable { var token: String?; var access_token: String? }
        let t = try BoundedJSON.decode(Token.self, from: body, limit: RegistryLimits.smallBody, what: "the token of \(registry)")
        guard let token = t.token ?? t.access_token, !token.isEmpty, token.utf8.count < 64 << 10 else {
            throw WardenError(.denied, "the token service of \(registry) sent no token")
        }
        tokens.withLock { $0[scope(repository, push: push)] = token }
    }

    /// `Bearer realm="…",service="…"` → scheme (lower-cased) and parameters.
    static func parseChallenge(_ header: String) -> Challenge? {
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        guard let space = trimmed.firstIndex(of: " ") else {
            return trimmed.isEmpty ? nil : Challenge(scheme: trimmed.lowercased(), parameters: [:])
        }
        let scheme = trimmed[..<space].lowercased()
        var params: [String: String] = [:]
        var rest = Substring(trimmed[trimmed.index(after: space)...])
        while !rest.isEmpty {
            rest = rest.drop { $0 == " " || $0 == "," }
            guard let eq = rest.firstIndex(of: "=") else { break }
            let key = rest[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            rest = rest[rest.index(after: eq)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                while let ch = rest.first, ch != "\"" {
                    if ch == "\\" { rest = rest.dropFirst() }
                    if let c = rest.first { value.append(c); rest = rest.dropFirst() }
                }
                rest = rest.dropFirst()
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                value = String(rest[..<end]).trimmingCharacters(in: .whitespaces)
                rest = rest[end...]
            }
            params[key] = value
        }
        return Challenge(scheme: scheme, parameters: params)
    }

    /// An error from a registry answer: the spec's error code and message when it sent them.
    static func error(_ r: Response, what: String, registry: String) -> WardenError {
        struct Errors: Decodable { struct E: Decodable { var code: String?; var message: String? }; var errors: [E]? }
        var detail = "HTTP \(r.status)"
        if let e = try? BoundedJSON.decode(Errors.self, from: r.body, limit: RegistryLimits.smallBody, what: "error"), let first = e.errors?.first {
            detail += ": " + [first.code, first.message].compactMap { $0 }.joined(separator: " ")
        }
        let code: WardenError.Code = switch r.status {
        case 401, 403: .denied
        case 404: .notFound
        case 429, 500...: .unavailable
        default: .invalidArgument
        }
        return WardenError(code, "\(registry) refused \(what): \(detail)")
    }

    // MARK: - Blobs

    /// Whether `digest` is in `repository` (HEAD).
    public func blobExists(_ repository: String, _ digest: String) async throws -> Bool {
        let r = try await send(.HEAD, "/v2/\(repository)/blobs/\(digest)", repository: repository, push: true,
                               expect: [200, 404], what: "HEAD of blob \(digest)")
        return r.status == 200
    }

    /// Asks the registry to mount `digest` from `from` into `repository`. True when it did;
    /// false when it opened an upload instead (returned in `location`), which the caller uses.
    public func mount(_ repository: String, _ digest: String, from: String) async throws -> (mounted: Bool, location: String?) {
        let r = try await send(.POST, "/v2/\(repository)/blobs/uploads/?mount=\(digest)&from=\(from)", repository: repository, push: true,
                               expect: [201, 202], what: "mount of blob \(digest)")
        return (r.status == 201, r.headers.first(name: "Location"))
    }

    /// Uploads `bytes` as blob `digest`: monolithic when it is at most `partSize`, else in
    /// chunked PATCHes of `partSize` bytes and a closing PUT.
    public func upload(_ repository: String, _ bytes: [UInt8], digest: String, partSize: Int = 8 << 20,
                       location: String? = nil) async throws {
        var loc: String
        if let location { loc = location } else {
            let start = try await send(.POST, "/v2/\(repository)/blobs/uploads/", repository: repository, push: true,
                                       expect: [202], what: "an upload of blob \(digest)")
            guard let l = start.headers.first(name: "Location") else {
                throw WardenError(.unavailable, "\(registry) opened an upload without a Location")
            }
            loc = l
        }
        if bytes.count > partSize {
            var offset = 0
            while offset < bytes.count {
                let end = min(offset + partSize, bytes.count)
                let r = try await send(.PATCH, loc, repository: repository, push: true,
                                       headers: [("Content-Type", "application/octet-stream"), ("Content-Range", "\(offset)-\(end - 1)")],
                                       body: .bytes(Array(bytes[offset..<end])), expect: [202], what: "a part of blob \(digest)")
                guard let l = r.headers.first(name: "Location") else {
                    throw WardenError(.unavailable, "\(registry) accepted a part without a Location")
                }
                loc = l
                offset = end
            }
            _ = try await send(.PUT, Self.adding("digest", digest, to: loc), repository: repository, push: true,
                               expect: [201], what: "the end of blob \(digest)")
        } else {
            _ = try await send(.PUT, Self.adding("digest", digest, to: loc), repository: repository, push: true,
                               headers: [("Content-Type", "application/octet-stream")], body: .bytes(bytes),
                               expect: [201], what: "blob \(digest)")
        }
    }

    static func adding(_ key: String, _ value: String, to url: String) -> String {
        url + (url.contains("?") ? "&" : "?") + key + "=" + (value.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? value)
    }

    /// Fetches blob `digest` (at most `limit` bytes) and checks its digest and, when given, size.
    public func blob(_ repository: String, _ digest: String, size: Int64? = nil, limit: Int) async throws -> [UInt8] {
        try BlobDigest.check(digest, what: "blob")
        if let size, size < 0 || size > Int64(limit) {
            throw WardenError(.limitExceeded, "\(registry)/\(repository): blob \(digest) claims \(size) bytes, more than the \(limit) accepted")
        }
        let r = try await send(.GET, "/v2/\(repository)/blobs/\(digest)", repository: repository, expect: [200], limit: limit,
                               what: "blob \(digest)")
        if let size, Int64(r.body.count) != size {
            throw WardenError(.corrupt, "\(registry)/\(repository): blob \(digest) is \(r.body.count) bytes, not the \(size) its descriptor says")
        }
        guard BlobDigest.of(r.body) == digest else {
            throw WardenError(.corrupt, "\(registry)/\(repository): blob \(digest) does not match its digest")
        }
        return r.body
    }

    /// Streams blob `digest` into `sink` (for layers too large to hold), checking the digest at the end.
    public func streamBlob(_ repository: String, _ digest: String, size: Int64, limit: Int64,
                           sink: (ByteBuffer) throws -> Void) async throws {
        try BlobDigest.check(digest, what: "blob")
        guard size >= 0, size <= limit else {
            throw WardenError(.limitExceeded, "\(registry)/\(repository): blob \(digest) claims \(size) bytes, more than the \(limit) accepted")
        }
        _ = try await send(.HEAD, "/v2/\(repository)/blobs/\(digest)", repository: repository, expect: [200], what: "blob \(digest)")
        var req = HTTPClientRequest(url: base + "/v2/\(repository)/blobs/\(digest)")
        if let auth = authorization(repository: repository, push: false) { req.headers.add(name: "Authorization", value: auth) }
        let response: HTTPClientResponse
        do { response = try await http.execute(req, timeout: .seconds(options.requestTimeout * 10)) } catch {
            throw WardenError(.unavailable, "cannot reach the registry \(registry): \(Self.describe(error))", cause: error)
        }
        guard response.status.code == 200 else {
            throw Self.error(Response(status: Int(response.status.code), headers: response.headers, body: []), what: "blob \(digest)", registry: registry)
        }
        var hasher = StreamingDigest()
        var total: Int64 = 0
        do {
            for try await buffer in response.body {
                total += Int64(buffer.readableBytes)
                guard total <= size else {
                    throw WardenError(.corrupt, "\(registry)/\(repository): blob \(digest) is longer than its descriptor's \(size) bytes")
                }
                hasher.update(buffer)
                try sink(buffer)
            }
        } catch let e as WardenError { throw e } catch {
            throw WardenError(.unavailable, "\(registry): the connection broke while reading blob \(digest): \(Self.describe(error))", cause: error)
        }
        guard total == size, hasher.finalize() == digest else {
            throw WardenError(.corrupt, "\(registry)/\(repository): blob \(digest) does not match its digest")
        }
    }

    // MARK: - Manifests

    public struct FetchedManifest: Sendable {
        public var bytes: [UInt8]
        public var mediaType: String
        public var digest: String
    }

    /// Fetches a manifest by tag or digest; by digest, the bytes must hash to it.
    public func manifest(_ repository: String, _ reference: String) async throws -> FetchedManifest {
        let r = try await send(.GET, "/v2/\(repository)/manifests/\(reference)", repository: repository,
                               headers: [("Accept", MediaType.accepted.joined(separator: ", "))],
                               expect: [200, 404], limit: RegistryLimits.manifestBytes, what: "manifest \(reference)")
        guard r.status == 200 else { throw WardenError(.notFound, "\(registry)/\(repository):\(reference): no such manifest") }
        let digest = BlobDigest.of(r.body)
        if ImageReference.isDigest(reference), digest != reference {
            throw WardenError(.corrupt, "\(registry)/\(repository): manifest \(reference) does not match its digest")
        }
        var type = r.headers.first(name: "Content-Type") ?? ""
        if let semi = type.firstIndex(of: ";") { type = String(type[..<semi]) }
        return FetchedManifest(bytes: r.body, mediaType: type.trimmingCharacters(in: .whitespaces), digest: digest)
    }

    /// Whether a manifest exists (HEAD), and its digest.
    public func manifestDigest(_ repository: String, _ reference: String) async throws -> String? {
        let r = try await send(.HEAD, "/v2/\(repository)/manifests/\(reference)", repository: repository,
                               headers: [("Accept", MediaType.accepted.joined(separator: ", "))], expect: [200, 404],
                               what: "manifest \(reference)")
        return r.status == 200 ? r.headers.first(name: "Docker-Content-Digest") : nil
    }

    public func putManifest(_ repository: String, _ reference: String, _ bytes: [UInt8], mediaType: String) async throws {
        _ = try await send(.PUT, "/v2/\(repository)/manifests/\(reference)", repository: repository, push: true,
                           headers: [("Content-Type", mediaType)], body: .bytes(bytes), expect: [201], what: "manifest \(reference)")
    }
}

/// SHA-256 over a stream of buffers.
struct StreamingDigest {
    var h = SHA256()
    mutating func update(_ b: ByteBuffer) { b.withUnsafeReadableBytes { h.update(bufferPointer: $0) } }
    mutating func update(_ b: UnsafeRawBufferPointer) { h.update(bufferPointer: b) }
    func finalize() -> String { "sha256:" + h.finalize().hexString }
}
