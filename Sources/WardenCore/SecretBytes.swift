import CWardenSys
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Key material in memory Warden owns: allocated once, never copied into Swift arrays or
/// strings by this type, and overwritten with zeros when released (`explicit_bzero`, which the
/// compiler may not elide). Not `Codable`, not `CustomStringConvertible`: it cannot end up in
/// JSON, a log line or an error message by accident.
public final class SecretBytes: @unchecked Sendable {
    private let buffer: UnsafeMutableRawBufferPointer
    public var count: Int { buffer.count }

    /// A process that holds key material writes no core file (it would carry the keys), and
    /// the QEMU and qemu-img it starts inherit a core size limit of zero: done once, when the
    /// first secret is made.
    static let noCoreDumps: Void = { _ = warden_disable_core_dumps() }()

    /// `count` random bytes from the system's CSPRNG.
    public init(random count: Int) {
        _ = Self.noCoreDumps
        precondition(count > 0 && count <= 4096)
        buffer = .allocate(byteCount: count, alignment: 16)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<count { buffer[i] = UInt8.random(in: .min ... .max, using: &rng) }
    }

    /// Takes a copy of `bytes` (the caller zeroes its own copy).
    public init<C: Collection>(copying bytes: C) where C.Element == UInt8 {
        _ = Self.noCoreDumps
        buffer = .allocate(byteCount: max(bytes.count, 1), alignment: 16)
        _ = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes.count]).copyBytes(from: bytes)
        if bytes.isEmpty { buffer[0] = 0 }
    }

    deinit {
        if let base = buffer.baseAddress { explicit_bzero(base, buffer.count) }
        buffer.deallocate()
    }

    /// Lends the bytes to `body`; they must not escape it.
    public func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try body(UnsafeRawBufferPointer(buffer))
    }

    /// The bytes as standard base64, written into a new `SecretBytes` without an intermediate
    /// Swift string: the LUKS passphrase QEMU gets is the data key in base64 (LUKS wants text).
    public func base64() -> SecretBytes {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        let n = buffer.count
        let outCount = ((n + 2) / 3) * 4
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: outCount, alignment: 16)
        defer { if let base = out.baseAddress { explicit_bzero(base, outCount) }; out.deallocate() }
        var o = 0
        var i = 0
        while i < n {
            let b0 = UInt32(buffer[i]), b1 = i + 1 < n ? UInt32(buffer[i + 1]) : 0, b2 = i + 2 < n ? UInt32(buffer[i + 2]) : 0
            let v = b0 << 16 | b1 << 8 | b2
            out[o] = alphabet[Int(v >> 18 & 63)]
            out[o + 1] = alphabet[Int(v >> 12 & 63)]
            out[o + 2] = i + 1 < n ? alphabet[Int(v >> 6 & 63)] : UInt8(ascii: "=")
            out[o + 3] = i + 2 < n ? alphabet[Int(v & 63)] : UInt8(ascii: "=")
            i += 3; o += 4
        }
        return SecretBytes(copying: UnsafeRawBufferPointer(out))
    }

    /// Whether two secrets hold the same bytes (constant time in the length).
    public func equals(_ other: SecretBytes) -> Bool {
        guard count == other.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<count { diff |= buffer[i] ^ other.buffer[i] }
        return diff == 0
    }
}
