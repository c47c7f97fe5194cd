import Attestation
import Foundation
import Hummingbird
import Ledger
import NIOCore
import NIOPosix
import WardenCore

/// Nonces the server issued for attestation: 32 random bytes per request, for one host, good
/// for five minutes and for one quote. A quote carrying any other nonce is a replay.
public final class AttestationNonces: @unchecked Sendable {
    // @unchecked: all state behind `lock`.
    private let lock = NSLock()
    private var outstanding: [String: [(nonce: [UInt8], expires: Date)]] = [:]
    public static let lifetime: TimeInterval = 300
    /// Outstanding nonces per host (older ones are dropped first).
    public static let perHost = 8

    public init() {}

    public func issue(for host: HostName, now: Date = Date()) throws -> [UInt8] {
        let nonce = try HostTrustService.nonce()
        lock.lock(); defer { lock.unlock() }
        var list = (outstanding[host.value] ?? []).filter { $0.expires > now }
        list.append((nonce, now.addingTimeInterval(Self.lifetime)))
        outstanding[host.value] = Array(list.suffix(Self.perHost))
        return nonce
    }

    /// Spends `nonce` for `host`: true once, when it was issued to that host and has not expired.
    public func spend(_ nonce: [UInt8], for host: HostName, now: Date = Date()) -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard var list = outstanding[host.value], let i = list.firstIndex(where: { $0.nonce == nonce }) else { return false }
        let entry = list.remove(at: i)
        outstanding[host.value] = list
        return entry.expires > now
    }
}

/// `POST /v1/hosts/{host}/attestation-nonce` and `POST /v1/hosts/{host}/attestation`: a host
/// proves its boot state to the fleet (docs/attestation.md). The server issues the nonce,
/// verifies the quote against the host's enrolment in the fleet ledger (its `host-enrolled`
/// event, shipped by the agent) and the server's own host trust policy, and records the verdict
/// in the fleet ledger, where `attested: true` reads it.
extension FleetAPI {
    static let attestationRoutes: [(method: String, path: String, allowed: Set<Role>)] = [
        ("POST", "/v1/hosts/{host}/attestation-nonce", [.host]),
        ("POST", "/v1/hosts/{host}/attestation", [.host]),
    ]

    /// What the server asks for: a nonce and the PCRs its trust policy needs.
    public struct AttestationChallenge: Codable, Sendable {
        public var nonce: String
        /// tpm2-tools selections, e.g. `sha256:0,7`.
        public var pcrs: [String]
        public var expiresInSeconds: Int
    }

    /// A quote as the agent sends it (base64 of tpm2_quote's outputs).
    public struct AttestationEvidence: Codable, Sendable {
        public var nonce: String
        public var quote: String
        public var signature: String
        public var pcrs: String
    }

    public struct AttestationAnswer: Codable, Sendable {
        public var host: String
        public var trusted: Bool
        public var reasons: [String]
        public var baseline: String?
        public var mismatchedPcrs: [String]
        /// How long the verdict counts (the server's trust policy maxAge).
        public var validForSeconds: Int64
    }

    func addAttestation(to router: Router<WardenRequestContext>) {
        router.post("/v1/hosts/:host/attestation-nonce") { _, ctx in
            try ctx.require(Self.allowed("POST", "/v1/hosts/{host}/attestation-nonce"))
            let host = try ctx.reportingHost()
            let policy: HostTrustPolicy?
            do { policy = try HostTrustPolicy.load(policyDirectory: policyDirectory) } catch let e as WardenError { throw APIError.from(e) }
            guard let policy else {
                throw APIError(.conflict, "the server has no host trust policy (hosts/trust.yaml in its policy directory): no host can be attested")
            }
            let nonce = try nonces.issue(for: host)
            return try Self.json(AttestationChallenge(nonce: Data(nonce).hexEncoded, pcrs: policy.selection.map(\.toolSpec),
                                                      expiresInSeconds: Int(AttestationNonces.lifetime)))
        }
        router.post("/v1/hosts/:host/attestation") { request, ctx in
            try ctx.require(Self.allowed("POST", "/v1/hosts/{host}/attestation"))
            let host = try ctx.reportingHost()
            let body = try await Self.body(AttestationEvidence.self, of: request, limit: 64 << 10, what: "attestation evidence")
            guard let nonce = Data(hexEncoded: body.nonce), (1...64).contains(nonce.count) else { throw APIError(.badRequest, "nonce is 1-64 bytes in hex") }
            guard let quote = Data(base64Encoded: body.quote), let signature = Data(base64Encoded: body.signature),
                  let pcrs = Data(base64Encoded: body.pcrs) else {
                throw APIError(.badRequest, "quote, signature and pcrs are base64")
            }
            // The nonce is spent before anything else: a quote gets one try.
            guard nonces.spend(Array(nonce), for: host) else {
                throw APIError(.forbidden, "the nonce was not issued to \(host) by this server, was used already or expired: a replayed or stale quote")
            }
            let evidence = QuoteEvidence(quote: Array(quote), signature: Array(signature), pcrValues: Array(pcrs))
            let directory = policyDirectory
            let verdict: AttestationVerdict = try await blocking { store in
                do {
                    return try HostTrustService(store: store, host: host, policyDirectory: directory).verify(evidence, nonce: Array(nonce), for: host)
                } catch let e as WardenError where e.code == .corrupt {
                    throw WardenError(.invalidArgument, e.message)   // malformed evidence is the caller's: 400
                }
            }
            return try Self.json(AttestationAnswer(host: host.value, trusted: verdict.trusted, reasons: verdict.reasons,
                                                   baseline: verdict.baseline, mismatchedPcrs: verdict.mismatchedPCRs,
                                                   validForSeconds: verdict.validForSeconds ?? 0))
        }
    }
}
