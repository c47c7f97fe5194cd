import ArgumentParser
import DiskImage
import Foundation
import WardenConfig
import GuestFS
import Ledger
import WardenCore
import WardenServices
#if canImport(Glibc)
import Glibc
#endif

/// `warden discover DIR…`: find disk images by content, register new ones, report naive clones.
struct DiscoverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discover",
        abstract: "Find disk images in folders by content; report identity collisions, unregistered copies and backing-file dependencies.",
        discussion: """
        Every regular file is checked by content, never by name: qcow2, VMDK, VHD, VHDX, VDI and OVA by their magic (a fixed VHD by its footer), a raw file \
        only when it holds a partition table or a known filesystem. Symbolic links are not followed. \
        Semantics: docs/ledger.md, section Discovery. JSON schema: docs/json-schemas/discover.v1.json.
        
        Examples:
          warden discover /srv/vms /mnt/nfs/images
          warden discover --register --owner ops /srv/incoming
        """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "Folders (or single files) to search.") var paths: [String]
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Register every image that is not in the ledger yet as a discovered VM.") var register = false
    @Option(help: "Owner of VMs registered by --register.") var owner = "unowned"
    @Option(help: "Host the images are stored on (default: this host).") var host: String?
    @Option(help: "Stop after this many files.") var maxFiles = 100_000

    func validate() throws {
        if paths.isEmpty { throw ValidationError("name at least one folder") }
        _ = try NameArgument.check(owner, what: "--owner")
        if let host, HostName(host) == nil { throw ValidationError("not a host name: \(oneLine(host))") }
        guard maxFiles > 0 else { throw ValidationError("--max-files must be positive") }
    }

    typealias Report = Discovery.Report

    func run() throws {
        let store = try database.open(create: register)
        let meter = ProgressMeter("discover", unit: .items("files"))
        let report = try Discovery.discover(store: store, paths: paths, maxFiles: maxFiles,
                                            register: register ? .init(owner: owner, host: host.flatMap(HostName.init) ?? .current) : nil,
                                            progress: { done, total in meter.setTotal(UInt64(total)); meter.set(done: UInt64(done)) })
        meter.finish()
        try Output.render(report, json: json, style: .ledger) {
            Self.printHuman(report)
        }
        Output.stdout.flush()
        for p in report.problems { Output.error(p.error) }
        if !report.problems.isEmpty { throw ExitCode(2) }
    }

    static func printHuman(_ r: Report) {
        let o = Output.stdout
        var rows = [["IMAGE", "FORMAT", "STATUS", "VM", "OS", "FINGERPRINT"]]
        for i in r.images {
            rows.append([oneLine(i.path), i.format, i.status, i.vm.map { String($0.prefix(8)) } ?? "-", oneLine(i.os ?? "-"),
                         String(i.fingerprint.prefix(19))])
        }
        for l in table(rows) { o.line(l) }
        if !r.collisions.isEmpty {
            o.line("identity collisions:")
            for c in r.collisions {
                o.line(oneLine("  \(c.kind) \(c.value) shared by \(c.guests.count) distinct guests:"))
                for g in c.guests { o.line(oneLine("    " + g.images.joined(separator: ", "))) }
            }
        }
        if !r.copies.isEmpty {
            o.line("unregistered copies:")
            for c in r.copies {
                o.line(oneLine("  \(c.path) has the content of \(c.ofPath)" + (c.ofVm.map { " (VM \($0.prefix(8)))" } ?? "")))
            }
        }
        if !r.backingDependencies.isEmpty {
            o.line("backing-file dependencies:")
            for b in r.backingDependencies {
                o.line(oneLine("  \(b.path) → " + b.backingChain.joined(separator: " → ")
                               + (b.backingVms.isEmpty ? "" : " (disk of VM " + b.backingVms.map { String($0.prefix(8)) }.joined(separator: ", ") + ")")))
            }
        }
    }
}
