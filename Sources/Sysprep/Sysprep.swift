import Foundation
import WardenCore
import GuestFS
import Inspection

/// Offline identity refresh for copied guests, with virt-sysprep's operation names where
/// one exists.
///
/// Every operation can **plan** against a read-only guest (``GuestFiles``): what exists and
/// what would change (`--dry-run`), and **apply** through a ``GuestWriter`` whose writes
/// go through GuestFS's checked, root-confined ``MutableFileSystem``. Operations never
/// print file contents: changes name paths and kinds only.
public enum Sysprep {
    /// Every operation, in the order they run.
    public static let operations: [any SysprepOperation] = [
        MachineIDOperation(), SSHHostKeysOperation(), RandomSeedOperation(), HostnameOperation(),
        UdevPersistentNetOperation(), NetMACPinsOperation(), DHCPClientStateOperation(),
        CloudInitOperation(), MACAddressOperation(), FilesystemUUIDsOperation(), AuthorizedKeysOperation(),
    ]

    /// A random MAC in the 52:54:00 prefix QEMU and libvirt use (what `mac-address` assigns).
    public static func newMAC() -> String { MACAddressOperation.newMAC() }

    public static func operation(named name: String) -> (any SysprepOperation)? {
        operations.first { $0.name == name }
    }

    /// The operations `spec` selects (`--operations`), in run order.
    ///
    /// A comma-separated list of names, `-name` to remove one, and the keywords
    /// `defaults`, `all` and `none`. A list that starts with a removal (`-ssh-hostkeys`)
    /// starts from the defaults; a list that starts with a name starts from nothing
    /// (`machine-id,ssh-hostkeys` runs exactly those two). nil selects the defaults.
    public static func select(_ spec: String?) throws -> [any SysprepOperation] {
        var chosen = Set(operations.filter(\.defaultEnabled).map(\.name))
        guard let spec else { return operations.filter { chosen.contains($0.name) } }
        let items = spec.split(separator: ",", omittingEmptySubsequences: true).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !items.isEmpty else { throw WardenError(.invalidArgument, "--operations is empty") }
        if let first = items.first, !first.hasPrefix("-"), first != "defaults" { chosen = [] }
        for item in items {
            switch item {
            case "defaults": chosen.formUnion(operations.filter(\.defaultEnabled).map(\.name))
            case "all": chosen.formUnion(operations.map(\.name))
            case "none": chosen = []
            default:
                let remove = item.hasPrefix("-")
                let name = remove ? String(item.dropFirst()) : (item.hasPrefix("+") ? String(item.dropFirst()) : item)
                guard operation(named: name) != nil else {
                    throw WardenError(.invalidArgument, "unknown operation \(name) (known: \(operations.map(\.name).joined(separator: ", ")))")
                }
                if remove { chosen.remove(name) } else { chosen.insert(name) }
            }
        }
        return operations.filter { chosen.contains($0.name) }
    }

    /// What `operations` would change in `guest`; writes nothing.
    public static func plan(_ guest: GuestFiles, operations ops: [any SysprepOperation], options: SysprepOptions,
                            image: String) throws -> SysprepReport {
        var report = SysprepReport(image: image, dryRun: true)
        for op in ops {
            do {
                let changes = try op.plan(guest, options).map { annotateLink($0, guest) }
                report.operations.append(OperationResult(op, changes: changes))
            } catch let e as WardenError {
                throw WardenError(e.code, "\(op.name): \(e.message)", file: e.file, offset: e.offset)
            }
        }
        report.hostname = options.hostname
        report.mac = options.ledgerMAC
        return report
    }

    /// A change that would write a file which is a symbolic link says where the link points
    /// and that it will be refused (``GuestWriter`` never writes through links).
    static func annotateLink(_ c: Change, _ guest: GuestFiles) -> Change {
        guard c.action == .replace || c.action == .edit, let p = c.path, let e = guest.entry(p), e.type == .symlink else { return c }
        var c = c
        let to = (try? guest.readLink(p)) ?? nil
        let resolved = guest.canonicalPath(p)
        c.detail += " [a symbolic link" + (to.map { " to \($0)" } ?? "") + (resolved.map { ", resolving to \($0)" } ?? ", not resolving")
            + ": refused, links are not written through]"
        return c
    }

    /// Applies `operations` through `writer`, then commits every written filesystem.
    /// Stops at the first failure (the caller discards the half-refreshed copy).
    public static func apply(_ writer: GuestWriter, operations ops: [any SysprepOperation], options: SysprepOptions,
                             image: String) throws -> SysprepReport {
        var report = SysprepReport(image: image, dryRun: false)
        var outputs = SysprepOutputs()
        for op in ops {
            do {
                report.operations.append(OperationResult(op, changes: try op.apply(writer, options, &outputs)))
                PhaseTimer.shared.lap("op " + op.name)
            } catch let e as WardenError {
                throw WardenError(e.code, "\(op.name): \(e.message)", file: e.file, offset: e.offset)
            }
        }
        try writer.commit()
        report.machineId = outputs.machineId
        report.hostKeys = outputs.hostKeys
        report.filesystemUUIDs = outputs.filesystemUUIDs
        report.hostname = options.hostname
        report.mac = options.ledgerMAC
        return report
    }
}

/// One identity operation.
public protocol SysprepOperation: Sendable {
    /// The name used in `--operations` (virt-sysprep's where it has one).
    var name: String { get }
    /// One line: what the operation does.
    var summary: String { get }
    /// The virt-sysprep operation(s) that do the same, or how virt-sysprep does it.
    var virtSysprepEquivalent: String { get }
    var defaultEnabled: Bool { get }
    /// What exists in the guest and what would change. Reads only.
    func plan(_ guest: GuestFiles, _ options: SysprepOptions) throws -> [Change]
    /// Makes the change through `writer`; returns what it changed.
    func apply(_ writer: GuestWriter, _ options: SysprepOptions, _ outputs: inout SysprepOutputs) throws -> [Change]
}

/// Inputs to the operations.
public struct SysprepOptions: Sendable {
    /// The new hostname; the `hostname` operation does nothing without one.
    public var hostname: String?
    /// Users whose `~/.ssh/authorized_keys` the `authorized-keys` operation removes.
    public var authorizedKeysUsers: [String]
    /// The MAC the ledger assigned to the VM (`vm clone`); nil for an image not in the ledger.
    public var ledgerMAC: String?
    /// Where host key material comes from: a forge started early overlaps RSA generation with
    /// the rest of the work; nil generates on demand.
    public var keys: HostKeyForge?

    public init(hostname: String? = nil, authorizedKeysUsers: [String] = [], ledgerMAC: String? = nil,
                keys: HostKeyForge? = nil) {
        self.hostname = hostname
        self.authorizedKeysUsers = authorizedKeysUsers
        self.ledgerMAC = ledgerMAC
        self.keys = keys
    }

    /// A copy with a key forge started for every host key type when `operations` will need keys.
    public func forgingKeys(for operations: [any SysprepOperation]) -> SysprepOptions {
        guard keys == nil, operations.contains(where: { $0.name == "ssh-hostkeys" }) else { return self }
        var o = self
        o.keys = HostKeyForge()
        return o
    }

    /// Checks a hostname (RFC 1123: dot-separated labels of letters, digits and hyphens,
    /// 1–63 bytes each, not starting or ending with a hyphen, 253 bytes at most).
    public static func validHostname(_ h: String) -> Bool {
        guard !h.isEmpty, h.utf8.count <= 253 else { return false }
        for label in h.split(separator: ".", omittingEmptySubsequences: false) {
            guard (1...63).contains(label.utf8.count), label.first != "-", label.last != "-",
                  label.utf8.allSatisfy({ $0 == 0x2D || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) })
            else { return false }
        }
        return true
    }
}

/// What the operations produced that the caller records (ledger event, report).
public struct SysprepOutputs: Sendable {
    public var machineId: String?
    public var hostKeys: [GeneratedHostKey] = []
    /// Mount point → new filesystem UUID.
    public var filesystemUUIDs: [String: String] = [:]
    public init() {}
}

/// A host key written into the guest: type, path and fingerprint (never the key).
public struct GeneratedHostKey: Codable, Sendable, Equatable {
    public var type: String
    public var path: String
    public var bits: Int
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    public var fingerprint: String
}

/// One change an operation made or would make.
public struct Change: Codable, Sendable, Equatable {
    public enum Action: String, Codable, Sendable {
        /// A file is written anew (content replaced, mode and owner kept).
        case replace
        /// A file is created.
        case create
        /// Some lines of a file are rewritten.
        case edit
        /// A file or link is removed.
        case remove
        /// A value outside the guest's files (a filesystem UUID, the VM's MAC).
        case set
        /// Nothing to do here; `detail` says why.
        case none
    }
    public var action: Action
    /// Guest path, when the change is about a file.
    public var path: String?
    public var detail: String

    public init(_ action: Action, _ path: String?, _ detail: String) {
        self.action = action
        self.path = path
        self.detail = detail
    }
}

public struct OperationResult: Codable, Sendable {
    public var name: String
    public var virtSysprep: String
    public var changes: [Change]
    init(_ op: any SysprepOperation, changes: [Change]) {
        name = op.name
        virtSysprep = op.virtSysprepEquivalent
        self.changes = changes
    }
    /// True when at least one change is not `.none`.
    public var changedSomething: Bool { changes.contains { $0.action != .none } }
}

/// `warden image sysprep --json` (schema `warden.sysprep/v1`, docs/sysprep.md).
public struct SysprepReport: Codable, Sendable {
    public var schema = "warden.sysprep/v1"
    public var image: String
    public var dryRun: Bool
    public var operations: [OperationResult] = []
    public var machineId: String?
    public var hostKeys: [GeneratedHostKey] = []
    public var filesystemUUIDs: [String: String] = [:]
    public var hostname: String?
    public var mac: String?
    public init(image: String, dryRun: Bool) {
        self.image = image
        self.dryRun = dryRun
    }
}
