import Foundation
import GuestFS
import WardenCore

/// A part of the disk Warden did not read, and why: a scan that found nothing there must not
/// look clean (`--fail-on-unscanned`).
public struct UnscannedPart: Codable, Sendable, Equatable {
    /// "partition 2", "logical volume /dev/mapper/vg-lv", "encrypted volume …", "whole disk".
    public var part: String
    public var reason: String
    public init(part: String, reason: String) { self.part = part; self.reason = reason }
}

/// How long the guest's release gets security support, and whether that has ended.
public struct ReleaseSupport: Codable, Sendable, Equatable {
    /// `debian 12`, `ubuntu 22.04`.
    public var release: String
    /// End of regular security support (YYYY-MM-DD), when known.
    public var endOfLife: String?
    /// End of the free long-term support that follows (Debian LTS, Ubuntu's server support),
    /// when there is one; paid extensions (ELTS, ESM) are not counted.
    public var endOfLongTermSupport: String?
    /// Where the dates come from.
    public var source: String
    /// Whether the last free support date had passed when the guest was inspected.
    public var ended: Bool
}

extension Inspection {
    /// Parts of `layout` that were not read: closed or unopenable LUKS volumes, LVM problems
    /// (missing PVs, damaged thin pools and unsupported segments), volumes whose filesystem Warden
    /// cannot read. Swap, LVM PVs and LUKS containers that were opened are not counted.
    public static func unscanned(_ layout: GuestDiskLayout) -> [UnscannedPart] {
        var out: [UnscannedPart] = []
        for w in layout.warnings.prefix(100) {
            if let r = w.range(of: " is LUKS-encrypted") {
                out.append(UnscannedPart(part: String(w[..<r.lowerBound]), reason: String(w[r.lowerBound...]).trimmingCharacters(in: .whitespaces)))
            } else {
                out.append(UnscannedPart(part: "volume management", reason: w))
            }
        }
        for v in layout.volumes {
            guard let fs = v.filesystem, !fs.isReadable else { continue }
            if ["swap", "LVM2_member", "crypto_LUKS", "iso9660"].contains(fs.type) { continue }
            out.append(UnscannedPart(part: v.displayName, reason: "\(fs.type) filesystem: Warden does not read it"))
        }
        return out
    }

    /// Where the host keeps Debian's and Ubuntu's release dates (Debian's distro-info-data).
    public static let distroInfoDirectory = "/usr/share/distro-info"

    /// The support dates of the guest's release: os-release's `SUPPORT_END` when the guest
    /// states it, else the host's distro-info-data for Debian and Ubuntu; unknown, with the
    /// reason, for the rest.
    public static func releaseSupport(_ os: OSInfo, now: Date = Date(), distroInfo: String = distroInfoDirectory) -> Fact<ReleaseSupport> {
        guard let id = os.id.value, let version = os.versionId.value else {
            return .unknown(reason: "the release is unknown (no ID or VERSION_ID in os-release)")
        }
        let today = String(ISO8601DateFormatter().string(from: now).prefix(10))
        let release = "\(id) \(version)"
        if case .known(let end)? = os.supportEnd, isDate(end) {
            return .known(ReleaseSupport(release: release, endOfLife: end, endOfLongTermSupport: nil,
                                         source: "os-release SUPPORT_END", ended: end < today))
        }
        guard id == "debian" || id == "ubuntu" else {
            return .unknown(reason: "no end-of-life data for \(release): os-release has no SUPPORT_END, and distro-info-data covers Debian and Ubuntu")
        }
        let csv = distroInfo + "/\(id).csv"
        guard let data = FileManager.default.contents(atPath: csv), data.count <= 1 << 20 else {
            return .unknown(reason: "no end-of-life data for \(release): \(csv) is missing (install distro-info-data)")
        }
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        guard let header = lines.first, let eolColumn = header.firstIndex(of: "eol") else {
            return .unknown(reason: "\(csv) has no eol column")
        }
        let ltsColumn = header.firstIndex(of: id == "debian" ? "eol-lts" : "eol-server")
        // Debian's rows are "12,Bookworm,…"; Ubuntu's "22.04 LTS,Jammy Jellyfish,…".
        guard let row = lines.dropFirst().first(where: { $0.first.map { $0 == version || $0.hasPrefix(version + " ") } ?? false }) else {
            return .unknown(reason: "\(csv) does not list \(release) (the host's distro-info-data may be older than the guest)")
        }
        func column(_ i: Int?) -> String? { i.flatMap { row.indices.contains($0) && isDate(row[$0]) ? row[$0] : nil } }
        let eol = column(eolColumn), lts = column(ltsColumn)
        guard let last = lts ?? eol else {
            return .unknown(reason: "\(release) has no end-of-life date yet in \(csv)")
        }
        return .known(ReleaseSupport(release: release, endOfLife: eol, endOfLongTermSupport: lts,
                                     source: "distro-info-data on this host (\(csv))", ended: last < today))
    }

    static func isDate(_ s: String) -> Bool {
        s.utf8.count == 10 && s.utf8.enumerated().allSatisfy { i, c in (i == 4 || i == 7) ? c == 0x2d : (c >= 0x30 && c <= 0x39) }
    }
}
