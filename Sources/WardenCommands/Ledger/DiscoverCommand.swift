import ArgumentParser
import DiskImage
import Foundation
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
        Every regular file is checked by content, never by name: qcow2 and VMDK by their magic, a raw file \
        only when it holds a partition table or a known filesystem. Symbolic links are not followed. \
        Semantics: docs/ledger.md, section Discovery. JSON schema: docs/json-schemas/discover.v1.json.
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

    // MARK: Output shapes

    struct Image: Encodable {
        var path: String
        var format: String
        var virtualSize: UInt64
        var backingChain: [String]
        var fingerprint: String
        var os: String?
        var machineId: String?
        var sshHostKeys: [String]
        /// The VM this image is a disk of (after --register, the new VM).
        var vm: String?
        /// `known` (already a registered disk), `registered` (by this run), `unregistered`.
        var status: String
        func encode(to encoder: Encoder) throws {
            enum K: String, CodingKey { case path, format, virtualSize, backingChain, fingerprint, os, machineId, sshHostKeys, vm, status }
            var c = encoder.container(keyedBy: K.self)
            try c.encode(path, forKey: .path); try c.encode(format, forKey: .format)
            try c.encode(virtualSize, forKey: .virtualSize); try c.encode(backingChain, forKey: .backingChain)
            try c.encode(fingerprint, forKey: .fingerprint); try c.encode(os, forKey: .os)
            try c.encode(machineId, forKey: .machineId); try c.encode(sshHostKeys, forKey: .sshHostKeys)
            try c.encode(vm, forKey: .vm); try c.encode(status, forKey: .status)
        }
    }
    struct Guest: Encodable {
        var fingerprint: String
        var images: [String]
        var vms: [String]
    }
    struct Collision: Encodable {
        /// `machine-id` or `ssh-host-key`.
        var kind: String
        var value: String
        var guests: [Guest]
    }
    struct Copy: Encodable {
        var path: String
        var fingerprint: String
        /// The registered VM whose disk has the same content, if any.
        var ofVm: String?
        /// That disk's path (or the first scanned image with the same content).
        var ofPath: String
        func encode(to encoder: Encoder) throws {
            enum K: String, CodingKey { case path, fingerprint, ofVm, ofPath }
            var c = encoder.container(keyedBy: K.self)
            try c.encode(path, forKey: .path); try c.encode(fingerprint, forKey: .fingerprint)
            try c.encode(ofVm, forKey: .ofVm); try c.encode(ofPath, forKey: .ofPath)
        }
    }
    struct Backing: Encodable {
        var path: String
        var backingChain: [String]
        /// Registered VMs that own a disk of the chain.
        var backingVms: [String]
    }
    struct Problem: Encodable { var path: String; var error: String }
    struct Report: Encodable {
        var schema = "warden.discover/v1"
        var images: [Image]
        var collisions: [Collision]
        var copies: [Copy]
        var backingDependencies: [Backing]
        var problems: [Problem]
    }

    // MARK: Walk

    /// Regular files under `roots` (not following symbolic links), in byte order of their paths.
    static func files(under roots: [String], max: Int) throws -> [String] {
        var out: [String] = []
        var stack: [String] = []
        for r in roots {
            var st = stat()
            guard lstat(r, &st) == 0 else {
                throw WardenError.notFound("cannot read: \(String(cString: strerror(errno)))", file: r)
            }
            stack.append(absolutePath(r))
        }
        var seen = Set<String>()
        while let p = stack.popLast() {
            guard seen.insert(p).inserted else { continue }
            var st = stat()
            guard lstat(p, &st) == 0 else { continue }
            switch st.st_mode & S_IFMT {
            case S_IFREG:
                out.append(p)
                if out.count > max { throw WardenError.limit("more than \(max) files (raise --max-files)") }
            case S_IFDIR:
                guard let names = try? FileManager.default.contentsOfDirectory(atPath: p) else { continue }
                for n in names { stack.append(p == "/" ? "/" + n : p + "/" + n) }
            default:
                continue
            }
        }
        return out.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// Nil when the file is not a disk image; throws when it looks like one but cannot be read.
    static func isImage(_ path: String) throws -> Bool {
        let file = try ImageFile(path: path)
        guard file.length >= 512 else { return false }
        switch try ImageOpener.detect(file) {
        case .qcow2, .vmdk: return true
        case .raw:
            let img = try ImageOpener.open(path, options: OpenOptions(format: .raw))
            guard let layout = try? GuestDisk.layout(of: img.device) else { return false }
            return layout.table.scheme != .none || layout.volumes.contains { $0.filesystem != nil }
        }
    }

    // MARK: Run

    func run() throws {
        let host = host.flatMap(HostName.init) ?? .current
        let store = try database.open(create: register)
        var problems: [Problem] = []
        var examined: [ExaminedDisk] = []
        for path in try Self.files(under: paths, max: maxFiles) {
            do {
                guard try Self.isImage(path) else { continue }
                examined.append(try ExaminedDisk.examine(path))
            } catch let e as WardenError {
                // A problem in a backing file is reported under the image that needs it.
                let text = e.file == nil || e.file == path ? e.inFile(path).description : "\(path): \(e.description)"
                problems.append(Problem(path: path, error: text))
            }
        }
        // Images without a backing file first, so a base is seen before its overlays.
        examined.sort { a, b in
            let (ka, kb) = (a.backingChain.isEmpty ? 0 : 1, b.backingChain.isEmpty ? 0 : 1)
            if ka != kb { return ka < kb }
            return Array(a.path.utf8).lexicographicallyPrecedes(Array(b.path.utf8))
        }
        var images: [Image] = []
        var copies: [Copy] = []
        var firstWithContent: [Digest: Int] = [:]
        for (i, d) in examined.enumerated() {
            var img = Image(path: d.path, format: d.format.rawValue, virtualSize: d.virtualSize, backingChain: d.backingChain,
                            fingerprint: d.fingerprint.description, os: d.os, machineId: d.machineID,
                            sshHostKeys: d.hostKeys, vm: nil, status: "unregistered")
            if let known = try store.disk(atPath: d.path) {
                img.vm = known.vm.description
                img.status = "known"
            } else if d.backingChain.isEmpty {
                // An unregistered image with the content of a registered disk elsewhere, or of an
                // image seen earlier in this run, is a copy. Overlays are never copies: they are
                // reported as backing-file dependencies.
                let twins = try store.disks(withFingerprint: d.fingerprint).filter { $0.path != d.path }
                    .sorted { ($0.path, $0.vm) < ($1.path, $1.vm) }
                if let twin = twins.first {
                    copies.append(Copy(path: d.path, fingerprint: d.fingerprint.description, ofVm: twin.vm.description, ofPath: twin.path))
                } else if let j = firstWithContent[d.fingerprint] {
                    copies.append(Copy(path: d.path, fingerprint: d.fingerprint.description, ofVm: images[j].vm, ofPath: images[j].path))
                }
            }
            if register && img.status == "unregistered" {
                let now = Date()
                let vm = VMRecord(name: (d.path as NSString).lastPathComponent, owner: owner, state: .discovered,
                                  createdAt: now, updatedAt: now)
                var payload = diskPayload([d])
                if let c = copies.last, c.path == d.path { payload["copy_of"] = c.ofVm.map { .string($0) } ?? .string(c.ofPath) }
                let (created, _) = try store.createVM(vm, disks: [d.record(vm: vm.id, index: 0)],
                                                      event: NewEvent(kind: .discovered, vm: vm.id, host: host, time: now, payload: payload))
                try store.openResidency(vm: created.id, host: host, kind: .stored, at: now)
                img.vm = created.id.description
                img.status = "registered"
            }
            if firstWithContent[d.fingerprint] == nil { firstWithContent[d.fingerprint] = i }
            images.append(img)
        }
        // Backing dependencies, naming registered VMs that own a disk of the chain.
        var backing: [Backing] = []
        for img in images where !img.backingChain.isEmpty {
            var vms = Set<String>()
            for p in img.backingChain { if let d = try store.disk(atPath: p) { vms.insert(d.vm.description) } }
            backing.append(Backing(path: img.path, backingChain: img.backingChain, backingVms: vms.sorted()))
        }
        let report = Report(images: images.sorted { $0.path < $1.path }, collisions: Self.collisions(images),
                            copies: copies.sorted { $0.path < $1.path }, backingDependencies: backing.sorted { $0.path < $1.path },
                            problems: problems)
        if json {
            Output.stdout.line(try Output.ledgerJSON(report))
        } else {
            Self.printHuman(report)
        }
        Output.stdout.flush()
        for p in problems { Output.error(p.error) }
        if !problems.isEmpty { throw ExitCode(2) }
    }

    /// Distinct guests (distinct content fingerprints) that share a machine-id or an SSH host key.
    static func collisions(_ images: [Image]) -> [Collision] {
        var guests: [String: Guest] = [:]
        for i in images {
            var g = guests[i.fingerprint] ?? Guest(fingerprint: i.fingerprint, images: [], vms: [])
            g.images.append(i.path)
            if let vm = i.vm, !g.vms.contains(vm) { g.vms.append(vm) }
            guests[i.fingerprint] = g
        }
        var claims: [String: [String: Set<String>]] = ["machine-id": [:], "ssh-host-key": [:]]
        for i in images {
            if let m = i.machineId, !m.isEmpty { claims["machine-id"]![m, default: []].insert(i.fingerprint) }
            for k in i.sshHostKeys { claims["ssh-host-key"]![k, default: []].insert(i.fingerprint) }
        }
        var out: [Collision] = []
        for kind in ["machine-id", "ssh-host-key"] {
            for (value, fps) in claims[kind]! where fps.count > 1 {
                out.append(Collision(kind: kind, value: value, guests: fps.sorted().compactMap { guests[$0] }.map {
                    Guest(fingerprint: $0.fingerprint, images: $0.images.sorted(), vms: $0.vms.sorted())
                }))
            }
        }
        return out.sorted { ($0.kind, $0.value) < ($1.kind, $1.value) }
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
