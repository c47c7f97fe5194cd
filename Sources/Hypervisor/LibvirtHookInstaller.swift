import Foundation
import WardenCore

/// Installs the lean `warden-hook` executable (or, without one, `warden libvirt-hook`) as
/// libvirt's qemu hook.
///
/// Two forms: the folder form, `HOOKS/qemu.d/50-warden` (libvirt ≥ 6.5 runs every executable
/// in `qemu.d/`, in name order, and stops at the first failure), which coexists with other
/// hooks; and the single-file form, `HOOKS/qemu`, used only when asked for, and never over a
/// hook Warden did not write. The installed file is a small `/bin/sh` wrapper that names the
/// warden binary, the database and the policy directory, because libvirtd runs hooks with an
/// empty environment. Installing again with the same settings changes nothing.
public enum LibvirtHookInstaller {
    public enum Form: String, Sendable { case directory, file }

    public struct Result: Sendable, Equatable {
        public var path: String
        /// false when the file was already exactly this.
        public var changed: Bool
    }

    /// The marker line that identifies a hook Warden wrote.
    public static let marker = "# Installed by `warden libvirt install-hook`"

    static func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// The hook file. With `lean` the binary is `warden-hook` (no subcommand); otherwise it is
    /// `warden` and runs `warden libvirt-hook`. Both put `--` before libvirt's arguments, so a
    /// domain named like an option (`--db`) stays a domain name.
    public static func script(warden: String, database: String, policy: String, lean: Bool = false) -> String {
        let command = lean ? "\(shellQuote(warden)) --db \(shellQuote(database)) --policy \(shellQuote(policy)) --"
                           : "\(shellQuote(warden)) libvirt-hook --db \(shellQuote(database)) --policy \(shellQuote(policy)) --"
        return """
        #!/bin/sh
        \(marker); run it again to change this file.
        # libvirt calls: qemu DOMAIN OPERATION SUB-OPERATION EXTRA, with the domain XML on stdin.
        exec \(command) "$@"

        """
    }

    /// Installs the hook. `warden` is the executable the hook file runs: the lean `warden-hook`
    /// when `lean` is true, else `warden` itself.
    public static func install(hooksDirectory: String, form: Form, warden: String, database: String, policy: String,
                               name: String = "50-warden", lean: Bool = false) throws -> Result {
        for (what, p) in [(lean ? "warden-hook binary" : "warden binary", warden), ("database", database), ("policy directory", policy)] where !p.hasPrefix("/") {
            throw WardenError(.invalidArgument, "the \(what) must be an absolute path (libvirtd runs hooks from /)", file: p)
        }
        let fm = FileManager.default
        let path: String
        switch form {
        case .directory:
            let dir = hooksDirectory + "/qemu.d"
            do { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755]) } catch {
                throw WardenError(.io, "cannot create the hook folder: \(error.localizedDescription)", file: dir)
            }
            path = dir + "/" + name
        case .file:
            do { try fm.createDirectory(atPath: hooksDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755]) } catch {
                throw WardenError(.io, "cannot create the hooks folder: \(error.localizedDescription)", file: hooksDirectory)
            }
            path = hooksDirectory + "/qemu"
        }
        let text = script(warden: warden, database: database, policy: policy, lean: lean)
        if let existing = try? String(contentsOfFile: path, encoding: .utf8) {
            if form == .file && !existing.contains(marker) {
                throw WardenError(.conflict, "a qemu hook that Warden did not write is already installed; use the qemu.d folder form, or move it into qemu.d/", file: path)
            }
            if existing == text, let attrs = try? fm.attributesOfItem(atPath: path),
               (attrs[.posixPermissions] as? NSNumber)?.intValue == 0o755 {
                return Result(path: path, changed: false)
            }
        }
        // Write beside it and rename, so libvirtd never runs a half-written hook.
        let tmp = path + ".warden-\(getpid())"
        guard fm.createFile(atPath: tmp, contents: Data(text.utf8), attributes: [.posixPermissions: 0o755]) else {
            throw WardenError(.io, "cannot write the hook", file: tmp)
        }
        _ = chmod(tmp, 0o755)
        guard rename(tmp, path) == 0 else {
            let err = String(cString: strerror(errno))
            unlink(tmp)
            throw WardenError(.io, "cannot install the hook: \(err)", file: path)
        }
        return Result(path: path, changed: true)
    }
}
