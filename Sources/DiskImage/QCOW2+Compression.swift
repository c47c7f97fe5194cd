#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CZlib
import CZstd
import WardenCore

extension QCOW2 {
    /// Reusable decompression state for one thread at a time: a raw-deflate
    /// stream, a zstd context and an input buffer big enough for the largest
    /// compressed cluster, all allocated once.
    final class Decompressor {
        let type: CompressionType
        let clusterSize: Int
        /// Capacity of `input`: the cap on compressed data per cluster.
        let inputCapacity: Int
        let input: UnsafeMutableRawPointer
        private var zstream: UnsafeMutablePointer<z_stream>?
        private var zstd: OpaquePointer?

        init(type: CompressionType, clusterSize: Int) throws {
            self.type = type
            self.clusterSize = clusterSize
            self.inputCapacity = 2 * clusterSize
            self.input = .allocate(byteCount: inputCapacity, alignment: 16)
            switch type {
            case .zlib:
                let s = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
                s.initialize(to: z_stream())
                // Raw deflate (negative window bits), 4 KiB window as qcow2 writes it;
                // zlib accepts streams written with smaller windows.
                guard inflateInit2_(s, -12, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                    s.deinitialize(count: 1)
                    s.deallocate()
                    input.deallocate()
                    throw WardenError(.internal, "cannot initialise zlib")
                }
                zstream = s
            case .zstd:
                guard let d = ZSTD_createDCtx() else {
                    input.deallocate()
                    throw WardenError(.internal, "cannot initialise zstd")
                }
                zstd = d
            }
        }

        deinit {
            if let s = zstream {
                inflateEnd(s)
                s.deinitialize(count: 1)
                s.deallocate()
            }
            if let d = zstd { ZSTD_freeDCtx(d) }
            input.deallocate()
        }

        /// Decompresses `inputCount` bytes of `input` into exactly one cluster at `out`.
        /// Returns false if the data is not a valid compressed cluster.
        func decompress(inputCount: Int, into out: UnsafeMutableRawPointer) -> Bool {
            switch type {
            case .zlib:
                guard let s = zstream, inflateReset(s) == Z_OK else { return false }
                s.pointee.next_in = input.assumingMemoryBound(to: Bytef.self)
                s.pointee.avail_in = uInt(inputCount)
                s.pointee.next_out = out.assumingMemoryBound(to: Bytef.self)
                s.pointee.avail_out = uInt(clusterSize)
                let ret = inflate(s, Z_FINISH)
                // The stream may continue past one cluster's worth of output or
                // end exactly there; either way a full cluster must come out.
                return (ret == Z_STREAM_END || ret == Z_BUF_ERROR || ret == Z_OK) && s.pointee.avail_out == 0
            case .zstd:
                guard let d = zstd, ZSTD_isError(ZSTD_DCtx_reset(d, ZSTD_reset_session_only)) == 0 else { return false }
                var inBuf = ZSTD_inBuffer(src: UnsafeRawPointer(input), size: inputCount, pos: 0)
                var outBuf = ZSTD_outBuffer(dst: out, size: clusterSize, pos: 0)
                while outBuf.pos < outBuf.size {
                    let inBefore = inBuf.pos, outBefore = outBuf.pos
                    let r = ZSTD_decompressStream(d, &outBuf, &inBuf)
                    if ZSTD_isError(r) != 0 { return false }
                    if r == 0 { break } // frame complete
                    if inBuf.pos == inBefore && outBuf.pos == outBefore { break } // no progress: truncated
                }
                return outBuf.pos == clusterSize
            }
        }
    }
}
