import Foundation
import GRDB
import WardenCore
import Advisories

// One GRDB record per table of AdvisoryMigrations. Dates are stored as seconds since 1970 (REAL).

protocol AdvisoryTableRecord: Codable, FetchableRecord, PersistableRecord {}

struct AdvisorySourceRow: AdvisoryTableRecord {
    static let databaseTableName = "advisory_source"
    static let databaseColumnDecodingStrategy = DatabaseColumnDecodingStrategy.convertFromSnakeCase
    static let databaseColumnEncodingStrategy = DatabaseColumnEncodingStrategy.convertToSnakeCase
    static func databaseDateDecodingStrategy(for column: String) -> DatabaseDateDecodingStrategy { .timeIntervalSince1970 }
    static func databaseDateEncodingStrategy(for column: String) -> DatabaseDateEncodingStrategy { .timeIntervalSince1970 }
    var name: String
    var format: String
    var location: String
    var importedAt: Date
    var lastSeen: Int
    var lastAdded: Int
    var lastReplaced: Int
    var lastUnchanged: Int
    var lastOlder: Int
}

struct AdvisoryRow: AdvisoryTableRecord {
    static let databaseTableName = "advisory"
    static let databaseColumnDecodingStrategy = DatabaseColumnDecodingStrategy.convertFromSnakeCase
    static let databaseColumnEncodingStrategy = DatabaseColumnEncodingStrategy.convertToSnakeCase
    static func databaseDateDecodingStrategy(for column: String) -> DatabaseDateDecodingStrategy { .timeIntervalSince1970 }
    static func databaseDateEncodingStrategy(for column: String) -> DatabaseDateEncodingStrategy { .timeIntervalSince1970 }
    var pk: Int64?
    var source: String
    var id: String
    var modified: Date?
    var published: Date?
    var withdrawn: Date?
    var aliases: String
    var summary: String?
    var severity: Int
    var cvssScore: Double?
    var cvssVector: String?
    var contentHash: String
    var importedAt: Date

    mutating func didInsert(_ inserted: InsertionSuccess) { pk = inserted.rowID }
}

struct AffectedRow: AdvisoryTableRecord {
    static let databaseTableName = "advisory_affected"
    static let databaseColumnDecodingStrategy = DatabaseColumnDecodingStrategy.convertFromSnakeCase
    static let databaseColumnEncodingStrategy = DatabaseColumnEncodingStrategy.convertToSnakeCase
    static func databaseDateDecodingStrategy(for column: String) -> DatabaseDateDecodingStrategy { .timeIntervalSince1970 }
    static func databaseDateEncodingStrategy(for column: String) -> DatabaseDateEncodingStrategy { .timeIntervalSince1970 }
    var advisory: Int64
    var ecosystem: String
    var package: String
    var status: String
    var severity: Int?
    var ranges: String
    var versions: String
}

struct InventoryRow: AdvisoryTableRecord {
    static let databaseTableName = "inventory"
    static let databaseColumnDecodingStrategy = DatabaseColumnDecodingStrategy.convertFromSnakeCase
    static let databaseColumnEncodingStrategy = DatabaseColumnEncodingStrategy.convertToSnakeCase
    static func databaseDateDecodingStrategy(for column: String) -> DatabaseDateDecodingStrategy { .timeIntervalSince1970 }
    static func databaseDateEncodingStrategy(for column: String) -> DatabaseDateEncodingStrategy { .timeIntervalSince1970 }
    var key: String
    var osId: String?
    var versionId: String?
    var packageCount: Int
    var packages: Data
    var inspectedAt: Date
}

struct InventoryImageRow: AdvisoryTableRecord {
    static let databaseTableName = "inventory_image"
    static let databaseColumnDecodingStrategy = DatabaseColumnDecodingStrategy.convertFromSnakeCase
    static let databaseColumnEncodingStrategy = DatabaseColumnEncodingStrategy.convertToSnakeCase
    static func databaseDateDecodingStrategy(for column: String) -> DatabaseDateDecodingStrategy { .timeIntervalSince1970 }
    static func databaseDateEncodingStrategy(for column: String) -> DatabaseDateEncodingStrategy { .timeIntervalSince1970 }
    var path: String
    var inventory: String
    var scannedAt: Date
}

/// An inventory's package-version ids in its package order: 8-byte little-endian integers.
public enum PackageVersionCoding {
    public static func encode(_ ids: [Int64]) -> Data {
        var out = Data(capacity: ids.count * 8)
        for id in ids { withUnsafeBytes(of: id.littleEndian) { out.append(contentsOf: $0) } }
        return out
    }

    /// Decodes a stored list; a trailing partial id (a damaged value) is ignored.
    public static func decode(_ data: Data) -> [Int64] {
        var out: [Int64] = []
        out.reserveCapacity(data.count / 8)
        data.withUnsafeBytes { (p: UnsafeRawBufferPointer) in
            var i = 0
            while i + 8 <= p.count {
                var v: UInt64 = 0
                for k in 0..<8 { v |= UInt64(p[i + k]) << (8 * UInt64(k)) }
                out.append(Int64(bitPattern: v))
                i += 8
            }
        }
        return out
    }
}

/// Tab-separated lines with `\\`, `\t`, `\n` escaped: the compact stored form of package
/// lists and finding sets (much faster to read back than JSON for a whole fleet).
enum CompactLines {
    static func escape(_ s: String, into out: inout [UInt8]) {
        let done: Void? = s.utf8.withContiguousStorageIfAvailable { bytes in
            if !bytes.contains(where: { $0 == 0x5C || $0 == 0x09 || $0 == 0x0A }) {
                out.append(contentsOf: bytes)
            } else {
                for b in bytes { escapeByte(b, into: &out) }
            }
        }
        if done == nil { for b in s.utf8 { escapeByte(b, into: &out) } }
    }

    @inline(__always) static func escapeByte(_ b: UInt8, into out: inout [UInt8]) {
        switch b {
        case 0x5C: out += [0x5C, 0x5C]
        case 0x09: out += [0x5C, 0x74]
        case 0x0A: out += [0x5C, 0x6E]
        default: out.append(b)
        }
    }

    static func encode(_ rows: [[String]]) -> Data {
        var out: [UInt8] = []
        out.reserveCapacity(rows.count * 48)
        for r in rows {
            for (i, f) in r.enumerated() {
                if i > 0 { out.append(0x09) }
                escape(f, into: &out)
            }
            out.append(0x0A)
        }
        return Data(out)
    }

    /// Calls `body` with the fields of each line.
    static func decode(_ data: Data, _ body: ([String]) throws -> Void) rethrows {
        try data.withUnsafeBytes { (p: UnsafeRawBufferPointer) in
            var fields: [String] = []
            var cur: [UInt8] = []
            var simple = true
            var start = 0
            var i = 0
            let n = p.count
            func field(_ end: Int) {
                if simple {
                    fields.append(String(decoding: UnsafeRawBufferPointer(rebasing: p[start..<end]), as: UTF8.self))
                } else {
                    fields.append(String(decoding: cur, as: UTF8.self))
                    cur.removeAll(keepingCapacity: true)
                    simple = true
                }
            }
            while i < n {
                let b = p[i]
                if b == 0x09 || b == 0x0A {
                    field(i)
                    start = i + 1
                    if b == 0x0A { try body(fields); fields.removeAll(keepingCapacity: true) }
                } else if b == 0x5C, i + 1 < n {
                    if simple { cur.append(contentsOf: p[start..<i]); simple = false }
                    let c = p[i + 1]
                    cur.append(c == 0x74 ? 0x09 : (c == 0x6E ? 0x0A : c))
                    i += 1
                } else if !simple {
                    cur.append(b)
                }
                i += 1
            }
        }
    }
}
