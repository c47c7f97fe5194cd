import DiskImage
import Foundation
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// A VM artefact as fetched: manifest, config and lineage verified against their digests.
public struct FetchedVM: Sendable {
    public var reference: ImageReference
    public var digest: String
    public var manifest: Manifest
    public var config: VMArtifactConfig
    public var lineage: [UInt8]
    public var signature: ManifestSignature.Verdict
    /// The family key of an encrypted image (nil: plaintext).
    public var familyKey: FamilyKey?
    /// The sealed config's family and recipients (encrypted images).
    public var sealed: SealedConfig?
}

/// Thrown by ``VMPuller/fetch(_:trusted:unseal:)`` when the reference is an ordinary container
/// image (a KubeVirt containerDisk, perhaps) rather than a Warden VM.
public struct ContainerImageFound: Error, Sendable {
    /// The digest the reference resolved to (the index's, for a multi-platform image).
    public var digest: String
    /// The image manifest (nil when the reference is an index; the platform's is read later).
    public var manifest: Manifest?
}

/// Fetches and checks a VM artefact, and rebuilds its disks.
public struct VMPuller: Sendable {
    public let client: RegistryClient
    public let progress: TransferProgress
    /// Called after each batch of chunks is written and journalled (tests kill the registry there).
    public var afterBatch: (@Sendable () -> Void)?
    public init(client: RegistryClient, progress: TransferProgress) { self.client = client; self.progress = progress }

    /// The manifest (an index is followed to its first Warden manifest), config, lineage and
    /// the signature verdict against `trusted`.
    public func fetch(_ ref: ImageReference, trusted: [TrustedKey],
                      unseal: (SealedConfig) throws -> FamilyKey = { _ in throw WardenError(.denied, "the image is encrypted and no key is at hand") })
        async throws -> FetchedVM {
        let repo = ref.repository
        var fetched = try await client.manifest(repo, ref.reference)
        let topDigest = fetched.digest
        if fetched.mediaType == MediaType.imageIndex || fetched.mediaType == MediaType.dockerManifestList {
            let index = try BoundedJSON.decode(ImageIndex.self, from: fetched.bytes, limit: RegistryLimits.manifestBytes, what: "the index of \(ref)")
            guard let m = index.manifests.prefix(64).first(where: { $0.artifactType == MediaType.vm }) else {
                throw ContainerImageFound(digest: topDigest, manifest: nil)
            }
            try BlobDigest.check(m.digest, what: "the index of \(ref)")
            fetched = try await client.manifest(repo, m.digest)
        }
        let manifest = try BoundedJSON.decode(Manifest.self, from: fetched.bytes, limit: RegistryLimits.manifestBytes, what: "the manifest of \(ref)")
        if ContainerDisk.isContainerImage(manifest) { throw ContainerImageFound(digest: topDigest, manifest: manifest) }
        try Self.checkManifest(manifest, ref: ref)
        var configBytes = try await client.blob(repo, manifest.config.digest, size: manifest.config.size, limit: RegistryLimits.configBytes)
        var key: FamilyKey?
        var sealed: SealedConfig?
        if manifest.config.mediaType == MediaType.sealedConfig {
            let s = try BoundedJSON.decode(SealedConfig.self, from: configBytes, limit: RegistryLimits.configBytes, what: "the sealed config of \(ref)")
            try s.validate()
            let k = try unseal(s)
            guard let blob = Data(base64Encoded: s.sealed) else { throw WardenError(.corrupt, "the sealed config of \(ref) is not base64") }
            configBytes = try k.openMetadata(Array(blob), label: "config")
            key = k; sealed = s
        }
        let config = try BoundedJSON.decode(VMArtifactConfig.self, from: configBytes, limit: RegistryLimits.configBytes, what: "the VM config of \(ref)")
        try config.validate(layers: manifest.layers)
        guard let lin = manifest.layers.first(where: { $0.mediaType == MediaType.lineage || $0.mediaType == MediaType.sealedLineage }) else {
            throw WardenError(.corrupt, "the manifest of \(ref) has no lineage layer")
        }
        var lineage = try await client.blob(repo, lin.digest, size: lin.size, limit: RegistryLimits.lineageBytes)
        if let key { lineage = try key.openMetadata(lineage, label: "lineage") }
        let verdict = try await signature(repo: repo, digest: fetched.digest, trusted: trusted, tag: ref.digest == nil ? ref.tag : nil)
        return FetchedVM(reference: ref, digest: fetched.digest, manifest: manifest, config: config, lineage: lineage, signature: verdict,
                         familyKey: key, sealed: sealed)
    }

    /// Checks the manifest's shape before any blob is fetched.
    static func checkManifest(_ m: Manifest, ref: ImageReference) throws {
        func bad(_ why: String) -> WardenError { WardenError(.corrupt, "the manifest of \(ref) \(why)") }
        guard m.schemaVersion == 2 else { throw bad("has schemaVersion \(m.schemaVersion), not 2") }
        if let t = m.mediaType, t != MediaType.imageManifest { throw bad("has media type \(t.prefix(80).debugDescription)") }
        let sealed = m.config.mediaType == MediaType.sealedConfig
        guard m.config.mediaType == MediaType.vmConfig || sealed else {
            throw WardenError(.unsupported, "\(ref) is neither a Warden VM nor a container image (its config is \(m.config.mediaType.prefix(80).debugDescription))")
        }
        guard m.layers.count <= RegistryLimits.layers else { throw bad("lists \(m.layers.count) layers") }
        try BlobDigest.check(m.config.digest, what: "the manifest of \(ref)")
        guard m.config.size > 0, m.config.size <= Int64(RegistryLimits.configBytes) else { throw bad("gives the config \(m.config.size) bytes") }
        for l in m.layers {
            try BlobDigest.check(l.digest, what: "the manifest of \(ref)")
            let expected = sealed ? [MediaType.sealedChunk, MediaType.sealedLineage] : [MediaType.chunk, MediaType.lineage]
            guard expected.contains(l.mediaType) else {
                throw bad("has a layer of media type \(l.mediaType.prefix(80).debugDescription)\(sealed ? " in an encrypted image" : "")")
            }
            guard l.size > 0, l.size <= Int64(RegistryLimits.lineageBytes) else { throw bad("has a layer of \(l.size) bytes") }
        }
    }

    /// The verdict on the cosign-layout signature of `digest` (unsigned when there is none).
    public func signature(repo: String, digest: String, trusted: [TrustedKey], tag: String?) async throws -> ManifestSignature.Verdict {
        let sigTag = ManifestSignature.tag(for: digest)
        let sig: RegistryClient.FetchedManifest
        do { sig = try await client.manifest(repo, sigTag) } catch let e as WardenError where e.code == .notFound { return .unsigned }
        do {
            return try await ManifestSignature.verify(digest: digest, signatureManifest: sig.bytes, payload: { d in
                try await client.blob(repo, d.digest, size: d.size, limit: 64 << 10)
            }, trusted: trusted, tag: tag)
        } catch let e as WardenError where e.code == .corrupt {
            return .invalid(e.message)
        }
    }

    /// Rebuilds disk `index` into `partial` (a raw, sparse file), resuming from the chunks its
    /// journal (`partial + ".done"`) records. A chunk whose blob fails its digest stops the pull
    /// with the digest named; the caller removes the partial file then.
    /// Returns how many chunks were already there (resumed).
    @discardableResult
    public func download(_ vm: FetchedVM, disk index: Int, to partial: String) async throws -> Int {
        let map = vm.config.disks[index]
        let journalPath = partial + ".done"
        let header = "warden-pull \(vm.digest) disk \(index)"
        var done = Set<UInt64>()
        if let text = try? String(contentsOfFile: journalPath, encoding: .utf8), text.hasPrefix(header + "\n"),
           FileManager.default.fileExists(atPath: partial) {
            for line in text.split(separator: "\n").dropFirst() { if let o = UInt64(line) { done.insert(o) } }
        } else {
            unlink(partial); unlink(journalPath)
        }
        let fd = open(partial, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw WardenError(.io, "cannot create: \(String(cString: strerror(errno)))", file: partial) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(map.virtualSize)) == 0 else { throw WardenError(.io, "cannot size the disk: \(String(cString: strerror(errno)))", file: partial) }
        if done.isEmpty { try Data((header + "\n").utf8).write(to: URL(fileURLWithPath: journalPath)) }
        let journal = open(journalPath, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW)
        guard journal >= 0 else { throw WardenError(.io, "cannot open the pull journal", file: journalPath) }
        defer { close(journal) }
        let todo = map.chunks.filter { !done.contains($0.offset) }
        progress.addTotal(Int64(map.chunks.reduce(0) { $0 + $1.length }))
        for c in map.chunks where done.contains(c.offset) { progress.advance(guest: Int64(c.length), wire: 0, reused: 1) }
        let width = AdaptiveWidth(initial: 4, maximum: 8)
        var i = 0
        let repo = vm.reference.repository
        let chunkSize = vm.config.chunkSize
        while i < todo.count {
            let group = Array(todo[i..<min(i + width.width * 2, todo.count)])
            i += group.count
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for c in group {
                    tasks.addTask {
                        var blob = try await client.blob(repo, c.digest, size: c.size, limit: Int(c.size))
                        if let key = vm.familyKey { blob = try key.openChunk(blob, what: "chunk \(c.digest)") }
                        var buf = [UInt8](repeating: 0, count: chunkSize)
                        try buf.withUnsafeMutableBytes { try ChunkCodec.decompress(blob, length: c.length, into: $0, what: "chunk \(c.digest)") }
                        try Self.writeSparse(fd, buf, length: c.length, at: c.offset, path: partial)
                        progress.advance(guest: Int64(c.length), wire: Int64(blob.count))
                    }
                }
                try await tasks.waitForAll()
            }
            guard fdatasync(fd) == 0 else { throw WardenError(.io, "cannot sync: \(String(cString: strerror(errno)))", file: partial) }
            let lines = group.map { "\($0.offset)\n" }.joined()
            _ = lines.withCString { write(journal, $0, strlen($0)) }
            afterBatch?()
        }
        guard fsync(fd) == 0 else { throw WardenError(.io, "cannot sync: \(String(cString: strerror(errno)))", file: partial) }
        return map.chunks.count - todo.count
    }

    /// Writes `buf[0..<length]` at `offset`, leaving runs of zero blocks (64 KiB) as holes.
    static func writeSparse(_ fd: Int32, _ buf: [UInt8], length: Int, at offset: UInt64, path: String) throws {
        let block = 64 << 10
        try buf.withUnsafeBytes { raw in
            var start = 0
            while start < length {
                let end = min(start + block, length)
                let piece = UnsafeRawBufferPointer(rebasing: raw[start..<end])
                if !VMPusher.isZero(piece) {
                    try FileDescriptorIO.pwriteAll(fd, piece, at: offset + UInt64(start), name: path)
                }
                start = end
            }
        }
    }
}
