import Foundation
import Testing
import Inspection
import WardenCore
import WardenTestSupport
@testable import Sysprep

/// Generated host keys against the real `ssh-keygen`: it must load each private key,
/// derive the same public key, and print the fingerprint Warden computed.
@Suite struct OpenSSHKeyTests {
    @Test(arguments: OpenSSHKey.KeyType.allCases)
    func sshKeygenAcceptsGeneratedKeys(_ type: OpenSSHKey.KeyType) throws {
        let key = try OpenSSHKey.generate(type, comment: "root@clone-1")
        try Fixtures.withTemporaryDirectory { dir in
            let priv = dir + "/ssh_host_\(type.rawValue)_key"
            try Fixtures.write(key.privateFile, to: priv)
            #expect(chmod(priv, 0o600) == 0)
            try Fixtures.write(key.publicFile, to: priv + ".pub")
            // ssh-keygen -y reads the private key and prints its public key.
            let y = try Tool.run(["ssh-keygen", "-y", "-f", priv])
            let derived = y.stdoutText.split(separator: " ").prefix(2).joined(separator: " ")
            let written = String(decoding: key.publicFile, as: UTF8.self).split(separator: " ").prefix(2).joined(separator: " ")
            #expect(derived == written)
            // ssh-keygen -l prints bits, fingerprint, comment and type.
            for file in [priv, priv + ".pub"] {
                let l = try Tool.run(["ssh-keygen", "-l", "-E", "sha256", "-f", file]).stdoutText
                #expect(l == "\(type.bits) \(key.fingerprint) root@clone-1 (\(type.label))\n")
            }
            // The fingerprint read back from the private file's header matches.
            #expect(OpenSSHKey.publicBlob(ofPrivateKeyFile: key.privateFile).map(OpenSSHKey.fingerprint(ofBlob:)) == key.fingerprint)
            // Inspection's parser agrees.
            let pub = String(decoding: key.publicFile, as: UTF8.self).split(separator: " ")
            let parsed = try SSHKeyParser.parse(keyType: String(pub[0]), base64: pub[1], comment: "root@clone-1")
            #expect(parsed.fingerprint == key.fingerprint)
            #expect(parsed.bits == type.bits)
        }
    }

    @Test func keysAreFreshEachTime() throws {
        let a = try OpenSSHKey.generate(.ed25519, comment: "x"), b = try OpenSSHKey.generate(.ed25519, comment: "x")
        #expect(a.fingerprint != b.fingerprint)
        #expect(a.privateFile != b.privateFile)
    }

    @Test func privateBlobParserRejectsGarbage() {
        #expect(OpenSSHKey.publicBlob(ofPrivateKeyFile: Array("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n".utf8)) == nil)
        #expect(OpenSSHKey.publicBlob(ofPrivateKeyFile: []) == nil)
        var g = SeededRandom(seed: 7)
        for n in 0..<200 {
            let bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: g.next()) }
            let body = Data(Array("openssh-key-v1".utf8) + [0] + bytes).base64EncodedString()
            _ = OpenSSHKey.publicBlob(ofPrivateKeyFile: Array("-----BEGIN OPENSSH PRIVATE KEY-----\n\(body)\n-----END OPENSSH PRIVATE KEY-----\n".utf8))
        }
    }

    @Test func operationSelection() throws {
        #expect(try Sysprep.select(nil).map(\.name) == Sysprep.operations.filter(\.defaultEnabled).map(\.name))
        #expect(try Sysprep.select("ssh-hostkeys,machine-id").map(\.name) == ["machine-id", "ssh-hostkeys"])
        let minus = try Sysprep.select("-ssh-hostkeys,fs-uuids").map(\.name)
        #expect(!minus.contains("ssh-hostkeys") && minus.contains("fs-uuids") && minus.contains("machine-id"))
        #expect(try Sysprep.select("all,-fs-uuids").count == Sysprep.operations.count - 1)
        #expect(throws: WardenError.self) { try Sysprep.select("no-such-op") }
        #expect(SysprepOptions.validHostname("web-01.example.org"))
        #expect(!SysprepOptions.validHostname("-bad"))
        #expect(!SysprepOptions.validHostname("a b"))
        #expect(!SysprepOptions.validHostname("x\n127.0.0.1 evil"))
    }
}
