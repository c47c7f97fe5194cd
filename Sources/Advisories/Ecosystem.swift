import Foundation

/// The OSV ecosystems a guest belongs to, and how its packages are keyed and ordered.
public struct GuestEcosystem: Sendable, Hashable {
    /// OSV ecosystem names that apply to this guest (`Debian:12`; `Ubuntu:22.04:LTS` and `Ubuntu:22.04`).
    public var names: [String]
    public var scheme: VersionScheme
    /// Whether advisories key packages by source package only (Debian, Ubuntu); otherwise
    /// the binary name and the source name are both looked up (rpm, apk).
    public var bySourceOnly: Bool

    public init(names: [String], scheme: VersionScheme, bySourceOnly: Bool) {
        self.names = names; self.scheme = scheme; self.bySourceOnly = bySourceOnly
    }

    /// The ecosystem for an os-release `ID` and `VERSION_ID`, or nil for distros (or
    /// releases) no feed covers. Only the guest's own distro and release are returned:
    /// a Debian 12 guest is `Debian:12`, never `Debian:11`.
    public static func from(osID: String, versionID: String?) -> GuestEcosystem? {
        let id = osID.lowercased()
        let v = versionID ?? ""
        let major = v.split(separator: ".", omittingEmptySubsequences: false).first.map(String.init) ?? ""
        func digits(_ s: String) -> Bool { !s.isEmpty && s.allSatisfy { $0.isASCII && $0.isNumber } }
        switch id {
        case "debian":
            // Testing and sid have no VERSION_ID.
            if v.isEmpty { return GuestEcosystem(names: ["Debian:unstable"], scheme: .deb, bySourceOnly: true) }
            guard digits(major) else { return nil }
            return GuestEcosystem(names: ["Debian:\(major)"], scheme: .deb, bySourceOnly: true)
        case "ubuntu":
            let parts = v.split(separator: ".")
            guard parts.count >= 2, digits(String(parts[0])), digits(String(parts[1])) else { return nil }
            let release = "\(parts[0]).\(parts[1])"
            var names = ["Ubuntu:\(release)"]
            if parts[1] == "04", let y = Int(parts[0]), y % 2 == 0 { names.insert("Ubuntu:\(release):LTS", at: 0) }
            return GuestEcosystem(names: names, scheme: .deb, bySourceOnly: true)
        case "alpine":
            let parts = v.split(separator: ".")
            guard parts.count >= 2, digits(String(parts[0])), digits(String(parts[1])) else { return nil }
            return GuestEcosystem(names: ["Alpine:v\(parts[0]).\(parts[1])"], scheme: .apk, bySourceOnly: false)
        case "rocky":
            guard digits(major) else { return nil }
            return GuestEcosystem(names: ["Rocky Linux:\(major)"], scheme: .rpm, bySourceOnly: false)
        case "almalinux":
            guard digits(major) else { return nil }
            return GuestEcosystem(names: ["AlmaLinux:\(major)"], scheme: .rpm, bySourceOnly: false)
        case "rhel", "centos":
            guard digits(major) else { return nil }
            return GuestEcosystem(names: ["Red Hat:\(major)", "Red Hat"], scheme: .rpm, bySourceOnly: false)
        case "sles", "sled":
            let parts = v.split(separator: ".")
            guard let first = parts.first, digits(String(first)) else { return nil }
            let sp = parts.count > 1 && parts[1] != "0" ? " SP\(parts[1])" : ""
            let product = id == "sles" ? "Linux Enterprise Server" : "Linux Enterprise Desktop"
            return GuestEcosystem(names: ["SUSE:\(product) \(first)\(sp)", "SUSE"], scheme: .rpm, bySourceOnly: false)
        case "opensuse-leap":
            guard !v.isEmpty else { return nil }
            return GuestEcosystem(names: ["openSUSE:Leap \(v)", "SUSE"], scheme: .rpm, bySourceOnly: false)
        default:
            return nil
        }
    }

    /// The version scheme of an OSV ecosystem name (its part before the first `:`), or nil.
    public static func scheme(ofEcosystem name: String) -> VersionScheme? {
        let base = name.split(separator: ":", maxSplits: 1).first.map(String.init) ?? name
        switch base {
        case "Debian", "Ubuntu": return .deb
        case "Alpine": return .apk
        case "Rocky Linux", "AlmaLinux", "Red Hat", "SUSE", "openSUSE", "Mageia", "openEuler": return .rpm
        default: return nil
        }
    }

    /// Red Hat's OSV ecosystems name products (`Red Hat:enterprise_linux:9::appstream`);
    /// every one whose release major is this guest's is folded into `Red Hat:<major>`.
    public static func normalise(_ ecosystem: String) -> String {
        guard ecosystem.hasPrefix("Red Hat:") else { return ecosystem }
        let parts = ecosystem.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count >= 3 {
            let release = parts[2]
            let major = release.split(separator: ".").first.map(String.init) ?? ""
            if !major.isEmpty, major.allSatisfy { $0.isASCII && $0.isNumber } { return "Red Hat:\(major)" }
        }
        return ecosystem
    }
}

/// Debian release codenames as the Security Tracker names them.
public enum DebianRelease {
    public static let codenames: [String: String] = [
        "buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14",
        "stretch": "9", "jessie": "8", "sid": "unstable",
    ]

    /// `Debian:12` for `bookworm`, `Debian:unstable` for `sid`; nil for unknown codenames.
    public static func ecosystem(codename: String) -> String? {
        codenames[codename].map { "Debian:\($0)" }
    }
}
