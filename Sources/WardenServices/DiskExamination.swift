import DiskImage
import Foundation
import GuestFS
import Inspection
import Ledger
import WardenCore

/// What the ledger records about one disk image, read from the image itself: the one
/// "open image → layout → guest view → inventory" pipeline the services share.
public struct ExaminedDisk: Sendable {
    public var path: String
    public var format: ImageFormat
    public var virtualSize: UInt64
    public var backingChain: [String]
    public var fingerprint: Digest
    /// Guest facts when the disk could be inspected (nil otherwise).
    public var inventory: Inventory?
    /// The file's device and inode (one live VM per file).
    public var file: DiskRecord.FileID?
    /// For an OVA: the OVF facts (`ovf_name`, `ovf_cpus`, `ovf_memory_mib`, …).
    public var appliance: [String: String]?
    /// A Windows guest's facts (its registry), when the disk is one.
    public var windows: WindowsInfo?

    /// Opens `path` (format by content; backing files with their declared format), fingerprints
    /// the guest-visible disk and, when `inspect`, reads the guest's identity.
    /// `fingerprint`: the disk's content fingerprint when the caller already computed it from
    /// the bytes it wrote (a pull), else it is computed here.
    public static func examine(_ path: String, inspect: Bool = true, passphrase: SecretBytes? = nil,
                               fingerprint: WardenCore.Digest? = nil) throws -> ExaminedDisk {
        let abs = absolutePath(path)
        let img = try ImageOpener.open(abs, options: OpenOptions(passphrase: passphrase))
        let fp = try fingerprint ?? ContentFingerprint.of(img.device)
        var inv: Inventory?
        var windows: WindowsInfo?
        if inspect {
            do { inv = try OpenedGuest(image: img, path: abs).inventory() } catch let w as OpenedGuest.WindowsGuest {
                windows = w.inspect()?.windows
            } catch {}
        }
        // A disk inside an OVA is a member of the archive, not a file of its own: not a backing file.
        var disk = ExaminedDisk(path: abs, format: img.info.format, virtualSize: img.info.virtualSize,
                                backingChain: img.chain.dropFirst().filter { !$0.path.hasPrefix(abs + "[") }.map { absolutePath($0.path) },
                                fingerprint: fp, inventory: inv, file: DiskRecord.FileID.of(path: abs))
        if img.info.format == .ova { disk.appliance = img.info.details.filter { $0.key.hasPrefix("ovf_") } }
        disk.windows = windows
        return disk
    }

    public func record(vm: VMID, index: Int) -> DiskRecord {
        DiskRecord(vm: vm, index: index, path: path, format: format.rawValue, backingChain: backingChain,
                   fingerprint: fingerprint, file: file)
    }

    /// The machine-id, or a Windows guest's MachineGuid (both name the installation).
    public var machineID: String? { inventory?.identity.machineId.value ?? windows?.machineGuid.value }
    /// A Windows guest's machine SID.
    public var machineSID: String? { windows?.machineSid.value }
    public var hostKeys: [String] {
        (inventory?.ssh.hostKeys ?? []).compactMap { $0.publicKey.value?.fingerprint }.sorted()
    }
    /// `debian 12`, `alpine 3.19`: os-release ID and VERSION_ID.
    public var os: String? {
        if let w = windows { return "windows" + (w.build.value.map { " \($0)" } ?? "") }
        guard let inv = inventory, let id = inv.os.id.value else { return nil }
        if let v = inv.os.versionId.value { return "\(id) \(v)" }
        return id
    }

    /// The payload of registered and discovered events: disks and what the guest said about itself.
    public static func payload(_ disks: [ExaminedDisk]) -> [String: JSONValue] {
        var p: [String: JSONValue] = [
            "disks": .array(disks.map { d in
                var o: [String: JSONValue] = ["path": .string(d.path), "format": .string(d.format.rawValue),
                                              "fingerprint": .string(d.fingerprint.description),
                                              "backing_chain": .array(d.backingChain.map { .string($0) })]
                // What an OVA's descriptor says of the appliance (name, CPUs, memory, networks, disks).
                if let a = d.appliance, !a.isEmpty {
                    o["appliance"] = .object(Dictionary(uniqueKeysWithValues: a.map { (String($0.key.dropFirst(4)), JSONValue.string($0.value)) }))
                }
                return .object(o)
            }),
        ]
        if let os = disks.lazy.compactMap(\.os).first { p["os"] = .string(os) }
        if let mid = disks.lazy.compactMap(\.machineID).first { p["machine_id"] = .string(mid) }
        let keys = Array(Set(disks.flatMap(\.hostKeys))).sorted()
        if !keys.isEmpty { p["ssh_host_keys"] = .array(keys.map { .string($0) }) }
        return p
    }
}

/// `path` made absolute and normalised (`.` and `..` folded; links are not followed).
public func absolutePath(_ path: String) -> String {
    URL(fileURLWithPath: path).standardizedFileURL.path
}
