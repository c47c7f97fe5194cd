/// Table-driven CRC-32 variants used by on-disk formats.
///
/// - ``CRC32/ieee``: the zlib/Ethernet polynomial (reflected 0xEDB88320), used by GPT.
/// - ``CRC32/castagnoli``: CRC-32C (reflected 0x82F63B78), used by ext4 metadata_csum.
public struct CRC32: Sendable {
    @usableFromInline let tables: [[UInt32]]

    public init(reflectedPolynomial poly: UInt32) {
        var t0 = [UInt32](repeating: 0, count: 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = (c & 1) != 0 ? (poly ^ (c >> 1)) : (c >> 1) }
            t0[i] = c
        }
        // Slicing-by-8 tables.
        var tables = [t0]
        for k in 1..<8 {
            var t = [UInt32](repeating: 0, count: 256)
            for i in 0..<256 {
                let prev = tables[k - 1][i]
                t[i] = (prev >> 8) ^ t0[Int(prev & 0xff)]
            }
            tables.append(t)
        }
        self.tables = tables
    }

    public static let ieee = CRC32(reflectedPolynomial: 0xEDB8_8320)
    public static let castagnoli = CRC32(reflectedPolynomial: 0x82F6_3B78)

    /// Continues a raw (un-inverted) CRC register over `bytes`.
    ///
    /// Callers that want the standard finalised CRC use ``checksum(_:)``; ext4
    /// chains the raw register (`crc32c(seed, data)` without final inversion).
    @inlinable
    public func update<C: Collection>(_ crc: UInt32, _ bytes: C) -> UInt32 where C.Element == UInt8 {
        if let r = bytes.withContiguousStorageIfAvailable({ update(crc, UnsafeRawBufferPointer($0)) }) {
            return r
        }
        return update(crc, Array(bytes))
    }

    @inlinable
    public func update(_ crc: UInt32, _ buf: UnsafeRawBufferPointer) -> UInt32 {
        var c = crc
        var i = 0
        let n = buf.count
        tables[0].withUnsafeBufferPointer { t0 in
        tables[1].withUnsafeBufferPointer { t1 in
        tables[2].withUnsafeBufferPointer { t2 in
        tables[3].withUnsafeBufferPointer { t3 in
        tables[4].withUnsafeBufferPointer { t4 in
        tables[5].withUnsafeBufferPointer { t5 in
        tables[6].withUnsafeBufferPointer { t6 in
        tables[7].withUnsafeBufferPointer { t7 in
            while n - i >= 8 {
                let lo = c ^ (UInt32(buf[i]) | UInt32(buf[i + 1]) << 8 | UInt32(buf[i + 2]) << 16 | UInt32(buf[i + 3]) << 24)
                let hi = UInt32(buf[i + 4]) | UInt32(buf[i + 5]) << 8 | UInt32(buf[i + 6]) << 16 | UInt32(buf[i + 7]) << 24
                c = t7[Int(lo & 0xff)] ^ t6[Int((lo >> 8) & 0xff)] ^ t5[Int((lo >> 16) & 0xff)] ^ t4[Int(lo >> 24)]
                  ^ t3[Int(hi & 0xff)] ^ t2[Int((hi >> 8) & 0xff)] ^ t1[Int((hi >> 16) & 0xff)] ^ t0[Int(hi >> 24)]
                i += 8
            }
            while i < n {
                c = t0[Int((c ^ UInt32(buf[i])) & 0xff)] ^ (c >> 8)
                i += 1
            }
        }}}}}}}}
        return c
    }

    /// The standard CRC: initial value all ones, final inversion.
    @inlinable
    public func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        ~update(0xFFFF_FFFF, bytes)
    }
}
