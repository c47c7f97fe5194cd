import WardenCore
import GuestFS

/// The kernel that will boot, read offline from the boot loader's configuration: GRUB's
/// `grub.cfg` with its `default` and `grubenv`'s `saved_entry`, or Boot Loader Specification
/// entries (`/boot/loader/entries/*.conf`); else the only installed kernel, or the
/// `/boot/vmlinuz` link. Kernel findings can then say whether they touch what boots.
public struct BootKernel: Codable, Sendable, Hashable {
    /// The kernel release (`6.1.0-18-amd64`).
    public var release: String
    /// The kernel path as the boot configuration names it.
    public var image: String
    /// The menu entry's title, when there is one.
    public var title: String?
    /// How it was decided: `grub.cfg default 0`, `grubenv saved_entry …`, `BLS entry …`, `the only installed kernel`, `/boot/vmlinuz link`.
    public var source: String
}

extension Inspection {
    static let grubConfigs = ["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"]
    static let grubEnvs = ["/boot/grub/grubenv", "/boot/grub2/grubenv"]

    /// The kernel that will boot, or why it is unknown.
    public static func bootKernel(_ g: GuestFiles, installed: KernelInventory?) -> Fact<BootKernel> {
        let env = grubEnvs.lazy.compactMap { p -> [String: String]? in
            guard case .bytes(let b) = g.load(p, maxBytes: 64 << 10) else { return nil }
            return grubEnv(String(decoding: b, as: UTF8.self))
        }.first ?? [:]
        for path in grubConfigs {
            guard case .bytes(let b) = g.load(path, maxBytes: 4 << 20) else { continue }
            let cfg = parseGrubConfig(String(decoding: b, as: UTF8.self))
            if let k = cfg.choose(env: env) { return .known(k) }
        }
        // Boot Loader Specification entries (Fedora, RHEL 8+).
        if let entries = try? g.list("/boot/loader/entries") {
            var bls: [(id: String, version: String?, title: String?, linux: String)] = []
            for e in entries.prefix(1000) where e.name.hasSuffix(".conf") {
                guard case .bytes(let b) = g.load("/boot/loader/entries/" + e.name, maxBytes: 64 << 10) else { continue }
                var fields: [String: String] = [:]
                for line in String(decoding: b, as: UTF8.self).split(separator: "\n").prefix(200) {
                    let parts = line.trimmingCharacters(in: .whitespaces).split(separator: " ", maxSplits: 1)
                    if parts.count == 2, fields[String(parts[0])] == nil { fields[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces) }
                }
                if let linux = fields["linux"] { bls.append((String(e.name.dropLast(5)), fields["version"], fields["title"], linux)) }
            }
            let saved = env["saved_entry"]
            let pick = bls.first { $0.id == saved } ?? bls.sorted { versionOrder($0.version ?? $0.id, $1.version ?? $1.id) }.last
            if let pick {
                return .known(BootKernel(release: pick.version ?? release(fromImage: pick.linux) ?? pick.id, image: pick.linux, title: pick.title,
                                         source: pick.id == saved ? "BLS entry \(pick.id) (grubenv saved_entry)" : "BLS entry \(pick.id) (the newest)"))
            }
        }
        if let kernels = installed?.kernels, kernels.count == 1, let k = kernels.first {
            return .known(BootKernel(release: k.release, image: k.images.first ?? "", title: nil, source: "the only installed kernel"))
        }
        if let link = installed?.images.first(where: { $0.path == "/boot/vmlinuz" })?.linkTarget, let r = release(fromImage: link) {
            return .known(BootKernel(release: r, image: "/boot/vmlinuz", title: nil, source: "/boot/vmlinuz link"))
        }
        return .unknown(reason: "no grub.cfg, no Boot Loader Specification entry, and not exactly one installed kernel")
    }

    /// `vmlinuz-6.1.0-18-amd64` (any directory) → `6.1.0-18-amd64`.
    static func release(fromImage path: String) -> String? {
        let base = path.split(separator: "/").last.map(String.init) ?? path
        guard let p = kernelImagePrefixes.first(where: { base.hasPrefix($0) && base.count > $0.count }) else { return nil }
        return String(base.dropFirst(p.count))
    }

    /// Dotted/dashed version order for BLS entries (numbers compared as numbers).
    static func versionOrder(_ a: String, _ b: String) -> Bool {
        func parts(_ s: String) -> [String] { s.split(whereSeparator: { $0 == "." || $0 == "-" || $0 == "_" }).map(String.init) }
        for (x, y) in zip(parts(a), parts(b)) where x != y {
            if let i = Int(x), let j = Int(y) { return i < j }
            return x < y
        }
        return parts(a).count < parts(b).count
    }

    /// grubenv: `# GRUB Environment Block` then `key=value` lines, padded with `#`.
    static func grubEnv(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for line in text.split(separator: "\n").prefix(1000) where !line.hasPrefix("#") {
            if let eq = line.firstIndex(of: "=") { out[String(line[..<eq])] = String(line[line.index(after: eq)...]) }
        }
        return out
    }

    /// What the boot loader choice needs from grub.cfg: the `default`, and the menu entries in
    /// order (submenus with their entries), each with its title, id and `linux` line.
    struct GrubConfig {
        struct Entry { var title: String; var id: String?; var linux: String?; var children: [Entry] = [] }
        var defaultValue: String?
        var entries: [Entry] = []

        func choose(env: [String: String]) -> BootKernel? {
            var spec = defaultValue ?? "0"
            var how = "grub.cfg default \(spec)"
            if spec.contains("saved_entry") || spec == "saved" {
                spec = env["saved_entry"] ?? "0"
                how = "grubenv saved_entry \(spec)"
            }
            // "1>2": entry 2 of submenu 1; a number; else a title or id.
            var list = entries
            var chosen: Entry?
            for (n, part) in spec.split(separator: ">").enumerated() {
                let p = String(part)
                let found = Int(p).flatMap { list.indices.contains($0) ? list[$0] : nil } ?? list.first { $0.title == p || $0.id == p }
                guard let found else { chosen = nil; break }
                chosen = found
                if n < spec.split(separator: ">").count - 1 { list = found.children }
            }
            // A submenu chosen whole boots its first entry.
            while let c = chosen, c.linux == nil, let first = c.children.first { chosen = first }
            guard let c = chosen, let linux = c.linux, let release = Inspection.release(fromImage: linux) else { return nil }
            return BootKernel(release: release, image: linux, title: c.title, source: how)
        }
    }

    static func parseGrubConfig(_ text: String) -> GrubConfig {
        var cfg = GrubConfig()
        // A stack of open blocks: menuentry or submenu entries being filled, or other blocks (if/function).
        var stack: [GrubConfig.Entry?] = []
        func quoted(_ s: Substring) -> (String, Substring)? {
            var rest = s.drop { $0 == " " || $0 == "\t" }
            guard let q = rest.first else { return nil }
            if q == "'" || q == "\"" {
                rest = rest.dropFirst()
                guard let end = rest.firstIndex(of: q) else { return nil }
                return (String(rest[..<end]), rest[rest.index(after: end)...])
            }
            let word = rest.prefix { $0 != " " && $0 != "\t" && $0 != "{" }
            return (String(word), rest.dropFirst(word.count))
        }
        for raw in text.split(separator: "\n", omittingEmptySubsequences: true).prefix(100_000) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("#") { continue }
            if line.hasPrefix("menuentry ") || line.hasPrefix("submenu ") {
                let body = line.hasPrefix("menuentry ") ? line.dropFirst(10) : line.dropFirst(8)
                var entry = GrubConfig.Entry(title: quoted(body)?.0 ?? "")
                if let r = body.range(of: "$menuentry_id_option ") { entry.id = quoted(body[r.upperBound...])?.0 }
                if line.hasSuffix("{") { stack.append(entry); if stack.count > 64 { break } }
                continue
            }
            if line.hasPrefix("set default=") && stack.allSatisfy({ $0 == nil }) {
                var v = String(line.dropFirst("set default=".count))
                if v.count >= 2, let f = v.first, f == "\"" || f == "'", v.last == f { v = String(v.dropFirst().dropLast()) }
                cfg.defaultValue = v
                continue
            }
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if let first = words.first, ["linux", "linux16", "linuxefi"].contains(first) {
                if let i = stack.lastIndex(where: { $0 != nil }), stack[i]?.linux == nil {
                    stack[i]?.linux = words.dropFirst().first.map(String.init)
                }
                continue
            }
            let opens = line.hasSuffix("{") || line.hasPrefix("if ") || line.hasPrefix("function ")
            if opens && !line.hasPrefix("menuentry") { stack.append(nil) }
            if line == "}" || line == "fi" {
                guard let top = stack.popLast() else { continue }
                guard let entry = top else { continue }
                if let parent = stack.lastIndex(where: { $0 != nil }) {
                    stack[parent]?.children.append(entry)
                } else {
                    cfg.entries.append(entry)
                }
            }
        }
        return cfg
    }
}

/// Whether a package is a kernel, and whether it is the one that boots.
public enum KernelPackage {
    public enum Affects: String, Codable, Sendable { case booting, notBooting = "not-booting" }

    /// For a kernel image package, whether it is the kernel `booting` (a `uname -r` release);
    /// nil for other packages, meta packages (`linux-image-amd64`) and when it cannot be told.
    /// Debian/Ubuntu: `linux-image-<release>` (also `-unsigned`); RPM: `kernel`, `kernel-core`
    /// at version-release `<booting minus .arch>`; Alpine: `linux-<flavor>` at the booting
    /// release's version and flavor.
    public static func affects(package: String, installedVersion: String, booting: String) -> Affects? {
        for prefix in ["linux-image-unsigned-", "linux-image-"] where package.hasPrefix(prefix) {
            let release = String(package.dropFirst(prefix.count))
            guard release.first?.isNumber == true else { return nil }   // a meta package
            return release == booting ? .booting : .notBooting
        }
        if ["kernel", "kernel-core", "kernel-default"].contains(package) {
            // 6.5.6-300.fc39.x86_64 boots; the package is 6.5.6-300.fc39 (the epoch, if any, dropped).
            let version = installedVersion.split(separator: ":").last.map(String.init) ?? installedVersion
            return booting == version || booting.hasPrefix(version + ".") ? .booting : .notBooting
        }
        if package.hasPrefix("linux-"), ["lts", "virt", "edge", "rpi"].contains(String(package.dropFirst(6))) {
            // Alpine: linux-lts 6.6.22-r0 boots as 6.6.22-0-lts.
            let flavor = String(package.dropFirst(6))
            let parts = installedVersion.split(separator: "-r", maxSplits: 1)
            guard parts.count == 2 else { return nil }
            return booting == "\(parts[0])-\(parts[1])-\(flavor)" ? .booting : .notBooting
        }
        return nil
    }
}
