import ArgumentParser
import Foundation
import WardenCore
import DiskImage
import GuestFS
import Sysprep
import Ledger
import WardenServices

/// Options shared by `image sysprep` and `vm clone`: which operations, and their inputs.
struct SysprepSelection: ParsableArguments {
    @Option(help: ArgumentHelp("Operations to run: names, -name to drop one, or defaults/all/none (a list starting with -name starts from the defaults). See docs/sysprep.md or --list-operations.",
                               valueName: "a,b,-c"))
    var operations: String?

    @Option(help: "The new hostname (/etc/hostname and the 127.0.1.1 line of /etc/hosts).")
    var hostname: String?

    @Option(help: ArgumentHelp("Remove this user's ~/.ssh/authorized_keys (enables the authorized-keys operation; repeatable).", valueName: "USER"))
    var removeAuthorizedKeys: [String] = []

    @Flag(help: "List the operations, their defaults and virt-sysprep equivalents, and exit.")
    var listOperations = false

    func validate() throws {
        if let hostname, !SysprepOptions.validHostname(hostname) {
            throw ValidationError("not a valid hostname: \(oneLine(hostname)) (letters, digits, hyphens and dots; labels of 1-63)")
        }
        for u in removeAuthorizedKeys where u.isEmpty || u.contains("/") || u.contains(":") || u.contains(where: \.isNewline) {
            throw ValidationError("not a user name: \(oneLine(u))")
        }
        do { _ = try selected() } catch let e as WardenError { throw ValidationError(e.message) }
    }

    /// The chosen operations; naming a user for authorized-keys turns that operation on.
    func selected() throws -> [any SysprepOperation] {
        var ops = try Sysprep.select(operations)
        if !removeAuthorizedKeys.isEmpty, !ops.contains(where: { $0.name == "authorized-keys" }) {
            ops = try Sysprep.select((ops.map(\.name) + ["authorized-keys"]).joined(separator: ","))
        }
        if ops.contains(where: { $0.name == "authorized-keys" }), removeAuthorizedKeys.isEmpty {
            throw WardenError(.invalidArgument, "the authorized-keys operation needs --remove-authorized-keys USER")
        }
        return ops
    }

    static func printOperations() {
        var rows: [[String]] = [["NAME", "DEFAULT", "VIRT-SYSPREP", "WHAT"]]
        for op in Sysprep.operations {
            rows.append([op.name, op.defaultEnabled ? "on" : "off", op.virtSysprepEquivalent, op.summary])
        }
        for r in rows { Output.stdout.line(r.joined(separator: "\t")) }
        Output.stdout.flush()
    }

    /// Prints a report for humans: one line per change, grouped by operation.
    static func printReport(_ r: SysprepReport) {
        let out = Output.stdout
        out.line(oneLine("image: \(r.image)") + (r.dryRun ? " (dry run: nothing written)" : ""))
        for op in r.operations {
            out.line("\(op.name):")
            for c in op.changes {
                let verb = r.dryRun && c.action != .none ? "would \(c.action.rawValue)" : c.action.rawValue
                out.line(oneLine("  \(verb)\(c.path.map { " \($0)" } ?? ""): \(c.detail)"))
            }
        }
        if let m = r.machineId { out.line("machine-id: \(m)") }
        for k in r.hostKeys { out.line("ssh host key: \(k.bits) \(k.fingerprint) (\(k.type)) \(k.path)") }
    }
}

extension ImageSysprep {
    /// A disk of a VM in the ledger changes identity only through `vm clone`, which records it.
    /// Without a ledger database there is nothing to check.
    static func refuseLedgerDisk(_ image: String, _ database: DatabaseOptions) throws {
        guard FileManager.default.fileExists(atPath: database.path) else { return }
        let store = try database.open(create: false)
        if let d = try store.disk(atPath: absolutePath(image)) {
            throw WardenError(.conflict, "is disk \(d.index) of VM \(d.vm) in the ledger; refresh a copy with `warden vm clone` instead",
                              file: image)
        }
    }
}

/// `warden image sysprep IMAGE`: refresh a guest's identity in place (an image not in the ledger).
struct ImageSysprep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sysprep",
        abstract: "Refresh a guest's identity in place: machine-id, SSH host keys, random seed, hostname, leases…",
        discussion: """
        Writes into the image itself (a qcow2 gets new clusters; its backing files are never written; \
        a raw image is written directly). For a VM in the ledger use `warden vm clone`. --dry-run \
        opens the image read-only and lists what would change. Operations: docs/sysprep.md. JSON \
        schema: warden.sysprep/v1 (docs/sysprep.md).
        
        Examples:
          warden image sysprep --dry-run copy.qcow2
          warden image sysprep --hostname web2 copy.qcow2
        """
    )

    @Argument(help: "The disk image (raw or qcow2).")
    var image: String?

    @Option(help: "Force the image format instead of detecting it: raw or qcow2.")
    var format: ImageFormat?

    @OptionGroup var selection: SysprepSelection

    @Flag(help: "Change nothing: open the image read-only and list what would change.")
    var dryRun = false

    @Flag(help: "Print JSON (schema warden.sysprep/v1).")
    var json = false

    @OptionGroup var database: DatabaseOptions

    func validate() throws {
        if image == nil && !selection.listOperations { throw ValidationError("name the image to refresh") }
    }

    func run() throws {
        if selection.listOperations { return SysprepSelection.printOperations() }
        guard let image else { return }
        let ops = try selection.selected()
        var options = SysprepOptions(hostname: selection.hostname, authorizedKeysUsers: selection.removeAuthorizedKeys)
        let report: SysprepReport
        // Start RSA generation before the ledger check, so the two overlap; the RSA key comes
        // from the host key pool beside the database when there is one (`warden keys refill`).
        if !dryRun, ops.contains(where: { $0.name == "ssh-hostkeys" }) {
            let pool = KeysCommand.pool(database: database.path)
            var isDir: ObjCBool = false
            let usable = FileManager.default.fileExists(atPath: pool.directory, isDirectory: &isDir) && isDir.boolValue
            options.keys = HostKeyForge(pool: usable ? pool : nil)
        }
        if dryRun {
            report = try Sysprep.planImage(image, format: format, operations: ops, options: options)
        } else {
            try Self.refuseLedgerDisk(image, database)
            PhaseTimer.shared.lap("ledger-check")
            report = try Sysprep.applyImage(image, format: format, operations: ops, options: options)
        }
        try Output.render(report, json: json) {
            SysprepSelection.printReport(report)
        }
        Output.stdout.flush()
    }
}
