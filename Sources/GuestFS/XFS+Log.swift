import WardenCore
import DiskImage

// Whether an XFS internal log was left clean, decided as the kernel's xlog_find_tail does.
//
//   The log is circular, in 512-byte basic blocks (BB), each stamped with the cycle (pass over
//   the log) that wrote it: the first word of a BB is the cycle, or, for the first BB of a log
//   record, the record magic FEEDBABE with the cycle in the next word. Written in order, the
//   log reads [c … c | c-1 … c-1]: the head (the next BB to write) is where the cycle drops.
//   record header: magic, cycle, version, length (bytes of data), lsn, tail lsn, crc, previous
//   block, number of log operations, … and (v2) the log buffer size at byte 320, which says how
//   many BBs the header takes (one per 32 KiB). The data starts with an operation header whose
//   flags (byte 9) mark an unmount record with 0x20.
//
//   Clean: the last record ends exactly at the head, holds one operation, and that operation
//   is an unmount record. Anything else means changes that only a log replay would apply.

extension XFS {
    /// The state of a filesystem's log.
    public enum LogState: String, Sendable, Codable {
        /// Unmounted cleanly: the filesystem on disk is complete.
        case clean
        /// Not unmounted cleanly: the log holds changes the disk does not show.
        case dirty
        /// The log lives on another device.
        case external
        /// The log could not be read or understood.
        case unknown
    }

    static let logRecordMagic: UInt32 = 0xFEED_BABE
    static let unmountFlag: UInt8 = 0x20

    /// `sb_logstart` and `sb_logblocks` of a raw superblock sector.
    static func logStart(of sb: [UInt8]) throws -> UInt64 { try sb.be(48) }
    static func logBlocks(of sb: [UInt8]) throws -> UInt32 { try sb.be(96) }
}

extension XFSVolume {
    /// Decides the state of the internal log at fsblock `start`, `blocks` filesystem blocks long.
    func logState(start: UInt64, blocks: UInt32) -> (state: XFS.LogState, reason: String?) {
        guard start != 0 else { return (.external, nil) }
        do {
            let first = try diskBlock(start, count: UInt64(blocks), what: "log")
            let base = first * UInt64(sb.blockSize)
            let count = UInt64(blocks) * UInt64(sb.blockSize) / 512
            guard count >= 2 else { return (.unknown, "the log has \(count) basic blocks") }
            func bb(_ i: UInt64) throws -> [UInt8] { try device.read(at: base + (i % count) * 512, count: 512) }
            func cycle(_ b: [UInt8]) throws -> UInt32 {
                let w: UInt32 = try b.be(0)
                return w == XFS.logRecordMagic ? try b.be(4) : w
            }
            let c0 = try cycle(try bb(0)), cl = try cycle(try bb(count - 1))
            // The head: the first BB of the older cycle (0 when the whole log has one cycle).
            var head: UInt64 = 0
            if c0 != cl {
                guard cl &+ 1 == c0 else { return (.unknown, "cycles \(c0) at the start and \(cl) at the end of the log do not follow") }
                var lo: UInt64 = 1, hi = count - 1   // cycle(lo - 1) == c0, cycle(hi) == cl
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if try cycle(try bb(mid)) == c0 { lo = mid + 1 } else { hi = mid }
                }
                head = lo
            }
            // The last record before the head (a record spans at most 256 KiB plus its header).
            var back: UInt64 = 1
            var found: (at: UInt64, header: [UInt8])?
            while back <= min(count, 1024) {
                let at = (head + count - back) % count
                let b = try bb(at)
                if (try b.be(0) as UInt32) == XFS.logRecordMagic { found = (at, b); break }
                back += 1
            }
            guard let (rhead, h) = found else { return (.unknown, "no log record found before the head") }
            let version: UInt32 = try h.be(8)
            let length = UInt64(try h.be(12) as UInt32)
            let ops: UInt32 = try h.be(40)
            var headerBBs: UInt64 = 1
            if version & 2 != 0 {
                let size = UInt64(try h.be(320) as UInt32)
                headerBBs = max(1, (size + 32767) / 32768)
            }
            let after = (rhead + headerBBs + (length + 511) / 512) % count
            guard after == head % count else { return (.dirty, nil) }
            guard ops == 1 else { return (.dirty, nil) }
            let data = try bb(rhead + headerBBs)
            return data[9] & XFS.unmountFlag != 0 ? (.clean, nil) : (.dirty, nil)
        } catch let e as WardenError {
            return (.unknown, e.message)
        } catch {
            return (.unknown, "\(error)")
        }
    }
}
