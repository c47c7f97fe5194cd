import Crypto
import Foundation
import Server
import Testing
import WardenCore
import WardenTestSupport
import X509

/// The fleet CA against hostile certificate requests, and the issued list that decides who a
/// presented certificate is.
@Suite struct FleetPKITests {
    static func csr(cn: String, key: P256.Signing.PrivateKey = .init()) throws -> CertificateSigningRequest {
        try CertificateSigningRequest(version: .v1, subject: try DistinguishedName { CommonName(cn) },
                                      privateKey: .init(key), attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256)
    }

    @Test func hostileRequestsAreRefusedWithTypedErrors() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            _ = try FleetPKI(directory: tmp + "/pki")
            let good = try Self.csr(cn: "h1")
            // Another key's signature over this request's contents: refused.
            let other = try Self.csr(cn: "h1")
            let forged = try CertificateSigningRequest(version: .v1, subject: good.subject, publicKey: good.publicKey,
                                                       attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256, signature: other.signature)
            let inputs = ["", "garbage", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----",
                          try forged.serializeAsPEM().pemString, String(repeating: "A", count: 17 << 10),
                          try Certificate(pemEncoded: try FleetPKI(directory: tmp + "/pki").caPEM).serializeAsPEM().pemString]
            for (i, text) in inputs.enumerated() {
                #expect(throws: WardenError.self, "input \(i)") { try FleetPKI.request(text) }
            }
            #expect(try FleetPKI.request(try good.serializeAsPEM().pemString).publicKey == good.publicKey)
        }
    }

    @Test func certificatesNameTheTokensHostAndRevocationTakesEffect() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let pki = try FleetPKI(directory: tmp + "/pki")
            // 0600 key in a 0700 folder.
            var st = stat()
            #expect(stat(tmp + "/pki", &st) == 0 && st.st_mode & 0o777 == 0o700)
            #expect(stat(tmp + "/pki/ca.key", &st) == 0 && st.st_mode & 0o777 == 0o600)
            let (pem, issued) = try pki.issue(host: HostName("h1")!, csr: try Self.csr(cn: "admin"))
            let cert = try Certificate(pemEncoded: pem)
            #expect(cert.subject.description.contains("CN=h1") && !cert.subject.description.contains("admin"))
            #expect(cert.issuer == pki.caCertificate.subject)
            #expect(pki.caCertificate.publicKey.isValidSignature(cert.signature, for: cert))
            let serial = Array(cert.serialNumber.bytes)
            #expect(pki.host(forSerial: serial) == HostName("h1"))
            #expect(pki.host(forSerial: [0x01, 0x02]) == nil)
            #expect(pki.host(forSerial: serial, now: issued.notAfter + 1) == nil)
            // A serial with a leading zero byte (as BoringSSL may hand it over) is the same serial.
            if serial.first.map({ $0 & 0x80 != 0 }) == true { #expect(pki.host(forSerial: [0] + serial) == HostName("h1")) }
            // Reopened from disk: the same CA; revoked: refused.
            let again = try FleetPKI(directory: tmp + "/pki")
            #expect(again.caFingerprint == pki.caFingerprint)
            #expect(try again.revoke(host: HostName("h1")!) == 1)
            #expect(pki.host(forSerial: serial) == nil)
            #expect(throws: WardenError.self) { try again.revoke(host: HostName("h1")!) }
            // A CA key others can read is refused.
            chmod(tmp + "/pki/ca.key", 0o644)
            #expect(throws: WardenError.self) { try FleetPKI(directory: tmp + "/pki") }
        }
    }
}
