import DiskImage
import Foundation
import GuestFS
import Ledger
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// `discover`: find disk images in folders by content (docs/ledger.md, section Discovery).
public enum Discovery {

    public struct Image: Encodable {
        public var path: String
        public var format: String
        public var virtualSize: UInt64
        public var backingChain: [String]
        public var fingerprint: String
        @ExplicitNull public var os: String?
        @ExplicitNull public var machineId: String?
        public var sshHostKeys: [String]
        /// A Windows guest's machine SID (absent for other guests).
        public var machineSid: String?
        /// The VM this image is a disk of (after --register, the new VM).
        @ExplicitNull public var vm: String?
        /// `known` (already a registered disk), `registered` (by this run), `unregistered`.
        public var status: String
    }
    public struct Guest: Encodable {
        public var fingerprint: String
        public var images: [String]
        public var vms: [String]
    }
    public struct Collision: Encodable {
        /// `machine-id` or `ssh-host-key`.
        public var kind: String
        public var value: String
        public var guests: [Guest]
    }
    public struct Copy: Encodable {
        public var path: String
        public var fingerprint: String
        /// The registered VM whose disk has the same content, if any.
        @ExplicitNull public var ofVm: String?
        /// That disk's path (or the first scanned image with the same content).
        public var ofPath: String
    }
    public struct Backing: Encodable {
        public var path: String
        public var backingChain: [String]
        /// Registered VMs that own a disk of the chain.
        public var backingVms: [String]
    }
    public struct Problem: Encodable, Sendable { public var path: String; public var error: String }
    public struct Report: Encodable {
        public var schema = "warden.discover/v1"
        public var images: [Image]
        public var collisions: [Collision]
        public var copies: [Copy]
        public var backingDependencies: [Backing]
        public var problems: [Problem]
    }

    /// What `--register` records: the owner and host of the discovered VMs.
    public struct Registration: Sendable {
        public var owner: String
        public var host: HostName
        public init(owner: String, host: HostName) { self.owner = owner; self.host = host }
    }

    /// Walks `paths`, examines every disk image by content, and reports identity collisions,
    /// unregistered copies and backing-file dependencies; with `register`, records every image
    /// not in the ledger yet as a discovered VM.
    /// `progress` is told, after each file, how many of the files found were looked at.
    public static func discover(store: any LedgerQueries, paths: [String], maxFiles: Int, register: Registration?,
                                progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> Report {
        var problems: [Problem] = []
        var examined: [ExaminedDisk] = []
        let files = try Self.files(under: paths, max: maxFiles)
        for (n, path) in files.enumerated() {
            defer { progress?(n + 1, files.count) }
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
                            sshHostKeys: d.hostKeys, machineSid: d.machineSID, vm: nil, status: "unregistered")
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
            if let register, img.status == "unregistered" {
                let now = Date()
                let vm = VMRecord(name: (d.path as NSString).lastPathComponent, owner: register.owner, state: .discovered,
                                  createdAt: now, updatedAt: now)
                var payload = ExaminedDisk.payload([d])
                if let c = copies.last, c.path == d.path { payload["copy_of"] = c.ofVm.map { .string($0) } ?? .string(c.ofPath) }
                let (created, _) = try store.createVM(vm, disks: [d.record(vm: vm.id, index: 0)],
                                                      event: NewEvent(kind: .discovered, vm: vm.id, host: register.host, time: now, payload: payload))
                try store.openResidency(vm: created.id, host: register.host, kind: .stored, at: now)
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
        return Report(images: images.sorted { $0.path < $1.path }, collisions: Self.collisions(images),
                            copies: copies.sorted { $0.path < $1.path }, backingDependencies: backing.sorted { $0.path < $1.path },
                            problems: problems)
    }

    // MARK: Walk

    /// Regular files under `roots` (not following symbolic links), in byte order of their paths.
    public static func files(under roots: [String], max: Int) throws -> [String] {
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
    public static func isImage(_ path: String) throws -> Bool {
        let file = try ImageFile(path: path)
        guard file.length >= 512 else { return false }
        switch try ImageOpener.detect(file) {
        case .qcow2, .vmdk, .vhd, .vhdx, .vdi, .ova: return true
        case .raw:
            let img = try ImageOpener.open(path, options: OpenOptions(format: .raw))
            guard let layout = try? GuestDisk.layout(of: img.device) else { return false }
            return layout.table.scheme != .none || layout.volumes.contains { $0.filesystem != nil }
        }
    }

    /// Distinct guests (distinct content fingerprints) that share a machine-id or an SSH host key.
    public static func collisions(_ images: [Image]) -> [Collision] {
        var guests: [String: Guest] = [:]
        for i in images {
            var g = guests[i.fingerprint] ?? Guest(fingerprint: i.fingerprint, images: [], vms: [])
            g.images.append(i.path)
            if let vm = i.vm, !g.vms.contains(vm) { g.vms.append(vm) }
            guests[i.fingerprint] = g
        }
        var claims: [String: [String: Set<String>]] = ["machine-id": [:], "ssh-host-key": [:], "machine-sid": [:]]
        for i in images {
            if let m = i.machineId, !m.isEmpty { claims["machine-id"]![m, default: []].insert(i.fingerprint) }
            for k in i.sshHostKeys { claims["ssh-host-key"]![k, default: []].insert(i.fingerprint) }
            if let s = i.machineSid { claims["machine-sid"]![s, default: []].insert(i.fingerprint) }
        }
        var out: [Collision] = []
        for kind in ["machine-id", "ssh-host-key", "machine-sid"] {
            for (value, fps) in claims[kind]! where fps.count > 1 {
                out.append(Collision(kind: kind, value: value, guests: fps.sorted().compactMap { guests[$0] }.map {
                    Guest(fingerprint: $0.fingerprint, images: $0.images.sorted(), vms: $0.vms.sorted())
                }))
            }
        }
        return out.sorted { ($0.kind, $0.value) < ($1.kind, $1.value) }
    }

}
