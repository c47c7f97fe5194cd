import WardenCore
import GuestFS

/// Reading rpm package databases.
///
/// - `rpmdb.sqlite` (rpm ≥ 4.16, Fedora ≥ 33, RHEL ≥ 9): the file is loaded into memory
///   and opened read-only with ``SQLiteMemory``; every row of
///   `Packages(hnum INTEGER PRIMARY KEY, blob BLOB)` is an RPM header blob. Only the
///   main database file is read: changes still sitting in an `rpmdb.sqlite-wal`
///   write-ahead log (a guest shut down uncleanly mid-transaction) are not seen.
/// - BerkeleyDB `Packages` (rpm < 4.16, RHEL ≤ 8, SUSE before 2021): a hash database
///   parsed by ``BerkeleyHash``; each record with a non-zero 4-byte key is a header blob
///   (key 0 holds rpm's next-instance counter and is skipped).
/// - ndb `Packages.db` (SUSE): not read; reported with an unknown reason.
///
/// Each header becomes an ``InstalledPackage`` (see ``RPMHeader/installedPackage``), with
/// status `installed` (rpm records only installed packages). `gpg-pubkey` entries, the
/// pseudo-packages holding imported signing keys that `rpm -qa` lists, are *not*
/// reported as packages: they are not software, have no architecture or source, and
/// no advisory applies to them. Headers that fail to parse are skipped with a warning.
extension Inspection {
    /// Largest rpm database file read (big RHEL/SLES databases exceed the generic limit).
    static let rpmMaxDatabaseBytes = 256 << 20

    static func rpmDatabase(_ g: GuestFiles, path: String) throws -> PackageInventory {
        if path.hasSuffix(".db") {
            return PackageInventory(manager: .rpm, source: path,
                                    unknownReason: "rpm ndb database (Packages.db) reading not implemented yet")
        }
        var big = g
        big.maxFileSize = max(g.maxFileSize, rpmMaxDatabaseBytes)
        let bytes: [UInt8]
        do {
            guard let b = try big.read(path) else {
                return PackageInventory(manager: .rpm, source: path, unknownReason: "\(path) disappeared while reading")
            }
            bytes = b
        } catch let e as WardenError where e.code != .internal {
            return PackageInventory(manager: .rpm, source: path, unknownReason: "cannot read \(path): \(e.message)")
        }
        var inv = PackageInventory(manager: .rpm, source: path)
        var w = CappedWarnings()
        do {
            if path.hasSuffix(".sqlite") {
                try RPMDatabase.readSQLite(bytes, name: path, into: &inv, warnings: &w)
            } else {
                try RPMDatabase.readBerkeley(bytes, into: &inv, warnings: &w)
            }
        } catch let e as WardenError where e.code != .internal {
            let format = path.hasSuffix(".sqlite") ? "sqlite" : "BerkeleyDB"
            return PackageInventory(manager: .rpm, source: path,
                                    unknownReason: "cannot read rpm \(format) database: \(e.message)", warnings: w.all)
        }
        inv.warnings = w.all
        inv.packages.sort { ($0.name, $0.architecture, $0.version) < ($1.name, $1.architecture, $1.version) }
        return inv
    }
}

/// The database-format independent part: header blobs in, packages out.
public enum RPMDatabase {
    /// Name of the pseudo-packages holding imported GPG keys; not reported.
    public static let gpgPubkeyName = "gpg-pubkey"

    /// Adds the package in header blob `blob` (record `id` for warnings) to `inv`.
    /// Returns false once ``PackageLimits/maxPackages`` is reached.
    static func add(_ blob: [UInt8], id: String, into inv: inout PackageInventory, warnings w: inout CappedWarnings) -> Bool {
        guard inv.packages.count < PackageLimits.maxPackages else {
            w.add("more than \(PackageLimits.maxPackages) packages; the rest ignored")
            return false
        }
        do {
            let h = try RPMHeader.parse(blob)
            if h.name == gpgPubkeyName { return true }
            if h.arch == nil { w.add("package \(h.name) (\(id)) has no ARCH") }
            inv.packages.append(h.installedPackage)
        } catch let e as WardenError {
            w.add("header \(id): \(e.message); skipped")
        } catch {
            w.add("header \(id): \(error); skipped")
        }
        return true
    }

    /// Reads `rpmdb.sqlite` bytes. Throws if the file is not a readable rpm sqlite database.
    static func readSQLite(_ bytes: [UInt8], name: String, into inv: inout PackageInventory, warnings w: inout CappedWarnings) throws {
        // rpm keeps rpmdb.sqlite in WAL mode (header bytes 18/19 = 2), which an in-memory
        // deserialized database cannot open; mark the in-memory copy as a rollback-journal
        // database (1/1), which reads the same main file content.
        var bytes = bytes
        if bytes.count >= 100, bytes[18] == 2, bytes[19] == 2 { bytes[18] = 1; bytes[19] = 1 }
        let db = try SQLiteMemory(bytes: bytes, name: name)
        var stop = false
        try db.query("SELECT hnum, blob FROM Packages") { row in
            guard !stop else { return }
            if !add(row.blob(1), id: "#\(row.int(0))", into: &inv, warnings: &w) { stop = true }
        }
    }

    /// Reads BerkeleyDB hash `Packages` bytes. Throws if it is not a BerkeleyDB hash database.
    static func readBerkeley(_ bytes: [UInt8], into inv: inout PackageInventory, warnings w: inout CappedWarnings) throws {
        var db = try BerkeleyHash(bytes)
        for s in db.warnings { w.add(s) }
        var local = CappedWarnings()
        // One more record than packages allowed, plus key 0.
        let records = db.records(maxRecords: PackageLimits.maxPackages + 2) { local.add($0) }
        for s in local.all { w.add(s) }
        for r in records {
            guard let n = db.keyNumber(r.key) else {
                w.add("BerkeleyDB record with a \(r.key.count)-byte key (expected 4); skipped")
                continue
            }
            if n == 0 { continue }
            if !add(r.value, id: "#\(n)", into: &inv, warnings: &w) { break }
        }
    }
}
