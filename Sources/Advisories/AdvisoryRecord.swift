import Foundation
import WardenCore

/// One security advisory, normalised from any feed (OSV, Debian Security Tracker, Alpine secdb).
///
/// Records are identified by (``source``, ``id``): OSV ids are global, so every OSV record has
/// source `osv`; the Debian tracker's records are per CVE (`debian-tracker`); Alpine's are per
/// CVE and branch/repository (`alpine-secdb:v3.18/main`).
public struct AdvisoryRecord: Codable, Sendable, Hashable {
    public var id: String
    /// The feed the record came from (`osv`, `debian-tracker`, `alpine-secdb:v3.18/main`).
    public var source: String
    public var modified: Date?
    public var published: Date?
    /// A withdrawn advisory never produces findings.
    public var withdrawn: Date?
    /// Other ids for the same issue (CVE ids, GHSA ids), without ``id`` itself.
    public var aliases: [String]
    public var summary: String?
    /// From the CVSS v3 base score where a vector is given, else the distro's urgency.
    public var severity: Severity
    public var cvssScore: Double?
    public var cvssVector: String?
    public var affected: [AffectedPackage]

    public init(id: String, source: String, modified: Date? = nil, published: Date? = nil, withdrawn: Date? = nil,
                aliases: [String] = [], summary: String? = nil, severity: Severity = .unknown,
                cvssScore: Double? = nil, cvssVector: String? = nil, affected: [AffectedPackage] = []) {
        self.id = id; self.source = source; self.modified = modified; self.published = published
        self.withdrawn = withdrawn; self.aliases = aliases; self.summary = summary; self.severity = severity
        self.cvssScore = cvssScore; self.cvssVector = cvssVector; self.affected = affected
    }
}

/// Whether a package is affected by an advisory in one ecosystem.
public enum AffectedStatus: String, Codable, Sendable, Hashable {
    /// Versions in ``AffectedPackage/ranges`` or ``AffectedPackage/versions`` are affected.
    case affected
    /// The distro states that this package in this release is not affected (Debian fixed
    /// version `0`, Alpine secfix `0`).
    case notAffected = "not-affected"
}

/// One ECOSYSTEM range event, as OSV writes them.
public enum RangeEvent: Codable, Sendable, Hashable {
    /// Affected from this version on (`0` = from the beginning).
    case introduced(String)
    /// Fixed in this version (not affected from it on).
    case fixed(String)
    /// The last affected version (the next one is not affected).
    case lastAffected(String)
    /// An upper bound of the range (not affected from it on; not a fix).
    case limit(String)

    public var version: String {
        switch self { case .introduced(let v), .fixed(let v), .lastAffected(let v), .limit(let v): return v }
    }
}

/// The advisory's statement about one package in one ecosystem.
public struct AffectedPackage: Codable, Sendable, Hashable {
    /// The OSV ecosystem (`Debian:12`, `Alpine:v3.18`, `Rocky Linux:9`…).
    public var ecosystem: String
    /// The package name as the feed keys it (a source package for Debian and Ubuntu).
    public var package: String
    public var status: AffectedStatus
    /// ECOSYSTEM ranges, each a list of events in the order given.
    public var ranges: [[RangeEvent]]
    /// Explicitly listed affected versions.
    public var versions: [String]
    /// A per-package severity (Debian urgency per release), overriding the record's.
    public var severity: Severity?

    public init(ecosystem: String, package: String, status: AffectedStatus = .affected,
                ranges: [[RangeEvent]] = [], versions: [String] = [], severity: Severity? = nil) {
        self.ecosystem = ecosystem; self.package = package; self.status = status
        self.ranges = ranges; self.versions = versions; self.severity = severity
    }

    /// The highest `fixed` version of any range, or nil ("no fix yet").
    public func fixedVersion(scheme: VersionScheme?) -> String? {
        let fixes = ranges.flatMap { $0 }.compactMap { e -> String? in if case .fixed(let v) = e { return v } else { return nil } }
        guard var best = fixes.first else { return nil }
        for f in fixes.dropFirst() {
            if let scheme, (try? scheme.compare(f, best)) == .greater { best = f }
        }
        return best
    }
}

/// What the matcher concluded about one installed package and one advisory.
public enum FindingStatus: String, Codable, Sendable, Hashable, Comparable {
    case vulnerable
    case fixed
    case notAffected = "not-affected"

    public static func < (a: FindingStatus, b: FindingStatus) -> Bool { a.order < b.order }
    private var order: Int { switch self { case .vulnerable: 0; case .fixed: 1; case .notAffected: 2 } }
}

/// One finding: an installed package and an advisory that concerns it.
public struct Finding: Codable, Sendable, Hashable {
    /// The installed (binary) package.
    public var package: String
    public var installedVersion: String
    /// The source package (Debian matches by it).
    public var sourcePackage: String
    /// The name the advisory keys the package by (source for Debian, binary or source for rpm/apk).
    public var matchedName: String
    public var ecosystem: String
    public var advisory: String
    public var source: String
    public var aliases: [String]
    public var severity: Severity
    public var cvssScore: Double?
    /// The fixed version, or nil when there is no fix yet.
    public var fixedVersion: String?
    public var status: FindingStatus
    public var summary: String?

    public init(package: String, installedVersion: String, sourcePackage: String, matchedName: String,
                ecosystem: String, advisory: String, source: String, aliases: [String], severity: Severity,
                cvssScore: Double?, fixedVersion: String?, status: FindingStatus, summary: String?) {
        self.package = package; self.installedVersion = installedVersion; self.sourcePackage = sourcePackage
        self.matchedName = matchedName; self.ecosystem = ecosystem; self.advisory = advisory; self.source = source
        self.aliases = aliases; self.severity = severity; self.cvssScore = cvssScore
        self.fixedVersion = fixedVersion; self.status = status; self.summary = summary
    }

    /// Identity of a finding across assessments: the package, its version, the advisory.
    public var key: String { "\(package)\u{1F}\(installedVersion)\u{1F}\(source)\u{1F}\(advisory)" }
}

extension Finding {
    /// Sorted for output: severity (worst first), then package, then advisory id.
    public static func displayOrder(_ a: Finding, _ b: Finding) -> Bool {
        if a.severity != b.severity { return a.severity > b.severity }
        if a.package != b.package { return a.package < b.package }
        if a.advisory != b.advisory { return a.advisory < b.advisory }
        if a.source != b.source { return a.source < b.source }
        // Two installed versions of one package (kernels, multi-arch): by version text, so
        // the order never depends on the order the versions were found in.
        return a.installedVersion < b.installedVersion
    }
}
