import Foundation
import WardenCore

extension Matcher {
    /// Folds findings that name the same vulnerability of the same installed package through
    /// different feeds (OSV's `DSA-5678-1` with alias `CVE-2024-1234`, and the Debian Security
    /// Tracker's `CVE-2024-1234`) into one.
    ///
    /// Within one package, installed version and status, a finding is dropped when its identifiers
    /// (its id and aliases) are all among another finding's identifiers; with equal sets the
    /// stronger record stays (higher severity, then one with a CVSS score, then one with a fixed
    /// version, then the first by source and id). The kept finding takes the highest severity of
    /// those it absorbed, and their ids join its aliases. Findings that only overlap (a DSA for
    /// CVE-a and CVE-b, a tracker entry for CVE-b and CVE-c) are both kept. The order of the
    /// input is kept.
    public static func deduplicated(_ findings: [Finding]) -> [Finding] {
        guard findings.count > 1 else { return findings }
        var groups: [String: [Int]] = [:]
        for (i, f) in findings.enumerated() { groups["\(f.package)\u{1F}\(f.installedVersion)\u{1F}\(f.status.rawValue)", default: []].append(i) }
        var drop = Set<Int>()
        var out = findings
        func ids(_ f: Finding) -> Set<String> { Set([f.advisory] + f.aliases) }
        func stronger(_ a: Finding, _ b: Finding) -> Bool {
            if a.severity != b.severity { return a.severity > b.severity }
            if (a.cvssScore != nil) != (b.cvssScore != nil) { return a.cvssScore != nil }
            if (a.fixedVersion != nil) != (b.fixedVersion != nil) { return a.fixedVersion != nil }
            return (a.source, a.advisory) < (b.source, b.advisory)
        }
        for (_, members) in groups where members.count > 1 {
            let sets = members.map { ids(findings[$0]) }
            for (x, i) in members.enumerated() {
                for (y, j) in members.enumerated() where x != y && !drop.contains(j) && !drop.contains(i) {
                    guard sets[x].isSubset(of: sets[y]) else { continue }
                    // Equal sets: the weaker one goes.
                    if sets[x] == sets[y] && stronger(findings[i], findings[j]) { continue }
                    drop.insert(i)
                    if findings[i].severity > out[j].severity { out[j].severity = findings[i].severity }
                    for id in sets[x] where id != out[j].advisory && !out[j].aliases.contains(id) { out[j].aliases.append(id) }
                    break
                }
            }
        }
        return out.enumerated().filter { !drop.contains($0.offset) }.map(\.element)
    }
}
