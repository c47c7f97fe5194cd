import Foundation
import WardenCore

// The ledger's value types. Storage is behind ``LedgerStore``; these types carry no I/O.

/// Where a VM is in its life.
public enum VMState: String, Codable, Sendable, CaseIterable {
    case registered, discovered, stopped, running, retired
}

/// A VM: identity, owner, labels, state, disks, and the current generation id.
/// A VM as its lineage family lists it: what exposure and lineage read of each member, from
/// the family index alone (``LedgerQueries/family(of:limit:)``).
public struct FamilyMember: Sendable, Equatable {
    public var id: VMID
    public var name: String
    public var owner: String
    public var state: VMState
    public var generation: UUID
    public var parent: VMID?
    public var parentGeneration: UUID?
    public var createdAt: Date
    public init(id: VMID, name: String, owner: String, state: VMState, generation: UUID, parent: VMID?, parentGeneration: UUID?, createdAt: Date) {
        self.id = id; self.name = name; self.owner = owner; self.state = state; self.generation = generation
        self.parent = parent; self.parentGeneration = parentGeneration; self.createdAt = createdAt
    }
}

public struct VMRecord: Codable, Sendable, Equatable {
    public var id: VMID
    public var name: String
    public var owner: String
    public var labels: [String: String]
    public var state: VMState
    /// Changes on clone, copy, rollback and restore (becomes the QEMU vmgenid GUID).
    public var generation: UUID
    /// The VM this one was cloned or copied from, if any.
    public var parent: VMID?
    /// The generation of `parent` at the time of the clone or copy.
    public var parentGeneration: UUID?
    public var createdAt: Date
    public var updatedAt: Date
    /// A MAC address for the VM's network card, if the ledger assigned one.
    public var mac: String?

    public init(id: VMID = VMID(), name: String, owner: String, labels: [String: String] = [:],
                state: VMState = .registered, generation: UUID = UUID(), parent: VMID? = nil,
                parentGeneration: UUID? = nil, createdAt: Date = Date(), updatedAt: Date = Date(), mac: String? = nil) {
        self.id = id; self.name = name; self.owner = owner; self.labels = labels; self.state = state
        self.generation = generation; self.parent = parent; self.parentGeneration = parentGeneration
        self.createdAt = createdAt; self.updatedAt = updatedAt; self.mac = mac
    }
}

/// One disk of a VM.
public struct DiskRecord: Codable, Sendable, Equatable {
    public var vm: VMID
    /// Position in the VM's disk list (0 = boot disk).
    public var index: Int
    /// Absolute path of the top image.
    public var path: String
    /// `raw`, `qcow2`, `vmdk`.
    public var format: String
    /// Backing files, nearest first (absolute paths).
    public var backingChain: [String]
    /// Content identity of the guest-visible disk (see ``DiskFingerprint`` in the ledger docs).
    public var fingerprint: Digest?
    /// The file's device and inode when it was recorded on this host (one live VM per file).
    public var file: FileID?

    /// A file's identity on its host: `stat`'s device and inode.
    public struct FileID: Codable, Sendable, Equatable, Hashable {
        public var device: UInt64
        public var inode: UInt64
        public init(device: UInt64, inode: UInt64) { self.device = device; self.inode = inode }

        /// The device and inode of the file at `path` (following links), or nil.
        public static func of(path: String) -> FileID? {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            return FileID(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        }
    }

    public init(vm: VMID, index: Int, path: String, format: String, backingChain: [String] = [], fingerprint: Digest? = nil,
                file: FileID? = nil) {
        self.vm = vm; self.index = index; self.path = path; self.format = format
        self.backingChain = backingChain; self.fingerprint = fingerprint; self.file = file
    }
}

/// A host: name, labels and its Ed25519 public key (raw 32 bytes, base64 in JSON).
public struct HostRecord: Codable, Sendable, Equatable {
    public var name: HostName
    public var labels: [String: String]
    public var publicKey: Data?
    public var addedAt: Date
    public init(name: HostName, labels: [String: String] = [:], publicKey: Data? = nil, addedAt: Date = Date()) {
        self.name = name; self.labels = labels; self.publicKey = publicKey; self.addedAt = addedAt
    }
}

/// Ran-on or stored-on: a VM's residency on a host over an interval.
public struct ResidencyRecord: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case ran, stored }
    public var vm: VMID
    public var host: HostName
    public var kind: Kind
    public var from: Date
    /// nil while the residency is open.
    public var to: Date?
    public init(vm: VMID, host: HostName, kind: Kind, from: Date, to: Date? = nil) {
        self.vm = vm; self.host = host; self.kind = kind; self.from = from; self.to = to
    }
}

/// A named snapshot of a VM, with the generation it captured.
public struct SnapshotRecord: Codable, Sendable, Equatable {
    public var vm: VMID
    public var name: String
    public var generation: UUID
    public var createdAt: Date
    /// The stored inventory of the disk as of the snapshot, if it was inspected.
    public var inventoryKey: Digest?
    public init(vm: VMID, name: String, generation: UUID, createdAt: Date = Date(), inventoryKey: Digest? = nil) {
        self.vm = vm; self.name = name; self.generation = generation; self.createdAt = createdAt; self.inventoryKey = inventoryKey
    }
}

/// What happened.
public enum EventKind: String, Codable, Sendable, CaseIterable {
    case registered, discovered, created, cloned, copied, snapshotted
    case rolledBack = "rolled-back"
    case started, stopped, migrated
    case movedStorage = "moved-storage"
    case exported
    case ownershipTransferred = "ownership-transferred"
    case scanned, patched, retired
    case policyDecision = "policy-decision"
    /// A VM's network state changed (open, quarantined, shielded), with the reason.
    case networkState = "network-state"
    /// A VM's disks were encrypted; the payload names each disk's key id (never a key).
    case encrypted
    /// Keys of a VM were destroyed (crypto-shredding): the ids, and the layers they opened.
    case keysShredded = "keys-shredded"
    /// A VM's data keys were rotated (`warden vault rekey`): the disks and their new key ids.
    case rekeyed
    /// An admin approved a break-glass release of a VM's keys (the second person of a
    /// two-person rule): who and why.
    case breakGlassApproval = "break-glass-approval"
    /// Keys were released from this host's grace copies because the key provider was
    /// unreachable: the layers, the provider's error and the copies' expiry.
    case graceRelease = "grace-release"
    /// A host's TPM was enrolled (`warden host init --tpm`): its endorsement and attestation
    /// keys' public parts (docs/attestation.md). No VM.
    case hostEnrolled = "host-enrolled"
    /// A host's TPM quote was verified: trusted or not, the reasons, the baseline. No VM.
    case hostAttested = "host-attested"
    /// A VM's disk was scanned for malware (`warden malware scan`): the signatures used, the
    /// counts, the detections (path, engine, signature, digest) and what was skipped.
    case malwareScanned = "malware-scanned"
    /// A VM was pushed to an OCI registry: the reference, manifest digest, chunks and bytes sent.
    case pushed
    /// A VM was pulled from an OCI registry: the reference, digest, signature verdict, and the
    /// pushed VM it is a copy of (docs/oci.md).
    case pulled
}

/// An event to append. The store assigns its sequence number and time if not given.
public struct NewEvent: Sendable {
    public var kind: EventKind
    public var vm: VMID?
    /// `user@host` of whoever caused it.
    public var actor: String
    public var host: HostName
    public var time: Date
    public var generationBefore: UUID?
    public var generationAfter: UUID?
    /// Event-specific details as a JSON object (sorted keys when stored). Never secrets.
    public var payload: [String: JSONValue]
    /// True when an external tool reported it through `warden event record`.
    public var reportedByCaller: Bool

    public init(kind: EventKind, vm: VMID?, actor: String = NewEvent.defaultActor, host: HostName = .current,
                time: Date = Date(), generationBefore: UUID? = nil, generationAfter: UUID? = nil,
                payload: [String: JSONValue] = [:], reportedByCaller: Bool = false) {
        self.kind = kind; self.vm = vm; self.actor = actor; self.host = host; self.time = time
        self.generationBefore = generationBefore; self.generationAfter = generationAfter
        self.payload = payload; self.reportedByCaller = reportedByCaller
    }

    /// The actor of events the libvirt hook records: `libvirt-hook@hostname`. The hook does
    /// not sign checkpoints; `warden ledger verify` accepts a tail of unsigned entries only when
    /// every one of them has this actor prefix (docs/ledger-log.md, "Entries the hook records").
    public static func hookActor(_ host: HostName = .current) -> String { hookActorPrefix + host.value }
    public static let hookActorPrefix = "libvirt-hook@"

    /// `$USER@hostname`.
    public static var defaultActor: String {
        let user = ProcessInfo.processInfo.environment["USER"] ?? ProcessInfo.processInfo.environment["LOGNAME"] ?? "uid\(getuid())"
        return "\(user)@\(HostName.current)"
    }
}

/// A stored event: a leaf of the ledger's Merkle log.
public struct EventRecord: Codable, Sendable, Equatable {
    /// 1-based, dense: the leaf index is `seq - 1`.
    public var seq: Int64
    public var kind: EventKind
    public var vm: VMID?
    public var actor: String
    public var host: HostName
    public var time: Date
    public var generationBefore: UUID?
    public var generationAfter: UUID?
    public var payload: [String: JSONValue]
    public var reportedByCaller: Bool
    /// The RFC 9162 leaf hash `SHA-256(0x00 ‖ entry)`, where `entry` is the canonical
    /// encoding of this event (``LedgerEntry``).
    public var leafHash: Data

    public init(seq: Int64, kind: EventKind, vm: VMID?, actor: String, host: HostName, time: Date,
                generationBefore: UUID?, generationAfter: UUID?, payload: [String: JSONValue],
                reportedByCaller: Bool, leafHash: Data) {
        self.seq = seq; self.kind = kind; self.vm = vm; self.actor = actor; self.host = host; self.time = time
        self.generationBefore = generationBefore; self.generationAfter = generationAfter
        self.payload = payload; self.reportedByCaller = reportedByCaller; self.leafHash = leafHash
    }
}

/// A JSON value, for event payloads.
public enum JSONValue: Codable, Sendable, Equatable, Hashable {
    case string(String), number(Double), bool(Bool), null
    case array([JSONValue]), object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .number(let n): try c.encode(n)
        case .bool(let b): try c.encode(b)
        case .null: try c.encodeNil()
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
}

extension EventRecord {
    /// The disk indexes a VM's history records as encrypted by Warden: `encrypted` and
    /// `rekeyed` events' `disks`, and the `keys` of the `copied` or `cloned` event that made it
    /// (docs/vault.md).
    public static func encryptedDisks(in history: [EventRecord]) -> Set<Int> {
        var out = Set<Int>()
        for e in history where [.encrypted, .copied, .cloned, .rekeyed].contains(e.kind) {
            let list: JSONValue? = e.kind == .copied || e.kind == .cloned ? e.payload["keys"] : e.payload["disks"]
            if case .array(let items)? = list {
                for case .object(let d) in items { if case .number(let n)? = d["index"], n >= 0, n < 4096 { out.insert(Int(n)) } }
            }
        }
        return out
    }

    /// Whether this is a recorded `unlock` decision that released keys (allow or quarantine).
    public var isKeyRelease: Bool {
        kind == .policyDecision && payload["op"] == .string("unlock") && payload["effect"] != .string("deny")
    }
}
