import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTLS
import Ledger
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import WardenCore

/// Prometheus metrics of the server (docs/fleet.md, "Metrics").
public final class ServerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let ledgerEvents: Gauge
    let latency: DurationHistogram

    init() {
        ledgerEvents = registry.makeGauge(descriptor: .init(metricName: "warden_ledger", unitName: "events", helpText: "Events in the ledger (the Merkle tree size)"))
        latency = registry.makeDurationHistogram(descriptor: .init(metricName: "warden_http_request_duration", unitName: "seconds",
                                                                     helpText: "Time from request to response"),
                                                 buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                                                           .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(1000),
                                                           .seconds(5)])
    }

    func request(method: String, status: Int, took: Duration) {
        registry.makeCounter(descriptor: .init(metricName: "warden_http_requests", unitName: "total", helpText: "HTTP requests answered"),
                             labels: [("method", method), ("status", String(status))]).increment()
        latency.record(took)
    }

    func ingested(host: HostName, count: Int, newest: Date?, took: Duration) {
        registry.makeCounter(descriptor: .init(metricName: "warden_ingest_events", unitName: "total", helpText: "Events hosts reported that were new"),
                             labels: [("host", host.value)]).increment(by: Int64(count))
        if let newest {
            registry.makeGauge(descriptor: .init(metricName: "warden_ingest_lag", unitName: "seconds",
                                                  helpText: "Age of the newest event in a host's last report when it arrived"),
                               labels: [("host", host.value)])
                .set(to: max(0, Date().timeIntervalSince(newest)))
        }
    }

    func ledgerSize(_ n: Int64) { ledgerEvents.set(to: Double(n)) }

    func queueDepth(_ depth: [Job.State: Int]) {
        for state in Job.State.allCases {
            registry.makeGauge(descriptor: .init(metricName: "warden_jobs", unitName: nil, helpText: "Jobs in the queue by state"),
                               labels: [("state", state.rawValue)]).set(to: Double(depth[state] ?? 0))
        }
    }

    func jobsRan(_ n: Int) {
        guard n > 0 else { return }
        registry.makeCounter(descriptor: .init(metricName: "warden_server_jobs", unitName: "total", helpText: "Jobs this server ran (rescans)"))
            .increment(by: Int64(n))
    }
}

/// Finds the caller from `Authorization: Bearer …`, times and counts every request, and turns
/// unforeseen errors into a 500 that says nothing of the internals (logged with the request id).
struct AuthAndMetricsMiddleware: RouterMiddleware {
    typealias Context = WardenRequestContext
    let tokens: TokenStore
    let metrics: ServerMetrics
    let sessions: Sessions
    /// The CA whose host certificates identify hosts (nil: a plain-HTTP server, where no host
    /// can report).
    let pki: FleetPKI?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        // Dashboard pages take the session cookie; the API takes bearer tokens only (a cookie
        // must not carry a browser into changing anything).
        let path = request.uri.path
        if !path.hasPrefix("/v1/"), path != "/metrics", let session = Dashboard.sessionCookie(request),
           var p = sessions.principal(session: session), tokens.isLive(name: p.name) {
            p.credential = .session
            context.principal = p
        }
        func refuse(_ message: String) throws -> Response {
            metrics.request(method: request.method.rawValue, status: 401, took: .zero)
            return try APIError(.unauthorized, message).response(from: request, context: context)
        }
        if let auth = request.headers[.authorization] {
            let parts = auth.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" {
                context.principal = tokens.principal(forToken: String(parts[1]))
                guard let p = context.principal else { return try refuse("unknown, revoked or spent token") }
                // A host token is a one-time enrolment token: it buys a certificate, nothing else.
                if p.role == .host, path != "/v1/enrol" {
                    return try refuse("a host token only enrols the host (POST /v1/enrol); hosts then call with their client certificate")
                }
            }
        } else if let pki, let cert = try? await context.channel.nioSSL_peerCertificate().get() {
            // Verified against the CA by the TLS handshake; the issued list says whose it is and
            // whether it still stands.
            guard let host = pki.host(forSerial: cert.serialNumber) else {
                return try refuse("this client certificate is revoked, expired or unknown")
            }
            context.principal = Principal(name: "host:\(host.value)", role: .host, owner: nil, host: host, credential: .certificate)
        }
        let start = ContinuousClock.now
        do {
            let response = try await next(request, context)
            metrics.request(method: request.method.rawValue, status: response.status.code, took: ContinuousClock.now - start)
            return response
        } catch let e as HTTPResponseError {
            metrics.request(method: request.method.rawValue, status: e.status.code, took: ContinuousClock.now - start)
            throw e
        } catch let e as WardenError {
            let api = APIError.from(e)
            metrics.request(method: request.method.rawValue, status: api.status.code, took: ContinuousClock.now - start)
            throw api
        } catch {
            context.logger.error("internal error", metadata: ["error": "\(type(of: error))"])
            metrics.request(method: request.method.rawValue, status: 500, took: ContinuousClock.now - start)
            throw APIError(.internalServerError, "internal error (request \(context.id))")
        }
    }
}

/// `warden serve`: the fleet API over one ledger store.
public struct FleetServer: Sendable {
    public struct Configuration: Sendable {
        public var host = "127.0.0.1"
        public var port = 8480
        public var tokensFile: String
        public var logLevel: Logger.Level = .info
        /// Serve HTTPS with the server's own CA, and identify hosts by client certificate.
        public var tls = false
        /// The names the server's certificate is for (default ``FleetPKI/defaultNames(listenHost:)``).
        public var tlsNames: [String] = []
        /// The fleet policy agents pull (nil: none served).
        public var policyDirectory: String?
        public init(host: String = "127.0.0.1", port: Int = 8480, tokensFile: String, logLevel: Logger.Level = .info,
                    tls: Bool = false, tlsNames: [String] = [], policyDirectory: String? = nil) {
            self.host = host; self.port = port; self.tokensFile = tokensFile; self.logLevel = logLevel
            self.tls = tls; self.tlsNames = tlsNames; self.policyDirectory = policyDirectory
        }
    }

    public let configuration: Configuration
    public let store: any LedgerQueries
    public let metrics = ServerMetrics()
    public let sessions = Sessions()
    /// The server's CA (with `tls`).
    public let pki: FleetPKI?

    public init(configuration: Configuration, store: any LedgerQueries) throws {
        self.configuration = configuration
        self.store = store
        pki = configuration.tls ? try FleetPKI(directory: FleetPKI.directory(tokensFile: configuration.tokensFile)) : nil
    }

    public func router() throws -> Router<WardenRequestContext> {
        let router = Router(context: WardenRequestContext.self)
        let tokens = TokenStore(path: configuration.tokensFile)
        router.add(middleware: AuthAndMetricsMiddleware(tokens: tokens, metrics: metrics, sessions: sessions, pki: pki))
        let api = self.api(tokens: tokens)
        api.add(to: router)
        try Dashboard(api: api, sessions: sessions).add(to: router)
        return router
    }

    func api(tokens: TokenStore) -> FleetAPI { FleetAPI(store: store, metrics: metrics, tokens: tokens, pki: pki, policyDirectory: configuration.policyDirectory) }

    /// The server's own work (rescans from the job queue), beside the HTTP server.
    struct JobWorker: Service {
        let api: FleetAPI
        let worker: String
        func run() async throws {
            // A graceful stop cancels the loop between rounds; a leased job not finished is
            // left to its lease, and another server (or this one, restarted) takes it.
            try await cancelWhenGracefulShutdown { await api.runServerJobs(worker: worker) }
        }
    }

    /// The application; `onRunning` gets the bound port (useful with port 0).
    public func application(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) throws -> some ApplicationProtocol {
        var logger = Logger(label: "warden.serve")
        logger.logLevel = configuration.logLevel
        let names = configuration.tlsNames.isEmpty ? FleetPKI.defaultNames(listenHost: configuration.host) : configuration.tlsNames
        let tls = try pki?.serverTLS(names: names)
        let worker = JobWorker(api: api(tokens: TokenStore(path: configuration.tokensFile)),
                               worker: "serve:\(HostName.current.value):\(getpid())")
        return Application(router: try router(), server: try tls.map { try .tls(.http1(), tlsConfiguration: $0) } ?? .http1(),
                           configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "warden"),
                           services: [worker],
                           onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
                           logger: logger)
    }
}
