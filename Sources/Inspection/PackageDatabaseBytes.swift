import WardenCore

/// Parses a package database given as bytes (already read out of a guest, or an
/// exported copy): the same parsers `Inspection.packages` uses. Also the fuzzing entry.
public enum PackageDatabaseBytes {
    public enum Kind: String, CaseIterable, Sendable {
        case dpkgStatus, apkInstalled, rpmSQLite, rpmBerkeleyDB
    }

    /// Never throws: an unreadable database is an inventory with `unknownReason`.
    public static func parse(_ bytes: [UInt8], as kind: Kind, source: String = "(bytes)") -> PackageInventory {
        var w = CappedWarnings()
        var inv: PackageInventory
        switch kind {
        case .dpkgStatus:
            inv = PackageInventory(manager: .dpkg, source: source)
            DpkgStatus.parse(bytes, into: &inv, warnings: &w, statusOptional: false)
        case .apkInstalled:
            inv = PackageInventory(manager: .apk, source: source)
            ApkInstalled.parse(bytes, into: &inv, warnings: &w)
        case .rpmSQLite, .rpmBerkeleyDB:
            inv = PackageInventory(manager: .rpm, source: source)
            do {
                if kind == .rpmSQLite {
                    try RPMDatabase.readSQLite(bytes, name: source, into: &inv, warnings: &w)
                } else {
                    try RPMDatabase.readBerkeley(bytes, into: &inv, warnings: &w)
                }
            } catch let e as WardenError {
                inv.unknownReason = e.message
            } catch {
                inv.unknownReason = "\(error)"
            }
        }
        inv.warnings += w.all
        return inv
    }
}
