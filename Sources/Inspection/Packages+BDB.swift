import WardenCore

/// A minimal, read-only reader for Berkeley DB hash databases, enough for rpm's
/// old `/var/lib/rpm/Packages` (key: 4-byte header number, value: header blob).
///
/// Layout used (Berkeley DB 4.x/5.x, hash versions 8–10):
/// - Page 0 is the metadata page: `magic` at byte 12 (0x061561 for hash, in the byte
///   order of the machine that wrote the file, which is how the order is detected),
///   `pagesize` at 20, `encrypt_alg` at 24, page `type` at 25 (8, hash meta),
///   `metaflags` at 26 (bit 0: page checksums), `last_pgno` at 32.
/// - Every page starts with a 26-byte header: `pgno` at 8, `next_pgno` at 16,
///   `entries` (u16) at 20, `hf_offset` (u16) at 22, `type` at 25; with checksums the
///   header is 32 bytes. Hash pages (type 13, or 2 for the older unsorted variant) hold
///   `entries` u16 item offsets right after the header; items come in key/data pairs.
///   An item's first byte is its kind: 1 inline data (running up to the previous
///   item's start, or the page end for item 0), 3 off-page (pgno at +4, total length
///   at +8) stored in a chain of overflow pages (type 7) whose `hf_offset` is the
///   number of data bytes on that page.
///
/// All pages are scanned in order (no bucket arithmetic), so free or stale pages with a
/// hash type would be read too; Berkeley DB marks freed pages invalid (type 0).
/// Everything is bounded: page size 512…65536 and a power of two, page count limited
/// by the file size, overflow chains by a visited set and the record's declared
/// length, and the total of overflow bytes assembled by the file size.
struct BerkeleyHash {
    /// One key/data pair whose data was readable.
    struct Record {
        var key: [UInt8]
        var value: [UInt8]
    }

    let bytes: [UInt8]
    let bigEndian: Bool
    let pageSize: Int
    let pageCount: Int
    let headerSize: Int
    var warnings: [String] = []

    static let hashMagic: UInt32 = 0x061561
    static let btreeMagic: UInt32 = 0x053162
    static let queueMagic: UInt32 = 0x042253

    enum PageType {
        static let hashUnsorted: UInt8 = 2, overflow: UInt8 = 7, hashMeta: UInt8 = 8, hash: UInt8 = 13
    }

    enum ItemType {
        static let keyData: UInt8 = 1, duplicate: UInt8 = 2, offPage: UInt8 = 3, offDuplicate: UInt8 = 4
    }

    init(_ bytes: [UInt8]) throws {
        self.bytes = bytes
        guard bytes.count >= 512 else {
            throw WardenError.corrupt("BerkeleyDB file is \(bytes.count) bytes, smaller than one page")
        }
        let le: UInt32 = try ByteReader.le(bytes, at: 12), be: UInt32 = try ByteReader.be(bytes, at: 12)
        if le == Self.hashMagic { bigEndian = false }
        else if be == Self.hashMagic { bigEndian = true }
        else if le == Self.btreeMagic || be == Self.btreeMagic {
            throw WardenError.unsupported("BerkeleyDB btree database (only hash is supported)")
        } else if le == Self.queueMagic || be == Self.queueMagic {
            throw WardenError.unsupported("BerkeleyDB queue database (only hash is supported)")
        } else {
            throw WardenError.corrupt("not a BerkeleyDB hash database (magic \(hex(le)))")
        }
        let ps: UInt32 = bigEndian ? try ByteReader.be(bytes, at: 20) : try ByteReader.le(bytes, at: 20)
        guard ps >= 512, ps <= 65536, ps & (ps - 1) == 0 else {
            throw WardenError.corrupt("BerkeleyDB page size \(ps) is not a power of two in 512...65536")
        }
        pageSize = Int(ps)
        guard bytes[24] == 0 else { throw WardenError.unsupported("encrypted BerkeleyDB database") }
        guard bytes[25] == PageType.hashMeta else {
            throw WardenError.corrupt("BerkeleyDB metadata page has type \(bytes[25]), expected \(PageType.hashMeta) (hash meta)")
        }
        headerSize = bytes[26] & 1 != 0 ? 32 : 26
        let last: UInt32 = bigEndian ? try ByteReader.be(bytes, at: 32) : try ByteReader.le(bytes, at: 32)
        let inFile = bytes.count / pageSize
        let declared = Int(last) + 1
        if declared > inFile {
            warnings.append("BerkeleyDB declares \(declared) pages but the file holds \(inFile); reading those")
        }
        pageCount = min(declared, inFile)
    }

    private func u16(_ at: Int) throws -> Int {
        let v: UInt16 = bigEndian ? try ByteReader.be(bytes, at: at) : try ByteReader.le(bytes, at: at)
        return Int(v)
    }

    private func u32(_ at: Int) throws -> UInt32 {
        bigEndian ? try ByteReader.be(bytes, at: at) : try ByteReader.le(bytes, at: at)
    }

    /// Decodes a 4-byte key written in the database's byte order.
    func keyNumber(_ key: [UInt8]) -> UInt32? {
        guard key.count == 4 else { return nil }
        return bigEndian ? try? ByteReader.be(key, at: 0) : try? ByteReader.le(key, at: 0)
    }

    /// Reads the chain of overflow pages starting at `pgno` holding `length` bytes.
    private func overflow(_ first: UInt32, length: Int, budget: inout Int) throws -> [UInt8] {
        guard length <= budget else {
            throw WardenError.limit("off-page item of \(length) bytes exceeds the remaining read budget (\(budget) bytes)")
        }
        var out: [UInt8] = []
        out.reserveCapacity(length)
        var pg = first
        var visited = Set<UInt32>()
        while out.count < length {
            guard pg != 0, Int(pg) < pageCount else {
                throw WardenError.corrupt("overflow chain reaches invalid page \(pg) with \(length - out.count) bytes missing")
            }
            guard visited.insert(pg).inserted else { throw WardenError.corrupt("overflow chain loops at page \(pg)") }
            let base = Int(pg) * pageSize
            guard bytes[base + 25] == PageType.overflow else {
                throw WardenError.corrupt("overflow chain page \(pg) has type \(bytes[base + 25])")
            }
            let n = try u16(base + 22)
            guard n <= pageSize - headerSize, n <= length - out.count, n > 0 else {
                throw WardenError.corrupt("overflow page \(pg) holds \(n) bytes (expected 1...\(min(pageSize - headerSize, length - out.count)))")
            }
            out += bytes[(base + headerSize)..<(base + headerSize + n)]
            pg = try u32(base + 16)
        }
        budget -= length
        return out
    }

    /// Every key/data pair on every hash page, in page order. Unreadable items are
    /// skipped with a warning (capped by `warn`); `maxRecords` bounds the result.
    mutating func records(maxRecords: Int, warn: (String) -> Void) -> [Record] {
        var out: [Record] = []
        var budget = bytes.count  // each overflow page belongs to one item: the file bounds the total
        var pgno = 1
        while pgno < pageCount {
            defer { pgno += 1 }
            let base = pgno * pageSize
            let type = bytes[base + 25]
            guard type == PageType.hash || type == PageType.hashUnsorted else { continue }
            do {
                let entries = try u16(base + 20)
                guard entries % 2 == 0, entries <= (pageSize - headerSize) / 2 else {
                    throw WardenError.corrupt("\(entries) entries")
                }
                var offsets: [Int] = []
                for i in 0..<entries {
                    let o = try u16(base + headerSize + 2 * i)
                    // Items sit after the offset table and shrink towards lower offsets.
                    let end = i == 0 ? pageSize : offsets[i - 1]
                    guard o >= headerSize + 2 * entries, o < end else {
                        throw WardenError.corrupt("item \(i) at offset \(o) is out of order or out of bounds")
                    }
                    offsets.append(o)
                }
                func item(_ i: Int) throws -> [UInt8] {
                    let o = offsets[i], end = i == 0 ? pageSize : offsets[i - 1]
                    switch bytes[base + o] {
                    case ItemType.keyData:
                        return Array(bytes[(base + o + 1)..<(base + end)])
                    case ItemType.offPage:
                        guard end - o >= 12 else { throw WardenError.corrupt("item \(i): short off-page reference") }
                        let pg = try u32(base + o + 4), len = try u32(base + o + 8)
                        return try overflow(pg, length: Int(len), budget: &budget)
                    case ItemType.duplicate, ItemType.offDuplicate:
                        throw WardenError.unsupported("item \(i): duplicate sets are not supported")
                    case let t:
                        throw WardenError.corrupt("item \(i) has unknown type \(t)")
                    }
                }
                var i = 0
                while i + 1 < entries {
                    defer { i += 2 }
                    guard out.count < maxRecords else {
                        warn("more than \(maxRecords) records; the rest ignored")
                        return out
                    }
                    do {
                        out.append(Record(key: try item(i), value: try item(i + 1)))
                    } catch let e as WardenError {
                        warn("BerkeleyDB page \(pgno) pair \(i / 2): \(e.message); skipped")
                    } catch {
                        warn("BerkeleyDB page \(pgno) pair \(i / 2): \(error); skipped")
                    }
                }
            } catch let e as WardenError {
                warn("BerkeleyDB hash page \(pgno) is malformed (\(e.message)); skipped")
            } catch {
                warn("BerkeleyDB hash page \(pgno) is malformed (\(error)); skipped")
            }
        }
        return out
    }
}
