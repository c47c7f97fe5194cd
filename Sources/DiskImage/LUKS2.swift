import CArgon2
import Crypto
import Foundation
import WardenCore

/// A LUKS2 header (cryptsetup's on-disk format version 2): a 4 KiB binary header, then JSON
/// metadata describing key slots, data segments and digests, in an area of `headerSize` bytes.
///
/// Hostile input: the binary header's checksum must match; the JSON area is at most 4 MiB,
/// nested at most ``maxJSONDepth`` deep, and parsed into typed values with every number checked
/// (offsets and sizes within the volume, key sizes, stripes, KDF costs under ``Limits``). Only
/// what Warden can decrypt with maintained libraries is accepted: aes-xts-plain64 segments and
/// key areas, PBKDF2 (swift-crypto) and argon2i/argon2id (libargon2) key slots, PBKDF2 digests.
/// A volume in the middle of a reencryption (more than one segment) is refused.
public struct LUKS2Header: Sendable {
    public enum KDF: Sendable, Equatable {
        case pbkdf2(hash: String, iterations: UInt32, salt: [UInt8])
        case argon2(id: Bool, time: UInt32, memoryKiB: UInt32, cpus: UInt32, salt: [UInt8])
    }

    public struct Keyslot: Sendable, Equatable {
        public var id: Int
        /// The master key size this slot opens, in bytes.
        public var keyBytes: Int
        public var kdf: KDF
        public var stripes: Int
        public var afHash: String
        /// The encrypted key material, in bytes from the start of the volume.
        public var areaOffset: UInt64
        public var areaSize: UInt64
        public var areaKeyBytes: Int
        /// 0 ignore, 1 normal, 2 prefer (cryptsetup's meaning).
        public var priority: Int
    }

    public struct Segment: Sendable, Equatable {
        public var offset: UInt64
        /// Nil: to the end of the volume ("dynamic").
        public var size: UInt64?
        public var ivTweak: UInt64
        public var sectorSize: Int
    }

    public struct Digest: Sendable, Equatable {
        public var keyslots: [Int]
        public var segments: [Int]
        public var hash: String
        public var iterations: UInt32
        public var salt: [UInt8]
        public var digest: [UInt8]
    }

    /// What a hostile header may make Warden spend.
    public struct Limits: Sendable {
        public var maxIterations: UInt32 = 10_000_000
        /// cryptsetup's own ceiling for argon2 memory is 4 GiB; its default is at most 1 GiB.
        public var maxArgon2MemoryKiB: UInt32 = 1 << 20
        public var maxArgon2Time: UInt32 = 10_000
        /// time × memory, in KiB passes (about 30 s of one core).
        public var maxArgon2Work: UInt64 = 32 << 20
        public var maxArgon2Threads: UInt32 = 16
        public init() {}
    }

    public var version: Int { 2 }
    public var uuid: String
    public var label: String
    public var headerSize: UInt64
    public var keyslots: [Keyslot]
    public var segment: Segment
    public var digests: [Digest]

    static let magic: [UInt8] = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]   // "LUKS\xba\xbe"
    /// The sizes cryptsetup allows for the binary header plus JSON area.
    static let headerSizes: Set<UInt64> = [16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20]
    static let maxJSONDepth = 16
    static let maxEntries = 64

    /// The header size the binary header at the start of `first` (at least 4,096 bytes) declares.
    public static func headerSize(_ first: [UInt8], file: String) throws -> UInt64 {
        guard first.count >= 4096 else { throw WardenError.corrupt("LUKS2 header is truncated (\(first.count) bytes)", file: file) }
        guard Array(first[0..<6]) == magic, first[6] == 0, first[7] == 2 else { throw WardenError.corrupt("no LUKS2 magic", file: file) }
        let size = be64(first, 8)
        guard headerSizes.contains(size) else { throw WardenError.corrupt("LUKS2 header size \(size) is not one cryptsetup writes", file: file) }
        return size
    }

    /// Parses the whole header area (`headerSize` bytes from the start of the volume).
    public static func parse(_ area: [UInt8], volumeLength: UInt64, limits: Limits = Limits(), file: String) throws -> LUKS2Header {
        let size = try headerSize(area, file: file)
        guard UInt64(area.count) >= size else { throw WardenError.corrupt("LUKS2 header area is truncated", file: file) }
        let header = Array(area[0..<Int(size)])
        // The checksum covers the binary header (checksum field zeroed) and the JSON area.
        let algorithm = text(header, 72..<104)
        var zeroed = header
        for i in 448..<512 { zeroed[i] = 0 }
        let sum: [UInt8]
        switch algorithm {
        case "sha256": sum = Array(SHA256.hash(data: zeroed))
        case "sha512": sum = Array(SHA512.hash(data: zeroed))
        case "sha1": sum = Array(Insecure.SHA1.hash(data: zeroed))
        default: throw WardenError.unsupported("LUKS2 header checksum \(algorithm) is not supported (sha256, sha512, sha1 are)", file: file)
        }
        guard Array(header[448..<(448 + sum.count)]) == sum else { throw WardenError.corrupt("LUKS2 header checksum does not match", file: file) }
        let json = header[4096...].prefix { $0 != 0 }
        let root = try parseJSON(Array(json), file: file)
        return try LUKS2Header(root: root, uuid: text(header, 168..<208), label: text(header, 24..<72), headerSize: size,
                               volumeLength: volumeLength, limits: limits, file: file)
    }

    /// `area` (a whole header area) with its SHA-256 checksum recomputed: for tests and the
    /// fuzzer, so that edits to the metadata reach the parser instead of failing the checksum.
    /// Returns `area` unchanged when it is not a LUKS2 header area.
    public static func withChecksumFixed(_ area: [UInt8]) -> [UInt8] {
        guard area.count >= 4096, Array(area[0..<6]) == magic, area[6] == 0, area[7] == 2 else { return area }
        let size = be64(area, 8)
        guard headerSizes.contains(size), UInt64(area.count) >= size else { return area }
        var out = area
        for (i, b) in Array("sha256".utf8).enumerated() { out[72 + i] = b }
        for i in (72 + 6)..<104 { out[i] = 0 }
        for i in 448..<512 { out[i] = 0 }
        let sum = Array(SHA256.hash(data: out[0..<Int(size)]))
        for (i, b) in sum.enumerated() { out[448 + i] = b }
        return out
    }

    static func be64(_ b: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(b[at + $1]) }
    }

    static func text(_ b: [UInt8], _ r: Range<Int>) -> String {
        let raw = b[r].prefix { $0 != 0 }
        return String(decoding: raw.map { $0 >= 0x20 && $0 < 0x7f ? $0 : 0x3f }, as: UTF8.self)
    }

    /// JSON with a nesting limit checked before Foundation's parser sees it.
    static func parseJSON(_ bytes: [UInt8], file: String) throws -> [String: Any] {
        guard !bytes.isEmpty else { throw WardenError.corrupt("LUKS2 metadata is empty", file: file) }
        var depth = 0, inString = false, escaped = false
        for c in bytes {
            if inString {
                if escaped { escaped = false } else if c == 0x5c { escaped = true } else if c == 0x22 { inString = false }
                continue
            }
            switch c {
            case 0x22: inString = true
            case 0x7b, 0x5b:
                depth += 1
                guard depth <= maxJSONDepth else { throw WardenError.corrupt("LUKS2 metadata is nested deeper than \(maxJSONDepth)", file: file) }
            case 0x7d, 0x5d: depth -= 1
            default: break
            }
        }
        guard let root = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else {
            throw WardenError.corrupt("LUKS2 metadata is not a JSON object", file: file)
        }
        return root
    }

    init(root: [String: Any], uuid: String, label: String, headerSize: UInt64, volumeLength: UInt64, limits: Limits, file: String) throws {
        self.uuid = uuid; self.label = label; self.headerSize = headerSize
        let r = Reader(file: file)
        // Segments: exactly one, of type crypt (a reencryption in progress has more).
        let segments = try r.object(root["segments"], "segments")
        guard segments.count == 1, let (segID, segAny) = segments.first, segID == "0" else {
            throw WardenError.unsupported("LUKS2 volumes with \(segments.count) segments (a reencryption in progress) are not supported", file: file)
        }
        let seg = try r.object(segAny, "segment \(segID)")
        guard try r.string(seg["type"], "segment type") == "crypt" else { throw WardenError.unsupported("LUKS2 segment type is not crypt", file: file) }
        guard try r.string(seg["encryption"], "segment encryption") == "aes-xts-plain64" else {
            throw WardenError.unsupported("LUKS2 segment cipher \(seg["encryption"] ?? "?") is not supported (aes-xts-plain64 is)", file: file)
        }
        let sectorSize = try r.int(seg["sector_size"], "sector_size", 512...4096)
        guard [512, 1024, 2048, 4096].contains(sectorSize) else { throw WardenError.corrupt("LUKS2 sector size \(sectorSize) is not a power of two in 512-4096", file: file) }
        let segOffset = try r.u64(seg["offset"], "segment offset")
        guard segOffset >= headerSize, segOffset % UInt64(sectorSize) == 0, segOffset <= volumeLength else {
            throw WardenError.corrupt("LUKS2 segment offset \(segOffset) is outside the volume or misaligned", file: file)
        }
        var segSize: UInt64? = nil
        if (seg["size"] as? String) != "dynamic" {
            let s = try r.u64(seg["size"], "segment size")
            let (end, o) = segOffset.addingReportingOverflow(s)
            guard !o, end <= volumeLength, s % UInt64(sectorSize) == 0 else { throw WardenError.corrupt("LUKS2 segment size \(s) runs past the volume", file: file) }
            segSize = s
        }
        let tweak = seg["iv_tweak"] == nil ? 0 : try r.u64(seg["iv_tweak"], "iv_tweak")
        if let flags = seg["flags"] as? [Any], !flags.isEmpty {
            throw WardenError.unsupported("LUKS2 segment flags \(flags) are not supported", file: file)
        }
        if seg["integrity"] != nil { throw WardenError.unsupported("LUKS2 volumes with integrity protection are not supported", file: file) }
        segment = Segment(offset: segOffset, size: segSize, ivTweak: tweak, sectorSize: sectorSize)

        // Key slots.
        var slots: [Keyslot] = []
        let keyslotObjects = try r.object(root["keyslots"], "keyslots")
        guard keyslotObjects.count <= Self.maxEntries else { throw WardenError.limit("LUKS2 metadata has \(keyslotObjects.count) key slots", file: file) }
        for (idText, any) in keyslotObjects {
            guard let id = Int(idText), (0..<32).contains(id) else { throw WardenError.corrupt("LUKS2 key slot id \(idText) is out of range", file: file) }
            let k = try r.object(any, "keyslot \(id)")
            guard try r.string(k["type"], "keyslot type") == "luks2" else { continue }   // reencrypt slots and others open no data
            let keyBytes = try r.int(k["key_size"], "key_size", 1...64)
            guard keyBytes == 32 || keyBytes == 64 else { throw WardenError.corrupt("LUKS2 key slot \(id) key size \(keyBytes) is not AES-XTS's", file: file) }
            let af = try r.object(k["af"], "af")
            guard try r.string(af["type"], "af type") == "luks1" else { throw WardenError.unsupported("LUKS2 anti-forensic splitter \(af["type"] ?? "?")", file: file) }
            let stripes = try r.int(af["stripes"], "stripes", 1...Int(LUKS1Header.maxStripes))
            let afHash = try r.string(af["hash"], "af hash")
            guard LUKS1Header.hashFunction(afHash) != nil else { throw WardenError.unsupported("LUKS2 hash \(afHash) is not supported", file: file) }
            let area = try r.object(k["area"], "area")
            guard try r.string(area["type"], "area type") == "raw", try r.string(area["encryption"], "area encryption") == "aes-xts-plain64" else {
                throw WardenError.unsupported("LUKS2 key slot \(id) area is not raw aes-xts-plain64", file: file)
            }
            let areaKey = try r.int(area["key_size"], "area key_size", 1...64)
            guard areaKey == 32 || areaKey == 64 else { throw WardenError.corrupt("LUKS2 key slot \(id) area key size \(areaKey)", file: file) }
            let areaOffset = try r.u64(area["offset"], "area offset"), areaSize = try r.u64(area["size"], "area size")
            let material = UInt64(keyBytes * stripes + 511) / 512 * 512
            let (end, o) = areaOffset.addingReportingOverflow(areaSize)
            guard !o, end <= volumeLength, areaOffset % 512 == 0, areaSize >= material, areaOffset >= 4096 else {
                throw WardenError.corrupt("LUKS2 key slot \(id) area lies outside the volume or is too small", file: file)
            }
            let kdfObject = try r.object(k["kdf"], "kdf")
            let salt = try r.base64(kdfObject["salt"], "kdf salt")
            let kdf: KDF
            switch try r.string(kdfObject["type"], "kdf type") {
            case "pbkdf2":
                let hash = try r.string(kdfObject["hash"], "kdf hash")
                guard LUKS1Header.hashFunction(hash) != nil else { throw WardenError.unsupported("LUKS2 PBKDF2 hash \(hash) is not supported", file: file) }
                kdf = .pbkdf2(hash: hash, iterations: UInt32(try r.int(kdfObject["iterations"], "iterations", 1...Int(limits.maxIterations))), salt: salt)
            case let t where t == "argon2id" || t == "argon2i":
                let time = UInt32(try r.int(kdfObject["time"], "argon2 time", 1...Int(limits.maxArgon2Time)))
                let memory = UInt32(try r.int(kdfObject["memory"], "argon2 memory", 8...Int(limits.maxArgon2MemoryKiB)))
                let cpus = UInt32(try r.int(kdfObject["cpus"], "argon2 cpus", 1...Int(limits.maxArgon2Threads)))
                guard UInt64(time) * UInt64(memory) <= limits.maxArgon2Work else {
                    throw WardenError.limit("LUKS2 key slot \(id) asks argon2 for \(time) passes over \(memory) KiB", file: file)
                }
                guard salt.count >= 8 else { throw WardenError.corrupt("LUKS2 key slot \(id) argon2 salt is shorter than 8 bytes", file: file) }
                kdf = .argon2(id: t == "argon2id", time: time, memoryKiB: memory, cpus: cpus, salt: salt)
            case let t:
                throw WardenError.unsupported("LUKS2 key derivation \(t) is not supported (pbkdf2, argon2i, argon2id are)", file: file)
            }
            let priority = k["priority"] == nil ? 1 : try r.int(k["priority"], "priority", 0...2)
            slots.append(Keyslot(id: id, keyBytes: keyBytes, kdf: kdf, stripes: stripes, afHash: afHash, areaOffset: areaOffset,
                                 areaSize: areaSize, areaKeyBytes: areaKey, priority: priority))
        }
        keyslots = slots.sorted { ($0.priority, -$0.id) > ($1.priority, -$1.id) }

        // Digests: PBKDF2 of the master key, naming the slots and segments they check.
        var ds: [Digest] = []
        let digestObjects = try r.object(root["digests"], "digests")
        guard digestObjects.count <= Self.maxEntries else { throw WardenError.limit("LUKS2 metadata has \(digestObjects.count) digests", file: file) }
        for (_, any) in digestObjects {
            let d = try r.object(any, "digest")
            guard try r.string(d["type"], "digest type") == "pbkdf2" else { throw WardenError.unsupported("LUKS2 digest type \(d["type"] ?? "?")", file: file) }
            let hash = try r.string(d["hash"], "digest hash")
            guard LUKS1Header.hashFunction(hash) != nil else { throw WardenError.unsupported("LUKS2 digest hash \(hash) is not supported", file: file) }
            let digest = try r.base64(d["digest"], "digest")
            guard (16...64).contains(digest.count) else { throw WardenError.corrupt("LUKS2 digest of \(digest.count) bytes", file: file) }
            ds.append(Digest(keyslots: try r.ids(d["keyslots"], "digest keyslots"), segments: try r.ids(d["segments"], "digest segments"),
                             hash: hash, iterations: UInt32(try r.int(d["iterations"], "digest iterations", 1...Int(limits.maxIterations))),
                             salt: try r.base64(d["salt"], "digest salt"), digest: digest))
        }
        digests = ds
    }

    /// Typed reads of the JSON values, each failure one line naming the field.
    struct Reader {
        var file: String
        func fail(_ what: String) -> WardenError { WardenError.corrupt("LUKS2 metadata: \(what) is missing or malformed", file: file) }
        func object(_ v: Any?, _ what: String) throws -> [String: Any] {
            guard let o = v as? [String: Any] else { throw fail(what) }
            return o
        }
        func string(_ v: Any?, _ what: String) throws -> String {
            guard let s = v as? String, s.utf8.count <= 256 else { throw fail(what) }
            return s
        }
        func int(_ v: Any?, _ what: String, _ range: ClosedRange<Int>) throws -> Int {
            guard let n = v as? NSNumber, let i = Int(exactly: n.doubleValue),
                  Double(i) == n.doubleValue else { throw fail(what) }
            guard range.contains(i) else { throw WardenError.corrupt("LUKS2 metadata: \(what) \(i) is out of range", file: file) }
            return i
        }
        /// LUKS2 writes 64-bit numbers as decimal strings.
        func u64(_ v: Any?, _ what: String) throws -> UInt64 {
            guard let s = v as? String, s.utf8.count <= 20, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = UInt64(s) else { throw fail(what) }
            return n
        }
        func base64(_ v: Any?, _ what: String) throws -> [UInt8] {
            guard let s = v as? String, s.utf8.count <= 1024, let d = Data(base64Encoded: s) else { throw fail(what) }
            return Array(d)
        }
        func ids(_ v: Any?, _ what: String) throws -> [Int] {
            guard let a = v as? [Any], a.count <= LUKS2Header.maxEntries else { throw fail(what) }
            return try a.map { guard let s = $0 as? String, let i = Int(s), (0..<64).contains(i) else { throw fail(what) }; return i }
        }
    }

    /// The master key, from `passphrase` and a key slot whose digest accepts it; `read(offset,
    /// count)` reads the volume. Slots of priority 0 ("ignore") are not tried.
    public func unlock(passphrase: SecretBytes, file: String, read: (UInt64, Int) throws -> [UInt8]) throws -> SecretBytes {
        for slot in keyslots where slot.priority > 0 {
            let checks = digests.filter { $0.keyslots.contains(slot.id) && $0.segments.contains(0) }
            guard !checks.isEmpty else { continue }
            let derived = try Self.derive(slot.kdf, passphrase: passphrase, count: slot.areaKeyBytes, file: file)
            let materialBytes = slot.keyBytes * slot.stripes
            var material = try read(slot.areaOffset, (materialBytes + 511) / 512 * 512)
            defer { material.withUnsafeMutableBytes { if let p = $0.baseAddress { explicit_bzero(p, $0.count) } } }
            let xts = try XTSCipher(key: derived)
            try material.withUnsafeMutableBytes { try xts.decrypt($0, firstSector: 0) }
            let candidate = LUKS1Header.afMerge(Array(material[0..<materialBytes]), keyBytes: slot.keyBytes, stripes: slot.stripes, hash: slot.afHash)
            for d in checks {
                let check = try candidate.withBytes { try LUKS1Header.pbkdf2(d.hash, $0, salt: d.salt, iterations: d.iterations, count: d.digest.count) }
                if check.withBytes({ Array($0) }) == d.digest { return candidate }
            }
        }
        throw WardenError(.invalidArgument, "the key does not open this LUKS volume (no key slot accepts it)", file: file)
    }

    static func derive(_ kdf: KDF, passphrase: SecretBytes, count: Int, file: String) throws -> SecretBytes {
        switch kdf {
        case .pbkdf2(let hash, let iterations, let salt):
            return try passphrase.withBytes { try LUKS1Header.pbkdf2(hash, $0, salt: salt, iterations: iterations, count: count) }
        case .argon2(let id, let time, let memory, let cpus, let salt):
            var out = [UInt8](repeating: 0, count: count)
            defer { explicit_bzero(&out, out.count) }
            let status: Int32 = passphrase.withBytes { p in
                salt.withUnsafeBytes { s in
                    out.withUnsafeMutableBytes { o in
                        id ? argon2id_hash_raw(time, memory, cpus, p.baseAddress, p.count, s.baseAddress, s.count, o.baseAddress, o.count)
                           : argon2i_hash_raw(time, memory, cpus, p.baseAddress, p.count, s.baseAddress, s.count, o.baseAddress, o.count)
                    }
                }
            }
            guard status == ARGON2_OK.rawValue else {
                throw WardenError.corrupt("argon2 refused the key slot's parameters: \(String(cString: argon2_error_message(status)))", file: file)
            }
            return SecretBytes(copying: out)
        }
    }
}
