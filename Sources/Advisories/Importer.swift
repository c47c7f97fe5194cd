import Foundation
import WardenCore

/// The advisory feed formats Warden imports.
public enum AdvisoryFormat: String, Sendable, Codable {
    case osv
    case debianTracker = "debian-tracker"
    case alpineSecdb = "alpine-secdb"
}

/// Reads advisory files, directories and OSV `all.zip` archives into ``AdvisoryRecord``s.
///
/// The format of a JSON file is recognised by its shape: an object with `id` and `modified`
/// (or `affected`) is OSV, a JSON list of such objects is OSV, an object with `packages` and
/// `distroversion` is Alpine secdb, and an object of objects whose values carry `releases` is
/// the Debian Security Tracker. A directory is walked for `*.json` OSV files; a `.zip` file
/// is read as an OSV archive (every `*.json` entry one record).
public enum AdvisoryImporter {
    /// Records are handed over in batches of at most this many.
    public static let batchSize = 2_000
    public static let maxFilesInDirectory = 5_000_000

    /// Reads `path`, calling `body` with each batch of records and the format they came in.
    /// Returns the formats seen. Throws a one-line ``WardenError`` naming the file on bad input.
    @discardableResult
    public static func read(path: String, _ body: ([AdvisoryRecord], AdvisoryFormat) throws -> Void) throws -> Set<AdvisoryFormat> {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw WardenError(.notFound, "cannot open: No such file or directory", file: path)
        }
        if isDir.boolValue { return try readDirectory(path, body) }
        if path.lowercased().hasSuffix(".zip") || isZip(path) { return try readZip(path, body) }
        let data = try JSONInput.readFile(path, limit: DebianTracker.maxFileBytes)
        let (records, format) = try decode(data, file: path)
        var i = 0
        while i < records.count {
            try body(Array(records[i..<min(i + batchSize, records.count)]), format)
            i += batchSize
        }
        if records.isEmpty { try body([], format) }
        return [format]
    }

    static func isZip(_ path: String) -> Bool {
        guard let fh = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? fh.close() }
        let head = (try? fh.read(upToCount: 4)) ?? Data()
        return head == Data([0x50, 0x4B, 0x03, 0x04]) || head == Data([0x50, 0x4B, 0x05, 0x06])
    }

    /// Decodes one JSON document of any supported format.
    public static func decode(_ data: Data, file: String) throws -> ([AdvisoryRecord], AdvisoryFormat) {
        let json = try JSONInput.parse(data, file: file)
        if let array = json as? [Any] {
            if data.count > 1 << 30 { throw WardenError(.limitExceeded, "OSV list is larger than 1 GiB", file: file) }
            return (try array.enumerated().map { i, v in
                guard let o = v as? [String: Any] else { throw WardenError(.corrupt, "OSV list element \(i) is not an object", file: file) }
                return try OSV.record(o, file: file)
            }, .osv)
        }
        guard let o = json as? [String: Any] else {
            throw WardenError(.corrupt, "not an advisory feed: the JSON is neither an object nor a list", file: file)
        }
        if OSV.looksLikeOSV(o) {
            if data.count > OSV.Limits.maxRecordBytes {
                throw WardenError(.limitExceeded, "OSV record is \(data.count) bytes; the limit is \(OSV.Limits.maxRecordBytes)", file: file)
            }
            return ([try OSV.record(o, file: file)], .osv)
        }
        if AlpineSecDB.looksLikeSecDB(o) { return (try AlpineSecDB.records(o, file: file), .alpineSecdb) }
        if DebianTracker.looksLikeTracker(o) { return (try DebianTracker.records(o, file: file), .debianTracker) }
        throw WardenError(.corrupt, "not an advisory feed: neither OSV, Debian Security Tracker nor Alpine secdb JSON", file: file)
    }

    static func readDirectory(_ dir: String, _ body: ([AdvisoryRecord], AdvisoryFormat) throws -> Void) throws -> Set<AdvisoryFormat> {
        var files: [String] = []
        guard let walker = FileManager.default.enumerator(atPath: dir) else {
            throw WardenError(.io, "cannot list the directory", file: dir)
        }
        while let rel = walker.nextObject() as? String {
            guard rel.lowercased().hasSuffix(".json") else { continue }
            files.append(dir + "/" + rel)
            if files.count > maxFilesInDirectory {
                throw WardenError(.limitExceeded, "more than \(maxFilesInDirectory) JSON files", file: dir)
            }
        }
        files.sort()
        var formats = Set<AdvisoryFormat>()
        var batch: [AdvisoryRecord] = []
        for f in files {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: f, isDirectory: &isDir), !isDir.boolValue else { continue }
            let (records, format) = try decode(try JSONInput.readFile(f, limit: DebianTracker.maxFileBytes), file: f)
            if format != .osv {
                // Tracker and secdb files are whole feeds; hand them over on their own.
                try body(records, format)
            } else {
                batch += records
                if batch.count >= batchSize { try body(batch, .osv); batch.removeAll(keepingCapacity: true) }
            }
            formats.insert(format)
        }
        if !batch.isEmpty { try body(batch, .osv) }
        if formats.isEmpty { throw WardenError(.notFound, "no *.json advisory files in the directory", file: dir) }
        return formats
    }

    static func readZip(_ path: String, _ body: ([AdvisoryRecord], AdvisoryFormat) throws -> Void) throws -> Set<AdvisoryFormat> {
        let zip = try ZipArchive(path: path)
        var batch: [AdvisoryRecord] = []
        var seen = 0
        for e in zip.entries where !e.isDirectory && e.name.lowercased().hasSuffix(".json") {
            let data = try zip.extract(e)
            batch += try OSV.records(from: data, file: "\(path): \(oneLine(e.name))")
            seen += 1
            if batch.count >= batchSize { try body(batch, .osv); batch.removeAll(keepingCapacity: true) }
        }
        if seen == 0 { throw WardenError(.notFound, "zip archive holds no *.json OSV records", file: path) }
        if !batch.isEmpty { try body(batch, .osv) }
        return [.osv]
    }
}
