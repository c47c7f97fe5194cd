import Ledger
import WardenCore

/// What the VM workflows (``WardenServices/VMService``) need to copy and clone encrypted VMs,
/// implemented over the vault and qemu-img (`Hypervisor.VaultDiskCrypto`). Every key that
/// leaves the vault through it has been released by a recorded `unlock` decision.
public protocol DiskCrypto: Sendable {
    /// Decides `unlock` for `disks` of `vm` (recorded; throws `.denied` to refuse) and returns
    /// their LUKS passphrases.
    func passphrases(_ vm: VMRecord, disks: Set<Int>) throws -> [Int: SecretBytes]
    /// A full copy of encrypted `disk` of `source` at `output`, encrypted under a new key of
    /// `copy` (same disk index). Returns the new key's id and the output's passphrase.
    func reencrypt(source: VMRecord, disk: DiskRecord, copy: VMID, output: String) throws -> (key: String, passphrase: SecretBytes)
    /// Encrypts the plaintext image `plain` (of `format`) into `output`, qcow2 with LUKS, under
    /// a new key of (`vm`, disk `index`). Returns the key's id and the output's passphrase.
    func encrypt(plain: String, format: String, vm: VMID, index: Int, output: String) throws -> (key: String, passphrase: SecretBytes)
    /// Destroys the keys made for a VM that did not come to be (no ledger event).
    func discard(_ vm: VMID)
}
