import ArgumentParser
import Foundation
import WardenCore
import DiskImage
import GuestFS
import Inspection

/// `warden inspect IMAGE… [--json]`: what is inside a guest, read offline.
extension SBOM.Format: ExpressibleByArgument {}

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Inspect guests offline: OS, identity, accounts, SSH keys, secrets, packages, services, kernels (encrypted ones with --key-from); Windows guests from their registry.",
        discussion: """
            Reads each image without booting or mounting it. JSON schema: docs/json-schemas/inspect.v1.json.
            
            Examples:
              warden inspect disk.qcow2
              warden inspect --sbom cyclonedx disk.qcow2 > sbom.json
            """
    )

    @Argument(help: "Disk images (raw, qcow2, VMDK, VHD, VHDX, VDI or OVA).")
    var images: [String]

    @Option(help: "Force the image format instead of detecting it: raw, qcow2, vmdk, vhd, vhdx, vdi or ova.")
    var format: ImageFormat?

    @Option(help: "Inspect the disk as it was at this internal snapshot (name or id).")
    var snapshot: String?

    @Flag(help: "Print JSON: one inventory per image, in an array.")
    var json = false

    @OptionGroup var key: KeyFromOption

    @Flag(help: "Exit 2 when a part of a disk was not read (a closed encrypted volume, an unreadable filesystem, an LVM problem).")
    var failOnUnscanned = false
    @Flag(help: "Print on stderr how many bytes were read from each image, against its allocated size.")
    var ioStats = false
    @Flag(help: "Do not replay ext3/ext4 journals that need recovery: inspect the filesystems as they lie on the disk.")
    var noReplay = false

    @Option(help: ArgumentHelp("Print a software bill of materials instead: cyclonedx (CycloneDX 1.5 JSON) or spdx (SPDX 2.3 JSON). One image only; SOURCE_DATE_EPOCH fixes the timestamp.",
                               valueName: "cyclonedx|spdx"))
    var sbom: SBOM.Format?

    func validate() throws {
        if images.isEmpty { throw ValidationError("name at least one image") }
        if sbom != nil {
            if images.count != 1 { throw ValidationError("--sbom writes one document for one image; \(images.count) images given") }
            if json { throw ValidationError("--sbom and --json cannot be combined") }
        }
    }

    /// The SBOM timestamp: `SOURCE_DATE_EPOCH` (seconds since the epoch) when set, else now.
    static func sbomDate() throws -> Date {
        guard let raw = ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"] else { return Date() }
        guard let secs = Int64(raw.trimmingCharacters(in: .whitespaces)), secs >= 0, secs < 253_402_300_800 else {
            throw WardenError(.invalidArgument, "SOURCE_DATE_EPOCH must be a non-negative integer number of seconds, not \(raw)")
        }
        return Date(timeIntervalSince1970: TimeInterval(secs))
    }

    func runSBOM(_ format: SBOM.Format, path: String) throws {
        do {
            let created = try Self.sbomDate()
            let inv = try Self.inventory(path, format: self.format, snapshot: snapshot, passphrase: try key.passphrase(forImage: path))
            try Output.stdout.write(try SBOM.document(inv, format: format, created: created))
            Output.stdout.flush()
        } catch let w as WindowsGuest {
            do {
                guard let (_, info) = w.inspect() else { throw WardenError(.unsupported, "a Windows guest whose NTFS volume does not open") }
                try Output.stdout.write(try SBOM.windowsDocument(info, image: path, format: format, created: try Self.sbomDate()))
                Output.stdout.flush()
            } catch let e as WardenError {
                Output.error(e.inFile(path).description)
                throw ExitCode(2)
            }
        } catch let e as WardenError {
            Output.error(e.inFile(path).description)
            throw ExitCode(2)
        }
    }

    /// Inspects one image; Windows (NTFS without a Linux root) is recognised, not read.
    static func inventory(_ path: String, format: ImageFormat?, snapshot: String?, passphrase: SecretBytes? = nil) throws -> Inventory {
        try OpenedGuest.open(path, format: format, snapshot: snapshot, passphrase: passphrase).inventory()
    }

    typealias WindowsGuest = OpenedGuest.WindowsGuest

    func run() throws {
        EXT4.replayJournal.withLock { $0 = !noReplay }
        if let sbom, let path = images.first { return try runSBOM(sbom, path: path) }
        var results: [Inventory] = []
        var failures: [WardenError] = []
        var windows: [(String, WindowsGuest)] = []
        for path in images {
            _ = IOStatistics.shared.takePhases()
            let before = IOStatistics.shared.snapshot
            defer {
                if ioStats {
                    let after = IOStatistics.shared.snapshot
                    let read = after.bytes - before.bytes
                    let chain = (try? ImageOpener.open(path, options: OpenOptions(format: format)).chain) ?? []
                    let allocated = chain.reduce(UInt64(0)) { $0 + $1.allocatedSize }
                    let share = allocated > 0 ? Double(read) / Double(allocated) * 100 : 0
                    Output.note("\(path): read \(read) bytes in \(after.reads - before.reads) reads; \(allocated) bytes allocated (\(String(format: "%.2f", share))%)")
                    // Which part read what; the rest is opening the image, its volumes and filesystems.
                    let phases = IOStatistics.shared.takePhases()
                    let measured = phases.reduce((UInt64(0), UInt64(0))) { ($0.0 + $1.bytes, $0.1 + $1.reads) }
                    let parts = [("opening", read &- min(read, measured.0), (after.reads - before.reads) &- min(after.reads - before.reads, measured.1))]
                        + phases.map { ($0.name, $0.bytes, $0.reads) }
                    Output.note("\(path): " + parts.map { "\($0.0) \($0.1) bytes in \($0.2) reads" }.joined(separator: "; "))
                }
            }
            do {
                results.append(try Self.inventory(path, format: format, snapshot: snapshot, passphrase: try key.passphrase(forImage: path)))
            } catch let w as WindowsGuest {
                windows.append((path, w))
            } catch let e as WardenError {
                failures.append(e)
            }
        }
        if json {
            var docs: [String] = try results.map { try Output.json($0) }
            for (path, w) in windows {
                let read = w.inspect()
                docs.append(try Output.json(WindowsInventory(image: path, os: read?.os ?? Inspection.windowsOS(volume: w.volume), windows: read?.windows)))
            }
            Output.stdout.line("[\n" + docs.joined(separator: ",\n") + "\n]")
        } else {
            for inv in results { Self.printHuman(inv) }
            for (path, w) in windows {
                guard let (_, info) = w.inspect() else {
                    Output.stdout.line("\(path): Windows (NTFS on \(w.volume)); its volume could not be opened")
                    continue
                }
                Self.printWindows(path, info)
            }
        }
        Output.stdout.flush()
        for inv in results {
            for u in inv.unscanned ?? [] { Output.note("\(inv.image): \(u.part) was not scanned: \(u.reason)") }
        }
        for e in failures { Output.error(e.description) }
        if !failures.isEmpty { throw ExitCode(2) }
        if failOnUnscanned, results.contains(where: { !($0.unscanned ?? []).isEmpty }) {
            Output.error("--fail-on-unscanned: parts of the disk were not read")
            throw ExitCode(2)
        }
    }

    struct WindowsInventory: Encodable {
        var schema = "warden.inspect/v1"
        var image: String
        var os: OSInfo
        var windows: WindowsInfo?
    }

    static func printWindows(_ path: String, _ w: WindowsInfo) {
        let out = Output.stdout
        func show<T>(_ f: Fact<T>, _ render: (T) -> String = { "\($0)" }) -> String {
            switch f {
            case .known(let v): return oneLine(render(v))
            case .unknown(let reason): return "unknown (\(oneLine(reason)))"
            }
        }
        out.line("\(path): Windows (NTFS on \(w.volume))")
        out.line("  product:       \(show(w.productName)) (\(show(w.editionId)))")
        out.line("  version:       \(show(w.displayVersion)), build \(show(w.build))")
        out.line("  installed:     \(show(w.installDate))")
        out.line("  system root:   \(show(w.systemRoot))")
        out.line("  computer name: \(show(w.computerName)), domain \(show(w.domain))")
        out.line("  machine GUID:  \(show(w.machineGuid))")
        out.line("  machine SID:   \(show(w.machineSid))")
        out.line("  drives:        \(show(w.driveLetters) { $0.map { "\($0.letter) \($0.target)" }.joined(separator: "; ") })")
        out.line("  accounts:      \(show(w.accounts) { $0.map { "\($0.name) (\($0.rid)\($0.disabled.value == true ? ", disabled" : ""))" }.joined(separator: ", ") })")
        out.line("  software:      \(show(w.software) { "\($0.count) programs" })")
        out.line("  updates:       \(show(w.updates) { $0.joined(separator: ", ") })")
        out.line("  services:      \(show(w.services) { "\($0.count) (\($0.filter { $0.start == "automatic" }.count) automatic)" })")
        out.line("  firewall:      \(show(w.firewall) { $0.map { "\($0.profile) \($0.enabled ? "on" : "off")" }.joined(separator: ", ") })")
        out.line("  RDP:           \(show(w.rdpEnabled) { $0 ? "enabled" : "disabled" })")
        for h in w.hives where h.dirty || !h.logs.isEmpty || h.problem != nil {
            out.line("  hive \(h.name):    " + (h.problem ?? (h.dirty ? "dirty; transaction logs not replayed (\(h.logs.joined(separator: ", ")))" : "logs present: \(h.logs.joined(separator: ", "))")))
        }
    }

    static func printHuman(_ inv: Inventory) {
        let out = Output.stdout
        func show<T>(_ f: Fact<T>, _ render: (T) -> String = { "\($0)" }) -> String {
            switch f {
            case .known(let v): return oneLine(render(v))
            case .unknown(let reason): return "unknown (\(oneLine(reason)))"
            }
        }
        out.line("image: \(oneLine(inv.image))")
        out.line("mounts:")
        for m in inv.mounts {
            let sub = m.subvolume.map { " subvolume \($0)" } ?? ""
            out.line(oneLine("  \(m.path)  \(m.type)  \(m.volume.displayName)\(sub)  \(m.volume.filesystem?.uuid ?? "")"))
        }
        for p in inv.unassembled { out.line(oneLine("  not mounted: line \(p.line) \(p.spec) \(p.mountPoint): \(p.reason)")) }
        out.line("os: \(show(inv.os.prettyName)); id \(show(inv.os.id)) \(show(inv.os.versionId)); family \(show(inv.os.family) { $0.rawValue })")
        out.line("architecture: \(show(inv.os.architecture) { $0.name }); init: \(show(inv.os.initSystem) { $0.rawValue })")
        if let booting = inv.kernels.value?.booting {
            out.line("booting kernel: " + show(booting) { "\($0.release) (\($0.source))" })
        }
        if let support = inv.releaseSupport {
            out.line("support: " + show(support) { s in
                let end = s.endOfLongTermSupport.map { "LTS until \($0)" } ?? s.endOfLife.map { "until \($0)" } ?? "?"
                return (s.ended ? "ENDED (\(end))" : end) + "; from \(s.source)"
            })
        }
        out.line("hostname: \(show(inv.identity.hostname))")
        out.line("machine-id: \(show(inv.identity.machineId))")
        out.line("random seed: \(inv.identity.randomSeed.present ? "present" : "absent")")
        out.line("cloud-init instance-id: \(show(inv.identity.cloudInitInstanceId))")
        for k in inv.ssh.hostKeys {
            out.line("ssh host key: \(show(k.publicKey) { $0.fingerprintLine })")
        }
        if let accounts = inv.accounts.accounts.value {
            let login = accounts.filter(\.canLogIn)
            out.line("accounts: \(accounts.count), \(login.count) can log in: \(oneLine(login.map(\.name).joined(separator: ", ")))")
            let admins = accounts.filter(\.isAdmin)
            if !admins.isEmpty {
                out.line("admins: " + oneLine(admins.map { $0.name + ($0.sudoNoPassword ? " (NOPASSWD)" : "") }.joined(separator: ", ")))
            }
        } else {
            out.line("accounts: \(show(inv.accounts.accounts) { "\($0.count)" })")
        }
        let sshd = inv.ssh.sshd
        func setting(_ f: Fact<SSHDSetting>) -> String {
            show(f) { $0.value + ($0.isDefault ? " (default)" : "") }
        }
        out.line("sshd: PermitRootLogin \(setting(sshd.permitRootLogin)), PasswordAuthentication \(setting(sshd.passwordAuthentication)), PermitEmptyPasswords \(setting(sshd.permitEmptyPasswords))")
        out.line("packages: \(show(inv.packages) { invs in invs.map { "\($0.manager.rawValue) \($0.packages.count)" + ($0.unknownReason.map { " (\($0))" } ?? "") }.joined(separator: ", ") })")
        out.line("kernels: \(show(inv.kernels) { $0.kernels.map(\.release).joined(separator: ", ") })")
        out.line("services: \(show(inv.services) { "\($0.enabled.count) enabled systemd units, \($0.masked.count) masked, \($0.openrc.count) OpenRC" })")
        let sec = inv.secrets
        out.line("secrets at rest: \(sec.findings.count) files" + (sec.truncated ? " (search truncated: \(oneLine(sec.truncatedReason ?? ""))" : ""))
        for f in sec.findings.prefix(50) {
            let what: String
            switch f.kind {
            case .privateKey(let fmt, let p): what = "private key (\(fmt.rawValue)\(p.map { $0 ? ", passphrase" : ", no passphrase" } ?? ""))"
            case .cloudCredentials(let prov): what = "credentials (\(prov.rawValue))"
            case .shellHistory(let sh): what = "history (\(oneLine(sh)))"
            }
            out.line(oneLine("  \(f.path)  \(what)  uid \(f.uid) mode \(f.mode)"))
        }
        for w in inv.filesystemWarnings.prefix(5) { out.line(oneLine("warning: \(w)")) }
        out.line("")
    }
}
