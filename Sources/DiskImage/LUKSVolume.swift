import Foundation
import WardenCore

/// A LUKS1 or LUKS2 volume (a guest's encrypted partition, or a whole encrypted disk), opened
/// with its passphrase: the decrypted data segment as a read-only block device.
///
/// Reads decrypt whole sectors of the segment (512 bytes, or the LUKS2 sector size) with
/// AES-XTS-plain64, the IV being the sector's number within the segment plus the segment's
/// IV tweak, as dm-crypt does; a read that starts or ends mid-sector decrypts the sectors
/// around it. Decrypted bytes outside the caller's buffer are zeroed before release.
public final class LUKSVolume: BlockDevice, @unchecked Sendable {
    public enum Version: Int, Sendable { case luks1 = 1, luks2 = 2 }

    let base: any BlockDevice
    let start: UInt64
    public let size: UInt64
    let cipher: XTSCipher
    let ivTweak: UInt64
    public let version: Version
    public let uuid: String

    init(base: any BlockDevice, start: UInt64, size: UInt64, cipher: XTSCipher, ivTweak: UInt64, version: Version, uuid: String) {
        self.base = base; self.start = start; self.size = size; self.cipher = cipher; self.ivTweak = ivTweak
        self.version = version; self.uuid = uuid
    }

    /// The LUKS version of the header at the start of `head`, or nil when it is not one.
    public static func version(of head: [UInt8]) -> Version? {
        guard head.count >= 8, Array(head[0..<6]) == LUKS1Header.magic, head[6] == 0 else { return nil }
        return Version(rawValue: Int(head[7]))
    }

    /// Opens the LUKS volume on `device` with `passphrase`. A wrong passphrase is `.invalidArgument`
    /// (exit 2), a damaged or hostile header `.corrupt`, an unsupported cipher `.unsupported`.
    public static func open(_ device: any BlockDevice, passphrase: SecretBytes, name: String,
                            limits: LUKS2Header.Limits = LUKS2Header.Limits()) throws -> LUKSVolume {
        let head = try device.read(at: 0, count: Int(min(device.size, 4096)))
        func read(_ offset: UInt64, _ count: Int) throws -> [UInt8] {
            try device.checkRange(offset, count)
            return try device.read(at: offset, count: count)
        }
        switch version(of: head) {
        case .luks1?:
            let h = try LUKS1Header.parse(head, file: name)
            guard h.mkDigestIterations <= limits.maxIterations, h.slots.allSatisfy({ !$0.active || $0.iterations <= limits.maxIterations }) else {
                throw WardenError.limit("LUKS key slot iterations exceed \(limits.maxIterations)", file: name)
            }
            let master = try h.unlock(passphrase: passphrase, volumeLength: device.size, file: name, read: read)
            let start = UInt64(h.payloadOffset) * 512
            guard start >= 4096, start < device.size else { throw WardenError.corrupt("LUKS payload offset \(start) lies outside the volume", file: name) }
            return LUKSVolume(base: device, start: start, size: (device.size - start) / 512 * 512, cipher: try XTSCipher(key: master),
                              ivTweak: 0, version: .luks1, uuid: h.uuid)
        case .luks2?:
            let size = try LUKS2Header.headerSize(head, file: name)
            guard size <= device.size else { throw WardenError.corrupt("LUKS2 header runs past the end of the volume", file: name) }
            let h = try LUKS2Header.parse(try device.read(at: 0, count: Int(size)), volumeLength: device.size, limits: limits, file: name)
            let master = try h.unlock(passphrase: passphrase, file: name, read: read)
            let length = h.segment.size ?? (device.size - h.segment.offset)
            return LUKSVolume(base: device, start: h.segment.offset, size: length / UInt64(h.segment.sectorSize) * UInt64(h.segment.sectorSize),
                              cipher: try XTSCipher(key: master, sectorSize: h.segment.sectorSize), ivTweak: h.segment.ivTweak,
                              version: .luks2, uuid: h.uuid)
        case nil:
            if head.count >= 8, Array(head[0..<6]) == LUKS1Header.magic {
                throw WardenError.unsupported("LUKS version \(Int(head[6]) << 8 | Int(head[7])) is not supported (1 and 2 are)", file: name)
            }
            throw WardenError.corrupt("no LUKS header", file: name)
        }
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        guard buffer.count > 0 else { return }
        let sector = UInt64(cipher.sectorSize)
        let first = offset / sector
        let lead = Int(offset - first * sector)
        let total = (lead + buffer.count + cipher.sectorSize - 1) / cipher.sectorSize * cipher.sectorSize
        // IVs count 512-byte units from the segment's start, plus its tweak.
        let (tweaked, o) = (first * (sector / 512)).addingReportingOverflow(ivTweak)
        guard !o else { throw WardenError.corrupt("LUKS IV tweak overflows") }
        if lead == 0 && total == buffer.count {
            try base.read(at: start + offset, into: buffer)
            try cipher.decrypt(buffer, firstSector: tweaked)
            return
        }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 16)
        defer { if let b = scratch.baseAddress { explicit_bzero(b, total) }; scratch.deallocate() }
        // The last sector may stop short of the device's end only if size is not whole sectors (it is).
        try base.read(at: start + first * sector, into: scratch)
        try cipher.decrypt(scratch, firstSector: tweaked)
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: scratch[lead..<(lead + buffer.count)]))
    }
}
