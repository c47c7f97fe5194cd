import CLibvirt
import CLibvirtLazy
import Crypto
import Foundation
import HypervisorHook
import Ledger
import Vault
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// `warden libvirt start DOMAIN`: starts a libvirt domain whose disks Warden encrypted, handing
/// libvirt their keys only after an `unlock` decision (docs/vault.md, "libvirt-run VMs").
///
/// libvirt forbids calls into libvirt from its hook, so the key cannot be released there.
/// Instead, the domain's disk XML names a libvirt secret by UUID; Warden decides `unlock`
/// (recorded), defines that secret `ephemeral='yes' private='yes'` (libvirt never writes it to
/// disk and never returns its value through the API), sets its value, starts the domain, and
/// undefines the secret as soon as the start returns, whether it worked or not. QEMU has the key
/// then; nothing is left on the host for a later `virsh start`, which fails on the missing
/// secret. A denied unlock defines nothing.
public enum LibvirtStart {
    public struct Result: Sendable {
        public var domain: String
        public var vm: VMRecord
        /// The disk paths whose keys were released for this start.
        public var unlocked: [String]
    }

    /// The libvirt secret UUID Warden suggests for a VM's disk layer: derived from the VM id and
    /// the layer, so it is stable across hosts and names no key.
    public static func suggestedSecret(vm: VMID, layer: String) -> UUID {
        var bytes = Array(SHA256.hash(data: Data("warden-libvirt-secret\u{0}\(vm)\u{0}\(layer)".utf8)).prefix(16))
        bytes[6] = (bytes[6] & 0x0F) | 0x80   // version 8 (name-derived, RFC 9562)
        bytes[8] = (bytes[8] & 0x3F) | 0x80   // the RFC variant
        return UUID(uuid: (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                           bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]))
    }

    /// The XML fragment a disk needs in its `<source>` for `warden libvirt start` to unlock it.
    public static func encryptionXML(_ secret: UUID) -> String {
        "<encryption format='luks'><secret type='passphrase' uuid='\(secret.uuidString.lowercased())'/></encryption>"
    }

    /// Starts `reference` (a domain name or UUID) at `uri`. `findVM` maps the domain to its ledger
    /// VM; `encryptedDisks` names the VM's disk indexes that need keys; `release` decides
    /// `unlock` (recorded, throwing `.denied` to refuse) and returns their keys.
    public static func start(uri: String, domain reference: String, store: any LedgerStore,
                             findVM: (any LedgerStore, LibvirtDomain) throws -> VMRecord?,
                             encryptedDisks: (VMRecord) throws -> Set<Int>,
                             release: (VMRecord, Set<Int>) throws -> [Int: SecretBytes]) throws -> Result {
        _ = quietErrors
        guard let conn = virConnectOpen(uri) else {
            throw WardenError(.unavailable, "cannot connect to libvirt at \(uri): \(lastError())")
        }
        defer { virConnectClose(conn) }
        let found = UUID(uuidString: reference).flatMap { virDomainLookupByUUIDString(conn, $0.uuidString.lowercased()) }
            ?? virDomainLookupByName(conn, reference)
        guard let dom = found else { throw WardenError(.notFound, "libvirt at \(uri) has no domain \(reference)") }
        defer { virDomainFree(dom) }
        guard virDomainIsActive(dom) != 1 else { throw WardenError(.conflict, "domain \(reference) is already running") }
        // The persistent definition: what virDomainCreate will start.
        guard let p = virDomainGetXMLDesc(dom, UInt32(VIR_DOMAIN_XML_INACTIVE.rawValue)) else {
            throw WardenError(.unavailable, "cannot read the definition of \(reference): \(lastError())")
        }
        let xml = Data(String(cString: p).utf8)
        free(p)
        let domain = try LibvirtDomain.parse(xml)
        guard let vm = try domain.uuid.flatMap({ try store.vm(VMID($0)) }) ?? findVM(store, domain) else {
            throw WardenError(.notFound, "domain \(domain.name) is not a VM in the ledger (register it, or let the hook discover it)")
        }
        guard vm.state != .retired else { throw WardenError(.conflict, "VM \(vm.name) is retired") }

        // Which of the domain's disks are the VM's encrypted ones, and the secret each names.
        let ledgerDisks = try store.disks(of: vm.id)
        let encrypted = try encryptedDisks(vm)
        var secrets: [(index: Int, path: String, uuid: UUID)] = []
        for (j, path, disk) in domain.ledgerDisks(ledgerDisks) where encrypted.contains(disk.index) {
            guard let uuid = domain.diskSecrets[j] else {
                let suggested = suggestedSecret(vm: vm.id, layer: Vault.diskLayer(disk.index))
                throw WardenError(.invalidArgument, "disk \(path) of domain \(domain.name) is encrypted, but its XML names no LUKS secret: add \(encryptionXML(suggested)) to its <source>")
            }
            secrets.append((disk.index, path, uuid))
        }
        guard Set(secrets.map(\.uuid)).count == secrets.count else {
            throw WardenError(.invalidArgument, "domain \(domain.name) names one LUKS secret for several disks")
        }

        // Decide and release (recorded) before libvirt sees anything.
        let keys = try release(vm, Set(secrets.map(\.index)))
        var defined: [OpaquePointer] = []
        defer {
            // Undefine every secret this start defined, whatever happened: QEMU has its copy.
            for s in defined { _ = virSecretUndefine(s); _ = virSecretFree(s) }
        }
        for s in secrets {
            guard let key = keys[s.index] else { throw WardenError(.notFound, "no key was released for disk \(s.path)") }
            let u = s.uuid.uuidString.lowercased()
            // A secret already under this UUID (a leftover, or one defined by hand) is replaced.
            if let old = virSecretLookupByUUIDString(conn, u) {
                _ = virSecretUndefine(old)
                _ = virSecretFree(old)
            }
            let secretXML = "<secret ephemeral='yes' private='yes'><uuid>\(u)</uuid><description>warden: \(vm.id) \(Vault.diskLayer(s.index))</description></secret>"
            guard let secret = virSecretDefineXML(conn, secretXML, 0) else {
                throw WardenError(.unavailable, "libvirt refused the secret for \(s.path): \(lastError())")
            }
            defined.append(secret)
            let status = Vault.passphrase(key).withBytes { b in
                virSecretSetValue(secret, b.bindMemory(to: UInt8.self).baseAddress, b.count, 0)
            }
            guard status == 0 else { throw WardenError(.unavailable, "libvirt refused the value of the secret for \(s.path): \(lastError())") }
        }
        guard virDomainCreate(dom) == 0 else {
            throw WardenError(.unavailable, "libvirt could not start \(domain.name): \(lastError())")
        }
        return Result(domain: domain.name, vm: vm, unlocked: secrets.map(\.path))
    }

    /// Whether libvirt at `uri` holds a secret with this UUID (tests, `warden doctor`).
    public static func secretExists(uri: String, _ uuid: UUID) throws -> Bool {
        _ = quietErrors
        guard let conn = virConnectOpen(uri) else { throw WardenError(.unavailable, "cannot connect to libvirt at \(uri): \(lastError())") }
        defer { virConnectClose(conn) }
        guard let s = virSecretLookupByUUIDString(conn, uuid.uuidString.lowercased()) else { return false }
        _ = virSecretFree(s)
        return true
    }

    /// libvirt prints every error to standard error by default; Warden reports them itself, in one line.
    static let quietErrors: Void = {
        virSetErrorFunc(nil) { _, _ in }
    }()

    static func lastError() -> String { libvirtLastError() }
}

/// libvirt's last error in one line; when libvirt itself could not be loaded, why.
func libvirtLastError() -> String {
    if let e = virGetLastError(), let m = e.pointee.message {
        return String(cString: m).replacingOccurrences(of: "\n", with: " ")
    }
    if let why = warden_libvirt_load_error() { return "libvirt could not be loaded: " + String(cString: why) }
    return "unknown libvirt error"
}
