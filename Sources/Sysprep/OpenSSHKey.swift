import Foundation
import WardenCore
import Crypto
import _CryptoExtras

/// SSH host keys generated with swift-crypto and written in OpenSSH's own formats.
///
/// ```
/// private key file (PROTOCOL.key, "openssh-key-v1", unencrypted):
///   "-----BEGIN OPENSSH PRIVATE KEY-----"  base64, 70 columns  "-----END OPENSSH PRIVATE KEY-----"
///   ┌──────────────────────────────────────────────────────────────┐
///   │ "openssh-key-v1\0"                                           │
///   │ string ciphername "none" │ string kdfname "none" │ string "" │
///   │ uint32 1 (number of keys)                                     │
///   │ string public key blob                                        │
///   │ string private section:                                       │
///   │   uint32 check │ uint32 check (equal, random)                 │
///   │   string type │ type-specific private fields                  │
///   │   string comment │ padding 1,2,3… to a multiple of 8          │
///   └──────────────────────────────────────────────────────────────┘
/// public key blobs (RFC 4253 §6.6, RFC 5656, draft-ietf-curdle-ssh-ed25519):
///   ssh-ed25519          string type, string pk(32)
///   ecdsa-sha2-nistp256  string type, string "nistp256", string Q (0x04‖X‖Y)
///   ssh-rsa              string type, mpint e, mpint n
/// private fields:
///   ssh-ed25519          string pk, string seed‖pk (64)
///   ecdsa-sha2-nistp256  string "nistp256", string Q, mpint d
///   ssh-rsa              mpint n, mpint e, mpint d, mpint iqmp, mpint p, mpint q
/// ```
public struct OpenSSHKey: Sendable {
    public enum KeyType: String, Sendable, CaseIterable, Codable {
        case ed25519, ecdsa, rsa

        /// The wire name of the key type.
        public var sshName: String {
            switch self {
            case .ed25519: "ssh-ed25519"
            case .ecdsa: "ecdsa-sha2-nistp256"
            case .rsa: "ssh-rsa"
            }
        }
        /// The label `ssh-keygen -l` prints.
        public var label: String { rawValue.uppercased() }
        public var bits: Int {
            switch self {
            case .ed25519, .ecdsa: 256
            case .rsa: 3072
            }
        }
        /// `/etc/ssh/ssh_host_<type>_key`.
        public var hostKeyPath: String { "/etc/ssh/ssh_host_\(rawValue)_key" }
    }

    public let type: KeyType
    public let comment: String
    /// The public key blob (what the fingerprint hashes).
    public let publicBlob: [UInt8]
    /// The whole private key file (PEM-armoured openssh-key-v1). A secret: never log it.
    public let privateFile: [UInt8]

    /// `type base64 comment\n`, the `.pub` file.
    public var publicFile: [UInt8] {
        Array("\(type.sshName) \(Data(publicBlob).base64EncodedString()) \(comment)\n".utf8)
    }

    /// `SHA256:<base64 without padding>`, as `ssh-keygen -l` prints it.
    public var fingerprint: String {
        let b64 = Data(SHA256.hash(data: publicBlob)).base64EncodedString()
        return "SHA256:" + b64.replacingOccurrences(of: "=", with: "")
    }

    /// The secret key material of one host key, before it is written in OpenSSH's format.
    public enum Material: @unchecked Sendable {
        case ed25519(Curve25519.Signing.PrivateKey)
        case ecdsa(P256.Signing.PrivateKey)
        case rsa(_RSA.Signing.PrivateKey)

        /// New random material of `type` (RSA-3072 takes tens to hundreds of milliseconds).
        public static func generate(_ type: KeyType) throws -> Material {
            switch type {
            case .ed25519: return .ed25519(Curve25519.Signing.PrivateKey())
            case .ecdsa: return .ecdsa(P256.Signing.PrivateKey())
            case .rsa: return .rsa(try _RSA.Signing.PrivateKey(keySize: .bits3072))
            }
        }
    }

    /// Generates a new key of `type`. `comment` is stored in both files (OpenSSH uses `root@HOSTNAME`).
    public static func generate(_ type: KeyType, comment: String) throws -> OpenSSHKey {
        try encode(try Material.generate(type), comment: comment)
    }

    /// Writes `material` as an OpenSSH key pair with `comment`.
    public static func encode(_ material: Material, comment: String) throws -> OpenSSHKey {
        var pub = SSHWireWriter(), priv = SSHWireWriter()
        let type: KeyType
        switch material {
        case .ed25519(let key):
            type = .ed25519
            let pk = Array(key.publicKey.rawRepresentation)
            pub.string(type.sshName); pub.string(pk)
            priv.string(type.sshName); priv.string(pk); priv.string(Array(key.rawRepresentation) + pk)
        case .ecdsa(let key):
            type = .ecdsa
            let q = Array(key.publicKey.x963Representation)
            pub.string(type.sshName); pub.string("nistp256"); pub.string(q)
            priv.string(type.sshName); priv.string("nistp256"); priv.string(q); priv.mpint(Array(key.rawRepresentation))
        case .rsa(let key):
            type = .rsa
            let f = try RSAPrivateKeyDER(Array(key.derRepresentation))
            pub.string(type.sshName); pub.mpint(f.e); pub.mpint(f.n)
            priv.string(type.sshName)
            priv.mpint(f.n); priv.mpint(f.e); priv.mpint(f.d); priv.mpint(f.qInverse); priv.mpint(f.p); priv.mpint(f.q)
        }
        priv.string(comment)
        var check: UInt32 = 0
        withUnsafeMutableBytes(of: &check) { p in
            var g = SystemRandomNumberGenerator()
            for i in 0..<p.count { p[i] = UInt8.random(in: 0...255, using: &g) }
        }
        var section = SSHWireWriter()
        section.uint32(check); section.uint32(check)
        section.bytes += priv.bytes
        var pad: UInt8 = 1
        while section.bytes.count % 8 != 0 { section.bytes.append(pad); pad += 1 }

        var file = SSHWireWriter()
        file.bytes += Array("openssh-key-v1".utf8) + [0]
        file.string("none"); file.string("none"); file.string([UInt8]())
        file.uint32(1)
        file.string(pub.bytes)
        file.string(section.bytes)
        let b64 = Data(file.bytes).base64EncodedString()
        var pem = "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        var i = b64.startIndex
        while i < b64.endIndex {
            let j = b64.index(i, offsetBy: 70, limitedBy: b64.endIndex) ?? b64.endIndex
            pem += b64[i..<j] + "\n"
            i = j
        }
        pem += "-----END OPENSSH PRIVATE KEY-----\n"
        return OpenSSHKey(type: type, comment: comment, publicBlob: pub.bytes, privateFile: Array(pem.utf8))
    }
}

/// Generates host key material on background threads as soon as it is created, so the slow
/// RSA prime search overlaps with creating the overlay and reading the guest. Keys of types
/// the guest turns out not to need are discarded unused.
public final class HostKeyForge: @unchecked Sendable {
    private let lock = NSCondition()
    private var results: [OpenSSHKey.KeyType: Result<OpenSSHKey.Material, any Error>] = [:]

    /// Starts generating `types`; an RSA key comes from `pool` when it has one (``KeyPool``).
    public init(types: [OpenSSHKey.KeyType] = OpenSSHKey.KeyType.allCases, pool: KeyPool? = nil) {
        self.types = Set(types)
        // The threads started below write `results` under the lock; so does this loop (a
        // pooled key written unlocked raced a fast thread's write, and crashed a clone).
        lock.lock()
        defer { lock.unlock() }
        for t in types {
            if t == .rsa, let key = pool?.takeRSA() {
                results[t] = .success(.rsa(key))
                pooled.insert(t)
                continue
            }
            Thread.detachNewThread { [self] in
                let t0 = PhaseTimer.now(), c0 = PhaseTimer.threadCPU()
                let r = Result { try OpenSSHKey.Material.generate(t) }
                PhaseTimer.shared.record("keygen \(t.rawValue) (own thread)", wall: PhaseTimer.now() - t0, cpu: PhaseTimer.threadCPU() - c0)
                lock.lock(); results[t] = r; lock.broadcast(); lock.unlock()
            }
        }
    }
    /// The types whose key came from the pool.
    public private(set) var pooled: Set<OpenSSHKey.KeyType> = []
    private let types: Set<OpenSSHKey.KeyType>
    private var taken: Set<OpenSSHKey.KeyType> = []

    /// The material of `type`: waits for its generation, or generates it now if it was not started.
    /// Each call for a started type returns that type's one key; callers use it once.
    public func material(_ type: OpenSSHKey.KeyType) throws -> OpenSSHKey.Material {
        lock.lock()
        guard types.contains(type), !taken.contains(type) else {
            lock.unlock()
            return try OpenSSHKey.Material.generate(type)
        }
        taken.insert(type)
        let t0 = PhaseTimer.now()
        while results[type] == nil { lock.wait() }
        PhaseTimer.shared.record("keygen \(type.rawValue) waited for", wall: PhaseTimer.now() - t0, cpu: 0)
        let r = results.removeValue(forKey: type)
        lock.unlock()
        guard let r else { return try OpenSSHKey.Material.generate(type) }
        return try r.get()
    }
}

/// Builds SSH wire encodings (RFC 4251 §5).
struct SSHWireWriter {
    var bytes: [UInt8] = []
    mutating func uint32(_ v: UInt32) {
        bytes += [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)]
    }
    mutating func string(_ s: [UInt8]) { uint32(UInt32(s.count)); bytes += s }
    mutating func string(_ s: String) { string(Array(s.utf8)) }
    /// A non-negative big-endian integer as an mpint: no leading zeros, a 0 byte before a set high bit.
    mutating func mpint(_ magnitude: [UInt8]) {
        var m = Array(magnitude.drop(while: { $0 == 0 }))
        if let first = m.first, first & 0x80 != 0 { m.insert(0, at: 0) }
        string(m)
    }
}

/// The fields of a PKCS#1 `RSAPrivateKey` (RFC 8017 A.1.2), read with bounds checks.
struct RSAPrivateKeyDER {
    var n: [UInt8], e: [UInt8], d: [UInt8], p: [UInt8], q: [UInt8], qInverse: [UInt8]

    init(_ der: [UInt8]) throws {
        var outer = DERReader(der)
        var seq = DERReader(try outer.element(tag: 0x30))
        var ints: [[UInt8]] = []
        for _ in 0..<9 { ints.append(try seq.element(tag: 0x02)) }
        guard ints[0] == [0] else { throw WardenError(.internal, "RSA key: unexpected PKCS#1 version") }
        n = ints[1]; e = ints[2]; d = ints[3]; p = ints[4]; q = ints[5]; qInverse = ints[8]
    }
}

/// A minimal DER TLV reader (definite lengths only).
struct DERReader {
    let bytes: [UInt8]
    var pos = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func byte() throws -> UInt8 {
        guard pos < bytes.count else { throw WardenError(.internal, "DER: truncated") }
        defer { pos += 1 }
        return bytes[pos]
    }

    mutating func element(tag: UInt8) throws -> [UInt8] {
        guard try byte() == tag else { throw WardenError(.internal, "DER: unexpected tag") }
        var length = Int(try byte())
        if length & 0x80 != 0 {
            let count = length & 0x7F
            guard (1...4).contains(count) else { throw WardenError(.internal, "DER: bad length") }
            length = 0
            for _ in 0..<count { length = length << 8 | Int(try byte()) }
        }
        guard length <= bytes.count - pos else { throw WardenError(.internal, "DER: length beyond the end") }
        defer { pos += length }
        return Array(bytes[pos..<pos + length])
    }
}
