import COpenSSL
import Crypto
import _CryptoExtras
import Foundation
import WardenCore

/// A LUKS1 header (the on-disk format cryptsetup defines, version 1), as QEMU writes it inside
/// encrypted qcow2 images and cryptsetup at the start of a volume. All fields big-endian.
///
/// Hostile input: every size and count is bounded before use (key slots' stripes and key
/// material, PBKDF2 iterations, offsets within the volume), text fields must be printable
/// ASCII, and only the ciphers Warden can decrypt with a maintained library are accepted.
public struct LUKS1Header: Sendable, Equatable {
    public struct Slot: Sendable, Equatable {
        public var active: Bool
        public var iterations: UInt32
        public var salt: [UInt8]
        /// In 512-byte sectors from the start of the header.
        public var keyMaterialOffset: UInt32
        public var stripes: UInt32
    }

    public var cipherName: String
    public var cipherMode: String
    public var hashSpec: String
    /// In 512-byte sectors from the start of the header (a volume's data; unused in qcow2).
    public var payloadOffset: UInt32
    public var keyBytes: Int
    public var mkDigest: [UInt8]
    public var mkDigestSalt: [UInt8]
    public var mkDigestIterations: UInt32
    public var uuid: String
    public var slots: [Slot]

    public static let size = 592
    static let magic: [UInt8] = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]   // "LUKS\xba\xbe"
    static let slotEnabled: UInt32 = 0x00ac_71f3
    static let slotDisabled: UInt32 = 0x0000_dead
    /// Bounds a hostile header cannot exceed (cryptsetup writes 4000 stripes, at most 64-byte keys).
    static let maxStripes: UInt32 = 16_000
    /// PBKDF2 iterations per slot: cryptsetup and QEMU size them for about 2 s on the machine that
    /// made the volume (1-4 million with SHA-256 today); more is a hostile header making Warden spin.
    static let maxIterations: UInt32 = 10_000_000

    public static func parse(_ b: [UInt8], file: String) throws -> LUKS1Header {
        guard b.count >= size else { throw WardenError.corrupt("LUKS header is truncated (\(b.count) bytes)", file: file) }
        guard Array(b[0..<6]) == magic else { throw WardenError.corrupt("no LUKS magic", file: file) }
        let version = UInt16(b[6]) << 8 | UInt16(b[7])
        guard version == 1 else {
            throw WardenError.unsupported("LUKS version \(version) is not supported yet (LUKS1 is: QEMU's encrypted qcow2 and `cryptsetup luksFormat --type luks1`)", file: file)
        }
        func text(_ r: Range<Int>, _ what: String) throws -> String {
            let raw = b[r].prefix { $0 != 0 }
            guard raw.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else { throw WardenError.corrupt("LUKS \(what) is not printable text", file: file) }
            return String(decoding: raw, as: UTF8.self)
        }
        func u32(_ at: Int) -> UInt32 { UInt32(b[at]) << 24 | UInt32(b[at + 1]) << 16 | UInt32(b[at + 2]) << 8 | UInt32(b[at + 3]) }
        var h = LUKS1Header(cipherName: try text(8..<40, "cipher name"), cipherMode: try text(40..<72, "cipher mode"),
                            hashSpec: try text(72..<104, "hash"), payloadOffset: u32(104), keyBytes: Int(u32(108)),
                            mkDigest: Array(b[112..<132]), mkDigestSalt: Array(b[132..<164]), mkDigestIterations: u32(164),
                            uuid: try text(168..<208, "uuid"), slots: [])
        guard h.cipherName == "aes", h.cipherMode == "xts-plain64" else {
            throw WardenError.unsupported("LUKS cipher \(h.cipherName)-\(h.cipherMode) is not supported (aes-xts-plain64 is)", file: file)
        }
        guard h.keyBytes == 32 || h.keyBytes == 64 else { throw WardenError.corrupt("LUKS key size \(h.keyBytes) is not one of AES-XTS's (32, 64)", file: file) }
        guard hashFunction(h.hashSpec) != nil else { throw WardenError.unsupported("LUKS hash \(h.hashSpec) is not supported (sha1, sha256, sha512 are)", file: file) }
        guard (1...maxIterations).contains(h.mkDigestIterations) else { throw WardenError.corrupt("LUKS digest iterations \(h.mkDigestIterations) out of range", file: file) }
        for i in 0..<8 {
            let at = 208 + i * 48
            let state = u32(at)
            guard state == slotEnabled || state == slotDisabled else { throw WardenError.corrupt("LUKS key slot \(i) has an unknown state \(hex(state))", file: file) }
            let slot = Slot(active: state == slotEnabled, iterations: u32(at + 4), salt: Array(b[(at + 8)..<(at + 40)]),
                            keyMaterialOffset: u32(at + 40), stripes: u32(at + 44))
            if slot.active {
                guard (1...maxIterations).contains(slot.iterations), (1...maxStripes).contains(slot.stripes), slot.keyMaterialOffset >= 1 else {
                    throw WardenError.corrupt("LUKS key slot \(i) has out-of-range iterations, stripes or offset", file: file)
                }
            }
            h.slots.append(slot)
        }
        return h
    }

    static func hashFunction(_ spec: String) -> KDF.Insecure.PBKDF2.HashFunction? {
        switch spec {
        case "sha1": .insecureSHA1
        case "sha256": .sha256
        case "sha512": .sha512
        default: nil
        }
    }

    static func digest(_ spec: String, _ data: [UInt8]) -> [UInt8] {
        switch spec {
        case "sha1": Array(Insecure.SHA1.hash(data: data))
        case "sha512": Array(SHA512.hash(data: data))
        default: Array(SHA256.hash(data: data))
        }
    }

    static func pbkdf2(_ spec: String, _ password: UnsafeRawBufferPointer, salt: [UInt8], iterations: UInt32, count: Int) throws -> SecretBytes {
        guard let hash = hashFunction(spec) else { throw WardenError.unsupported("LUKS hash \(spec) is not supported") }
        let key = try KDF.Insecure.PBKDF2.deriveKey(from: password, salt: salt, using: hash, outputByteCount: count,
                                                    unsafeUncheckedRounds: Int(iterations))
        return key.withUnsafeBytes { SecretBytes(copying: $0) }
    }

    /// The master key, from `passphrase` and one active key slot; `read(offset, count)` reads the
    /// volume relative to the header. Wrong passphrases and damaged slots give one message.
    public func unlock(passphrase: SecretBytes, volumeLength: UInt64, file: String,
                       read: (UInt64, Int) throws -> [UInt8]) throws -> SecretBytes {
        for slot in slots where slot.active {
            let materialBytes = keyBytes * Int(slot.stripes)
            let sectors = (materialBytes + 511) / 512
            let start = UInt64(slot.keyMaterialOffset) * 512
            guard start + UInt64(sectors * 512) <= volumeLength else {
                throw WardenError.corrupt("LUKS key slot material lies beyond the end of the volume", file: file)
            }
            let derived = try passphrase.withBytes { try Self.pbkdf2(hashSpec, $0, salt: slot.salt, iterations: slot.iterations, count: keyBytes) }
            var material = try read(start, sectors * 512)
            defer { material.withUnsafeMutableBytes { if let p = $0.baseAddress { explicit_bzero(p, $0.count) } } }
            let xts = try XTSCipher(key: derived)
            try material.withUnsafeMutableBytes { try xts.decrypt($0, firstSector: 0) }
            let candidate = Self.afMerge(Array(material[0..<materialBytes]), keyBytes: keyBytes, stripes: Int(slot.stripes), hash: hashSpec)
            let check = try candidate.withBytes { try Self.pbkdf2(hashSpec, $0, salt: mkDigestSalt, iterations: mkDigestIterations, count: 20) }
            if check.withBytes({ Array($0) }) == mkDigest { return candidate }
        }
        throw WardenError(.invalidArgument, "the key does not open this LUKS volume (no key slot accepts it)", file: file)
    }

    /// LUKS's anti-forensic merge: the stripes XORed together, each diffused with the hash.
    static func afMerge(_ material: [UInt8], keyBytes: Int, stripes: Int, hash: String) -> SecretBytes {
        var d = [UInt8](repeating: 0, count: keyBytes)
        defer { explicit_bzero(&d, d.count) }
        for i in 0..<stripes {
            let block = material[(i * keyBytes)..<((i + 1) * keyBytes)]
            for j in 0..<keyBytes { d[j] ^= block[block.startIndex + j] }
            if i < stripes - 1 { diffuse(&d, hash: hash) }
        }
        return SecretBytes(copying: d)
    }

    static func diffuse(_ d: inout [UInt8], hash: String) {
        let size = digest(hash, []).count
        var out: [UInt8] = []
        out.reserveCapacity(d.count)
        var i = 0
        while i * size < d.count {
            let chunk = d[(i * size)..<min((i + 1) * size, d.count)]
            let iv: [UInt8] = [UInt8(i >> 24 & 0xff), UInt8(i >> 16 & 0xff), UInt8(i >> 8 & 0xff), UInt8(i & 0xff)]
            out += digest(hash, iv + chunk).prefix(chunk.count)
            i += 1
        }
        d = out
    }
}

/// AES-XTS with plain64 sector IVs (the little-endian sector number), through OpenSSL's EVP:
/// 32-byte keys are AES-128-XTS, 64-byte keys AES-256-XTS. A sector (the XTS data unit) is 512
/// bytes unless given; LUKS2 volumes may use up to 4,096, and dm-crypt still numbers their IVs
/// in 512-byte units (without `iv_large_sectors`, which cryptsetup sets only for plain mode), so
/// consecutive sectors' IVs step by `sectorSize / 512`.
public final class XTSCipher: @unchecked Sendable {
    let key: SecretBytes
    public let sectorSize: Int

    public init(key: SecretBytes, sectorSize: Int = 512) throws {
        guard key.count == 32 || key.count == 64 else { throw WardenError(.invalidArgument, "AES-XTS keys are 32 or 64 bytes") }
        guard [512, 1024, 2048, 4096].contains(sectorSize) else { throw WardenError(.invalidArgument, "XTS sector size \(sectorSize) is not 512-4096") }
        self.key = key
        self.sectorSize = sectorSize
    }

    /// Decrypts whole sectors in place; the first sector's IV is `firstSector` (in 512-byte units).
    /// Runs of at least ``parallelThreshold`` bytes are split across the cores: XTS pays a
    /// tweak re-initialisation per sector that OpenSSL cannot batch, so one stream is bounded by
    /// one core's rate of those (docs/benchmarks.md).
    public func decrypt(_ data: UnsafeMutableRawBufferPointer, firstSector: UInt64) throws {
        let size = sectorSize
        guard data.count % size == 0 else { throw WardenError(.internal, "XTS decryption of \(data.count) bytes (not whole sectors)") }
        guard let base = data.baseAddress, data.count > 0 else { return }
        let sectors = data.count / size
        let workers = data.count >= Self.parallelThreshold ? min(Self.workers, sectors) : 1
        if workers <= 1 {
            try decryptRun(base.assumingMemoryBound(to: UInt8.self), sectors: sectors, firstSector: firstSector)
            return
        }
        let per = (sectors + workers - 1) / workers
        let failed = Locked<Bool>(false)
        let address = UInt(bitPattern: base)
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let first = w * per
            let count = min(per, sectors - first)
            guard count > 0, let p = UnsafeMutablePointer<UInt8>(bitPattern: address) else { return }
            do {
                try decryptRun(p + first * size, sectors: count, firstSector: firstSector &+ UInt64(first) &* UInt64(size / 512))
            } catch {
                failed.withLock { $0 = true }
            }
        }
        if failed.withLock({ $0 }) { throw WardenError(.internal, "OpenSSL AES-XTS decryption failed") }
    }

    /// Runs at least this long are decrypted on several cores.
    public static let parallelThreshold = 256 << 10
    static let workers = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))

    /// One context, one key schedule, then per sector: the tweak, then the sector.
    func decryptRun(_ base: UnsafeMutablePointer<UInt8>, sectors: Int, firstSector: UInt64) throws {
        let size = sectorSize
        let step = UInt64(size / 512)
        guard let ctx = EVP_CIPHER_CTX_new() else { throw WardenError(.internal, "OpenSSL could not make a cipher context") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        let cipher = key.count == 64 ? EVP_aes_256_xts() : EVP_aes_128_xts()
        let ok = key.withBytes { k in EVP_DecryptInit_ex(ctx, cipher, nil, k.baseAddress?.assumingMemoryBound(to: UInt8.self), nil) }
        guard ok == 1 else { throw WardenError(.invalidArgument, "OpenSSL refused the AES-XTS key") }
        var iv = [UInt8](repeating: 0, count: 16)
        try iv.withUnsafeMutableBufferPointer { ivp in
            let ivBase = ivp.baseAddress!
            for s in 0..<sectors {
                let sector = firstSector &+ UInt64(s) &* step
                for b in 0..<8 { ivBase[b] = UInt8(truncatingIfNeeded: sector >> (8 * UInt64(b))) }
                var outLength: Int32 = 0
                let p = base + s * size
                guard EVP_DecryptInit_ex(ctx, nil, nil, nil, ivBase) == 1, EVP_DecryptUpdate(ctx, p, &outLength, p, Int32(size)) == 1, Int(outLength) == size else {
                    throw WardenError(.internal, "OpenSSL AES-XTS decryption failed")
                }
            }
        }
    }
}
