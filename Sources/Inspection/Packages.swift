import WardenCore
import GuestFS

/// The package manager whose database a package was read from.
public enum PackageManager: String, Codable, Sendable, Hashable {
    case dpkg, rpm, apk
}

/// One package recorded in a guest's package database.
///
/// Security advisories are keyed on *source* packages, so ``sourceName`` and
/// ``sourceVersion`` are always filled: with the database's explicit source
/// fields where present, else with the binary package's own name and version
/// (which is what the package manager itself reports in that case).
public struct InstalledPackage: Codable, Sendable, Hashable {
    /// Binary package name.
    public var name: String
    /// The full version exactly as the manager writes it, epoch included (`1:2.3-4`).
    public var version: String
    /// The epoch, when the version has one (`1` in `1:2.3-4`).
    public var epoch: Int?
    /// The version without epoch and revision (`2.3` in `1:2.3-4`); nil if the version is malformed.
    public var upstreamVersion: String?
    /// The packaging revision (`4` in `1:2.3-4`, `r2` in apk's `1.0-r2`); nil when absent.
    public var revision: String?
    /// Architecture as written (`amd64`, `all`, `x86_64`, ...); empty when the database omits it.
    public var architecture: String
    /// The source package the binary was built from.
    public var sourceName: String
    /// The version of that source package (may differ from ``version`` for binNMUs etc.).
    public var sourceVersion: String
    public var manager: PackageManager
    /// The manager's installation status as written (dpkg: `install ok installed`;
    /// apk has no per-package status and reports `installed`).
    public var status: String

    public init(name: String, version: String, epoch: Int? = nil, upstreamVersion: String? = nil,
                revision: String? = nil, architecture: String, sourceName: String, sourceVersion: String,
                manager: PackageManager, status: String) {
        self.name = name
        self.version = version
        self.epoch = epoch
        self.upstreamVersion = upstreamVersion
        self.revision = revision
        self.architecture = architecture
        self.sourceName = sourceName
        self.sourceVersion = sourceVersion
        self.manager = manager
        self.status = status
    }
}

/// The packages read from one package database in the guest.
///
/// When the database exists but cannot be read (unsupported format, too large,
/// unreadable), ``unknownReason`` says why and ``packages`` is empty: an empty
/// list with a nil reason really means "database present, no packages".
public struct PackageInventory: Codable, Sendable, Hashable {
    public var manager: PackageManager
    /// The guest path of the database (a file, or a directory such as `/var/lib/dpkg/status.d`).
    public var source: String
    /// Fully installed packages, sorted by name then architecture then version.
    public var packages: [InstalledPackage]
    /// Packages the database knows in some other, partial state (dpkg: `half-installed`,
    /// `unpacked`, `half-configured`, `triggers-awaited`, `triggers-pending`, `config-files`,
    /// or an error flag other than `ok`). Their files may be partly present. Packages in
    /// state `not-installed` are dropped entirely.
    public var incomplete: [InstalledPackage]
    /// Why the database could not be read, or nil if it was.
    public var unknownReason: String?
    /// Non-fatal problems: truncated fields, malformed stanzas skipped, limits hit.
    public var warnings: [String]

    public init(manager: PackageManager, source: String, packages: [InstalledPackage] = [],
                incomplete: [InstalledPackage] = [], unknownReason: String? = nil, warnings: [String] = []) {
        self.manager = manager
        self.source = source
        self.packages = packages
        self.incomplete = incomplete
        self.unknownReason = unknownReason
        self.warnings = warnings
    }
}

/// Limits applied to every package database (guest files are hostile).
public enum PackageLimits {
    /// Most packages kept from one database.
    public static let maxPackages = 200_000
    /// Longest field value kept (longer values are cut and a warning is recorded).
    public static let maxFieldBytes = 64 << 10
    /// Largest stanza (block) accepted; larger ones are skipped with a warning.
    public static let maxStanzaBytes = 4 << 20
    /// Most fields kept per stanza.
    public static let maxFieldsPerStanza = 4096
    /// Most files read from a `status.d`-style directory.
    public static let maxStatusDirFiles = 200_000
    /// Most warnings kept per inventory.
    public static let maxWarnings = 100
}

extension Inspection {
    /// Every package database found in the guest: dpkg (`/var/lib/dpkg/status`,
    /// `/var/lib/dpkg/status.d/`), apk (`/lib/apk/db/installed`), and rpm databases
    /// (`rpmdb.sqlite` and BerkeleyDB `Packages` are read; ndb `Packages.db` is reported
    /// with an ``PackageInventory/unknownReason``).
    ///
    /// A missing database is simply absent from the result. A present but unreadable
    /// one is reported with an unknown reason. Throws only for internal errors.
    public static func packages(_ g: GuestFiles) throws -> [PackageInventory] {
        var out: [PackageInventory] = []
        if let inv = try dpkgStatus(g) { out.append(inv) }
        if let inv = try dpkgStatusDirectory(g) { out.append(inv) }
        if let inv = try apkInstalled(g) { out.append(inv) }
        out += try rpmDatabases(g)
        return out
    }

    /// Guest paths of rpm databases, in the order they are probed.
    static let rpmDatabasePaths = [
        "/usr/lib/sysimage/rpm/rpmdb.sqlite",
        "/var/lib/rpm/rpmdb.sqlite",
        "/usr/lib/sysimage/rpm/Packages.db",
        "/var/lib/rpm/Packages.db",
        "/usr/lib/sysimage/rpm/Packages",
        "/var/lib/rpm/Packages",
    ]

    /// Every rpm database present, read (see `Packages+RPM.swift`): sqlite and
    /// BerkeleyDB hash databases are parsed, ndb ones are reported with an unknown
    /// reason. Paths that resolve to the same file (e.g. `/var/lib/rpm` linked to
    /// `/usr/lib/sysimage/rpm`) are reported once.
    static func rpmDatabases(_ g: GuestFiles) throws -> [PackageInventory] {
        var out: [PackageInventory] = []
        var seen = Set<UInt64>()
        for path in rpmDatabasePaths {
            let st: FileStat?
            do { st = try g.statFollowing(path) } catch let e as WardenError where e.code != .internal {
                out.append(PackageInventory(manager: .rpm, source: path, unknownReason: "cannot read \(path): \(e.message)"))
                continue
            }
            guard let st, st.type == .regular, seen.insert(st.inode).inserted else { continue }
            out.append(try rpmDatabase(g, path: path))
        }
        return out
    }
}

extension GuestFiles {
    /// `stat` following symlinks, or nil if the path does not exist.
    func statFollowing(_ path: String) throws -> FileStat? {
        do { return try GuestPathResolver(fs).resolve(path).stat } catch let e as WardenError where e.code == .notFound {
            return nil
        }
    }

    /// The canonical guest path of `path` (symlinks followed), or nil if it does not exist.
    func canonicalGuestPath(_ path: String) throws -> String? {
        do { return String(decoding: try GuestPathResolver(fs).resolve(path).canonicalPath, as: UTF8.self) }
        catch let e as WardenError where e.code == .notFound { return nil }
    }
}

/// Collects warnings up to a cap, counting the rest.
struct CappedWarnings {
    var items: [String] = []
    var dropped = 0
    mutating func add(_ s: String) {
        if items.count < PackageLimits.maxWarnings { items.append(s) } else { dropped += 1 }
    }
    var all: [String] { dropped > 0 ? items + ["\(dropped) more warnings not shown"] : items }
}

/// One field of a control-file style stanza.
struct StanzaField {
    var name: String
    var value: String
}

/// Splits RFC 822 / Debian control style text into stanzas of fields.
///
/// Stanzas are separated by blank lines (lines empty or only whitespace, CRLF tolerated).
/// A line starting with space or tab continues the previous field. Lines without a
/// colon outside a continuation are ignored with a warning. Values are trimmed and cut
/// at ``PackageLimits/maxFieldBytes``; stanzas over ``PackageLimits/maxStanzaBytes`` are
/// skipped. `body` is called once per stanza and returns false to stop.
struct StanzaParser {
    /// Separator between key and value (`:` for dpkg and apk alike).
    var separator: UInt8 = UInt8(ascii: ":")
    /// apk keys are exactly one byte followed by `:`; with this set, continuation lines
    /// are not recognised (apk has none).
    var continuations = true

    func parse(_ bytes: [UInt8], warnings: inout CappedWarnings, _ body: ([StanzaField], Int, inout CappedWarnings) -> Bool) {
        var fields: [StanzaField] = []
        var curName: [UInt8] = []
        var curValue: [UInt8] = []
        var haveCur = false
        var truncated = false
        var stanzaStart = 0
        var stanzaIndex = 0
        var stanzaTooBig = false
        var i = 0
        let n = bytes.count

        func flushField() {
            guard haveCur else { return }
            if truncated { warnings.add("field \(String(decoding: curName, as: UTF8.self)) in stanza \(stanzaIndex + 1) cut at \(PackageLimits.maxFieldBytes) bytes") }
            if fields.count < PackageLimits.maxFieldsPerStanza {
                fields.append(StanzaField(name: String(decoding: curName, as: UTF8.self),
                                          value: String(decoding: trim(curValue), as: UTF8.self)))
            }
            haveCur = false
            truncated = false
            curName.removeAll(keepingCapacity: true)
            curValue.removeAll(keepingCapacity: true)
        }

        // Returns false to stop.
        func flushStanza(end: Int) -> Bool {
            flushField()
            defer { fields.removeAll(keepingCapacity: true); stanzaTooBig = false }
            if stanzaTooBig {
                warnings.add("stanza \(stanzaIndex + 1) is larger than \(PackageLimits.maxStanzaBytes) bytes; skipped")
                stanzaIndex += 1
                return true
            }
            guard !fields.isEmpty else { return true }
            let keep = body(fields, stanzaIndex, &warnings)
            stanzaIndex += 1
            return keep
        }

        func append(_ dst: inout [UInt8], _ src: ArraySlice<UInt8>) {
            let room = PackageLimits.maxFieldBytes - dst.count
            if src.count > room {
                if room > 0 { dst += src.prefix(room) }
                truncated = true
            } else {
                dst += src
            }
        }

        while i < n {
            // One line: [i, lineEnd), next line at `next`.
            var lineEnd = i
            while lineEnd < n && bytes[lineEnd] != 0x0A { lineEnd += 1 }
            let next = lineEnd + 1
            var e = lineEnd
            if e > i && bytes[e - 1] == 0x0D { e -= 1 }
            let line = bytes[i..<e]
            defer { i = next }

            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) {
                if !flushStanza(end: i) { return }
                stanzaStart = next
                continue
            }
            if stanzaTooBig { continue }
            if next - stanzaStart > PackageLimits.maxStanzaBytes {
                stanzaTooBig = true
                flushField()
                continue
            }
            let first = line[line.startIndex]
            if continuations && (first == 0x20 || first == 0x09) {
                if haveCur {
                    append(&curValue, [0x0A])
                    append(&curValue, line)
                } else {
                    warnings.add("continuation line without a field in stanza \(stanzaIndex + 1)")
                }
                continue
            }
            guard let colon = line.firstIndex(of: separator), colon > line.startIndex else {
                warnings.add("line without a field name in stanza \(stanzaIndex + 1)")
                flushField()
                continue
            }
            flushField()
            haveCur = true
            append(&curName, line[line.startIndex..<colon])
            append(&curValue, line[(colon + 1)...])
        }
        _ = flushStanza(end: n)
    }

    private func trim(_ v: [UInt8]) -> ArraySlice<UInt8> {
        var s = v.startIndex, e = v.endIndex
        while s < e && (v[s] == 0x20 || v[s] == 0x09 || v[s] == 0x0A || v[s] == 0x0D) { s += 1 }
        while e > s && (v[e - 1] == 0x20 || v[e - 1] == 0x09 || v[e - 1] == 0x0A || v[e - 1] == 0x0D) { e -= 1 }
        return v[s..<e]
    }
}

extension Array where Element == StanzaField {
    /// The first field named `name` (ASCII case-insensitive, as dpkg does).
    func value(_ name: String) -> String? {
        first { $0.name.lowercased() == name.lowercased() }?.value
    }
}
