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

    /// What ``download(_:disk:to:)`` did.
    public struct Downloaded: Sendable {
        /// Chunks an earlier, interrupted pull had already written.
        public var resumed: Int
        /// The disk's content fingerprint, computed from the chunks as they were written (when
        /// the chunk size is the fingerprint's); nil otherwise.
        public var fingerprint: WardenCore.Digest?
    }

    /// Rebuilds disk `index` into `partial`, in the disk's own format (a flat qcow2 written by
    /// Warden's qcow2 writer, or a sparse raw file), resuming from the chunks its journal
    /// (`partial + ".done"`) records: those are read back and checked against their digests
    /// first (a chunk torn by a crash is fetched again). Chunks are fetched through a sliding
    /// window; write-back starts every few chunks, so the closing fsync overlaps the transfer.
    /// A chunk whose blob fails its digest stops the pull with the digest named; the caller
    /// removes the partial file then.
    /// With `trustFingerprint` (the caller checked that a trusted key signed the image), the
    /// fingerprint the pusher recorded is taken instead of hashing the disk again.
    @discardableResult
    public func download(_ vm: FetchedVM, disk index: Int, to partial: String, trustFingerprint: Bool = false) async throws -> Downloaded {
        let map = vm.config.disks[index]
        let qcow2 = map.format == "qcow2"
        let journalPath = partial + ".done"
        let header = "warden-pull/2 \(vm.digest) disk \(index) \(map.format)"
        let chunkSize = vm.config.chunkSize
        let pushed = trustFingerprint ? map.fingerprint.flatMap { WardenCore.Digest($0) } : nil
        let fingerprinting = pushed == nil && chunkSize == ContentFingerprint.chunkBytes
        let digests = Locked<[UInt64: [UInt8]]>([:])
        var done = Set<UInt64>()
        if let text = try? String(contentsOfFile: journalPath, encoding: .utf8), text.hasPrefix(header + "\n"),
           FileManager.default.fileExists(atPath: partial) {
            for line in text.split(separator: "\n").dropFirst() { if let o = UInt64(line) { done.insert(o) } }
            done = (try? verified(done, in: partial, map: map, key: vm.familyKey, chunkSize: chunkSize,
                                  digests: fingerprinting ? digests : nil)) ?? []
        }
        if done.isEmpty {
            digests.withLock { $0 = [:] }
            unlink(partial); unlink(journalPath)
            if qcow2 { try QCOW2Overlay.createStandalone(at: partial, size: map.virtualSize, durable: false) }
            try Data((header + "\n").utf8).write(to: URL(fileURLWithPath: journalPath))
        }
        let sink = try DiskSink(path: partial, qcow2: qcow2, size: map.virtualSize)
        defer { sink.close() }
        let journal = open(journalPath, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW)
        guard journal >= 0 else { throw WardenError(.io, "cannot open the pull journal", file: journalPath) }
        defer { close(journal) }
        let todo = map.chunks.filter { !done.contains($0.offset) }
        progress.addTotal(Int64(map.chunks.reduce(0) { $0 + $1.length }))
        for c in map.chunks where done.contains(c.offset) { progress.advance(guest: Int64(c.length), wire: 0, reused: 1) }
        let width = AdaptiveWidth(initial: 6, maximum: 8)
        let repo = vm.reference.repository
        let key = vm.familyKey
        try await withThrowingTaskGroup(of: UInt64.self) { tasks in
            var next = 0, inFlight = 0
            var finished: [UInt64] = []
            func launch() {
                let c = todo[next]
                next += 1; inFlight += 1
                tasks.addTask {
                    var blob = try await client.blob(repo, c.digest, size: c.size, limit: Int(c.size))
                    let wire = Int64(blob.count)
                    if let key { blob = try key.openChunk(blob, what: "chunk \(c.digest)") }
                    var buf = [UInt8](repeating: 0, count: chunkSize)
                    try buf.withUnsafeMutableBytes { try ChunkCodec.decompress(blob, length: c.length, into: $0, what: "chunk \(c.digest)") }
                    if fingerprinting {
                        let d = buf.withUnsafeBytes { ContentFingerprint.chunkDigest(index: c.offset / UInt64(chunkSize),
                                                                                     bytes: UnsafeRawBufferPointer(rebasing: $0[0..<c.length])) }
                        if let d { digests.withLock { $0[c.offset / UInt64(chunkSize)] = d } }
                    }
                    try sink.write(buf, length: c.length, at: c.offset)
                    progress.advance(guest: Int64(c.length), wire: wire)
                    return c.offset
                }
            }
            while next < todo.count && inFlight < width.width { launch() }
            while let offset = try await tasks.next() {
                inFlight -= 1
                finished.append(offset)
                if finished.count >= 8 || (next == todo.count && inFlight == 0) {
                    sink.startWriteback()
                    let lines = finished.map { "\($0)\n" }.joined()
                    _ = lines.withCString { write(journal, $0, strlen($0)) }
                    finished.removeAll()
                    afterBatch?()
                }
                while next < todo.count && inFlight < width.width { launch() }
            }
        }
        try sink.sync()
        let fp = pushed ?? (fingerprinting ? ContentFingerprint.combine(size: map.virtualSize, chunks: digests.withLock { $0 }) : nil)
        return Downloaded(resumed: map.chunks.count - todo.count, fingerprint: fp)
    }

    /// The chunks of `done` whose bytes in `partial` still compress (and seal) to their digest.
    func verified(_ done: Set<UInt64>, in partial: String, map: VMArtifactConfig.DiskMap, key: FamilyKey?, chunkSize: Int,
                  digests: Locked<[UInt64: [UInt8]]>?) throws -> Set<UInt64> {
        let image = try ImageOpener.open(partial)
        guard image.device.size == map.virtualSize else { return [] }
        var ok = Set<UInt64>()
        for c in map.chunks where done.contains(c.offset) {
            var buf = [UInt8](repeating: 0, count: c.length)
            try buf.withUnsafeMutableBytes { try image.device.read(at: c.offset, into: $0) }
            var blob = try buf.withUnsafeBytes { try ChunkCodec.compress($0) }
            if let key { blob = try key.sealChunk(blob) }
            if BlobDigest.of(blob) == c.digest {
                ok.insert(c.offset)
                if let digests, let d = buf.withUnsafeBytes({ ContentFingerprint.chunkDigest(index: c.offset / UInt64(chunkSize), bytes: $0) }) {
                    digests.withLock { $0[c.offset / UInt64(chunkSize)] = d }
                }
            }
        }
        return ok
    }
}

/// Where a pull writes a disk: Warden's qcow2 writer (one writer at a time, under a lock) or a
/// sparse raw file; zero 64 KiB blocks are not written (holes, unallocated clusters).
final class DiskSink: @unchecked Sendable {
    // @unchecked: the overlay is only used with `lock` held; fd is immutable.
    let path: String
    let lock = NSLock()
    let overlay: QCOW2Overlay?
    let fd: Int32

    init(path: String, qcow2: Bool, size: UInt64) throws {
        self.path = path
        if qcow2 {
            let o = try QCOW2Overlay.open(path, durability: .processCrashOnly)
            guard o.size == size else { throw WardenError(.corrupt, "the partial disk has the wrong size", file: path) }
            overlay = o
            fd = open(path, O_RDONLY | O_CLOEXEC)
        } else {
            overlay = nil
            fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard fd >= 0 else { throw WardenError(.io, "cannot create: \(String(cString: strerror(errno)))", file: path) }
            guard ftruncate(fd, off_t(size)) == 0 else { throw WardenError(.io, "cannot size the disk: \(String(cString: strerror(errno)))", file: path) }
        }
    }

    /// Writes `buf[0..<length]` at `offset`: each run of consecutive non-zero 64 KiB blocks in
    /// one write (zero blocks stay holes or unallocated clusters).
    func write(_ buf: [UInt8], length: Int, at offset: UInt64) throws {
        try buf.withUnsafeBytes { all in
            let raw = UnsafeRawBufferPointer(rebasing: all[0..<length])
            guard let overlay else { return try RawExport.writeNonZero(raw, fd: fd, at: offset, name: path) }
            try RawExport.forEachNonZeroRun(raw) { run in
                try lock.withLock { try overlay.writeFresh(UnsafeRawBufferPointer(rebasing: raw[run]), at: offset + UInt64(run.lowerBound)) }
            }
        }
    }

    func startWriteback() { if fd >= 0 { FileDescriptorIO.startWriteback(fd) } }

    func sync() throws {
        if let overlay { try lock.withLock { try overlay.flush() } }
        else if fsync(fd) != 0 { throw WardenError(.io, "cannot sync: \(String(cString: strerror(errno)))", file: path) }
    }

    func close() { if fd >= 0 { Glibc.close(fd) } }
}

