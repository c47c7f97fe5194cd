import Foundation
import Crypto
import WardenCore
import DiskImage

/// The content identity of a guest-visible disk: SHA-256 over its size and every data extent
/// (offset, length, bytes); holes read as zeros are skipped by offset, so two images with the
/// same guest-visible bytes and the same allocation have the same identity.
///
/// Placeholder until `DiskImage.ContentFingerprint.of(_:)` lands on main.
enum ContentIdentity {
    static func of(_ device: any BlockDevice) throws -> WardenCore.Digest {
        var h = SHA256()
        var size = device.size.littleEndian
        withUnsafeBytes(of: &size) { h.update(bufferPointer: $0) }
        let chunk: UInt64 = 4 << 20
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunk), alignment: 4096)
        defer { buf.deallocate() }
        var off: UInt64 = 0
        while off < device.size {
            let len = min(chunk, device.size - off)
            for ext in try device.mapping(at: off, length: len) where ext.kind == .data {
                var s = ext.offset.littleEndian, l = ext.length.littleEndian
                withUnsafeBytes(of: &s) { h.update(bufferPointer: $0) }
                withUnsafeBytes(of: &l) { h.update(bufferPointer: $0) }
                var at = ext.offset
                let end = ext.offset + ext.length
                while at < end {
                    let n = Int(min(UInt64(buf.count), end - at))
                    let part = UnsafeMutableRawBufferPointer(rebasing: buf[0..<n])
                    try device.read(at: at, into: part)
                    h.update(bufferPointer: UnsafeRawBufferPointer(part))
                    at += UInt64(n)
                }
            }
            off += len
        }
        return WardenCore.Digest(algorithm: "sha256", hex: h.finalize().map { String(format: "%02x", $0) }.joined())
    }
}
