import Crypto
import DiskImage
import Foundation
import WardenCore

/// How many uploads run at once: starts at `initial`, halves when the registry drops an upload
/// (registries are known to lose sessions under parallel pushes), grows by one after a run of
/// successes, never above `maximum`.
final class AdaptiveWidth: Sendable {
    let state: Locked<(width: Int, streak: Int)>
    let maximum: Int
    init(initial: Int = 4, maximum: Int = 8) { state = Locked((initial, 0)); self.maximum = maximum }
    var width: Int { state.withLock { $0.width } }
    func succeeded() { state.withLock { s in s.streak += 1; if s.streak >= 16 { s.streak = 0; s.width = min(maximum, s.width + 1) } } }
    func failed() { state.withLock { s in s.streak = 0; s.width = max(1, s.width / 2) } }
}

/// What to push.
public struct PushPlan: Sendable {
    public struct Disk: Sendable {
        public var path: String
        public var format: String
        public init(path: String, format: String) { self.path = path; self.format = format }
    }
    public var target: ImageReference
    public var disks: [Disk]
    public var chunkSize: Int
    public var vm: VMArtifactConfig.VMInfo
    public var origin: VMArtifactConfig.Origin
    public var findings: VMArtifactConfig.Findings?
    /// The in-toto statements of the lineage (JSON lines).
    public var lineage: [UInt8]
    /// Repositories of the same registry to mount chunks from (where the VM's ancestors were pushed).
    public var mountFrom: [String]
    /// Blobs larger than this go up in chunked PATCHes of this size.
    public var partSize: Int
    public var signer: Signer
    /// Encrypt chunks, config and lineage with the family's key (and wrap it for these recipients).
    public var sealing: Sealing?

    public struct Sealing: Sendable {
        public var key: FamilyKey
        /// X25519 public keys (raw) that get the family key, wrapped with HPKE.
        public var recipients: [Data]
        public init(key: FamilyKey, recipients: [Data]) { self.key = key; self.recipients = recipients }
    }

    public struct Signer: Sendable {
        public var publicKey: Data
        public var sign: @Sendable (Data) throws -> Data
        public init(publicKey: Data, sign: @escaping @Sendable (Data) throws -> Data) { self.publicKey = publicKey; self.sign = sign }
    }

    public init(target: ImageReference, disks: [Disk], chunkSize: Int = 4 << 20, vm: VMArtifactConfig.VMInfo,
                origin: VMArtifactConfig.Origin, findings: VMArtifactConfig.Findings?, lineage: [UInt8], mountFrom: [String] = [],
                partSize: Int = 8 << 20, signer: Signer, sealing: Sealing? = nil) {
        self.sealing = sealing
        self.target = target; self.disks = disks; self.chunkSize = chunkSize; self.vm = vm; self.origin = origin
        self.findings = findings; self.lineage = lineage; self.mountFrom = mountFrom; self.partSize = partSize; self.signer = signer
    }
}

public struct PushResult: Sendable, Codable {
    public var reference: String
    public var digest: String
    public var chunks: Int
    /// Chunks already in the registry (HEAD), or repeated within this push.
    public var reused: Int
    public var mounted: Int
    public var uploaded: Int
    /// Compressed bytes of all chunks, and of those uploaded.
    public var chunkBytes: Int64
    public var uploadedBytes: Int64
    public var guestBytes: UInt64
    public var seconds: Double
    public var signatureTag: String
}

/// Pushes a VM's disks as chunk blobs, its config, lineage, manifest and signature.
public struct VMPusher: Sendable {
    public let client: RegistryClient
    public let progress: TransferProgress
    /// Called after each batch of chunks is in the registry (tests kill the registry there).
    public var afterBatch: (@Sendable () -> Void)?
    public init(client: RegistryClient, progress: TransferProgress) { self.client = client; self.progress = progress }

    public func push(_ plan: PushPlan) async throws -> PushResult {
        let started = Date()
        let repo = plan.target.repository
        guard VMArtifactConfig.chunkSizes.contains(plan.chunkSize) else {
            throw WardenError(.invalidArgument, "--chunk-size must be a power of two from 64 KiB to 64 MiB")
        }
        let width = AdaptiveWidth()
        let seen = Locked<[String: Int64]>([:])
        var counters = (reused: 0, mounted: 0, uploaded: 0, chunks: 0, bytes: Int64(0), up: Int64(0))
        var maps: [VMArtifactConfig.DiskMap] = []
        var layers: [Descriptor] = []
        var guest: UInt64 = 0
        let opened = try plan.disks.map { d -> OpenedImage in
            do { return try ImageOpener.open(d.path) } catch let e as WardenError { throw e.inFile(d.path) }
        }
        for image in opened {
            var data: Int64 = 0
            for e in try image.device.mapping(at: 0, length: image.device.size) where e.kind == .data { data += Int64(e.length) }
            progress.addTotal(data)
        }
        for (index, (disk, image)) in zip(plan.disks, opened).enumerated() {
            let device = image.device
            guard device.size > 0, device.size <= VMArtifactConfig.maxVirtualSize else {
                throw WardenError(.unsupported, "a disk of \(device.size) bytes cannot be pushed (at most 16 TiB)", file: disk.path)
            }
            guest += device.size
            var chunks: [VMArtifactConfig.Chunk] = []
            // The fingerprint's 4 MiB chunks are hashed from the bytes in hand (chunk sizes of
            // 4 MiB and more; smaller ones leave the fingerprint to the pull).
            let fingerprinting = plan.chunkSize >= ContentFingerprint.chunkBytes
            let fpDigests = Locked<[UInt64: [UInt8]]>([:])
            var offsets: [UInt64] = []
            var o: UInt64 = 0
            let cs = UInt64(plan.chunkSize)
            while o < device.size {
                let len = min(cs, device.size - o)
                if try device.mapping(at: o, length: len).contains(where: { $0.kind == .data }) { offsets.append(o) }
                o += len
            }
            let batch = 8
            var i = 0
            while i < offsets.count {
                let group = Array(offsets[i..<min(i + batch, offsets.count)])
                i += group.count
                let compressed = try Self.compress(device, group, chunkSize: plan.chunkSize, path: disk.path, seal: plan.sealing?.key,
                                                   fingerprints: fingerprinting ? fpDigests : nil)
                var uploads: [(Int, [UInt8], String)] = []
                for (k, c) in compressed.enumerated() {
                    guard let (blob, digest, length) = c else {
                        progress.advance(guest: Int64(min(cs, device.size - group[k])), wire: 0, chunks: 0)
                        continue
                    }
                    chunks.append(.init(offset: group[k], length: length, digest: digest, size: Int64(blob.count)))
                    counters.chunks += 1
                    counters.bytes += Int64(blob.count)
                    let first = seen.withLock { s -> Bool in if s[digest] != nil { return false }; s[digest] = Int64(blob.count); return true }
                    if first {
                        layers.append(Descriptor(mediaType: plan.sealing == nil ? MediaType.chunk : MediaType.sealedChunk, digest: digest, size: Int64(blob.count)))
                        uploads.append((length, blob, digest))
                    } else {
                        counters.reused += 1
                        progress.advance(guest: Int64(length), wire: 0, reused: 1)
                    }
                }
                let outcome = try await sendBlobs(uploads, repo: repo, plan: plan, width: width)
                counters.reused += outcome.reused; counters.mounted += outcome.mounted
                counters.uploaded += outcome.uploaded; counters.up += outcome.bytes
                afterBatch?()
            }
            let fp = fingerprinting ? ContentFingerprint.combine(size: device.size, chunks: fpDigests.withLock { $0 }) : nil
            maps.append(.init(index: index, format: disk.format, virtualSize: device.size, chunks: chunks,
                              fingerprint: fp.map { "\($0.algorithm):\($0.hex)" }))
        }
        // Config and lineage, then the manifest by digest, its signature, and only then the tag:
        // a tag never names an unsigned or half-pushed VM.
        let config = VMArtifactConfig(vm: plan.vm, origin: plan.origin, chunkSize: plan.chunkSize, disks: maps, findings: plan.findings)
        var configBytes = try config.encoded()
        guard configBytes.count <= RegistryLimits.configBytes else {
            throw WardenError(.limitExceeded, "the VM config would be \(configBytes.count) bytes; push with a larger --chunk-size")
        }
        var lineage = plan.lineage
        var configType = MediaType.vmConfig, lineageType = MediaType.lineage
        var annotations = ["org.opencontainers.image.created": plan.origin.pushedAt,
                           "org.opencontainers.image.title": plan.vm.name, "dev.warden.vm.id": plan.vm.id]
        if let s = plan.sealing {
            let sealed = SealedConfig(family: s.key.family, keyID: s.key.keyID, recipients: try s.recipients.map { try s.key.wrap(for: $0) },
                                      sealed: Data(try s.key.sealMetadata(configBytes, label: "config")).base64EncodedString())
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            configBytes = Array(try e.encode(sealed))
            lineage = try s.key.sealMetadata(lineage, label: "lineage")
            configType = MediaType.sealedConfig; lineageType = MediaType.sealedLineage
            // Nothing that names the VM stays in the clear.
            annotations = ["org.opencontainers.image.created": plan.origin.pushedAt]
        }
        let configDesc = Descriptor.of(configBytes, mediaType: configType)
        let lineageDesc = Descriptor.of(lineage, mediaType: lineageType)
        for (d, b) in [(configDesc, configBytes), (lineageDesc, lineage)] where !(try await client.blobExists(repo, d.digest)) {
            try await client.upload(repo, b, digest: d.digest, partSize: plan.partSize)
        }
        let manifest = Manifest(artifactType: MediaType.vm, config: configDesc, layers: layers + [lineageDesc], annotations: annotations)
        let bytes = try manifest.encoded()
        guard bytes.count <= RegistryLimits.manifestBytes, manifest.layers.count <= RegistryLimits.layers else {
            throw WardenError(.limitExceeded, "the manifest would list \(manifest.layers.count) layers (\(bytes.count) bytes); push with a larger --chunk-size")
        }
        let digest = BlobDigest.of(bytes)
        try await client.putManifest(repo, digest, bytes, mediaType: MediaType.imageManifest)
        let sigTag = ManifestSignature.tag(for: digest)
        let existing = try? await client.manifest(repo, sigTag).bytes
        let sig = try ManifestSignature.make(digest: digest, name: plan.target.tag.map { plan.target.name + ":" + $0 } ?? plan.target.name,
                                             publicKey: plan.signer.publicKey, existing: existing, sign: plan.signer.sign)
        for (d, b) in sig.blobs where !(try await client.blobExists(repo, d.digest)) {
            try await client.upload(repo, b, digest: d.digest)
        }
        try await client.putManifest(repo, sigTag, sig.manifest, mediaType: MediaType.imageManifest)
        if let tag = plan.target.tag { try await client.putManifest(repo, tag, bytes, mediaType: MediaType.imageManifest) }
        progress.finish()
        return PushResult(reference: plan.target.with(digest: digest).description, digest: digest, chunks: counters.chunks,
                          reused: counters.reused, mounted: counters.mounted, uploaded: counters.uploaded,
                          chunkBytes: counters.bytes, uploadedBytes: counters.up, guestBytes: guest,
                          seconds: Date().timeIntervalSince(started), signatureTag: sigTag)
    }

    /// Reads and compresses chunks at `offsets` in parallel; nil for a chunk that reads as zeros.
    static func compress(_ device: any BlockDevice, _ offsets: [UInt64], chunkSize: Int, path: String, seal: FamilyKey? = nil,
                         fingerprints: Locked<[UInt64: [UInt8]]>? = nil) throws -> [([UInt8], String, Int)?] {
        let results = Locked<[Result<([UInt8], String, Int)?, Error>?]>(Array(repeating: nil, count: offsets.count))
        DispatchQueue.concurrentPerform(iterations: offsets.count) { k in
            let r = Result<([UInt8], String, Int)?, Error> {
                let len = Int(min(UInt64(chunkSize), device.size - offsets[k]))
                var buf = [UInt8](repeating: 0, count: len)
                try buf.withUnsafeMutableBytes { try device.read(at: offsets[k], into: $0) }
                if buf.withUnsafeBytes({ RawExport.isZero($0) }) { return nil }
                if let fingerprints {
                    let fc = ContentFingerprint.chunkBytes
                    buf.withUnsafeBytes { raw in
                        var o = 0
                        while o < len {
                            let n = min(fc, len - o)
                            let index = (offsets[k] + UInt64(o)) / UInt64(fc)
                            if let d = ContentFingerprint.chunkDigest(index: index, bytes: UnsafeRawBufferPointer(rebasing: raw[o..<(o + n)])) {
                                fingerprints.withLock { $0[index] = d }
                            }
                            o += n
                        }
                    }
                }
                var blob = try buf.withUnsafeBytes { try ChunkCodec.compress($0) }
                if let seal { blob = try seal.sealChunk(blob) }
                return (blob, BlobDigest.of(blob), len)
            }
            results.withLock { $0[k] = r }
        }
        return try results.withLock { $0 }.map { r in
            do { return try r!.get() } catch let e as WardenError { throw e.inFile(path) }
        }
    }

    /// HEAD, mount or upload each blob, `width` at a time; a dropped upload halves the width and
    /// is tried again (twice) before the push fails.
    func sendBlobs(_ blobs: [(Int, [UInt8], String)], repo: String, plan: PushPlan, width: AdaptiveWidth) async throws
        -> (reused: Int, mounted: Int, uploaded: Int, bytes: Int64) {
        var pending = blobs
        var out = (reused: 0, mounted: 0, uploaded: 0, bytes: Int64(0))
        for round in 0..<3 where !pending.isEmpty {
            var failed: [(Int, [UInt8], String)] = []
            var lastError: Error?
            var start = 0
            while start < pending.count {
                let slice = Array(pending[start..<min(start + width.width, pending.count)])
                start += slice.count
                try await withThrowingTaskGroup(of: (Int, (Int, [UInt8], String), Result<String, Error>).self) { group in
                    for (n, b) in slice.enumerated() {
                        group.addTask {
                            do { return (n, b, .success(try await self.sendOne(b, repo: repo, plan: plan))) } catch { return (n, b, .failure(error)) }
                        }
                    }
                    for try await (_, b, r) in group {
                        switch r {
                        case .success(let how):
                            width.succeeded()
                            switch how {
                            case "reused": out.reused += 1; progress.advance(guest: Int64(b.0), wire: 0, reused: 1)
                            case "mounted": out.mounted += 1; progress.advance(guest: Int64(b.0), wire: 0, mounted: 1)
                            default:
                                out.uploaded += 1; out.bytes += Int64(b.1.count)
                                progress.advance(guest: Int64(b.0), wire: Int64(b.1.count))
                            }
                        case .failure(let e):
                            if let w = e as? WardenError, w.code != .unavailable { throw w }
                            width.failed()
                            failed.append(b); lastError = e
                        }
                    }
                }
            }
            pending = failed
            if !pending.isEmpty && round == 2, let lastError { throw lastError }
        }
        return out
    }

    func sendOne(_ b: (Int, [UInt8], String), repo: String, plan: PushPlan) async throws -> String {
        if try await client.blobExists(repo, b.2) { return "reused" }
        var location: String?
        for from in plan.mountFrom where from != repo {
            let m = try await client.mount(repo, b.2, from: from)
            if m.mounted { return "mounted" }
            location = m.location
            break
        }
        try await client.upload(repo, b.1, digest: b.2, partSize: plan.partSize, location: location)
        return "uploaded"
    }
}
