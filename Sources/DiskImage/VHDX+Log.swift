import WardenCore

// The VHDX log (MS-VHDX 2.3), replayed in memory, never written back.
//
// A writer records each metadata update (BAT and metadata-region sectors) in the log, a
// circular buffer at the header's LogOffset/LogLength, before making it in place; a header
// whose LogGuid is not zero says the log may hold updates that never reached their place.
//   entry (a multiple of 4 KiB): "loge", CRC-32C of the whole entry, length, tail (offset of
//     the oldest entry still needed), sequence number, descriptor count, log GUID, flushed and
//     last file offsets; then 32-byte descriptors: "desc" (one 4 KiB sector: 8 leading and 4
//     trailing bytes in the descriptor, 4084 in a "data" sector that follows) or "zero" (a
//     range to zero); each carries the entry's sequence number, as do its data sectors.
//   replay: the active sequence is the run of valid entries with the GUID of the header and
//     consecutive sequence numbers, ending at the highest one, from its head's tail; its
//     descriptors are applied in order.

extension VHDX {
    /// The log's effect: 4 KiB file sectors as the log writes them, keyed by file offset.
    struct LogReplay {
        var sectors: [UInt64: [UInt8]] = [:]
        var entries = 0
        var sequence: UInt64 = 0
    }

    /// At most this many bytes of sectors are replayed (the log itself is at most 4 GiB, but a
    /// real one holds a few BAT sectors; a zero descriptor may name a range).
    static let maxReplayBytes = 64 << 20
    static let maxLogLength: UInt64 = 1 << 32

    struct LogEntry {
        var offset: UInt64
        var length: UInt64
        var tail: UInt64
        var sequence: UInt64
        var raw: [UInt8]
    }

    /// Reads and checks the entry at `offset` of the log (`log` is the whole log region).
    static func logEntry(_ log: [UInt8], at offset: Int, guid: [UInt8]) -> LogEntry? {
        guard offset >= 0, offset + 64 <= log.count, Array(log[offset..<offset + 4]) == Array("loge".utf8),
              let length: UInt32 = try? ByteReader.le(log, at: offset + 8),
              length >= 4096, length % 4096 == 0, Int(length) <= log.count - offset,
              let tail: UInt32 = try? ByteReader.le(log, at: offset + 12),
              let seq: UInt64 = try? ByteReader.le(log, at: offset + 16),
              let count: UInt32 = try? ByteReader.le(log, at: offset + 24),
              Array(log[(offset + 32)..<(offset + 48)]) == guid, seq != 0 else { return nil }
        let raw = Array(log[offset..<(offset + Int(length))])
        guard checksumOK(raw, at: 4) else { return nil }
        // The descriptors and the data sectors they need fit the entry.
        let headerSectors = (64 + Int(count) * 32 + 4095) / 4096
        guard count <= 1 << 20, headerSectors * 4096 <= raw.count else { return nil }
        var dataSectors = 0
        for i in 0..<Int(count) {
            let d = 64 + i * 32
            let sig = Array(raw[d..<d + 4])
            guard let dseq: UInt64 = try? ByteReader.le(raw, at: d + 24), dseq == seq else { return nil }
            if sig == Array("desc".utf8) { dataSectors += 1 } else if sig != Array("zero".utf8) { return nil }
        }
        guard (headerSectors + dataSectors) * 4096 <= raw.count else { return nil }
        return LogEntry(offset: UInt64(offset), length: UInt64(length), tail: UInt64(tail), sequence: seq, raw: raw)
    }

    /// Replays the log of `header` in memory. A log with no valid sequence replays nothing,
    /// as the format says (its updates never became durable, so none was made in place).
    static func replayLog(_ file: ImageFile, header h: Header) throws -> LogReplay {
        guard h.logOffset >= 1 << 20, h.logOffset % (1 << 20) == 0, h.logLength >= 1 << 20, h.logLength % (1 << 20) == 0,
              UInt64(h.logLength) <= maxLogLength else {
            throw WardenError.corrupt("VHDX log at \(hex(h.logOffset)) of \(h.logLength) bytes is not aligned to 1 MiB", file: file.path)
        }
        guard h.logLength <= 64 << 20 else {
            throw WardenError.limit("VHDX log of \(h.logLength) bytes is larger than the 64 MiB this reader replays", file: file.path)
        }
        let log = try file.read(at: h.logOffset, count: Int(h.logLength), what: "VHDX log")
        // Every valid entry, by offset; then the sequences of consecutive ones.
        var valid: [UInt64: LogEntry] = [:]
        var at = 0
        while at < log.count {
            if let e = logEntry(log, at: at, guid: h.logGUID) {
                valid[e.offset] = e
                at += Int(e.length)
            } else {
                at += 4096
            }
        }
        var best: [LogEntry] = []
        for start in valid.keys.sorted() {
            var run = [valid[start]!]
            var next = (start + run[0].length) % UInt64(log.count)
            while let e = valid[next], e.sequence == run.last!.sequence &+ 1, run.count < valid.count {
                run.append(e)
                next = (next + e.length) % UInt64(log.count)
            }
            if run.last!.sequence > (best.last?.sequence ?? 0) { best = run }
        }
        var replay = LogReplay()
        guard let head = best.last else { return replay }
        // The head's tail names the oldest entry still needed: it must be in the run.
        guard let first = best.firstIndex(where: { $0.offset == head.tail }) else {
            throw WardenError.corrupt("VHDX log's newest entry (sequence \(head.sequence)) names a tail at \(hex(head.tail)) outside its sequence", file: file.path)
        }
        var bytes = 0
        for e in best[first...] {
            let count32: UInt32 = try ByteReader.le(e.raw, at: 24)
            let count = Int(count32)
            var dataSector = (64 + count * 32 + 4095) / 4096
            for i in 0..<count {
                let d = 64 + i * 32
                let fileOffset: UInt64 = try ByteReader.le(e.raw, at: d + 16)
                guard fileOffset % 4096 == 0, fileOffset >= 1 << 20 else {
                    throw WardenError.corrupt("VHDX log entry \(e.sequence) writes at \(hex(fileOffset)), not a 4 KiB sector past the headers", file: file.path)
                }
                if Array(e.raw[d..<d + 4]) == Array("desc".utf8) {
                    let s = dataSector * 4096
                    dataSector += 1
                    guard Array(e.raw[s..<s + 4]) == Array("data".utf8) else {
                        throw WardenError.corrupt("VHDX log entry \(e.sequence) lacks data sector \(i)", file: file.path)
                    }
                    let high: UInt32 = try ByteReader.le(e.raw, at: s + 4), low: UInt32 = try ByteReader.le(e.raw, at: s + 4092)
                    guard UInt64(high) << 32 | UInt64(low) == e.sequence else {
                        throw WardenError.corrupt("VHDX log entry \(e.sequence) has a data sector of another sequence", file: file.path)
                    }
                    // Leading 8 bytes and trailing 4 are kept in the descriptor.
                    var sector: [UInt8] = Array(e.raw[(d + 8)..<(d + 16)])
                    sector.append(contentsOf: e.raw[(s + 8)..<(s + 4092)])
                    sector.append(contentsOf: e.raw[(d + 4)..<(d + 8)])
                    if replay.sectors.updateValue(sector, forKey: fileOffset) == nil { bytes += 4096 }
                } else {
                    let length: UInt64 = try ByteReader.le(e.raw, at: d + 8)
                    guard length % 4096 == 0, length <= UInt64(maxReplayBytes) else {
                        throw WardenError.corrupt("VHDX log entry \(e.sequence) zeroes \(length) bytes", file: file.path)
                    }
                    let (zeroEnd, o) = fileOffset.addingReportingOverflow(length)
                    guard !o else { throw WardenError.corrupt("VHDX log entry \(e.sequence) zeroes past the largest offset", file: file.path) }
                    var off = fileOffset
                    while off < zeroEnd {
                        if replay.sectors.updateValue([UInt8](repeating: 0, count: 4096), forKey: off) == nil { bytes += 4096 }
                        off += 4096
                    }
                }
                guard bytes <= maxReplayBytes else {
                    throw WardenError.limit("VHDX log replays more than \(maxReplayBytes) bytes", file: file.path)
                }
            }
            replay.entries += 1
            replay.sequence = e.sequence
        }
        return replay
    }

    /// `count` bytes of the file at `offset` as they are after the replay.
    static func read(_ file: ImageFile, at offset: UInt64, count: Int, what: String, replay: LogReplay?) throws -> [UInt8] {
        var out = try file.read(at: offset, count: count, what: what)
        if let replay, !replay.sectors.isEmpty { apply(replay, to: &out, at: offset) }
        return out
    }

    static func apply(_ replay: LogReplay, to buf: inout [UInt8], at offset: UInt64) {
        buf.withUnsafeMutableBytes { apply(replay, to: $0, at: offset) }
    }

    static func apply(_ replay: LogReplay, to buf: UnsafeMutableRawBufferPointer, at offset: UInt64) {
        guard !buf.isEmpty else { return }
        let end = offset + UInt64(buf.count)
        var sector = offset - offset % 4096
        while sector < end {
            if let bytes = replay.sectors[sector] {
                let from = max(sector, offset), to = min(sector + 4096, end)
                bytes.withUnsafeBytes { src in
                    UnsafeMutableRawBufferPointer(rebasing: buf[Int(from - offset)..<Int(to - offset)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: src[Int(from - sector)..<Int(to - sector)]))
                }
            }
            sector += 4096
        }
    }
}
