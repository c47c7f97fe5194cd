import WardenCore
import GuestFS

/// A systemd unit enabled through a `<target>.wants/`, `<target>.requires/` or
/// `<target>.upholds/` symlink.
public struct EnabledUnit: Codable, Sendable, Hashable {
    /// The link's name: the unit that is pulled in (`ssh.service`, `getty@tty1.service`).
    public var unit: String
    /// The unit whose `.wants`/`.requires` directory holds the link (`multi-user.target`).
    public var wantedBy: String
    /// `wants`, `requires` or `upholds`.
    public var dependency: String
    /// Guest path of the symlink.
    public var path: String
    /// The link target as stored (a guest path; not resolved).
    public var target: String
    /// True when the link lives under `/etc/systemd/system` (administrator enabled),
    /// false for vendor-enabled links under `/usr/lib/systemd/system` or `/lib/systemd/system`.
    public var local: Bool
}

/// A systemd unit masked by a symlink to `/dev/null` in `/etc/systemd/system`.
public struct MaskedUnit: Codable, Sendable, Hashable {
    public var unit: String
    public var path: String
}

/// The default systemd target (`default.target` symlink).
public struct DefaultTarget: Codable, Sendable, Hashable {
    /// The unit it names (`graphical.target`), the last component of the link target.
    public var unit: String
    /// Guest path of the symlink.
    public var path: String
    /// The link target as stored.
    public var target: String
}

/// An OpenRC service added to a runlevel (`/etc/runlevels/<runlevel>/<service>` symlink).
public struct OpenRCService: Codable, Sendable, Hashable {
    public var runlevel: String
    public var service: String
    public var path: String
    /// The link target as stored (usually `/etc/init.d/<service>`).
    public var target: String
}

/// Services enabled in the guest, read from systemd and OpenRC symlink layouts only
/// (no unit file parsing, no `[Install]` sections: the links are what the init system uses).
public struct ServiceInventory: Codable, Sendable, Hashable {
    /// The systemd default target: `/etc/systemd/system/default.target`, else the vendor
    /// one under `/usr/lib/systemd/system` or `/lib/systemd/system`; nil if none.
    public var defaultTarget: DefaultTarget?
    /// Enabled units, sorted by wanted-by, unit, path.
    public var enabled: [EnabledUnit]
    /// Units masked in `/etc/systemd/system`, sorted by unit.
    public var masked: [MaskedUnit]
    /// OpenRC runlevel members, sorted by runlevel then service.
    public var openrc: [OpenRCService]
    /// Non-fatal problems (unreadable directories, non-symlink entries, limits hit).
    public var warnings: [String]
}

public enum ServiceLimits {
    /// Most `.wants`/`.requires` links, masked units or runlevel entries kept in total.
    public static let maxEntries = 100_000
}

extension Inspection {
    static let systemdUnitDirs = ["/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"]

    /// Enabled and masked systemd units, the default target, and OpenRC runlevels.
    /// Missing directories yield empty lists; unreadable ones a warning. Throws only
    /// for internal errors.
    public static func services(_ g: GuestFiles) throws -> ServiceInventory {
        var inv = ServiceInventory(defaultTarget: nil, enabled: [], masked: [], openrc: [], warnings: [])
        var w = CappedWarnings()
        var count = 0
        // Directories already walked, by canonical path (`/lib` is often a link to `/usr/lib`).
        var walked = Set<String>()

        func guarded<T>(_ what: String, _ body: () throws -> T?) rethrows -> T? {
            do { return try body() } catch let e as WardenError where e.code != .internal {
                w.add("\(what): \(e.message)")
                return nil
            }
        }

        for dir in systemdUnitDirs {
            guard let canon = try guarded(dir, { try g.canonicalGuestPath(dir) }), walked.insert(canon).inserted,
                  let entries = try guarded("cannot list \(dir)", { try g.list(dir) }) else { continue }
            let local = dir == "/etc/systemd/system"
            for entry in entries.sorted(by: { $0.nameBytes.lexicographicallyPrecedes($1.nameBytes) }) {
                let name = entry.name
                let path = dir + "/" + name
                let dependency: String
                if name.hasSuffix(".wants") { dependency = "wants" }
                else if name.hasSuffix(".requires") { dependency = "requires" }
                else if name.hasSuffix(".upholds") { dependency = "upholds" }
                else {
                    // Only symlinks can mask; skip the lookup for entries known to be something else.
                    if let t = entry.type, t != .symlink { continue }
                    if local, let t = try guarded(path, { try g.readLink(path) }), t == "/dev/null" {
                        guard count < ServiceLimits.maxEntries else { break }
                        count += 1
                        inv.masked.append(MaskedUnit(unit: name, path: path))
                    }
                    continue
                }
                let wantedBy = String(name.dropLast(dependency.count + 1))
                guard let links = try guarded("cannot list \(path)", { try g.list(path) }) else { continue }
                for link in links {
                    let lp = path + "/" + link.name
                    guard let target = try guarded(lp, { try g.readLink(lp) }) else {
                        w.add("\(lp) is not a symbolic link; ignored")
                        continue
                    }
                    guard count < ServiceLimits.maxEntries else {
                        w.add("more than \(ServiceLimits.maxEntries) service entries; the rest ignored")
                        break
                    }
                    count += 1
                    inv.enabled.append(EnabledUnit(unit: link.name, wantedBy: wantedBy, dependency: dependency,
                                                   path: lp, target: target, local: local))
                }
            }
        }

        for dir in systemdUnitDirs {
            let p = dir + "/default.target"
            if let t = try guarded(p, { try g.readLink(p) }) {
                let unit = t.split(separator: "/").last.map(String.init) ?? t
                inv.defaultTarget = DefaultTarget(unit: unit, path: p, target: t)
                break
            }
        }

        if let levels = try guarded("cannot list /etc/runlevels", { try g.list("/etc/runlevels") }) {
            for level in levels {
                let dir = "/etc/runlevels/" + level.name
                guard let members = try guarded("cannot list \(dir)", { try g.list(dir) }) else { continue }
                for m in members {
                    let p = dir + "/" + m.name
                    guard let target = try guarded(p, { try g.readLink(p) }) else {
                        // Stacked runlevels are subdirectories; plain files are not services.
                        w.add("\(p) is not a symbolic link; ignored")
                        continue
                    }
                    guard count < ServiceLimits.maxEntries else {
                        w.add("more than \(ServiceLimits.maxEntries) service entries; the rest ignored")
                        break
                    }
                    count += 1
                    inv.openrc.append(OpenRCService(runlevel: level.name, service: m.name, path: p, target: target))
                }
            }
        }

        inv.enabled.sort { ($0.wantedBy, $0.unit, $0.path) < ($1.wantedBy, $1.unit, $1.path) }
        inv.masked.sort { ($0.unit, $0.path) < ($1.unit, $1.path) }
        inv.openrc.sort { ($0.runlevel, $0.service) < ($1.runlevel, $1.service) }
        inv.warnings = w.all
        return inv
    }
}
