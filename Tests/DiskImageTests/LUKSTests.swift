import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// Encrypted qcow2 (LUKS1 inside, as QEMU writes it) read offline with the key: qemu-img makes
/// the images, and the plaintext they were made from is the oracle.
@Suite struct LUKSTests {
    static let passphrase = "correct horse battery staple"

    /// A 6 MiB plaintext with varied content, and encrypted qcow2 copies of it made by qemu-img
    /// with each cipher size and hash; one with QEMU's default settings but a short iter-time.
    static func fixture() throws -> String {
        try Q.fixture("luks", """
        python3 -c 'import random; r = random.Random(7); open("plain.raw", "wb").write(bytes(r.getrandbits(8) for _ in range(6 << 20)))'
        truncate -s 8M plain.raw
        printf '%s' '\(passphrase)' > pass
        for v in "aes-256 sha256" "aes-128 sha1" "aes-256 sha512"; do
            set -- $v
            for try in 1 2 3 4 5 6 7 8; do
                qemu-img convert -q --object secret,id=s,file=pass,format=raw -f raw -O qcow2 \\
                    -o encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-alg=$1,encrypt.hash-alg=$2,encrypt.iter-time=10 \\
                    plain.raw "enc-$1-$2.qcow2" && break
            done
        done
        """)
    }

    func open(_ path: String, _ pass: String?) throws -> OpenedImage {
        try ImageOpener.open(path, options: OpenOptions(passphrase: pass.map { SecretBytes(copying: Array($0.utf8)) }))
    }

    @Test(arguments: ["aes-256-sha256", "aes-128-sha1", "aes-256-sha512"])
    func decryptsWhatQemuImgEncrypted(_ variant: String) throws {
        let dir = try Self.fixture()
        let plain = try Fixtures.read(dir + "/plain.raw")
        let image = try open(dir + "/enc-\(variant).qcow2", Self.passphrase)
        #expect(image.device.size == UInt64(plain.count))
        let all = try Q.readAll(image.device)
        #expect(Q.firstDifference(all, plain) == nil)
        // Reads that start and end mid-sector decrypt the same bytes.
        try Q.expectRandomReads(image.device, plain)
        #expect(image.chain.first?.details["encryption"]?.hasPrefix("luks aes-xts-plain64") == true)
    }

    @Test func wrongOrMissingKeysAreOneLineErrors() throws {
        let dir = try Self.fixture()
        let wrong = #expect(throws: WardenError.self) { try open(dir + "/enc-aes-256-sha256.qcow2", "not it") }
        #expect(wrong?.code == .invalidArgument && wrong?.exitCode == 2 && wrong?.message.contains("does not open") == true)
        let missing = #expect(throws: WardenError.self) { try open(dir + "/enc-aes-256-sha256.qcow2", nil) }
        #expect(missing?.code == .unsupported && missing?.message.contains("--key-from") == true)
    }

    /// Damaged headers give typed errors, never a crash or a read beyond the file.
    @Test func hostileLUKSHeaders() throws {
        let dir = try Self.fixture()
        let original = try Fixtures.read(dir + "/enc-aes-256-sha256.qcow2")
        let image = try ImageOpener.open(dir + "/enc-aes-256-sha256.qcow2", options: OpenOptions(passphrase: SecretBytes(copying: Array(Self.passphrase.utf8))))
        _ = image
        let header = try QCOW2.Header.parse(try ImageFile(path: dir + "/enc-aes-256-sha256.qcow2"))
        let at = Int(try #require(header.encryption).offset)
        func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }
        let damages: [(String, Int, [UInt8])] = [
            ("magic", 0, [0x00]),
            ("version 2", 6, [0x00, 0x02]),
            ("cipher", 8, Array("serpent\0".utf8)),
            ("key bytes", 108, be32(48)),
            ("digest iterations", 164, be32(0)),
            ("slot state", 208, be32(0x1234_5678)),
            ("stripes", 208 + 44, be32(0xffff_ffff)),
            ("key material offset", 208 + 40, be32(0x7fff_ffff)),
            ("iterations", 208 + 4, be32(0)),
        ]
        try Fixtures.withTemporaryDirectory { tmp in
            for (what, offset, bytes) in damages {
                var b = original
                b.replaceSubrange((at + offset)..<(at + offset + bytes.count), with: bytes)
                let path = tmp + "/\(what.replacingOccurrences(of: " ", with: "-")).qcow2"
                try Data(b).write(to: URL(fileURLWithPath: path))
                let e = #expect(throws: WardenError.self, "\(what)") { try open(path, Self.passphrase) }
                #expect(e.map { [.corrupt, .unsupported, .denied].contains($0.code) } == true, "\(what): \(String(describing: e))")
            }
        }
    }
}
