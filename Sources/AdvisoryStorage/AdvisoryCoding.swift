import Crypto
import Foundation
import WardenCore
import Advisories

/// The stored forms every advisory-store backend shares: the same content hash, package list,
/// finding set and index building, so SQLite and PostgreSQL hold byte-identical values.
public enum AdvisoryCoding {
    /// One advisory rebuilt from its stored row and entries (the inverse of an import).
    public static func record(source: String, id: String, modified: Double?, published: Double?, withdrawn: Double?,
                              aliases: String, summary: String?, severity: Int, cvssScore: Double?, cvssVector: String?,
                              affected: [(ecosystem: String, package: String, status: String, severity: Int?, ranges: String, versions: String)]) -> AdvisoryRecord {
        AdvisoryRecord(id: id, source: source, modified: modified.map(Date.init(timeIntervalSince1970:)),
                       published: published.map(Date.init(timeIntervalSince1970:)), withdrawn: withdrawn.map(Date.init(timeIntervalSince1970:)),
                       aliases: aliases.isEmpty ? [] : aliases.split(separator: "\u{1F}").map(String.init), summary: summary,
                       severity: Severity(rawValue: severity) ?? .unknown, cvssScore: cvssScore, cvssVector: cvssVector,
                       affected: affected.map {
                           AffectedPackage(ecosystem: $0.ecosystem, package: $0.package, status: AffectedStatus(rawValue: $0.status) ?? .affected,
                                           ranges: RangeCoding.decode($0.ranges), versions: RangeCoding.decodeVersions($0.versions),
                                           severity: $0.severity.flatMap { Severity(rawValue: $0) })
                       })
    }

    public static func validate(_ r: AdvisoryRecord, file: String) throws {
        func check(_ s: String, _ what: String) throws {
            guard RangeCoding.isClean(s) else {
                throw WardenError(.corrupt, "advisory \(r.id.filter { !$0.isNewline }.prefix(80)): \(what) contains control characters", file: file)
            }
        }
        try check(r.id, "the id")
        for a in r.aliases { try check(a, "an alias") }
        for a in r.affected {
            try check(a.ecosystem, "an ecosystem"); try check(a.package, "a package name")
            for v in a.versions { try check(v, "a version") }
            for rg in a.ranges { for e in rg { try check(e.version, "a range version") } }
        }
    }

    /// SHA-256 of the record's canonical JSON (sorted keys): equal content, equal hash.
    public static func contentHash(_ r: AdvisoryRecord) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        enc.dateEncodingStrategy = .secondsSince1970
        let data = (try? enc.encode(r)) ?? Data()
        return SHA256.hash(data: data).hexString
    }

    public static func encodePackages(_ packages: [MatchPackage]) -> Data {
        CompactLines.encode(packages.map { p in
            [p.name, p.version, p.sourceName == p.name ? "" : p.sourceName, p.sourceVersion == p.version ? "" : p.sourceVersion]
        })
    }

    public static func decodePackages(_ data: Data) -> [MatchPackage] {
        var out: [MatchPackage] = []
        CompactLines.decode(data) { f in
            guard f.count == 4 else { return }
            out.append(MatchPackage(name: f[0], version: f[1], sourceName: f[2].isEmpty ? f[0] : f[2],
                                    sourceVersion: f[3].isEmpty ? f[1] : f[3]))
        }
        return out
    }

    /// One `advisory_affected` row, as the index loaders read it:
    /// (advisory pk, ecosystem, package, status, severity, ranges, versions).
    public typealias PendingEntry = (Int64, String, String, String, Int?, String, String)

    /// Adds one advisory's metadata to `index`; returns its meta index.
    public static func addMeta(source: String, id: String, aliases: String, severity: Int, cvssScore: Double?, summary: String?,
                        to index: AdvisoryIndex) -> Int {
        index.addMeta(AdvisoryIndex.Meta(
            id: id, source: source, aliases: aliases.isEmpty ? [] : aliases.split(separator: "\u{1F}").map(String.init),
            severity: Severity(rawValue: severity) ?? .unknown, cvssScore: cvssScore, summary: summary))
    }

    /// Adds the entries whose advisory was loaded (`metaOf`) to `index`.
    public static func addEntries(_ pending: [PendingEntry], metaOf: [Int64: Int], to index: AdvisoryIndex) {
        for p in pending {
            guard let meta = metaOf[p.0] else { continue }
            index.addEntry(meta: meta, ecosystem: p.1, package: p.2, status: AffectedStatus(rawValue: p.3) ?? .affected,
                           severity: p.4.flatMap { Severity(rawValue: $0) }, rangesText: p.5, versionsText: p.6)
        }
    }

    /// Lower-case hex of `bytes`.
    public static func hex<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0x0F)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// A digest of a finding set in the matcher's (deterministic) order: equal sets, equal hashes.
    public static func findingsHash(_ findings: [Finding]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(findings.count * 96)
        for f in findings {
            appendHashed(package: f.package, version: f.installedVersion, sourcePackage: f.sourcePackage, matchedName: f.matchedName,
                         ecosystem: f.ecosystem, source: f.source, advisory: f.advisory, severity: f.severity, cvss: f.cvssScore,
                         fixed: f.fixedVersion, status: f.status, into: &bytes)
        }
        return hex(SHA256.hash(data: bytes))
    }

    /// One finding's share of the findings hash: every field the stored finding reports (the
    /// eleven of ``encodeFindings(_:)``), so a change in any of them — a new CVSS score, a
    /// status — is a change of the assessment. Both hash paths go through here.
    @inline(__always)
    static func appendHashed(package: String, version: String, sourcePackage: String, matchedName: String, ecosystem: String,
                             source: String, advisory: String, severity: Severity, cvss: Double?, fixed: String?,
                             status: FindingStatus, into bytes: inout [UInt8]) {
        bytes += package.utf8; bytes.append(0x1F)
        bytes += version.utf8; bytes.append(0x1F)
        bytes += sourcePackage.utf8; bytes.append(0x1F)
        bytes += matchedName.utf8; bytes.append(0x1F)
        bytes += ecosystem.utf8; bytes.append(0x1F)
        bytes += source.utf8; bytes.append(0x1F)
        bytes += advisory.utf8; bytes.append(0x1F)
        bytes.append(UInt8(truncatingIfNeeded: severity.rawValue)); bytes.append(0x1F)
        if let cvss { bytes += String(cvss).utf8 }
        bytes.append(0x1F)
        bytes += (fixed ?? "").utf8; bytes.append(0x1F)
        bytes += status.rawValue.utf8; bytes.append(0x1E)
    }

    /// The stored form of a finding set: ``CompactLines``, one line of 11 fields per finding.
    public static func encodeFindings(_ findings: [Finding]) -> Data {
        var out: [UInt8] = []
        out.reserveCapacity(findings.count * 112)
        let severities = (0...5).map { Array(String($0).utf8) }
        var cvssText: [Double: [UInt8]] = [:]
        for f in findings {
            CompactLines.escape(f.package, into: &out); out.append(0x09)
            CompactLines.escape(f.installedVersion, into: &out); out.append(0x09)
            CompactLines.escape(f.sourcePackage, into: &out); out.append(0x09)
            CompactLines.escape(f.matchedName, into: &out); out.append(0x09)
            CompactLines.escape(f.ecosystem, into: &out); out.append(0x09)
            CompactLines.escape(f.source, into: &out); out.append(0x09)
            CompactLines.escape(f.advisory, into: &out); out.append(0x09)
            let sev = f.severity.rawValue
            if sev >= 0 && sev < severities.count { out += severities[sev] } else { out += String(sev).utf8 }
            out.append(0x09)
            if let c = f.cvssScore {
                if let t = cvssText[c] { out += t } else { let t = Array(String(c).utf8); cvssText[c] = t; out += t }
            }
            out.append(0x09)
            if let v = f.fixedVersion { CompactLines.escape(v, into: &out) }
            out.append(0x09)
            CompactLines.escape(f.status.rawValue, into: &out)
            out.append(0x0A)
        }
        return Data(out)
    }

    /// ``encodeFindings(_:)`` as first written, through rows of strings: the reference the tests compare with.
    public static func encodeFindingsPlain(_ findings: [Finding]) -> Data {
        CompactLines.encode(findings.map { f in
            [f.package, f.installedVersion, f.sourcePackage, f.matchedName, f.ecosystem, f.source, f.advisory,
             String(f.severity.rawValue), f.cvssScore.map { String($0) } ?? "", f.fixedVersion ?? "", f.status.rawValue]
        })
    }

    /// Decodes stored findings; aliases stay empty and summaries nil.
    public static func decodeFindingsWithoutDetails(_ data: Data) -> [Finding] {
        var out: [Finding] = []
        CompactLines.decode(data) { f in
            guard f.count == 11 else { return }
            out.append(Finding(package: f[0], installedVersion: f[1], sourcePackage: f[2], matchedName: f[3], ecosystem: f[4],
                               advisory: f[6], source: f[5], aliases: [], severity: Severity(rawValue: Int(f[7]) ?? 0) ?? .unknown,
                               cvssScore: Double(f[8]), fixedVersion: f[9].isEmpty ? nil : f[9],
                               status: FindingStatus(rawValue: f[10]) ?? .vulnerable, summary: nil))
        }
        return out
    }

}

/// ``AdvisoryCoding/findingsHash(_:)`` of compact findings, without building ``Finding`` values:
/// the same bytes are hashed. Keeps its buffer between inventories.
struct FindingsHasher {
    private var bytes: [UInt8] = []

    mutating func hash(_ compact: [Matcher.CompactFinding], packages: [MatchPackage], metas: [AdvisoryIndex.Meta],
                       ecosystem: GuestEcosystem) -> String {
        bytes.removeAll(keepingCapacity: true)
        metas.withUnsafeBufferPointer { metas in
            packages.withUnsafeBufferPointer { packages in
                for c in compact {
                    let p = packages[c.package], m = metas[c.advisory]
                    AdvisoryCoding.appendHashed(package: p.name, version: p.version, sourcePackage: p.sourceName,
                                                matchedName: c.bySource ? p.sourceName : p.name, ecosystem: ecosystem.names[Int(c.ecosystem)],
                                                source: m.source, advisory: m.id, severity: c.severity, cvss: m.cvssScore,
                                                fixed: c.fixedVersion, status: c.status, into: &bytes)
                }
            }
        }
        return AdvisoryCoding.hex(SHA256.hash(data: bytes))
    }
}
