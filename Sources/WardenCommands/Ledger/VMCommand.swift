import ArgumentParser
import DiskImage
import Foundation
import GuestFS
import Inspection
import Ledger
import Policy
import WardenCore
import WardenServices
import Vault
import Hypervisor
#if canImport(Glibc)
import Glibc
#endif

/// `warden vm …`: VMs as first-class objects in the ledger.
struct VMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Register, copy, clone, encrypt, transfer and retire VMs; start, stop, snapshot, roll back and patch them on QEMU; push and pull them through OCI registries; show their history and lineage.",
        subcommands: [VMRegister.self, VMList.self, VMShow.self, VMCopy.self, VMClone.self, VMTransfer.self, VMRetire.self,
                      VMHistory.self, VMLineage.self,
                      VMStart.self, VMStop.self, VMEncrypt.self, VMStatus.self, VMConsole.self, VMSnapshot.self, VMRollback.self, VMStateServer.self, VMTPM.self, VMPatch.self, VMUnpatch.self, VMPush.self, VMPull.self]
    )
}

/// The event payload of registered and discovered VMs (``ExaminedDisk/payload(_:)``).
func diskPayload(_ disks: [ExaminedDisk]) -> [String: JSONValue] { ExaminedDisk.payload(disks) }

// MARK: - register

struct VMRegister: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "register",
        abstract: "Register a VM from its disk images; prints the new VM id.",
        discussion: """
            Each image is opened (format by content), fingerprinted and, when possible, inspected; the VM is recorded as stored on this host (or --host).
            
            Example:
              warden vm register disk.qcow2 --name web --owner alice --label env=prod
            """
    )
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM's disk images, boot disk first.") var images: [String]
    @Option(help: "The VM's name.") var name: String
    @Option(help: "Who is responsible for the VM.") var owner: String
    @Option(name: .customLong("label"), help: ArgumentHelp("A label KEY=VALUE (repeatable).", valueName: "key=value"))
    var labels: [String] = []
    @Option(help: "The host the images are stored on (default: this host).") var host: String?
    @Flag(help: "Encrypt the disks right away (qcow2 with LUKS, keys in the vault; docs/vault.md), as `vm encrypt` does.") var encrypt = false

    func validate() throws {
        if images.isEmpty { throw ValidationError("name at least one disk image") }
        if encrypt && host != nil { throw ValidationError("--encrypt works on this host's images only (no --host)") }
        _ = try NameArgument.check(name, what: "--name")
        _ = try NameArgument.check(owner, what: "--owner")
        _ = try LabelArgument.parse(labels)
        if let host, HostName(host) == nil { throw ValidationError("not a host name: \(oneLine(host))") }
    }

    func run() throws {
        let store = try database.open(create: true)
        let created = try VMService(store: store, host: host.flatMap(HostName.init) ?? .current)
            .register(.init(images: images, name: name, owner: owner, labels: try LabelArgument.parse(labels)))
        if encrypt {
            do {
                for d in try VMRun.runner(store).encrypt(created, vault: VMRun.vault(store)) {
                    Output.note("encrypted disk \(d.index) of \(created.name) (key \(d.key))")
                }
            } catch {
                Output.note("VM \(created.id) is registered, but its disks are NOT encrypted: retry with `warden vm encrypt \(created.id)`")
                throw error
            }
        }
        Output.stdout.line(created.id.description)
    }
}

// MARK: - list / show

/// A VM as JSON shows it (ids and generations as lower-case strings).
struct VMJSON: Encodable {
    var id: String
    var name: String
    var owner: String
    var labels: [String: String]
    var state: String
    var generation: String
    @ExplicitNull var parent: String?
    @ExplicitNull var parentGeneration: String?
    var createdAt: Date
    var updatedAt: Date
    @ExplicitNull var mac: String?
    init(_ v: VMRecord) {
        id = v.id.description; name = v.name; owner = v.owner; labels = v.labels; state = v.state.rawValue
        generation = v.generation.uuidString.lowercased(); parent = v.parent?.description
        parentGeneration = v.parentGeneration?.uuidString.lowercased()
        createdAt = v.createdAt; updatedAt = v.updatedAt; mac = v.mac
    }
}

struct DiskJSON: Encodable {
    var index: Int
    var path: String
    var format: String
    var backingChain: [String]
    @ExplicitNull var fingerprint: String?
    init(_ d: DiskRecord) {
        index = d.index; path = d.path; format = d.format; backingChain = d.backingChain
        fingerprint = d.fingerprint?.description
    }
}

struct ResidencyJSON: Encodable {
    var host: String
    var kind: String
    var from: Date
    @ExplicitNull var to: Date?
    init(_ r: ResidencyRecord) { host = r.host.value; kind = r.kind.rawValue; from = r.from; to = r.to }
}

struct VMList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the VMs in the ledger.",
        discussion: """
            Examples:
              warden vm list
              warden vm list --json
            """,
                                                    aliases: ["ls"])
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "Print JSON (docs/json-schemas/vm-list.v1.json).") var json = false

    struct Doc: Encodable { var schema = "warden.vm-list/v1"; var vms: [VMJSON] }

    func run() throws {
        let store = try database.open(create: false)
        let vms = try store.listVMs().sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
        try Output.render(Doc(vms: vms.map(VMJSON.init)), json: json, style: .ledger) {
            var rows = [["ID", "NAME", "OWNER", "STATE", "CREATED"]]
            for v in vms {
                rows.append([shortID(v.id), oneLine(v.name), oneLine(v.owner), v.state.rawValue, TimeArgument.format(v.createdAt)])
            }
            for l in table(rows) { Output.stdout.line(l) }
        }
    }
}

struct VMShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one VM: record, disks, residency and snapshots.",
        discussion: """
            Example:
              warden vm show web
            """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM: its id, a unique id prefix (4+ hex digits) or a unique name.") var vm: String
    @Flag(help: "Print JSON (docs/json-schemas/vm-show.v1.json).") var json = false

    struct SnapJSON: Encodable {
        var name: String; var generation: String; var createdAt: Date
    }
    struct Doc: Encodable {
        var schema = "warden.vm/v1"
        var vm: VMJSON
        var disks: [DiskJSON]
        var residency: [ResidencyJSON]
        var snapshots: [SnapJSON]
        var events: Int
        @ExplicitNull var lastScan: Date?
    }

    func run() throws {
        let store = try database.open(create: false)
        let v = try store.resolveVM(vm)
        let disks = try store.disks(of: v.id)
        let res = try store.residency(of: v.id).sorted { ($0.from, $0.host) < ($1.from, $1.host) }
        let snaps = try store.snapshots(of: v.id)
        let events = try store.events(of: v.id)
        let doc = Doc(vm: VMJSON(v), disks: disks.map(DiskJSON.init), residency: res.map(ResidencyJSON.init),
                      snapshots: snaps.map { SnapJSON(name: $0.name, generation: $0.generation.uuidString.lowercased(), createdAt: $0.createdAt) },
                      events: events.count, lastScan: try store.lastScan(of: v.id))
        try Output.render(doc, json: json, style: .ledger) {
            let o = Output.stdout
            o.line("id:         \(v.id)")
            o.line("name:       \(oneLine(v.name))")
            o.line("owner:      \(oneLine(v.owner))")
            o.line("state:      \(v.state.rawValue)")
            o.line("generation: \(doc.vm.generation)")
            if let p = v.parent { o.line("parent:     \(p) (generation \(doc.vm.parentGeneration ?? "?"))") }
            o.line("created:    \(TimeArgument.format(v.createdAt))")
            if !v.labels.isEmpty {
                o.line("labels:     " + v.labels.sorted { $0.key < $1.key }.map { oneLine("\($0.key)=\($0.value)") }.joined(separator: " "))
            }
            o.line("disks:")
            for d in disks {
                o.line(oneLine("  \(d.index)  \(d.format)  \(d.path)  \(d.fingerprint?.description ?? "-")"))
                for b in d.backingChain { o.line(oneLine("     backed by \(b)")) }
            }
            if !res.isEmpty {
                o.line("residency:")
                for r in res {
                    o.line(oneLine("  \(r.kind.rawValue) on \(r.host.value)  \(TimeArgument.format(r.from)) – \(r.to.map(TimeArgument.format) ?? "now")"))
                }
            }
            if !snaps.isEmpty {
                o.line("snapshots:")
                for s in snaps { o.line(oneLine("  \(s.name)  \(TimeArgument.format(s.createdAt))  generation \(s.generation.uuidString.lowercased())")) }
            }
            o.line("events:     \(events.count)")
        }
    }
}

// MARK: - copy

struct VMCopy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy", abstract: "Copy a VM's disks into a folder and record the copy with its lineage.",
        discussion: """
        A full copy duplicates each disk file byte for byte (sparse). --overlay instead creates a qcow2 \
        overlay backed by each disk (qemu-img create -f qcow2 -b DISK -F FORMAT). The copy is a new VM \
        whose parent is VM at its current generation; it gets a new generation of its own.
        
        Example:
          warden vm copy web /srv/vms --name web-standby
        """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM to copy.") var vm: String
    @Argument(help: "The folder for the new disk files (created if missing; existing files are never overwritten).") var dest: String
    @Option(help: "The new VM's name (default: NAME-copy).") var name: String?
    @Flag(help: "Create qcow2 overlays backed by the original disks instead of full copies.") var overlay = false
    @Option(help: "The host the copy is stored on (default: this host).") var host: String?
    @OptionGroup var policyOptions: PolicyOptions

    func validate() throws {
        if let name { _ = try NameArgument.check(name, what: "--name") }
        if let host, HostName(host) == nil { throw ValidationError("not a host name: \(oneLine(host))") }
    }

    func run() throws {
        let store = try database.open(create: false)
        // An encrypted VM's full copy is re-encrypted under keys of its own; the source's keys
        // are released by an unlock decision on the source (docs/vault.md).
        let service = VMRun.service(store, policy: policyOptions.source)
        let created = try service
            .copy(.init(vm: vm, destination: dest, name: name, overlay: overlay, host: host.flatMap(HostName.init)),
                  testPause: TestHooks.pause("WARDEN_TEST_COPY_PAUSE"), afterLink: TestHooks.pause("WARDEN_TEST_COPY_LINKED_PAUSE"))
        Output.stdout.line(created.id.description)
    }
}

// MARK: - transfer / retire

struct VMTransfer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "transfer", abstract: "Give a VM to a new owner.",
        discussion: """
            Example:
              warden vm transfer web --to bob
            """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM.") var vm: String
    @Option(help: "The new owner.") var to: String

    @OptionGroup var policyOptions: PolicyOptions

    func validate() throws { _ = try NameArgument.check(to, what: "--to") }

    func run() throws {
        let store = try database.open(create: false)
        let (v, e) = try VMService(store: store, policy: policyOptions.source, note: { Output.note($0) }).transfer(vm, to: to)
        Output.stdout.line("VM \(v.id) now belongs to \(oneLine(to)) (event \(e.seq))")
    }
}

struct VMRetire: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retire", abstract: "Retire a VM: it stays in the ledger, marked retired.",
        discussion: """
            Closes the VM's open ran-on interval. Stored-on intervals stay open: retiring does not prove the disks are gone.
            
            Example:
              warden vm retire web-old --shred
            """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM.") var vm: String
    @OptionGroup var policyOptions: PolicyOptions
    @Flag(help: "Also destroy the VM's keys (crypto-shredding, docs/vault.md): its encrypted disks become unreadable for good.") var shred = false

    func run() throws {
        let store = try database.open(create: false)
        if shred, VMRun.runner(store).status(try store.resolveVM(vm)).state == "running" {
            throw WardenError(.conflict, "VM \(vm) is running: stop it before shredding its keys")
        }
        let (v, e) = try VMService(store: store, policy: policyOptions.source, note: { Output.note($0) }).retire(vm)
        Output.stdout.line("VM \(v.id) retired (event \(e.seq))")
        if shred {
            for k in try VMRun.vault(store).shred(vm: v, store: store) { Output.stdout.line("shredded key \(k.key) (\(k.layer)) of \(v.name)") }
        }
    }
}

// MARK: - history

struct EventJSON: Encodable {
    var seq: Int64
    var kind: String
    @ExplicitNull var vm: String?
    var actor: String
    var host: String
    var time: Date
    @ExplicitNull var generationBefore: String?
    @ExplicitNull var generationAfter: String?
    var payload: [String: JSONValue]
    var reportedByCaller: Bool
    init(_ e: EventRecord) {
        seq = e.seq; kind = e.kind.rawValue; vm = e.vm?.description; actor = e.actor; host = e.host.value; time = e.time
        generationBefore = e.generationBefore?.uuidString.lowercased(); generationAfter = e.generationAfter?.uuidString.lowercased()
        payload = e.payload; reportedByCaller = e.reportedByCaller
    }
}

/// Compact one-line JSON of a payload for tables.
func compactJSON(_ v: [String: JSONValue]) -> String {
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return (try? String(decoding: enc.encode(v), as: UTF8.self)) ?? "{}"
}

struct VMHistory: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "history", abstract: "Who did what to a VM, when, on which host.",
        discussion: """
            Example:
              warden vm history web
            """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM.") var vm: String
    @Flag(help: "Print JSON (docs/json-schemas/vm-history.v1.json).") var json = false

    struct Doc: Encodable { var schema = "warden.vm-history/v1"; var vm: String; var events: [EventJSON] }

    func run() throws {
        let store = try database.open(create: false)
        let v = try store.resolveVM(vm)
        let events = try store.events(of: v.id)
        try Output.render(Doc(vm: v.id.description, events: events.map(EventJSON.init)), json: json, style: .ledger) {
            var rows = [["SEQ", "TIME", "KIND", "ACTOR", "HOST", "GENERATION", "DETAILS"]]
            for e in events {
                var gen = "-"
                if let a = e.generationAfter, a != e.generationBefore {
                    gen = (e.generationBefore.map { String($0.uuidString.lowercased().prefix(8)) } ?? "∅") + "→" + String(a.uuidString.lowercased().prefix(8))
                }
                let details = (e.reportedByCaller ? "(reported) " : "") + compactJSON(e.payload)
                rows.append(["\(e.seq)", TimeArgument.format(e.time), e.kind.rawValue, oneLine(e.actor), e.host.value, gen,
                             oneLine(String(details.prefix(200)))])
            }
            for l in table(rows) { Output.stdout.line(l) }
        }
    }
}

// MARK: - lineage

struct VMLineage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lineage", abstract: "The tree of a VM's ancestors and descendants: clones, copies, snapshots, rollback branches.",
            discussion: """
                Examples:
                  warden vm lineage web
                  warden vm lineage web --dot | dot -Tsvg > lineage.svg
                """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM.") var vm: String
    @Flag(help: "Print JSON (docs/json-schemas/lineage.v1.json).") var json = false
    @Flag(help: "Print a Graphviz digraph.") var dot = false
    @Flag(help: .hidden) var timing = false

    func validate() throws { if json && dot { throw ValidationError("give --json or --dot, not both") } }

    func run() throws {
        let store = try database.open(create: false)
        let v = try store.resolveVM(vm)
        let (tree, wall, cpu) = try timed { try store.lineage(of: v.id) }
        if timing { Output.note(String(format: "lineage: %.3f ms wall, %.3f ms cpu, %d nodes", wall, cpu, tree.nodes.count)) }
        try Output.render(tree, json: json, style: .ledger) {
            if dot { for l in Self.dot(tree) { Output.stdout.line(l) }; return }
            for l in Self.text(tree) { Output.stdout.line(l) }
        }
    }

    static func text(_ t: Lineage) -> [String] {
        var out: [String] = []
        for n in t.nodes {
            let indent = String(repeating: "  ", count: n.depth)
            let mark = n.role == .self ? " ◀" : ""
            let how = n.parent == nil ? n.relation : "\(n.relation) from \(shortID(n.parent!))"
            out.append(oneLine("\(indent)\(n.depth == 0 ? "" : "└ ")\(n.name) (\(shortID(n.id))) \(n.state.rawValue), \(how) \(TimeArgument.format(n.createdAt))\(mark)"))
            for s in n.snapshots {
                out.append(oneLine("\(indent)    snapshot \(s.name) @ generation \(s.generation.uuidString.lowercased().prefix(8))"))
            }
            for g in n.generations where g.kind == .rolledBack {
                out.append(oneLine("\(indent)    rolled back to \(g.snapshot ?? "?") → generation \(g.generation.uuidString.lowercased().prefix(8)) (branch of \(g.parentGeneration.map { String($0.uuidString.lowercased().prefix(8)) } ?? "?"))"))
            }
        }
        return out
    }

    /// DOT with every label quoted and escaped; VM names are user text.
    static func dot(_ t: Lineage) -> [String] {
        func q(_ s: String) -> String {
            var r = "\""
            for ch in s.unicodeScalars {
                switch ch {
                case "\"": r += "\\\""
                case "\\": r += "\\\\"
                case "\n": r += "\\n"
                case "\r": r += " "
                default: r += ch.value < 0x20 ? " " : String(ch)
                }
            }
            return r + "\""
        }
        var out = ["digraph lineage {", "  rankdir=TB;", "  node [shape=box];"]
        for n in t.nodes {
            let style = n.role == .self ? ", style=bold" : (n.state == .retired ? ", style=dashed" : "")
            out.append("  \(q(n.id.description)) [label=\(q("\(n.name)\n\(shortID(n.id)) \(n.state.rawValue)"))\(style)];")
            for s in n.snapshots {
                let sid = "\(n.id)/snapshot/\(s.name)"
                out.append("  \(q(sid)) [label=\(q("snapshot \(s.name)")), shape=ellipse];")
                out.append("  \(q(n.id.description)) -> \(q(sid)) [style=dotted];")
            }
            for (i, g) in n.generations.enumerated() where g.kind == .rolledBack {
                let gid = "\(n.id)/rollback/\(i)"
                out.append("  \(q(gid)) [label=\(q("rollback to \(g.snapshot ?? "?")\n\(TimeArgument.format(g.time))")), shape=diamond];")
                let from = g.snapshot.map { "\(n.id)/snapshot/\($0)" } ?? n.id.description
                out.append("  \(q(from)) -> \(q(gid)) [style=dotted];")
            }
        }
        for n in t.nodes {
            if let p = n.parent, t.nodes.contains(where: { $0.id == p }) {
                out.append("  \(q(p.description)) -> \(q(n.id.description)) [label=\(q(n.relation))];")
            }
        }
        out.append("}")
        return out
    }
}
