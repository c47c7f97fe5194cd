import WardenCore
import GuestFS

/// Reading apk's installed database, `/lib/apk/db/installed`.
///
/// The file is a sequence of blocks separated by blank lines; each line is a one-letter
/// key, `:`, and a value. Keys used here: `P` name, `V` version, `A` architecture,
/// `o` origin (the source package; absent means the package is its own origin).
/// Other keys (`C` checksum, `T` description, `F`/`R` directories and files, `D`
/// dependencies, ...) are ignored. apk has no per-package status: every block is an
/// installed package, reported with status `installed`.
///
/// Versions look like `1.36.1-r2`: ``InstalledPackage/upstreamVersion`` is the part
/// before the last `-r<digits>` and ``InstalledPackage/revision`` is `r<digits>`. apk
/// has no epochs. The source version is the package version (apk subpackages always
/// share their origin's version).
extension Inspection {
    static let apkInstalledPath = "/lib/apk/db/installed"

    static func apkInstalled(_ g: GuestFiles) throws -> PackageInventory? {
        let bytes: [UInt8]
        do {
            guard let b = try g.read(apkInstalledPath) else { return nil }
            bytes = b
        } catch let e as WardenError where e.code != .internal {
            return PackageInventory(manager: .apk, source: apkInstalledPath, unknownReason: "cannot read \(apkInstalledPath): \(e.message)")
        }
        var inv = PackageInventory(manager: .apk, source: apkInstalledPath)
        var w = CappedWarnings()
        ApkInstalled.parse(bytes, into: &inv, warnings: &w)
        inv.warnings = w.all
        inv.packages.sort { ($0.name, $0.architecture, $0.version) < ($1.name, $1.architecture, $1.version) }
        return inv
    }
}

public enum ApkInstalled {
    /// Splits an apk version into upstream and `r<n>` revision (nil when there is none).
    public static func splitVersion(_ v: String) -> (upstream: String, revision: String?) {
        if let dash = v.lastIndex(of: "-") {
            let r = v[v.index(after: dash)...]
            if r.count >= 2, r.first == "r", r.dropFirst().allSatisfy({ $0.isASCII && $0.isNumber }), dash > v.startIndex {
                return (String(v[..<dash]), String(r))
            }
        }
        return (v, nil)
    }

    static func parse(_ bytes: [UInt8], into inv: inout PackageInventory, warnings w: inout CappedWarnings) {
        var parser = StanzaParser()
        parser.continuations = false
        parser.parse(bytes, warnings: &w) { fields, index, w in
            guard inv.packages.count < PackageLimits.maxPackages else {
                w.add("more than \(PackageLimits.maxPackages) packages; the rest ignored")
                return false
            }
            // Keys are case-sensitive single letters (`P` name vs `p` provides).
            func key(_ k: String) -> String? { fields.first { $0.name == k }?.value }
            guard let name = key("P"), !name.isEmpty else {
                w.add("block \(index + 1) has no P (name) line; skipped")
                return true
            }
            let version = key("V") ?? ""
            if version.isEmpty { w.add("package \(name) has no V (version) line") }
            let (upstream, revision) = splitVersion(version)
            let origin = key("o").flatMap { $0.isEmpty ? nil : $0 } ?? name
            inv.packages.append(InstalledPackage(
                name: name, version: version, epoch: nil,
                upstreamVersion: version.isEmpty ? nil : upstream, revision: revision,
                architecture: key("A") ?? "", sourceName: origin, sourceVersion: version,
                manager: .apk, status: "installed"))
            return true
        }
    }
}
