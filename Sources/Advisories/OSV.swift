import Foundation
import WardenCore

/// The OSV schema 1.x (https://ossf.github.io/osv-schema/): one vulnerability per JSON object.
///
/// Read: `id`, `modified`, `published`, `withdrawn`, `aliases`, `summary`/`details`,
/// `severity` (`CVSS_V3` vectors are scored; `Ubuntu` and other word scores are urgencies),
/// and each `affected[]` entry's `package.ecosystem`/`package.name`, `ECOSYSTEM` ranges
/// (`introduced`, `fixed`, `last_affected`, `limit`), `versions`, `severity`, and urgency
/// words in `ecosystem_specific`/`database_specific` (`urgency`, `severity`). SEMVER and GIT
/// ranges do not apply to distro packages and are skipped.
public enum OSV {
    /// Caps on one record (hostile feeds).
    public enum Limits {
        public static let maxRecordBytes = 16 << 20
        public static let maxAffected = 10_000
        public static let maxRanges = 1_000
        public static let maxEvents = 10_000
        public static let maxVersions = 200_000
        public static let maxAliases = 1_000
        public static let maxStringBytes = 64 << 10
    }

    /// Decodes one OSV record (or a JSON array of records) from `data`.
    public static func records(from data: Data, file: String) throws -> [AdvisoryRecord] {
        if data.count > Limits.maxRecordBytes, !(data.first.map { $0 == UInt8(ascii: "[") } ?? false) {
            throw WardenError(.limitExceeded, "OSV record is \(data.count) bytes; the limit is \(Limits.maxRecordBytes)", file: file)
        }
        let json = try JSONInput.parse(data, file: file)
        if let array = json as? [Any] {
            return try array.enumerated().map { i, v in
                guard let o = v as? [String: Any] else { throw WardenError(.corrupt, "OSV list element \(i) is not an object", file: file) }
                return try record(o, file: file)
            }
        }
        guard let o = json as? [String: Any] else { throw WardenError(.corrupt, "OSV record is not a JSON object", file: file) }
        return [try record(o, file: file)]
    }

    /// Whether a decoded JSON object looks like an OSV record.
    static func looksLikeOSV(_ o: [String: Any]) -> Bool {
        o["id"] is String && (o["modified"] != nil || o["affected"] != nil || o["schema_version"] != nil)
    }

    static func string(_ o: [String: Any], _ key: String, file: String, required: Bool = false) throws -> String? {
        guard let v = o[key], !(v is NSNull) else {
            if required { throw WardenError(.corrupt, "OSV record has no \"\(key)\"", file: file) }
            return nil
        }
        guard let s = v as? String else { throw WardenError(.corrupt, "OSV field \"\(key)\" is not a string", file: file) }
        if s.utf8.count > Limits.maxStringBytes {
            throw WardenError(.limitExceeded, "OSV field \"\(key)\" is longer than \(Limits.maxStringBytes) bytes", file: file)
        }
        return s
    }

    static func date(_ o: [String: Any], _ key: String, file: String, id: String) throws -> Date? {
        guard let s = try string(o, key, file: file) else { return nil }
        guard let d = JSONInput.date(s) else {
            throw WardenError(.corrupt, "OSV record \(oneLine(id)): \"\(key)\" is not an RFC 3339 time: \(oneLine(String(s.prefix(40))))", file: file)
        }
        return d
    }

    static func array(_ o: [String: Any], _ key: String, file: String, id: String, limit: Int) throws -> [Any] {
        guard let v = o[key], !(v is NSNull) else { return [] }
        guard let a = v as? [Any] else { throw WardenError(.corrupt, "OSV record \(oneLine(id)): \"\(key)\" is not a list", file: file) }
        if a.count > limit { throw WardenError(.limitExceeded, "OSV record \(oneLine(id)): \(a.count) \(key); the limit is \(limit)", file: file) }
        return a
    }

    /// An urgency or severity word from `ecosystem_specific` / `database_specific`.
    static func urgencyWord(_ v: Any?) -> Severity? {
        guard let o = v as? [String: Any] else { return nil }
        for key in ["urgency", "severity"] {
            if let s = o[key] as? String, let sev = Severity(word: s.trimmingCharacters(in: CharacterSet(charactersIn: "*"))), sev != .unknown { return sev }
        }
        return nil
    }

    /// Severity from an OSV `severity` list: the highest CVSS v3 base score, else a word score.
    static func severity(_ list: [Any]) -> (Severity, Double?, String?)? {
        var best: (Double, String)?
        var word: Severity?
        for e in list {
            guard let o = e as? [String: Any], let type = o["type"] as? String, let score = o["score"] as? String else { continue }
            if type == "CVSS_V3", let s = CVSS3.baseScore(score) {
                if best == nil || s > best!.0 { best = (s, score) }
            } else if let w = Severity(word: score), w != .unknown {
                word = max(word ?? w, w)
            }
        }
        if let best { return (Severity(cvssScore: best.0), best.0, best.1) }
        if let word { return (word, nil, nil) }
        return nil
    }

    static func record(_ o: [String: Any], file: String) throws -> AdvisoryRecord {
        guard let id = try string(o, "id", file: file, required: true), !id.isEmpty else {
            throw WardenError(.corrupt, "OSV record has an empty \"id\"", file: file)
        }
        var rec = AdvisoryRecord(id: id, source: "osv")
        rec.modified = try date(o, "modified", file: file, id: id)
        rec.published = try date(o, "published", file: file, id: id)
        rec.withdrawn = try date(o, "withdrawn", file: file, id: id)
        rec.aliases = try array(o, "aliases", file: file, id: id, limit: Limits.maxAliases).map {
            guard let s = $0 as? String else { throw WardenError(.corrupt, "OSV record \(oneLine(id)): an alias is not a string", file: file) }
            return s
        }.filter { $0 != id }
        rec.summary = try string(o, "summary", file: file) ?? string(o, "details", file: file).map { String($0.prefix(200)) }
        var recordUrgency: Severity?
        if let s = severity(try array(o, "severity", file: file, id: id, limit: 100)) {
            rec.severity = s.0; rec.cvssScore = s.1; rec.cvssVector = s.2
        }
        recordUrgency = urgencyWord(o["database_specific"])
        var affectedUrgency: Severity?
        for (ai, a) in try array(o, "affected", file: file, id: id, limit: Limits.maxAffected).enumerated() {
            guard let ao = a as? [String: Any] else { throw WardenError(.corrupt, "OSV record \(oneLine(id)): affected[\(ai)] is not an object", file: file) }
            guard let pkg = ao["package"] as? [String: Any] else { continue } // affected by commit only: nothing to match
            guard let eco = pkg["ecosystem"] as? String, let name = pkg["name"] as? String, !eco.isEmpty, !name.isEmpty,
                  eco.utf8.count < 256, name.utf8.count < 1024 else {
                throw WardenError(.corrupt, "OSV record \(oneLine(id)): affected[\(ai)].package needs an ecosystem and a name", file: file)
            }
            var entry = AffectedPackage(ecosystem: eco, package: name)
            for (ri, r) in try array(ao, "ranges", file: file, id: id, limit: Limits.maxRanges).enumerated() {
                guard let ro = r as? [String: Any], let type = ro["type"] as? String else {
                    throw WardenError(.corrupt, "OSV record \(oneLine(id)): affected[\(ai)].ranges[\(ri)] has no type", file: file)
                }
                guard type == "ECOSYSTEM" else { continue }
                var events: [RangeEvent] = []
                for ev in try array(ro, "events", file: file, id: id, limit: Limits.maxEvents) {
                    guard let eo = ev as? [String: Any], eo.count == 1, let (k, v) = eo.first.map({ ($0.key, $0.value) }),
                          let s = v as? String, !s.isEmpty, s.utf8.count < 1024 else {
                        throw WardenError(.corrupt, "OSV record \(oneLine(id)): affected[\(ai)].ranges[\(ri)] has a malformed event", file: file)
                    }
                    switch k {
                    case "introduced": events.append(.introduced(s))
                    case "fixed": events.append(.fixed(s))
                    case "last_affected": events.append(.lastAffected(s))
                    case "limit": events.append(.limit(s))
                    default: throw WardenError(.corrupt, "OSV record \(oneLine(id)): unknown range event \"\(oneLine(k))\"", file: file)
                    }
                }
                if !events.isEmpty { entry.ranges.append(events) }
            }
            entry.versions = try array(ao, "versions", file: file, id: id, limit: Limits.maxVersions).map {
                guard let s = $0 as? String else { throw WardenError(.corrupt, "OSV record \(oneLine(id)): a version is not a string", file: file) }
                return s
            }
            if let s = severity(try array(ao, "severity", file: file, id: id, limit: 100)) {
                entry.severity = s.0
            } else if let u = urgencyWord(ao["ecosystem_specific"]) ?? urgencyWord(ao["database_specific"]) {
                entry.severity = u
                affectedUrgency = max(affectedUrgency ?? u, u)
            }
            rec.affected.append(entry)
        }
        if rec.cvssScore == nil, rec.severity == .unknown, let u = recordUrgency ?? affectedUrgency { rec.severity = u }
        return rec
    }
}
