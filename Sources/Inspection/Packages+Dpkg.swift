import WardenCore
import GuestFS

/// Reading dpkg's database.
///
/// `/var/lib/dpkg/status` holds one RFC 822 style stanza per package. A package goes to
/// ``PackageInventory/packages`` when its `Status:` state (third word) is `installed` and
/// its error flag is `ok`, whatever the selection (`install`, `hold`, `deinstall`, `purge`):
/// its files are on disk. Any other state except `not-installed` goes to
/// ``PackageInventory/incomplete`` with its status; `not-installed` entries are dropped.
///
/// Distroless images have no `status` file but a `status.d/` directory with one stanza file
/// per package (plus `*.md5sums` files, ignored). Stanzas there may lack `Status:`; such a
/// package is taken as installed and its status reported as `install ok installed`.
extension Inspection {
    static let dpkgStatusPath = "/var/lib/dpkg/status"
    static let dpkgStatusDirPath = "/var/lib/dpkg/status.d"

    /// The dpkg status file, or nil if the guest has none.
    static func dpkgStatus(_ g: GuestFiles) throws -> PackageInventory? {
        let bytes: [UInt8]
        do {
            guard let b = try g.read(dpkgStatusPath) else { return nil }
            bytes = b
        } catch let e as WardenError where e.code != .internal {
            return PackageInventory(manager: .dpkg, source: dpkgStatusPath, unknownReason: "cannot read \(dpkgStatusPath): \(e.message)")
        }
        var inv = PackageInventory(manager: .dpkg, source: dpkgStatusPath)
        var w = CappedWarnings()
        DpkgStatus.parse(bytes, into: &inv, warnings: &w, statusOptional: false)
        inv.warnings = w.all
        DpkgStatus.sort(&inv)
        return inv
    }

    /// The distroless `status.d` directory, or nil if the guest has none.
    static func dpkgStatusDirectory(_ g: GuestFiles) throws -> PackageInventory? {
        let entries: [DirectoryEntry]
        do {
            guard let l = try g.list(dpkgStatusDirPath) else { return nil }
            entries = l
        } catch let e as WardenError where e.code != .internal {
            return PackageInventory(manager: .dpkg, source: dpkgStatusDirPath, unknownReason: "cannot list \(dpkgStatusDirPath): \(e.message)")
        }
        var inv = PackageInventory(manager: .dpkg, source: dpkgStatusDirPath)
        var w = CappedWarnings()
        var files = entries.map(\.name).filter { !$0.hasSuffix(".md5sums") && !$0.hasPrefix(".") }.sorted()
        if files.count > PackageLimits.maxStatusDirFiles {
            w.add("\(dpkgStatusDirPath) has \(files.count) files; only the first \(PackageLimits.maxStatusDirFiles) read")
            files = Array(files.prefix(PackageLimits.maxStatusDirFiles))
        }
        for name in files {
            let path = dpkgStatusDirPath + "/" + name
            do {
                // Non-regular entries (directories, dangling links) are skipped.
                guard let st = try g.statFollowing(path), st.type == .regular, let b = try g.read(path) else { continue }
                DpkgStatus.parse(b, into: &inv, warnings: &w, statusOptional: true)
            } catch let e as WardenError where e.code != .internal {
                w.add("cannot read \(path): \(e.message)")
            }
            if inv.packages.count + inv.incomplete.count >= PackageLimits.maxPackages { break }
        }
        inv.warnings = w.all
        DpkgStatus.sort(&inv)
        return inv
    }
}

/// Parsing of dpkg status stanzas and Debian version strings.
public enum DpkgStatus {
    /// The parts of a Debian version `[epoch:]upstream[-revision]`.
    public struct Version: Sendable, Equatable {
        public var epoch: Int?
        public var upstream: String
        public var revision: String?
    }

    /// Splits a Debian version. Returns nil for malformed versions (empty upstream,
    /// non-numeric epoch); dpkg itself refuses those.
    public static func splitVersion(_ v: String) -> Version? {
        var rest = Substring(v)
        var epoch: Int?
        if let colon = rest.firstIndex(of: ":") {
            let e = rest[..<colon]
            guard !e.isEmpty, e.count <= 9, e.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(e) else { return nil }
            epoch = n
            rest = rest[rest.index(after: colon)...]
        }
        var revision: String?
        if let dash = rest.lastIndex(of: "-") {
            let r = rest[rest.index(after: dash)...]
            guard !r.isEmpty else { return nil }
            revision = String(r)
            rest = rest[..<dash]
        }
        // dpkg only warns about upstream versions not starting with a digit; keep them.
        guard !rest.isEmpty else { return nil }
        return Version(epoch: epoch, upstream: String(rest), revision: revision)
    }

    /// Parses `Source: name (version)` into name and optional version.
    public static func splitSource(_ s: String) -> (name: String, version: String?) {
        guard let open = s.firstIndex(of: "(") else {
            return (s.trimmedBlanks(), nil)
        }
        let name = s[..<open].trimmedBlanks()
        let after = s[s.index(after: open)...]
        let close = after.firstIndex(of: ")") ?? after.endIndex
        let version = after[..<close].trimmedBlanks()
        return (name, version.isEmpty ? nil : version)
    }

    /// Builds a package from one stanza, or nil if it has no `Package:` field.
    /// With `statusOptional`, a missing `Status:` means installed (distroless `status.d`).
    static func package(_ f: [StanzaField], statusOptional: Bool) -> (InstalledPackage, installed: Bool)? {
        guard let name = f.value("Package"), !name.isEmpty else { return nil }
        let version = f.value("Version") ?? ""
        var status = f.value("Status") ?? ""
        if status.isEmpty && statusOptional { status = "install ok installed" }
        let words = status.split(whereSeparator: { $0 == " " || $0 == "\t" })
        let state = words.count == 3 ? String(words[2]) : ""
        let eflag = words.count == 3 ? String(words[1]) : ""
        if state == "not-installed" { return nil }
        let parts = splitVersion(version)
        var srcName = name, srcVersion = version
        if let s = f.value("Source"), !s.isEmpty {
            let (n, v) = splitSource(s)
            if !n.isEmpty { srcName = n }
            if let v { srcVersion = v }
        }
        let p = InstalledPackage(name: name, version: version, epoch: parts?.epoch,
                                 upstreamVersion: parts?.upstream, revision: parts?.revision,
                                 architecture: f.value("Architecture") ?? "",
                                 sourceName: srcName, sourceVersion: srcVersion,
                                 manager: .dpkg, status: status)
        return (p, state == "installed" && eflag == "ok")
    }

    /// Parses a whole status file (or one `status.d` file) into `inv`.
    static func parse(_ bytes: [UInt8], into inv: inout PackageInventory, warnings w: inout CappedWarnings, statusOptional: Bool) {
        StanzaParser().parse(bytes, warnings: &w) { fields, index, w in
            guard inv.packages.count + inv.incomplete.count < PackageLimits.maxPackages else {
                w.add("more than \(PackageLimits.maxPackages) packages; the rest ignored")
                return false
            }
            guard let (p, installed) = package(fields, statusOptional: statusOptional) else {
                if fields.value("Package") == nil { w.add("stanza \(index + 1) has no Package field; skipped") }
                return true
            }
            if installed { inv.packages.append(p) } else { inv.incomplete.append(p) }
            return true
        }
    }

    static func sort(_ inv: inout PackageInventory) {
        let less: (InstalledPackage, InstalledPackage) -> Bool = {
            ($0.name, $0.architecture, $0.version) < ($1.name, $1.architecture, $1.version)
        }
        inv.packages.sort(by: less)
        inv.incomplete.sort(by: less)
    }
}

extension StringProtocol {
    func trimmedBlanks() -> String {
        var s = self[...]
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" { s = s.dropLast() }
        return String(s)
    }
}
