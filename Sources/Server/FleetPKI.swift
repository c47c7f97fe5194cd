import Crypto
import Foundation
import NIOSSL
import SwiftASN1
import WardenCore
import X509

/// The server's small certificate authority (docs/fleet.md, "Hosts and mutual TLS").
///
/// `server/pki/` beside the token list holds, 0600 in a 0700 folder:
/// - `ca.key`, `ca.pem`: a P-256 CA made on the first TLS start, good for 10 years. It signs the
///   server's certificate and the hosts' client certificates, nothing else.
/// - `server.key`, `server.pem`: the server's certificate for the names it is reached by, made
///   again when the names change or it is within 30 days of its end.
/// - `hosts.json`: every host certificate issued (host, serial, validity, revoked), which the
///   server reads on each request: a revoked certificate is refused from the next request on.
///
/// A host gets its certificate at enrolment, in exchange for a one-time host token and a CSR
/// whose key never leaves the host. The certificate names the host the token was made for,
/// whatever the CSR asks.
public final class FleetPKI: Sendable {
    public let directory: String
    let caKey: Certificate.PrivateKey
    public let caCertificate: Certificate
    let issued: WatchedJSONFile<IssuedFile>
    /// Host certificates last this long (default one year).
    public let hostValidity: TimeInterval

    public struct Issued: Codable, Sendable, Equatable {
        public var host: String
        /// Lower-case hex of the serial number.
        public var serial: String
        public var notBefore: Date
        public var notAfter: Date
        public var revoked: Date?
    }
    struct IssuedFile: Codable, Sendable { var certificates: [Issued] }

    /// `pki/` beside the token file.
    public static func directory(tokensFile: String) -> String {
        let dir = (tokensFile as NSString).deletingLastPathComponent
        return (dir.isEmpty ? "." : dir) + "/pki"
    }

    /// Opens the authority in `directory`, making its CA key and certificate when there are none.
    public init(directory: String, hostValidity: TimeInterval = 365 * 86_400, create: Bool = true) throws {
        self.directory = directory
        self.hostValidity = hostValidity
        issued = WatchedJSONFile(path: directory + "/hosts.json", what: "the issued host certificates", empty: IssuedFile(certificates: []))
        let keyPath = directory + "/ca.key", certPath = directory + "/ca.pem"
        if FileManager.default.fileExists(atPath: keyPath) || FileManager.default.fileExists(atPath: certPath) {
            try Self.checkPrivate(directory: directory, file: keyPath)
            caKey = Certificate.PrivateKey(try Self.readKey(keyPath))
            caCertificate = try Self.readCertificate(certPath)
            guard caCertificate.publicKey == caKey.publicKey else {
                throw WardenError(.corrupt, "the CA certificate does not belong to the CA key", file: certPath)
            }
        } else {
            guard create else { throw WardenError(.notFound, "the server has no certificate authority yet (start it once with --tls)", file: keyPath) }
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            chmod(directory, 0o700)
            let key = P256.Signing.PrivateKey()
            let name = try DistinguishedName {
                OrganizationName("Warden")
                CommonName("Warden fleet CA \(HostName.current.value.prefix(40))")
            }
            let now = Date()
            let cert = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
                notValidBefore: now - 3600, notValidAfter: now + 10 * 365 * 86_400, issuer: name, subject: name,
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
                },
                issuerPrivateKey: .init(key))
            try FileDescriptorIO.replaceFile(keyPath, with: Array(key.pemRepresentation.utf8))
            try FileDescriptorIO.replaceFile(certPath, with: Array(try cert.serializeAsPEM().pemString.utf8), mode: 0o644)
            caKey = Certificate.PrivateKey(key)
            caCertificate = cert
        }
    }

    /// The CA certificate, PEM (what hosts and tools trust).
    public var caPEM: String { (try? caCertificate.serializeAsPEM().pemString) ?? "" }

    /// SHA-256 of the CA certificate's DER bytes, `sha256:<hex>` (to compare out of band).
    public var caFingerprint: String {
        var s = DER.Serializer()
        _ = try? s.serialize(caCertificate)
        return "sha256:" + Self.hex(SHA256.hash(data: s.serializedBytes))
    }

    // MARK: The server's own certificate

    /// The server's key and certificate for `names` (DNS names and IP addresses), made anew
    /// when the names differ or the certificate ends within 30 days.
    public func serverIdentity(names: [String]) throws -> (key: P256.Signing.PrivateKey, certificate: Certificate) {
        let keyPath = directory + "/server.key", certPath = directory + "/server.pem"
        let wanted = Set(names)
        if let key = try? Self.readKey(keyPath), let cert = try? Self.readCertificate(certPath),
           cert.publicKey == Certificate.PublicKey(key.publicKey), cert.issuer == caCertificate.subject,
           cert.notValidAfter > Date() + 30 * 86_400, Set(Self.names(in: cert)) == wanted {
            return (key, cert)
        }
        let key = P256.Signing.PrivateKey()
        let now = Date()
        let sans = SubjectAlternativeNames(names.map { n -> GeneralName in
            if let ip = Self.ipBytes(n) { return .ipAddress(ASN1OctetString(contentBytes: ip[...])) }
            return .dnsName(n)
        })
        let cert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now - 3600, notValidAfter: min(now + 365 * 86_400, caCertificate.notValidAfter),
            issuer: caCertificate.subject,
            subject: try DistinguishedName { OrganizationName("Warden"); CommonName(String((names.first ?? "warden").prefix(64))) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                sans
            },
            issuerPrivateKey: caKey)
        try FileDescriptorIO.replaceFile(keyPath, with: Array(key.pemRepresentation.utf8))
        try FileDescriptorIO.replaceFile(certPath, with: Array(try cert.serializeAsPEM().pemString.utf8), mode: 0o644)
        return (key, cert)
    }

    /// The TLS configuration of the listener: the server's certificate, and client certificates
    /// checked against this CA when presented (enrolment comes without one; every host call
    /// after it needs one, which the request's authorisation checks).
    public func serverTLS(names: [String]) throws -> TLSConfiguration {
        let (key, cert) = try serverIdentity(names: names)
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: [.certificate(try Self.nio(cert))],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(key.pemRepresentation.utf8), format: .pem)))
        tls.minimumTLSVersion = .tlsv12
        tls.trustRoots = .certificates([try Self.nio(caCertificate)])
        tls.certificateVerification = .optionalVerification
        return tls
    }

    /// The names a server certificate is for by default: the listen address when it is a
    /// specific one, this machine's name, and loopback.
    public static func defaultNames(listenHost: String) -> [String] {
        var names: [String] = []
        if !["0.0.0.0", "::", ""].contains(listenHost) { names.append(listenHost) }
        for n in [HostName.current.value, "localhost", "127.0.0.1", "::1"] where !names.contains(n) { names.append(n) }
        return names
    }

    // MARK: Host certificates

    /// A host's certificate request, checked: PEM PKCS #10, at most 16 KiB, signed by its key.
    public static func request(_ csrPEM: String) throws -> CertificateSigningRequest {
        guard csrPEM.utf8.count <= 16 << 10 else { throw WardenError(.invalidArgument, "the certificate request is larger than 16 KiB") }
        let csr: CertificateSigningRequest
        do { csr = try CertificateSigningRequest(pemEncoded: csrPEM) } catch {
            throw WardenError(.invalidArgument, "csr is not a PEM certificate request")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw WardenError(.invalidArgument, "the certificate request's signature does not verify")
        }
        return csr
    }

    /// Issues a client certificate for `host` to the key of `csr` (checked by ``request(_:)``)
    /// and records it. The subject is the host's name whatever the request asks.
    public func issue(host: HostName, csr: CertificateSigningRequest, now: Date = Date()) throws -> (pem: String, issued: Issued) {
        let serial = Certificate.SerialNumber()
        let notAfter = min(now + hostValidity, caCertificate.notValidAfter)
        let cert = try Certificate(
            version: .v3, serialNumber: serial, publicKey: csr.publicKey,
            notValidBefore: now - 300, notValidAfter: notAfter,
            issuer: caCertificate.subject,
            subject: try DistinguishedName { OrganizationName("Warden hosts"); CommonName(String(host.value.prefix(64))) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.clientAuth])
            },
            issuerPrivateKey: caKey)
        let record = Issued(host: host.value, serial: Self.hex(serial.bytes), notBefore: now - 300, notAfter: notAfter, revoked: nil)
        let pem = try cert.serializeAsPEM().pemString
        try issued.update { $0.certificates.append(record) }
        return (pem, record)
    }

    /// The host a verified peer certificate speaks for: nil unless this CA issued it (it is in
    /// the issued list), it is not revoked and not expired.
    public func host(forSerial serial: [UInt8], now: Date = Date()) -> HostName? {
        let hex = Self.hex(ArraySlice(normalisingSerial: serial))
        guard let e = issued.current().certificates.first(where: { $0.serial == hex }), e.revoked == nil,
              e.notBefore <= now, now < e.notAfter else { return nil }
        return HostName(e.host)
    }

    public func listIssued() throws -> [Issued] { try issued.read().certificates }

    /// Revokes every live certificate of `host`; returns how many.
    @discardableResult
    public func revoke(host: HostName, now: Date = Date()) throws -> Int {
        try issued.update { f in
            var n = 0
            for i in f.certificates.indices where f.certificates[i].host == host.value && f.certificates[i].revoked == nil {
                f.certificates[i].revoked = now; n += 1
            }
            if n == 0 { throw WardenError(.notFound, "no live certificate for host \(host.value)") }
            return n
        }
    }

    // MARK: Helpers

    static func hex<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        bytes.hexString
    }

    static func nio(_ cert: Certificate) throws -> NIOSSLCertificate {
        var s = DER.Serializer()
        try s.serialize(cert)
        return try NIOSSLCertificate(bytes: s.serializedBytes, format: .der)
    }

    static func names(in cert: Certificate) -> [String] {
        guard let sans = try? cert.extensions.subjectAlternativeNames else { return [] }
        return sans.compactMap { n -> String? in
            switch n {
            case .dnsName(let d): return d
            case .ipAddress(let o): return ipText(Array(o.bytes))
            default: return nil
            }
        }
    }

    static func ipBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr(), v6 = in6_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    static func ipText(_ bytes: [UInt8]) -> String? {
        var buf = [CChar](repeating: 0, count: 64)
        let family = bytes.count == 4 ? AF_INET : bytes.count == 16 ? AF_INET6 : -1
        guard family >= 0 else { return nil }
        let ok = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &buf, socklen_t(buf.count)) } != nil
        return ok ? String(cString: buf) : nil
    }

    static func checkPrivate(directory: String, file: String) throws {
        var st = stat()
        if stat(directory, &st) == 0, st.st_mode & 0o077 != 0 {
            throw WardenError(.denied, "the PKI folder is open to others; chmod 700 it", file: directory)
        }
        if stat(file, &st) == 0, st.st_mode & 0o077 != 0 {
            throw WardenError(.denied, "the CA key is readable by others; chmod 600 it", file: file)
        }
    }

    static func readKey(_ path: String) throws -> P256.Signing.PrivateKey {
        guard let data = FileManager.default.contents(atPath: path), data.count <= 64 << 10,
              let text = String(data: data, encoding: .utf8) else {
            throw WardenError(.unavailable, "cannot read the key", file: path)
        }
        do { return try P256.Signing.PrivateKey(pemRepresentation: text) } catch {
            throw WardenError(.corrupt, "not a P-256 private key in PEM", file: path)
        }
    }

    static func readCertificate(_ path: String) throws -> Certificate {
        guard let data = FileManager.default.contents(atPath: path), data.count <= 64 << 10,
              let text = String(data: data, encoding: .utf8) else {
            throw WardenError(.unavailable, "cannot read the certificate", file: path)
        }
        do { return try Certificate(pemEncoded: text) } catch {
            throw WardenError(.corrupt, "not a PEM certificate", file: path)
        }
    }
}

extension ArraySlice where Element == UInt8 {
    /// A serial number as X.509 stores it (the DER integer's minimal form): NIOSSL gives the
    /// bytes as BoringSSL holds them, which can differ by leading zeros.
    init(normalisingSerial bytes: [UInt8]) {
        self = Certificate.SerialNumber(bytes: bytes[...]).bytes
    }
}
