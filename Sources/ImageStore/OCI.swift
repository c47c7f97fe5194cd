import Crypto
import Foundation
import WardenCore

/// The media types of Warden's VM artefact and of what it reads (docs/oci.md).
public enum MediaType {
    public static let imageManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let imageIndex = "application/vnd.oci.image.index.v1+json"
    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    public static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    public static let imageConfig = "application/vnd.oci.image.config.v1+json"
    public static let dockerConfig = "application/vnd.docker.container.image.v1+json"
    /// The artifact type of a pushed Warden VM.
    public static let vm = "application/vnd.warden.vm.v1"
    /// The VM's config blob: identity, labels, disks and their chunk maps, findings at push time.
    public static let vmConfig = "application/vnd.warden.vm.config.v1+json"
    /// One fixed-size piece of a disk's guest-visible bytes, zstd-compressed.
    public static let chunk = "application/vnd.warden.disk.chunk.v1+zstd"
    /// The in-toto statements of the VM's lineage (JSON lines, as `warden ledger export`).
    public static let lineage = "application/vnd.warden.lineage.v1+jsonl"
    /// The encrypted forms (``FamilyKey``): a sealed config names the family and its recipients.
    public static let sealedConfig = "application/vnd.warden.vm.config.v1+json+encrypted"
    public static let sealedChunk = "application/vnd.warden.disk.chunk.v1+zstd+encrypted"
    public static let sealedLineage = "application/vnd.warden.lineage.v1+jsonl+encrypted"
    /// cosign's simple-signing payload (the signature artefact's one layer).
    public static let simpleSigning = "application/vnd.dev.cosign.simplesigning.v1+json"
    /// Ordinary container image layers (KubeVirt containerDisks).
    public static let layerTarGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    public static let layerTar = "application/vnd.oci.image.layer.v1.tar"
    public static let layerTarZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
    public static let dockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"

    /// What Warden asks for when it fetches a manifest.
    public static let accepted = [imageManifest, dockerManifest, imageIndex, dockerManifestList]
}

/// The limits on what a registry may send (docs/oci.md).
public enum RegistryLimits {
    /// Manifests (most registries refuse larger ones too).
    public static let manifestBytes = 4 << 20
    /// Warden VM configs (chunk maps of large disks).
    public static let configBytes = 64 << 20
    /// Layers in one manifest.
    public static let layers = 100_000
    /// The lineage attestation.
    public static let lineageBytes = 64 << 20
    /// Token and error bodies.
    public static let smallBody = 1 << 20
}

/// An OCI content descriptor.
public struct Descriptor: Codable, Sendable, Hashable {
    public var mediaType: String
    public var digest: String
    public var size: Int64
    public var annotations: [String: String]?
    public var artifactType: String?
    public var platform: Platform?

    public struct Platform: Codable, Sendable, Hashable {
        public var architecture: String
        public var os: String
    }

    public init(mediaType: String, digest: String, size: Int64, annotations: [String: String]? = nil) {
        self.mediaType = mediaType; self.digest = digest; self.size = size; self.annotations = annotations
    }

    /// The descriptor of `bytes` with `mediaType`.
    public static func of(_ bytes: [UInt8], mediaType: String, annotations: [String: String]? = nil) -> Descriptor {
        Descriptor(mediaType: mediaType, digest: BlobDigest.of(bytes), size: Int64(bytes.count), annotations: annotations)
    }
}

/// An OCI image manifest (and a Docker v2 schema 2 one, which has the same shape).
public struct Manifest: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var artifactType: String?
    public var config: Descriptor
    public var layers: [Descriptor]
    public var subject: Descriptor?
    public var annotations: [String: String]?

    public init(artifactType: String?, config: Descriptor, layers: [Descriptor], annotations: [String: String]? = nil) {
        schemaVersion = 2; mediaType = MediaType.imageManifest; self.artifactType = artifactType
        self.config = config; self.layers = layers; self.annotations = annotations
    }

    /// Its canonical bytes: compact, keys sorted (the digest is of exactly these).
    public func encoded() throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(self))
    }
}

/// An OCI image index (or Docker manifest list).
public struct ImageIndex: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var manifests: [Descriptor]
}

/// `sha256:<hex>` digests: computing and checking.
public enum BlobDigest {
    public static func of<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        var h = SHA256()
        if let done = bytes.withContiguousStorageIfAvailable({ h.update(bufferPointer: UnsafeRawBufferPointer($0)) }) { _ = done } else { h.update(data: Array(bytes)) }
        return "sha256:" + h.finalize().hexString
    }

    /// Throws unless `digest` is a well-formed sha256 digest (the only algorithm Warden accepts).
    public static func check(_ digest: String, what: String) throws {
        guard ImageReference.isDigest(digest) else {
            throw WardenError(.corrupt, "\(what): digest \(digest.prefix(80).debugDescription) is not sha256:<64 hex>")
        }
    }
}

/// Decoding of registry JSON with a size and nesting bound; errors name `what`.
public enum BoundedJSON {
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], limit: Int, what: String) throws -> T {
        guard bytes.count <= limit else {
            throw WardenError(.limitExceeded, "\(what) is \(bytes.count) bytes, more than the \(limit) accepted")
        }
        guard JSONNesting.isShallow(bytes) else {
            throw WardenError(.corrupt, "\(what) nests deeper than \(JSONNesting.maxDepth) levels")
        }
        do { return try JSONDecoder().decode(T.self, from: Data(bytes)) } catch let e as DecodingError {
            throw WardenError(.corrupt, "\(what) is not valid: \(Self.describe(e))")
        } catch {
            throw WardenError(.corrupt, "\(what) is not valid JSON")
        }
    }

    static func describe(_ e: DecodingError) -> String {
        func path(_ c: DecodingError.Context) -> String {
            let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? "." + $0.stringValue }.joined()
            return p.isEmpty ? "the document" : String(p.drop { $0 == "." })
        }
        switch e {
        case .keyNotFound(let k, let c): return "\(path(c)).\(k.stringValue) is missing".replacingOccurrences(of: "the document.", with: "")
        case .typeMismatch(_, let c), .valueNotFound(_, let c): return "\(path(c)) has the wrong type"
        case .dataCorrupted(let c): return "\(path(c)): \(c.debugDescription)"
        @unknown default: return "\(e)"
        }
    }
}
