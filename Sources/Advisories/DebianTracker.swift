import Foundation
import WardenCore

/// The Debian Security Tracker's JSON export (https://security-tracker.debian.org/tracker/data/json):
///
/// ```
/// { "<source package>": { "<CVE or TEMP id>": { "description": …, "scope": …,
///     "releases": { "<codename>": { "status": "resolved|open|undetermined",
///                                   "fixed_version": "1.2-3" | "0", "urgency": "low|medium|high|unimportant|not yet assigned|end-of-life",
///                                   "repositories": { … } } } } } }
/// ```
///
/// One ``AdvisoryRecord`` per issue id (source `debian-tracker`), with one affected entry per
/// package and release: `resolved` with `fixed_version` `0` is not-affected; `resolved`
/// otherwise is fixed in that version; `open` and `undetermined` have no fix yet. The release's
/// urgency becomes the entry's severity. Releases with unknown codenames are skipped.
public enum DebianTracker {
    public static let source = "debian-tracker"
    public static let maxFileBytes = 1 << 30
    public static let maxPackages = 200_000
    public static let maxIssuesPerPackage = 100_000

    /// Whether a decoded JSON object has the tracker's shape (package → id → {releases}).
    static func looksLikeTracker(_ o: [String: Any]) -> Bool {
        guard let (_, first) = o.first, let issues = first as? [String: Any] else { return false }
        guard let (_, issue) = issues.first else { return true }
        return (issue as? [String: Any])?["releases"] != nil
    }

    public static func records(from data: Data, file: String) throws -> [AdvisoryRecord] {
        if data.count > maxFileBytes {
            throw WardenError(.limitExceeded, "tracker file is \(data.count) bytes; the limit is \(maxFileBytes)", file: file)
        }
        guard let top = try JSONInput.parse(data, file: file) as? [String: Any] else {
            throw WardenError(.corrupt, "Debian tracker JSON is not an object of packages", file: file)
        }
        return try records(top, file: file)
    }

    static func records(_ top: [String: Any], file: String) throws -> [AdvisoryRecord] {
        if top.count > maxPackages { throw WardenError(.limitExceeded, "\(top.count) packages; the limit is \(maxPackages)", file: file) }
        var byID: [String: AdvisoryRecord] = [:]
        for (pkg, v) in top {
            guard let issues = v as? [String: Any] else {
                throw WardenError(.corrupt, "package \(oneLine(pkg)) is not an object of issues", file: file)
            }
            if pkg.isEmpty || pkg.utf8.count > 1024 { throw WardenError(.corrupt, "a package name is empty or too long", file: file) }
            if issues.count > maxIssuesPerPackage {
                throw WardenError(.limitExceeded, "package \(oneLine(pkg)) has \(issues.count) issues; the limit is \(maxIssuesPerPackage)", file: file)
            }
            for (id, iv) in issues {
                guard let issue = iv as? [String: Any] else {
                    throw WardenError(.corrupt, "\(oneLine(pkg)) \(oneLine(id)) is not an object", file: file)
                }
                guard !id.isEmpty, id.utf8.count < 256 else { throw WardenError(.corrupt, "\(oneLine(pkg)): an issue id is empty or too long", file: file) }
                guard let releases = issue["releases"] as? [String: Any] else {
                    if issue["releases"] == nil { continue }
                    throw WardenError(.corrupt, "\(oneLine(pkg)) \(oneLine(id)): \"releases\" is not an object", file: file)
                }
                var rec = byID[id] ?? AdvisoryRecord(id: id, source: source)
                if rec.summary == nil, let d = issue["description"] as? String, !d.isEmpty { rec.summary = String(d.prefix(200)) }
                for (codename, rv) in releases.sorted(by: { $0.key < $1.key }) {
                    guard let r = rv as? [String: Any] else {
                        throw WardenError(.corrupt, "\(oneLine(pkg)) \(oneLine(id)) \(oneLine(codename)) is not an object", file: file)
                    }
                    guard let eco = DebianRelease.ecosystem(codename: codename) else { continue }
                    guard let status = r["status"] as? String else {
                        throw WardenError(.corrupt, "\(oneLine(pkg)) \(oneLine(id)) \(oneLine(codename)) has no status", file: file)
                    }
                    let urgency = (r["urgency"] as? String).flatMap { Severity(word: $0.trimmingCharacters(in: CharacterSet(charactersIn: "*"))) } ?? .unknown
                    var entry = AffectedPackage(ecosystem: eco, package: pkg, severity: urgency)
                    let fixed = r["fixed_version"] as? String
                    switch status {
                    case "resolved":
                        guard let fixed, !fixed.isEmpty, fixed.utf8.count < 1024 else {
                            throw WardenError(.corrupt, "\(oneLine(pkg)) \(oneLine(id)) \(oneLine(codename)) is resolved without a fixed_version", file: file)
                        }
                        if fixed == "0" { entry.status = .notAffected } else { entry.ranges = [[.introduced("0"), .fixed(fixed)]] }
                    case "open", "undetermined":
                        entry.ranges = [[.introduced("0")]]
                    default:
                        throw WardenError(.corrupt, "\(oneLine(pkg)) \(oneLine(id)) \(oneLine(codename)): unknown status \"\(oneLine(status))\"", file: file)
                    }
                    rec.affected.append(entry)
                    if urgency > rec.severity { rec.severity = urgency }
                }
                byID[id] = rec
            }
        }
        return byID.values.map { r in
            var r = r
            r.affected.sort { ($0.ecosystem, $0.package) < ($1.ecosystem, $1.package) }
            return r
        }.sorted { $0.id < $1.id }
    }
}

/// Alpine's secdb (https://secdb.alpinelinux.org/v3.18/main.json): per branch and repository,
///
/// ```
/// { "distroversion": "v3.18", "reponame": "main", "urlprefix": …, "apkurl": …, "archs": […],
///   "packages": [ { "pkg": { "name": "openssl", "secfixes": { "3.1.4-r1": ["CVE-2023-5678"], "0": ["CVE-…"] } } } ] }
/// ```
///
/// One record per CVE (source `alpine-secdb:<distroversion>/<reponame>`), ecosystem
/// `Alpine:<distroversion>`; a secfix version is the fixed version, and `0` means the package
/// was never affected.
public enum AlpineSecDB {
    public static let maxFileBytes = 256 << 20
    public static let maxPackages = 100_000

    static func looksLikeSecDB(_ o: [String: Any]) -> Bool {
        o["packages"] is [Any] && o["distroversion"] != nil
    }

    public static func records(from data: Data, file: String) throws -> [AdvisoryRecord] {
        if data.count > maxFileBytes {
            throw WardenError(.limitExceeded, "secdb file is \(data.count) bytes; the limit is \(maxFileBytes)", file: file)
        }
        guard let top = try JSONInput.parse(data, file: file) as? [String: Any] else {
            throw WardenError(.corrupt, "Alpine secdb JSON is not an object", file: file)
        }
        return try records(top, file: file)
    }

    static func records(_ top: [String: Any], file: String) throws -> [AdvisoryRecord] {
        guard let branch = top["distroversion"] as? String,
              branch.range(of: #"^v[0-9]+\.[0-9]+$|^edge$"#, options: .regularExpression) != nil else {
            throw WardenError(.corrupt, "secdb \"distroversion\" must look like v3.18", file: file)
        }
        let repo = (top["reponame"] as? String) ?? "main"
        guard repo.range(of: #"^[a-z0-9_-]{1,32}$"#, options: .regularExpression) != nil else {
            throw WardenError(.corrupt, "secdb \"reponame\" is malformed", file: file)
        }
        guard let packages = top["packages"] as? [Any] else { throw WardenError(.corrupt, "secdb has no \"packages\" list", file: file) }
        if packages.count > maxPackages { throw WardenError(.limitExceeded, "\(packages.count) packages; the limit is \(maxPackages)", file: file) }
        let source = "alpine-secdb:\(branch)/\(repo)"
        let eco = "Alpine:\(branch)"
        var byID: [String: AdvisoryRecord] = [:]
        for (i, p) in packages.enumerated() {
            guard let po = (p as? [String: Any])?["pkg"] as? [String: Any], let name = po["name"] as? String,
                  !name.isEmpty, name.utf8.count < 1024 else {
                throw WardenError(.corrupt, "secdb packages[\(i)] has no pkg.name", file: file)
            }
            guard let secfixes = po["secfixes"] as? [String: Any] else {
                if po["secfixes"] == nil { continue }
                throw WardenError(.corrupt, "secdb package \(oneLine(name)): \"secfixes\" is not an object", file: file)
            }
            if secfixes.count > 100_000 { throw WardenError(.limitExceeded, "secdb package \(oneLine(name)) has too many secfixes", file: file) }
            for (version, ids) in secfixes.sorted(by: { $0.key < $1.key }) {
                guard let list = ids as? [Any], !version.isEmpty, version.utf8.count < 256 else {
                    throw WardenError(.corrupt, "secdb package \(oneLine(name)): secfix \(oneLine(version)) is not a list", file: file)
                }
                for item in list {
                    guard let s = item as? String else {
                        throw WardenError(.corrupt, "secdb package \(oneLine(name)): secfix \(oneLine(version)) has a non-string id", file: file)
                    }
                    // An entry may name several ids ("CVE-2019-1 CVE-2019-2"); each is a record.
                    for tok in s.split(whereSeparator: { $0 == " " || $0 == "\t" }) where tok.utf8.count < 256 {
                        let id = String(tok)
                        var rec = byID[id] ?? AdvisoryRecord(id: id, source: source)
                        var entry = AffectedPackage(ecosystem: eco, package: name)
                        if version == "0" { entry.status = .notAffected } else { entry.ranges = [[.introduced("0"), .fixed(version)]] }
                        if let k = rec.affected.firstIndex(where: { $0.package == name }) {
                            // The same id fixed twice in one package: keep both ranges.
                            if entry.status == .notAffected { rec.affected[k] = entry } else if rec.affected[k].status == .affected {
                                rec.affected[k].ranges += entry.ranges
                            }
                        } else {
                            rec.affected.append(entry)
                        }
                        byID[id] = rec
                    }
                }
            }
        }
        return byID.values.sorted { $0.id < $1.id }
    }
}
