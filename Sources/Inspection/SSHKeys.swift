import WardenCore
import Crypto

/// A parsed OpenSSH public key (from a `.pub` file or an authorized_keys line).
public struct SSHPublicKey: Codable, Sendable, Equatable {
    /// The key type as written, e.g. `ssh-ed25519`.
    public var keyType: String
    /// `ssh-keygen` type label: ED25519, ECDSA, RSA, DSA, ED25519-SK, ECDSA-SK (with -CERT for certificates).
    public var type: String
    public var bits: Int
    /// `SHA256:<base64 without padding>`.
    public var fingerprint: String
    public var comment: String
    /// The line `ssh-keygen -l -f` prints for this key.
    public var fingerprintLine: String
}

public enum SSHKeyParser {
    static let maxBlob = 64 * 1024

    /// Known key type names (plain and certificate forms).
    static let typeLabels: [String: String] = [
        "ssh-ed25519": "ED25519",
        "ssh-rsa": "RSA",
        "ssh-dss": "DSA",
        "ecdsa-sha2-nistp256": "ECDSA",
        "ecdsa-sha2-nistp384": "ECDSA",
        "ecdsa-sha2-nistp521": "ECDSA",
        "sk-ssh-ed25519@openssh.com": "ED25519-SK",
        "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
        "ssh-ed25519-cert-v01@openssh.com": "ED25519-CERT",
        "ssh-rsa-cert-v01@openssh.com": "RSA-CERT",
        "ssh-dss-cert-v01@openssh.com": "DSA-CERT",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com": "ECDSA-CERT",
        "ecdsa-sha2-nistp384-cert-v01@openssh.com": "ECDSA-CERT",
        "ecdsa-sha2-nistp521-cert-v01@openssh.com": "ECDSA-CERT",
        "sk-ssh-ed25519-cert-v01@openssh.com": "ED25519-SK-CERT",
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": "ECDSA-SK-CERT",
    ]

    public static func isKeyType(_ s: Substring) -> Bool { typeLabels[String(s)] != nil }

    /// Parses `type base64 [comment]` (no options). Throws on malformed input.
    /// `leadingField` is the options (or known_hosts host) field before the key, if any:
    /// `ssh-keygen -l` shows it in place of a missing comment, and so does ``SSHPublicKey/fingerprintLine``.
    public static func parse(keyType: String, base64: Substring, comment: String, leadingField: String? = nil) throws -> SSHPublicKey {
        guard let label = typeLabels[keyType] else { throw WardenError.unsupported("unknown SSH key type") }
        guard base64.utf8.count <= maxBlob * 4 / 3 + 4, let blob = decodeBase64(base64) else {
            throw WardenError.corrupt("invalid base64 in SSH key")
        }
        var r = SSHWire(blob)
        let inner = try r.string()
        guard inner == Array(keyType.utf8) else { throw WardenError.corrupt("SSH key blob type does not match the key type") }
        let isCert = keyType.hasSuffix("-cert-v01@openssh.com")
        if isCert { _ = try r.string() } // nonce
        let base = isCert ? String(keyType.dropLast("-cert-v01@openssh.com".count)) : keyType
        let bits: Int
        switch base {
        case "ssh-ed25519", "sk-ssh-ed25519@openssh.com":
            let pk = try r.string()
            guard pk.count == 32 else { throw WardenError.corrupt("ed25519 key is not 32 bytes") }
            bits = 256
        case "ssh-rsa":
            _ = try r.string()          // e
            bits = mpintBits(try r.string())  // n
        case "ssh-dss":
            bits = mpintBits(try r.string())  // p
        default: // ecdsa variants
            let curve = String(decoding: try r.string(), as: UTF8.self)
            switch curve {
            case "nistp256": bits = 256
            case "nistp384": bits = 384
            case "nistp521": bits = 521
            default: throw WardenError.corrupt("unknown ECDSA curve")
            }
            guard base.contains(curve) else { throw WardenError.corrupt("ECDSA curve does not match the key type") }
            _ = try r.string() // Q
        }
        let digest = SHA256.hash(data: blob)
        var b64 = encodeBase64(Array(digest))
        while b64.hasSuffix("=") { b64.removeLast() }
        let fp = "SHA256:" + b64
        let shown = !comment.isEmpty && !comment.hasPrefix("#") ? comment : (leadingField ?? "no comment")
        return SSHPublicKey(keyType: keyType, type: label, bits: bits, fingerprint: fp, comment: comment,
                            fingerprintLine: "\(bits) \(fp) \(shown) (\(label))")
    }

    /// Bit length of an SSH mpint (big-endian, possibly with a leading zero byte).
    static func mpintBits(_ b: [UInt8]) -> Int {
        guard let i = b.firstIndex(where: { $0 != 0 }) else { return 0 }
        return (b.count - i - 1) * 8 + (8 - b[i].leadingZeroBitCount)
    }

    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encodeBase64(_ d: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((d.count + 2) / 3 * 4)
        var i = 0
        while i < d.count {
            let b0 = d[i], b1 = i + 1 < d.count ? d[i + 1] : 0, b2 = i + 2 < d.count ? d[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 3) << 4 | b1 >> 4)])
            out.append(i + 1 < d.count ? alphabet[Int((b1 & 15) << 2 | b2 >> 6)] : 0x3D)
            out.append(i + 2 < d.count ? alphabet[Int(b2 & 63)] : 0x3D)
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Strict-ish base64 decode (standard alphabet, optional `=` padding). Nil if invalid.
    static func decodeBase64(_ s: Substring) -> [UInt8]? {
        var vals: [UInt8] = []
        vals.reserveCapacity(s.utf8.count)
        var padding = 0
        for c in s.utf8 {
            if c == 0x3D { padding += 1; continue }
            guard padding == 0 else { return nil }
            switch c {
            case 0x41...0x5A: vals.append(c - 0x41)
            case 0x61...0x7A: vals.append(c - 0x61 + 26)
            case 0x30...0x39: vals.append(c - 0x30 + 52)
            case 0x2B: vals.append(62)
            case 0x2F: vals.append(63)
            default: return nil
            }
        }
        guard padding <= 2, vals.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(vals.count * 3 / 4)
        var i = 0
        while i + 4 <= vals.count {
            out.append(vals[i] << 2 | vals[i + 1] >> 4)
            out.append(vals[i + 1] << 4 | vals[i + 2] >> 2)
            out.append(vals[i + 2] << 6 | vals[i + 3])
            i += 4
        }
        let rest = vals.count - i
        if rest >= 2 { out.append(vals[i] << 2 | vals[i + 1] >> 4) }
        if rest == 3 { out.append(vals[i + 1] << 4 | vals[i + 2] >> 2) }
        return out
    }
}

/// Reads SSH wire-format length-prefixed strings, bounds-checked.
struct SSHWire {
    let bytes: [UInt8]
    var pos = 0
    init(_ b: [UInt8]) { bytes = b }

    mutating func string() throws -> [UInt8] {
        guard bytes.count - pos >= 4 else { throw WardenError.corrupt("truncated SSH key blob") }
        let n = Int(bytes[pos]) << 24 | Int(bytes[pos + 1]) << 16 | Int(bytes[pos + 2]) << 8 | Int(bytes[pos + 3])
        pos += 4
        guard n <= bytes.count - pos else { throw WardenError.corrupt("truncated SSH key blob") }
        defer { pos += n }
        return Array(bytes[pos..<pos + n])
    }
}

/// One authorized_keys option such as `command="..."` or `no-pty`.
public struct SSHKeyOption: Codable, Sendable, Equatable {
    public var name: String
    public var value: String?
}

/// Splits an authorized_keys line into options, key type, base64 and comment.
enum AuthorizedKeysLine {
    struct Parts { var options: [SSHKeyOption]; var optionsField: String?; var keyType: String; var base64: Substring; var comment: String }

    static func split(_ line: String) -> Parts? {
        var rest = Substring(line)
        var options: [SSHKeyOption] = []
        var optionsField: String?
        let firstWord = rest.prefix(while: { $0 != " " && $0 != "\t" })
        if !SSHKeyParser.isKeyType(firstWord) {
            // Options: up to the first unquoted whitespace.
            var i = rest.startIndex
            var inQuote = false
            while i < rest.endIndex {
                let c = rest[i]
                if c == "\\" && inQuote {
                    i = rest.index(after: i)
                    if i < rest.endIndex { i = rest.index(after: i) }
                    continue
                }
                if c == "\"" { inQuote.toggle() } else if !inQuote && (c == " " || c == "\t") { break }
                i = rest.index(after: i)
            }
            guard !inQuote else { return nil }
            options = parseOptions(rest[rest.startIndex..<i])
            optionsField = String(rest[rest.startIndex..<i])
            rest = rest[i...].drop(while: { $0 == " " || $0 == "\t" })
        }
        let type = rest.prefix(while: { $0 != " " && $0 != "\t" })
        guard SSHKeyParser.isKeyType(type) else { return nil }
        rest = rest[type.endIndex...].drop(while: { $0 == " " || $0 == "\t" })
        let b64 = rest.prefix(while: { $0 != " " && $0 != "\t" })
        guard !b64.isEmpty else { return nil }
        let comment = rest[b64.endIndex...].drop(while: { $0 == " " || $0 == "\t" })
        return Parts(options: options, optionsField: optionsField, keyType: String(type), base64: b64, comment: String(comment))
    }

    static func parseOptions(_ s: Substring) -> [SSHKeyOption] {
        var out: [SSHKeyOption] = []
        var name = "", value: String? = nil
        var inQuote = false, inValue = false
        var it = s.makeIterator()
        func flush() {
            if !name.isEmpty, out.count < 256 { out.append(SSHKeyOption(name: name.lowercased(), value: value)) }
            name = ""; value = nil; inValue = false
        }
        while let c = it.next() {
            if inQuote {
                if c == "\\" { if let n = it.next() { if n != "\"" { value?.append("\\") }; value?.append(n) }; continue }
                if c == "\"" { inQuote = false; continue }
                value?.append(c)
                continue
            }
            if c == "," { flush(); continue }
            if !inValue && c == "=" { inValue = true; value = ""; continue }
            if inValue {
                if c == "\"" { inQuote = true } else { value?.append(c) }
            } else {
                name.append(c)
            }
        }
        flush()
        return out
    }
}
