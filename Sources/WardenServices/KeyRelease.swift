import Foundation
import Ledger
import Policy
import Vault
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// Releasing a VM's data keys (docs/vault.md): every release decides `unlock` through policy,
/// recorded in the ledger, before a key is unwrapped. `warden vm start`, rollback and snapshots
/// of a stopped VM, `warden libvirt start`, copies, clones, rekeying and `--key-from vault` all
/// release through here.
///
/// Two exceptions, both recorded, neither silent: **break-glass** (an admin, with a reason,
/// overrides a denial, after the approvals the vault configuration asks for) and **grace**
/// (when the key provider cannot unwrap a key, a copy kept on this host after an earlier
/// allowed release is used until it expires). Without either, a VM whose provider is gone is
/// locked, and the error says why.
public struct KeyRelease: Sendable {
    public let service: VMService
    public let vault: Vault
    public var config: VaultConfig
    /// Set by `--break-glass REASON`: override a denied unlock (admins only, recorded).
    public var breakGlass: String?
    public var now: @Sendable () -> Date = { Date() }

    /// `config` nil: the vault configuration in the service's policy directory (its defaults
    /// when there is none). A malformed configuration throws: it fails closed.
    public init(service: VMService, vault: Vault, config: VaultConfig? = nil, breakGlass: String? = nil) throws {
        self.service = service; self.vault = vault; self.breakGlass = breakGlass
        self.config = try config ?? VaultConfig.load(policyDirectory: service.policy.directory)
    }

    /// The local user running this, from the process's real uid (never from the environment:
    /// break-glass and approvals are decided on it).
    public static var localUser: String {
        if let pw = getpwuid(getuid()), let name = pw.pointee.pw_name { return String(cString: name) }
        return "uid\(getuid())"
    }

    /// The indexes of `vm`'s disks that need a key: those with a key in the vault, and those the
    /// ledger records as encrypted — so a VM whose keys are missing here is refused rather than
    /// started without them.
    public func encryptedDisks(of vm: VMRecord) throws -> Set<Int> {
        Set(vault.layers(of: vm.id).keys.compactMap(Vault.diskIndex)).union(EventRecord.encryptedDisks(in: try service.store.events(of: vm.id)))
    }

    /// Decides `unlock` for `disks` of `vm` (recorded; a denial throws `.denied`, exit 3, and
    /// nothing is unwrapped — unless a permitted break-glass overrides it), then unwraps their
    /// keys, from the grace copies when the provider fails. A disk without a key here throws
    /// `.notFound`, naming whether it was shredded.
    public func release(_ vm: VMRecord, disks: Set<Int>) throws -> [Int: SecretBytes] {
        try release(vm, disks: disks, vtpm: false).disks
    }

    /// Whether `vm`'s vTPM state is kept under the vault: it has a vTPM key already, or its
    /// disks are encrypted (its data is under the vault, so its vTPM is too).
    public func vtpmEncrypted(_ vm: VMRecord) throws -> Bool {
        let layers = vault.layers(of: vm.id)
        if layers[Vault.vtpmLayer] != nil { return true }
        return !(try encryptedDisks(of: vm)).isEmpty
    }

    /// As ``release(_:disks:)``, and with `vtpm`, the vTPM state key too when the VM's data is
    /// under the vault (made on first use): one `unlock` decision covers every layer.
    public func release(_ vm: VMRecord, disks: Set<Int>, vtpm: Bool) throws -> ReleasedKeys {
        let withVTPM = try vtpm && vtpmEncrypted(vm)
        guard !disks.isEmpty || withVTPM else { return ReleasedKeys() }
        try decide(vm, layers: disks.sorted().map(Vault.diskLayer) + (withVTPM ? [Vault.vtpmLayer] : []))
        var vtpmKey: SecretBytes?
        if withVTPM {
            let context = KeyContext(vm: vm.id, layer: Vault.vtpmLayer)
            if let k = try vault.key(for: context) { vtpmKey = k.key } else { vtpmKey = try vault.newKey(for: context).key }
        }
        guard !disks.isEmpty else { return ReleasedKeys(vtpm: vtpmKey) }
        var out: [Int: SecretBytes] = [:]
        var fromGrace: [(layer: String, until: Date)] = []
        var providerError = ""
        for i in disks.sorted() {
            let context = KeyContext(vm: vm.id, layer: Vault.diskLayer(i))
            let key: (id: String, key: SecretBytes)?
            do {
                key = try vault.key(for: context)
            } catch {
                // The provider could not unwrap it: a grace copy, or locked.
                providerError = (error as? WardenError)?.message ?? "\(error)"
                guard let kept = try GraceCache(vault: vault).key(for: context, at: now()) else {
                    throw WardenError(.unavailable, "VM \(vm.name) is locked: the key provider cannot release disk \(i)'s key (\(providerError)) and this host keeps no grace copy of it" + (config.grace == nil ? " (no grace is configured)" : ""))
                }
                out[i] = kept.key
                fromGrace.append((context.layer, kept.until))
                continue
            }
            guard let key else {
                let shredded = try service.store.events(of: vm.id).contains { $0.kind == .keysShredded }
                throw WardenError(.notFound, shredded
                    ? "disk \(i) of \(vm.name) is encrypted and its key is gone (shredded): its data cannot be read"
                    : "disk \(i) of \(vm.name) is encrypted and this host's vault (\(vault.directory)) has no key for it")
            }
            out[i] = key.key
            if let grace = config.grace {
                do {
                    try GraceCache(vault: vault).store(key.key, id: key.id, context: context, until: now().addingTimeInterval(TimeInterval(grace.seconds)))
                } catch {
                    service.note("warning: cannot keep a grace copy of \(vm.name) \(context.layer): \((error as? WardenError)?.message ?? "\(error)")")
                }
            }
        }
        if !fromGrace.isEmpty {
            _ = try service.store.append(NewEvent(kind: .graceRelease, vm: vm.id, host: service.host, payload: [
                "layers": .array(fromGrace.map { .string($0.layer) }),
                "until": .array(fromGrace.map { .string(ISO8601DateFormatter().string(from: $0.until)) }),
                "provider_error": .string(providerError),
            ]))
            service.note("warning: \(vm.name): the key provider is unavailable (\(providerError)); released from this host's grace copies, kept until \(fromGrace.map { ISO8601DateFormatter().string(from: $0.until) }.min() ?? "?") (recorded)")
        }
        return ReleasedKeys(disks: out, vtpm: vtpmKey)
    }

    /// Decides `unlock` (recorded). A denial with `breakGlass` set is overridden when the local
    /// user is a configured admin and enough other admins approved recently; the override is
    /// recorded with the reason and the approvers. Otherwise the denial is thrown.
    func decide(_ vm: VMRecord, layers: [String]) throws {
        let request = PolicyRequest(operation: .unlock, host: service.host)
        let (decision, _) = PolicyGate.evaluate(request, vm: vm, store: service.store, source: service.policy)
        guard decision.effect == .deny else {
            if decision.effect == .quarantine { service.note(decision.summary) }
            return
        }
        guard let reason = breakGlass else { throw WardenError(.denied, decision.summary) }
        let user = Self.localUser
        guard config.admins.contains(user) else {
            throw WardenError(.denied, "\(decision.summary); break-glass refused: \(user) is not a vault admin (\(config.admins.joined(separator: ", ")))")
        }
        let since = now().addingTimeInterval(-TimeInterval(config.approvalWindow.seconds))
        let approvers = Set(try service.store.events(of: vm.id).filter { $0.kind == .breakGlassApproval && $0.time >= since }
            .compactMap { e -> String? in
                guard case .string(let who)? = e.payload["approver"], who != user, config.admins.contains(who) else { return nil }
                return who
            })
        guard approvers.count >= config.approvals else {
            throw WardenError(.denied, "\(decision.summary); break-glass refused: it needs \(config.approvals) approval(s) from other admins in the last \(config.approvalWindow) (`warden vault approve \(vm.name) --reason …`), and has \(approvers.count)")
        }
        let why = "break-glass by \(user): \(reason)" + (approvers.isEmpty ? "" : " (approved by \(approvers.sorted().joined(separator: ", ")))")
        _ = try PolicyGate.recordOverride(decision, store: service.store, host: service.host, why: why)
        service.note("warning: \(decision.summary); keys released anyway: \(why) (recorded in the ledger)")
    }

    /// The decision step alone, for `warden vault bench-unlock`.
    public func decideForBenchmark(_ vm: VMRecord, layers: [String]) throws { try decide(vm, layers: layers) }

    /// Records an admin's approval of a break-glass release of `vm`'s keys (the local user,
    /// who must be a configured admin).
    public func approve(_ vm: VMRecord, reason: String) throws -> EventRecord {
        let user = Self.localUser
        guard config.admins.contains(user) else {
            throw WardenError(.denied, "\(user) is not a vault admin (\(config.admins.joined(separator: ", "))): only admins approve a break-glass release")
        }
        return try service.store.append(NewEvent(kind: .breakGlassApproval, vm: vm.id, actor: "\(user)@\(service.host)", host: service.host,
                                                 payload: ["approver": .string(user), "reason": .string(reason)]))
    }
}
