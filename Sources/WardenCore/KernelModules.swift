import Foundation

/// The host kernel's loadable modules, as an appliance or a test guest needs them: which
/// kernel in `/boot` has its modules installed, and the load order of a set of modules with
/// their dependencies, from `modules.dep` (the file `depmod` writes).
public enum KernelModules {
    /// A kernel image with its modules directory.
    public struct Kernel: Sendable, Equatable {
        public var image: String
        public var version: String
        public var modulesDirectory: String { "/lib/modules/\(version)" }
        public init(image: String, version: String) { self.image = image; self.version = version }
    }

    /// The newest `/boot/vmlinuz-VER` whose `/lib/modules/VER/modules.dep` exists and, when
    /// `config` is given, whose `/boot/config-VER` has that line (`CONFIG_VMGENID=y`).
    public static func newestKernel(boot: String = "/boot", modules: String = "/lib/modules", requiring config: String? = nil) -> Kernel? {
        let fm = FileManager.default
        let names = (try? fm.contentsOfDirectory(atPath: boot)) ?? []
        let versions = names.filter { $0.hasPrefix("vmlinuz-") }.map { String($0.dropFirst("vmlinuz-".count)) }
        for v in versions.sorted(by: { $0.compare($1, options: .numeric) == .orderedAscending }).reversed() {
            guard fm.fileExists(atPath: "\(modules)/\(v)/modules.dep") else { continue }
            if let want = config, let text = try? String(contentsOfFile: "\(boot)/config-\(v)", encoding: .utf8),
               !text.split(separator: "\n").contains(where: { $0 == want }) { continue }
            return Kernel(image: "\(boot)/vmlinuz-\(v)", version: v)
        }
        return nil
    }

    /// The module name of a `modules.dep` path (`kernel/fs/ext4/ext4.ko.xz` → `ext4`), with
    /// `-` spelt `_` as modprobe compares them.
    public static func name(ofPath path: String) -> String {
        var base = (path as NSString).lastPathComponent
        for ext in [".xz", ".zst", ".gz"] where base.hasSuffix(ext) { base = String(base.dropLast(ext.count)) }
        if base.hasSuffix(".ko") { base = String(base.dropLast(3)) }
        return base.replacingOccurrences(of: "-", with: "_")
    }

    /// Resolves `wanted` and their dependencies from a `modules.dep` text, in load order
    /// (dependencies first), as paths relative to the modules directory. A wanted module that
    /// is not listed throws, unless it is in `optional` (a module built into the kernel is
    /// absent from `modules.dep` and needs no loading).
    public static func loadOrder(_ wanted: [String], modulesDep: String, optional: Set<String> = []) throws -> [String] {
        var deps: [String: [String]] = [:]
        var pathOf: [String: String] = [:]
        for line in modulesDep.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let path = String(line[..<colon])
            pathOf[name(ofPath: path)] = path
            deps[path] = line[line.index(after: colon)...].split(separator: " ").map(String.init)
        }
        var order: [String] = []
        var seen = Set<String>()
        func visit(_ path: String, depth: Int) {
            guard depth < 64, seen.insert(path).inserted else { return }
            // modules.dep lists a module's dependencies so that the last one loads first.
            for d in (deps[path] ?? []).reversed() { visit(d, depth: depth + 1) }
            order.append(path)
        }
        for w in wanted {
            let key = w.replacingOccurrences(of: "-", with: "_")
            guard let p = pathOf[key] else {
                if optional.contains(w) { continue }
                throw WardenError(.unavailable, "kernel module \(w) is not in modules.dep")
            }
            visit(p, depth: 0)
        }
        return order
    }
}
