import ArgumentParser
import Foundation
import WardenConfig
import Hypervisor
import ImageStore
import Ledger
import Sysprep
import Vault
import WardenCore
import WardenServices

/// How to reach a registry (push, pull, and `warden scan REF`).
struct RegistryConnection: ParsableArguments {
    @Flag(help: "Talk plain HTTP to the registry (a loopback or test registry). Logins are sent only to loopback over HTTP.") var plainHttp = false
    @Option(help: ArgumentHelp("Trust only this CA certificate (PEM) for the registry's TLS.", valueName: "file")) var caFile: String?
    @Option(help: ArgumentHelp("Read the registry login from this auth.json only (default: $REGISTRY_AUTH_FILE, podman's and docker's files).", valueName: "file"))
    var authFile: String?

    var options: RegistryOptions {
        var o = RegistryOptions()
        o.plainHTTP = plainHttp; o.caFile = caFile; o.authFile = authFile
        return o
    }
}

/// The registry connection and the output of push and pull.
struct RegistryAccess: ParsableArguments {
    @OptionGroup var connection: RegistryConnection
    @Flag(help: "No progress and no summary line on stderr.") var quiet = false
    @Flag(help: "Print JSON (docs/json-schemas/oci.v1.json).") var json = false

    var options: RegistryOptions { connection.options }
}

/// `warden vm push VM REF`.
struct VMPush: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Push a stopped VM to an OCI registry: chunked, deduplicated, signed with this host's key.",
        discussion: """
        The VM's disks are read as the guest sees them (through any qcow2 chain), cut into fixed-size \
        chunks, zstd-compressed and uploaded as blobs addressed by their digest; chunks the registry \
        already has (a base pushed earlier) are not sent again. The manifest (artifact type \
        application/vnd.warden.vm.v1) carries the VM's config and the in-toto statements of its \
        lineage, and is signed in cosign's tag layout with this host's Ed25519 key. Policy decides the \
        `push` operation first (rules may name `registries`); a denied push uploads nothing. An \
        interrupted push is resumed by running it again. docs/oci.md.
        
        Example:
          warden vm push web registry.example/vms/web:2026-12
        """
    )
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The VM (id, unique id prefix, or unique name).") var vm: String
    @Argument(help: "Where to: host[:port]/repository[:tag], e.g. localhost:5000/team/web1:2026-12.") var reference: String
    @Option(help: ArgumentHelp("Chunk size: a power of two from 64K to 64M.", valueName: "size")) var chunkSize = "4M"
    @Flag(help: "Encrypt chunks, config and lineage with the VM's lineage family key, kept in this host's vault (docs/oci.md).") var encrypt = false
    @Option(name: .customLong("recipient"), help: ArgumentHelp("With --encrypt: also wrap the family key for this host key (base64 X25519, or a file; `warden registry key --recipient` prints it). Repeatable.", valueName: "key"))
    var recipients: [String] = []
    @OptionGroup var access: RegistryAccess
    @OptionGroup var policyOptions: PolicyOptions

    func run() throws {
        let ref = try ImageReference(parsing: reference)
        guard let size = Self.parseSize(chunkSize) else { throw WardenError(.invalidArgument, "--chunk-size: \(chunkSize) is not a size like 4M") }
        let keys = try recipients.map { try RecipientKey.publicKey($0) }
        let store = try database.open(create: false)
        var service = RegistryService(store: store, policy: policyOptions.source, keysDirectory: HostKey.directory(databasePath: database.path),
                                      vault: Vault.beside(database: database.path), note: { Output.note($0) })
        service.afterBatch = TestHooks.batchPause()
        let svc = service
        var pushRequest = RegistryService.PushRequest(vm: vm, reference: ref, options: access.options, chunkSize: size, progress: !access.quiet,
                                                      encrypt: encrypt, recipients: keys)
        pushRequest.liveProgress = ProgressMode.current.shows(terminal: isatty(2) == 1)
        let request = pushRequest
        let out = try runAsync { try await svc.push(request) }
        let r = out.result
        struct Doc: Encodable {
            var schema = "warden.push/v1"
            var vm: String; var name: String; var reference: String; var digest: String; var signatureTag: String; var signingKey: String
            var chunks: Int; var reused: Int; var mounted: Int; var uploaded: Int; var chunkBytes: Int64; var uploadedBytes: Int64
            var guestBytes: UInt64; var seconds: Double; var encrypted: Bool
        }
        try Output.render(Doc(vm: out.vm.id.description, name: out.vm.name, reference: r.reference, digest: r.digest, signatureTag: r.signatureTag,
                              signingKey: out.keyID, chunks: r.chunks, reused: r.reused, mounted: r.mounted, uploaded: r.uploaded,
                              chunkBytes: r.chunkBytes, uploadedBytes: r.uploadedBytes, guestBytes: r.guestBytes, seconds: r.seconds,
                              encrypted: encrypt),
                          json: access.json) {
            Output.stdout.line("pushed VM \(out.vm.name) to \(r.reference)")
            Output.stdout.line("  \(r.chunks) chunks: \(r.uploaded) uploaded (\(TransferProgress.size(r.uploadedBytes))), \(r.reused) reused, \(r.mounted) mounted; signed (\(r.signatureTag))")
        }
    }

    /// `4M`, `64K`, `1048576`.
    static func parseSize(_ s: String) -> Int? {
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        if let u = s.last, let m = units[Character(u.uppercased())], let n = Int(s.dropLast()), n > 0, n < 1 << 20 { return n * m }
        return Int(s).flatMap { $0 > 0 ? $0 : nil }
    }
}

/// `warden vm pull REF`.
struct VMPull: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull",
        abstract: "Pull a VM from an OCI registry: verified, decided by policy, registered as a copy in the lineage of the pushed VM.",
        discussion: """
        The manifest's signature is checked against the keys in the policy directory's trusted-keys/ \
        (an unsigned or wrongly signed image is refused unless an allow rule names its verdict). \
        Policy decides the `pull` operation on the VM the manifest describes (registry, labels, the \
        findings it was pushed with, host, time); a denied pull writes nothing. Every chunk is checked \
        against its digest and written sparse under a hidden name; only a complete disk is moved into \
        place. The VM's identity (machine-id, SSH host keys, …) is refreshed unless --keep-identity, \
        which policy must allow. An interrupted pull resumes when run again. docs/oci.md.
        
        Example:
          warden vm pull registry.example/vms/web:2026-12 --name web-dr --dir /srv/vms
        """
    )
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "host[:port]/repository[:tag|@digest]") var reference: String
    @Option(help: "The new VM's name (default: the pushed VM's).") var name: String?
    @Option(help: ArgumentHelp("The folder for its disks (default: $WARDEN_HOME/vms/NAME).", valueName: "dir")) var dir: String?
    @Option(help: "The new VM's owner (default: the pushed VM's).") var owner: String?
    @Flag(help: "Keep the pushed VM's identity (no refresh); needs an allow rule with keepIdentity: true.") var keepIdentity = false
    @Option(help: ArgumentHelp("Identity refresh operations, as virt-sysprep's (default: the defaults).", valueName: "list")) var operations: String?
    @OptionGroup var access: RegistryAccess
    @OptionGroup var policyOptions: PolicyOptions

    func run() throws {
        let ref = try ImageReference(parsing: reference)
        let store = try database.open(create: true)
        let ops = try Sysprep.select(operations)
        var service = RegistryService(store: store, policy: policyOptions.source, keysDirectory: HostKey.directory(databasePath: database.path),
                                      vault: Vault.beside(database: database.path), note: { Output.note($0) })
        // RSA host keys from the pool beside the database, when there is one (`warden keys refill`).
        let pool = KeysCommand.pool(database: database.path)
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: pool.directory, isDirectory: &isDir) && isDir.boolValue { service.keyPool = pool }
        service.afterBatch = TestHooks.batchPause()
        let svc = service
        let vmName = name
        let leaf: String = name ?? ("pulled-" + String(UUID().uuidString.prefix(8)).lowercased())
        let folder: String = dir ?? (RunDirectory.home() + "/vms/" + leaf)
        var pullRequest = RegistryService.PullRequest(reference: ref, name: vmName, directory: folder, owner: owner, keepIdentity: keepIdentity,
                                                      operations: ops, options: access.options, progress: !access.quiet)
        pullRequest.liveProgress = ProgressMode.current.shows(terminal: isatty(2) == 1)
        let request = pullRequest
        let out = try runAsync { try await svc.pull(request) }
        struct Doc: Encodable {
            var schema = "warden.pull/v1"
            var vm: String; var name: String; var reference: String; var digest: String; var signature: String
            var origin: String; var originName: String; var linkedToOrigin: Bool; var identityRefreshed: Bool; var disks: [String]
            var chunks: Int; var resumedChunks: Int
        }
        try Output.render(Doc(vm: out.vm.id.description, name: out.vm.name, reference: ref.description, digest: out.digest,
                              signature: out.signature.label, origin: out.origin.id, originName: out.origin.name,
                              linkedToOrigin: out.linkedToOrigin, identityRefreshed: out.identity != nil, disks: out.paths,
                              chunks: out.chunks, resumedChunks: out.resumedChunks),
                          json: access.json) {
            Output.stdout.line("pulled \(ref) as VM \(out.vm.name) (\(out.vm.id)), signature \(out.signature.label)")
            Output.stdout.line("  a copy of \(out.origin.name) (\(out.origin.id))\(out.linkedToOrigin ? "" : ", which this ledger does not hold"); identity \(out.identity != nil ? "refreshed" : keepIdentity ? "kept" : "not refreshed (--operations none)")")
            for p in out.paths { Output.stdout.line("  \(p)") }
        }
    }
}

/// `warden registry key`: this host's public signing key, for other hosts' trusted-keys/.
struct RegistryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "registry",
        abstract: "OCI registry helpers (docs/oci.md).",
        subcommands: [Key.self])

    struct Key: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "key",
            abstract: "Print this host's Ed25519 public key (base64), as a file in a policy's trusted-keys/ expects it.",
            discussion: """
                Example:
                  warden registry key > trusted-keys/hv1.pub
                """)
        @OptionGroup var database: DatabaseOptions
        @Flag(help: "Print the X25519 key that encrypted pushes wrap family keys for (--recipient), not the signing key.") var recipient = false
        @Flag(help: "JSON output (both keys).") var json = false
        func run() throws {
            let dir = HostKey.directory(databasePath: database.path)
            let key = try HostKey.loadOrCreate(directory: dir)
            let rec = try RecipientKey.loadOrCreate(directory: dir, host: key.host.value)
            struct Doc: Encodable {
                var schema = "warden.registry-key/v1"; var host: String; var publicKey: String; var keyId: String
                var recipientKey: String; var recipientKeyId: String
            }
            try Output.render(Doc(host: key.host.value, publicKey: key.publicKey.base64EncodedString(), keyId: ManifestSignature.keyID(key.publicKey),
                                  recipientKey: rec.publicKey.base64EncodedString(), recipientKeyId: rec.id), json: json) {
                Output.stdout.line((recipient ? rec.publicKey : key.publicKey).base64EncodedString())
            }
        }
    }
}

/// `warden scan REF`: image arguments that are registry references of containerDisks, fetched
/// into private temporary folders (removed afterwards); file arguments stay as they are.
struct ContainerDiskArguments {
    var paths: [String] = []
    /// Temporary disk path → the reference it came from.
    var names: [String: String] = [:]
    var folders: [String] = []

    static func resolve(_ args: [String], options: RegistryOptions) throws -> ContainerDiskArguments {
        var out = ContainerDiskArguments()
        do {
            for a in args {
                let text = a.hasPrefix("docker://") ? String(a.dropFirst(9)) : a
                guard a.hasPrefix("docker://") || !FileManager.default.fileExists(atPath: a),
                      let ref = try? ImageReference(parsing: text) else {
                    out.paths.append(a)
                    continue
                }
                var template = Array((NSTemporaryDirectory() + "warden-cdisk-XXXXXX").utf8CString)
                guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
                    throw WardenError(.io, "cannot make a temporary folder for \(ref)")
                }
                let dir = String(cString: made)
                out.folders.append(dir)
                let got = try runAsync {
                    try await RegistryClient.with(registry: ref.registry, options: options) { try await ContainerDisk.fetch(ref, client: $0, into: dir) }
                }
                out.paths.append(got.path)
                out.names[got.path] = ref.description
            }
        } catch {
            out.cleanUp()
            throw error
        }
        return out
    }

    func cleanUp() { for f in folders { try? FileManager.default.removeItem(atPath: f) } }
}
