import Foundation
import Ledger
import Policy
import Vault
import WardenCore

/// Releasing a VM's data keys (docs/vault.md): every release decides `unlock` through policy,
/// recorded in the ledger, before a key is unwrapped. `warden vm start`, rollback and snapshots
/// of a stopped VM, `warden libvirt start` and `--key-from vault` all release through here.
public struct KeyRelease: Sendable {
    public let service: VMService
    public let vault: Vault

    public init(service: VMService, vault: Vault) {
        self.service = service; self.vault = vault
    }

    /// The indexes of `vm`'s disks that need a key: those with a key in the vault, and those the
    /// ledger records as encrypted (`encrypted`, or a re-encrypting `copied`) — so a VM whose
    /// keys are missing here is refused rather than started without them.
    public func encryptedDisks(of vm: VMRecord) throws -> Set<Int> {
        Set(vault.layers(of: vm.id).keys.compactMap(Vault.diskIndex)).union(EventRecord.encryptedDisks(in: try service.store.events(of: vm.id)))
    }

    /// Decides `unlock` for `disks` of `vm` (recorded; a denial throws `.denied`, exit 3, and
    /// nothing is unwrapped), then unwraps their keys. A disk without a key here throws
    /// `.notFound`, naming whether it was shredded.
    public func release(_ vm: VMRecord, disks: Set<Int>) throws -> [Int: SecretBytes] {
        guard !disks.isEmpty else { return [:] }
        try service.lifecycleGate(reexposure: nil, forceStop: false)(.unlock, vm, ["layers": disks.sorted().map(Vault.diskLayer).joined(separator: ",")])
        var out: [Int: SecretBytes] = [:]
        for i in disks {
            guard let k = try vault.key(for: KeyContext(vm: vm.id, layer: Vault.diskLayer(i))) else {
                let shredded = try service.store.events(of: vm.id).contains { $0.kind == .keysShredded }
                throw WardenError(.notFound, shredded
                    ? "disk \(i) of \(vm.name) is encrypted and its key is gone (shredded): its data cannot be read"
                    : "disk \(i) of \(vm.name) is encrypted and this host's vault (\(vault.directory)) has no key for it")
            }
            out[i] = k.key
        }
        return out
    }
}
