import CZlib
import CZstd
import CLZO
import WardenCore

extension Btrfs {
    enum Compression {
        static let zlib: UInt8 = 1
        static let lzo: UInt8 = 2
        static let zstd: UInt8 = 3
        static func name(_ t: UInt8) -> String {
            switch t {
            case zlib: return "zlib"
            case lzo: return "lzo"
            case zstd: return "zstd"
            default: return "compression \(t)"
            }
        }
    }

    private static let lzoReady: Bool = warden_lzo_init() == 0

    /// Decompresses one extent (or inline item) into exactly `size` bytes (at most
    /// ``Limits/maxUncompressed``). Output the stream does not fill reads as zeros, as the
    /// kernel zero-fills it; output beyond `size` is ignored; damaged data is an error.
    static func decompress(_ input: [UInt8], type: UInt8, size: Int, sectorSize: Int, what: String) throws -> [UInt8] {
        guard size >= 0, size <= Limits.maxUncompressed else {
            throw corrupt("\(what) claims \(size) bytes uncompressed")
        }
        var out = [UInt8](repeating: 0, count: size)
        guard size > 0 else { return out }
        switch type {
        case Compression.zlib:
            try out.withUnsafeMutableBytes { try inflateZlib(input, into: $0, what: what) }
        case Compression.zstd:
            try out.withUnsafeMutableBytes { try decompressZstd(input, into: $0, what: what) }
        case Compression.lzo:
            try out.withUnsafeMutableBytes { try decompressLZO(input, into: $0, sectorSize: sectorSize, what: what) }
        default:
            throw unsupported("\(what) uses compression type \(type)")
        }
        return out
    }

    private static func inflateZlib(_ input: [UInt8], into out: UnsafeMutableRawBufferPointer, what: String) throws {
        guard !input.isEmpty else { throw corrupt("\(what): empty zlib stream") }
        var s = z_stream()
        guard inflateInit_(&s, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw WardenError(.internal, "cannot initialise zlib")
        }
        defer { inflateEnd(&s) }
        let r: Int32 = input.withUnsafeBufferPointer { inp in
            s.next_in = UnsafeMutablePointer(mutating: inp.baseAddress!)
            s.avail_in = uInt(inp.count)
            s.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
            s.avail_out = uInt(out.count)
            return inflate(&s, Z_FINISH)
        }
        // Z_BUF_ERROR: the output is full (more data than the extent holds is ignored) or
        // the input ended early (the rest reads as zeros, as in the kernel).
        guard r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK else {
            throw corrupt("\(what): damaged zlib data (\(r))")
        }
    }

    private static func decompressZstd(_ input: [UInt8], into out: UnsafeMutableRawBufferPointer, what: String) throws {
        guard let d = ZSTD_createDCtx() else { throw WardenError(.internal, "cannot initialise zstd") }
        defer { ZSTD_freeDCtx(d) }
        // Cap the window as the kernel does (btrfs writes at most a 128 KiB frame), so a
        // hostile frame header cannot ask for a large buffer.
        _ = ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 17)
        try input.withUnsafeBytes { inp in
            var inBuf = ZSTD_inBuffer(src: inp.baseAddress, size: inp.count, pos: 0)
            var outBuf = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
            while outBuf.pos < outBuf.size && inBuf.pos < inBuf.size {
                let inBefore = inBuf.pos, outBefore = outBuf.pos
                let r = ZSTD_decompressStream(d, &outBuf, &inBuf)
                if ZSTD_isError(r) != 0 {
                    throw corrupt("\(what): damaged zstd data (\(String(cString: ZSTD_getErrorName(r))))")
                }
                if r == 0 { break }   // the frame is complete; what follows is the sector's padding
                if inBuf.pos == inBefore && outBuf.pos == outBefore { break }
            }
        }
    }

    /// btrfs's LZO layout: a 4-byte total length, then segments of (4-byte length, LZO1X
    /// data), each decompressing to at most one sector; a segment header never straddles a
    /// sector boundary (the rest of the sector is padding).
    private static func decompressLZO(_ input: [UInt8], into out: UnsafeMutableRawBufferPointer, sectorSize: Int, what: String) throws {
        guard lzoReady else { throw WardenError(.internal, "cannot initialise liblzo2") }
        guard input.count >= 4 else { throw corrupt("\(what): LZO data is truncated") }
        let total = Int(try input.le(0) as UInt32)
        guard total >= 4, total <= input.count else {
            throw corrupt("\(what): LZO total length \(total) does not fit its \(input.count) bytes")
        }
        var at = 4
        var produced = 0
        try input.withUnsafeBytes { inp in
            while at < total && produced < out.count {
                let left = sectorSize - at % sectorSize
                if left < 4 {
                    at += left
                    if at >= total { break }
                }
                guard total - at >= 4 else { throw corrupt("\(what): LZO segment header is truncated") }
                let seg = Int(try input.le(at) as UInt32)
                at += 4
                guard seg > 0, seg <= total - at else {
                    throw corrupt("\(what): LZO segment of \(seg) bytes at \(at) runs past the data")
                }
                var n = min(sectorSize, out.count - produced)
                let r = warden_lzo1x_decompress_safe(inp.baseAddress!.advanced(by: at).assumingMemoryBound(to: UInt8.self), seg,
                                                     out.baseAddress!.advanced(by: produced).assumingMemoryBound(to: UInt8.self), &n)
                // LZO_E_OUTPUT_OVERRUN (-5) on the last, partial sector: the extent holds less.
                guard r == 0 || (r == -5 && produced + n == out.count) else {
                    throw corrupt("\(what): damaged LZO segment at \(at) (\(r))")
                }
                produced += n
                at += seg
            }
        }
    }
}
