import WardenCore
import GuestFS

/// A kernel image file or link found in the guest.
public struct KernelImage: Codable, Sendable, Hashable {
    /// Guest path (`/boot/vmlinuz-6.1.0-18-amd64`, `/usr/lib/modules/6.8.5/vmlinuz`).
    public var path: String
    /// The suffix after `vmlinuz-`/`vmlinux-`/`bzImage-`, or the module directory name for
    /// images inside `/usr/lib/modules/<version>/`. For Debian/Fedora this is the kernel
    /// release; for Alpine (`vmlinuz-lts`, `vmlinuz-virt`) it is the flavor. Nil for a
    /// bare `vmlinuz`.
    public var suffix: String?
    /// The symlink target as stored, when the path is a symlink (`/boot/vmlinuz` → `vmlinuz-6.1.0-18-amd64`).
    public var linkTarget: String?
    /// Size in bytes of the file (after following a link), nil if it is a dangling link.
    public var size: UInt64?
}

/// A kernel module directory, `/lib/modules/<release>` or `/usr/lib/modules/<release>`.
public struct KernelModules: Codable, Sendable, Hashable {
    /// The kernel release (`uname -r`), the directory name.
    public var release: String
    public var path: String
}

/// One installed kernel release, joining images and module directories.
public struct InstalledKernel: Codable, Sendable, Hashable {
    /// The kernel release (`6.1.0-18-amd64`, `6.6.22-0-lts`).
    public var release: String
    /// Image paths for this release (exact suffix match, or Alpine flavor match).
    public var images: [String]
    /// Its module directory, if present.
    public var modulesPath: String?
}

/// Kernels installed in the guest, from `/boot` and the module directories.
///
/// The root filesystem alone is read: if `/boot` is a separate partition its images are
/// not seen here (module directories still are).
public struct KernelInventory: Codable, Sendable, Hashable {
    /// Releases, sorted by release string.
    public var kernels: [InstalledKernel]
    /// Every image or image link found, sorted by path.
    public var images: [KernelImage]
    /// Every module directory found, sorted by path.
    public var modules: [KernelModules]
    public var warnings: [String]
    /// The kernel the boot loader will start (``BootKernel``), or why that is unknown.
    public var booting: Fact<BootKernel>?
}

public enum KernelLimits {
    /// Most images or module directories considered.
    public static let maxEntries = 10_000
}

extension Inspection {
    static let kernelImagePrefixes = ["vmlinuz-", "vmlinux-", "bzImage-", "kernel-"]
    static let kernelImageBareNames: Set<String> = ["vmlinuz", "vmlinux", "bzImage", "vmlinuz.old", "vmlinux.old"]

    /// Installed kernels. Missing directories yield empty lists; unreadable ones a
    /// warning. Throws only for internal errors.
    public static func kernels(_ g: GuestFiles) throws -> KernelInventory {
        var inv = KernelInventory(kernels: [], images: [], modules: [], warnings: [])
        var w = CappedWarnings()

        func guarded<T>(_ what: String, _ body: () throws -> T?) rethrows -> T? {
            do { return try body() } catch let e as WardenError where e.code != .internal {
                w.add("\(what): \(e.message)")
                return nil
            }
        }

        func image(_ path: String, suffix: String?) throws {
            guard inv.images.count < KernelLimits.maxEntries else { return }
            guard let l = try guarded(path, { try g.lstat(path) }) else { return }
            var link: String?
            var size: UInt64?
            if l.type == .symlink {
                link = try guarded(path, { try g.readLink(path) })
                if let st = try guarded(path, { try g.statFollowing(path) }) {
                    guard st.type == .regular else { return }
                    size = st.size
                }
            } else {
                guard l.type == .regular else { return }
                size = l.size
            }
            inv.images.append(KernelImage(path: path, suffix: suffix, linkTarget: link, size: size))
        }

        if let boot = try guarded("cannot list /boot", { try g.list("/boot") }) {
            for e in boot {
                let name = e.name
                if kernelImageBareNames.contains(name) {
                    try image("/boot/" + name, suffix: nil)
                } else if let p = kernelImagePrefixes.first(where: { name.hasPrefix($0) && name.count > $0.count }) {
                    // kernel-* is too generic for /boot (e.g. kernel-config); only accept if it looks versioned.
                    let suffix = String(name.dropFirst(p.count))
                    if p == "kernel-", !(suffix.first?.isNumber ?? false) { continue }
                    try image("/boot/" + name, suffix: suffix)
                }
            }
        }

        var walked = Set<String>()
        for base in ["/lib/modules", "/usr/lib/modules"] {
            guard let canon = try guarded(base, { try g.canonicalGuestPath(base) }), walked.insert(canon).inserted,
                  let entries = try guarded("cannot list \(base)", { try g.list(base) }) else { continue }
            for e in entries {
                guard inv.modules.count < KernelLimits.maxEntries else {
                    w.add("more than \(KernelLimits.maxEntries) module directories; the rest ignored")
                    break
                }
                let path = base + "/" + e.name
                guard let st = try guarded(path, { try g.statFollowing(path) }), st.type == .directory else { continue }
                inv.modules.append(KernelModules(release: e.name, path: path))
                // Fedora/BLS layout keeps the image inside the module directory.
                for img in ["vmlinuz", "vmlinux"] {
                    let ip = path + "/" + img
                    if (try guarded(ip, { try g.lstat(ip) })) != nil { try image(ip, suffix: e.name) }
                }
            }
        }

        // Join by release. A release comes from each module directory and from each image
        // whose suffix looks like a release (starts with a digit). Alpine flavor images
        // (`vmlinuz-lts`) attach to every module release ending in `-<flavor>`.
        var byRelease: [String: InstalledKernel] = [:]
        for m in inv.modules {
            var k = byRelease[m.release] ?? InstalledKernel(release: m.release, images: [], modulesPath: nil)
            if k.modulesPath == nil { k.modulesPath = m.path }
            byRelease[m.release] = k
        }
        for img in inv.images {
            guard let s = img.suffix, s.first?.isNumber ?? false else { continue }
            byRelease[s, default: InstalledKernel(release: s, images: [], modulesPath: nil)].images.append(img.path)
        }
        for img in inv.images {
            guard let s = img.suffix, !(s.first?.isNumber ?? false) else { continue }
            for r in byRelease.keys where r.hasSuffix("-" + s) {
                byRelease[r]!.images.append(img.path)
            }
        }
        // Bare links (`/boot/vmlinuz` → `vmlinuz-<release>`) attach to a release already known.
        for img in inv.images where img.suffix == nil {
            guard let t = img.linkTarget, let base = t.split(separator: "/").last.map(String.init),
                  let p = kernelImagePrefixes.first(where: { base.hasPrefix($0) }) else { continue }
            let r = String(base.dropFirst(p.count))
            if byRelease[r] != nil { byRelease[r]!.images.append(img.path) }
        }
        inv.kernels = byRelease.values.map { var k = $0; k.images.sort(); return k }.sorted { $0.release < $1.release }
        inv.images.sort { $0.path < $1.path }
        inv.modules.sort { $0.path < $1.path }
        inv.warnings = w.all
        inv.booting = bootKernel(g, installed: inv)
        return inv
    }
}
