import CZlib
import CZstd
import DiskImage
import Foundation
import NIOCore
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// KubeVirt containerDisks (docs/oci.md): an ordinary OCI or Docker image whose layer holds the
/// VM's disk as `/disk/<name>` (qcow2 or raw). Fetched layer by layer, top first, each blob
/// checked against its digest, decompressed (gzip, zstd or none) into a private folder with an
/// output cap, and the disk member copied out sparse; the tar is read by Warden's own bounded
/// reader, so no member path is ever created on the host.
public enum ContainerDisk {
    public static let layerTypes = [MediaType.layerTar, MediaType.layerTarGzip, MediaType.layerTarZstd, MediaType.dockerLayerGzip,
                                    "application/vnd.docker.image.rootfs.diff.tar"]
    /// The largest layer accepted, compressed and decompressed (64 GiB).
    public static let maxLayerBytes: Int64 = 64 << 30

    public struct Fetched: Sendable {
        /// The disk, in `directory` (the caller removes the folder).
        public var path: String
        public var member: String
        public var manifestDigest: String
        public var layerDigest: String
    }

    /// Whether `m` is an image a containerDisk can be (not a Warden VM).
    public static func isContainerImage(_ m: Manifest) -> Bool {
        (m.config.mediaType == MediaType.imageConfig || m.config.mediaType == MediaType.dockerConfig) && !m.layers.isEmpty
    }

    /// Fetches the containerDisk `ref` and extracts its disk into `directory` (which must exist, 0700).
    public static func fetch(_ ref: ImageReference, client: RegistryClient, into directory: String) async throws -> Fetched {
        let repo = ref.repository
        var fetched = try await client.manifest(repo, ref.reference)
        if fetched.mediaType == MediaType.imageIndex || fetched.mediaType == MediaType.dockerManifestList {
            let index = try BoundedJSON.decode(ImageIndex.self, from: fetched.bytes, limit: RegistryLimits.manifestBytes, what: "the index of \(ref)")
            let pick = index.manifests.prefix(256).first { $0.platform?.os == "linux" && ["amd64", "x86_64"].contains($0.platform?.architecture ?? "") }
                ?? index.manifests.first
            guard let m = pick else { throw WardenError(.corrupt, "the index of \(ref) lists no manifest") }
            try BlobDigest.check(m.digest, what: "the index of \(ref)")
            fetched = try await client.manifest(repo, m.digest)
        }
        let manifest = try BoundedJSON.decode(Manifest.self, from: fetched.bytes, limit: RegistryLimits.manifestBytes, what: "the manifest of \(ref)")
        guard isContainerImage(manifest) else {
            throw WardenError(.unsupported, "\(ref) is not a container image (config \(manifest.config.mediaType.prefix(80).debugDescription)); a Warden VM is pulled with `warden vm pull`")
        }
        try checkLayers(manifest, ref: ref)
        var hidden = Set<String>()
        for layer in manifest.layers.reversed() {
            let tar = directory + "/layer.tar"
            unlink(tar)
            try await decompress(layer, ref: ref, client: client, to: tar)
            defer { unlink(tar) }
            let members = try TarArchive.members(path: tar)
            var found: (TarArchive.Member, String)?
            for m in members {
                guard let name = diskName(m.name) else { continue }
                if name.hasPrefix(".wh.") { hidden.insert(String(name.dropFirst(4))); continue }
                if hidden.contains(name) { continue }
                if found == nil { found = (m, name) }
            }
            guard let (member, name) = found else { continue }
            let ext = (name as NSString).pathExtension.lowercased()
            let out = directory + "/disk" + (["qcow2", "img", "raw"].contains(ext) ? "." + ext : "")
            try copyMember(tar, member, to: out)
            return Fetched(path: out, member: "/disk/" + name, manifestDigest: fetched.digest, layerDigest: layer.digest)
        }
        throw WardenError(.notFound, "\(ref) has no disk under /disk/ (not a KubeVirt containerDisk)")
    }

    /// Checks the layers' count, digests, sizes and media types before anything is fetched.
    public static func checkLayers(_ manifest: Manifest, ref: ImageReference) throws {
        guard manifest.layers.count <= 256 else { throw WardenError(.corrupt, "the manifest of \(ref) lists \(manifest.layers.count) layers") }
        for layer in manifest.layers {
            try BlobDigest.check(layer.digest, what: "the manifest of \(ref)")
            guard layerTypes.contains(layer.mediaType) else {
                throw WardenError(.unsupported, "\(ref) has a layer of media type \(layer.mediaType.prefix(80).debugDescription), not a container image layer")
            }
            guard layer.size >= 0, layer.size <= maxLayerBytes else { throw WardenError(.corrupt, "the manifest of \(ref) gives a layer \(layer.size) bytes") }
        }
    }

    /// `disk/NAME`, `./disk/NAME` or `/disk/NAME` → NAME; nil for anything else (deeper paths,
    /// `..`, other folders).
    static func diskName(_ path: String) -> String? {
        var p = Substring(path)
        while p.hasPrefix("./") { p = p.dropFirst(2) }
        while p.hasPrefix("/") { p = p.dropFirst() }
        let parts = p.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0] == "disk", parts[1] != "..", parts[1] != ".", parts[1].utf8.count <= 255 else { return nil }
        return String(parts[1])
    }

    /// Streams the layer blob (digest checked) through its decompressor into `tar`, capped.
    static func decompress(_ layer: Descriptor, ref: ImageReference, client: RegistryClient, to tar: String) async throws {
        let fd = open(tar, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw WardenError(.io, "cannot create: \(String(cString: strerror(errno)))", file: tar) }
        defer { close(fd) }
        let kind: Decoder.Kind = layer.mediaType.hasSuffix("gzip") ? .gzip : layer.mediaType.hasSuffix("zstd") ? .zstd : .none
        let decoder = try Decoder(kind, fd: fd, path: tar, cap: maxLayerBytes, what: "layer \(layer.digest)")
        try await client.streamBlob(ref.repository, layer.digest, size: layer.size, limit: maxLayerBytes) { buffer in
            try buffer.withUnsafeReadableBytes { try decoder.feed($0) }
        }
        try decoder.finish()
    }

    /// Copies a tar member to `out`, leaving zero blocks as holes.
    static func copyMember(_ tar: String, _ m: TarArchive.Member, to out: String) throws {
        let inFD = open(tar, O_RDONLY | O_CLOEXEC)
        guard inFD >= 0 else { throw WardenError(.io, "cannot open the layer", file: tar) }
        defer { close(inFD) }
        let outFD = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard outFD >= 0 else { throw WardenError(.io, "cannot create: \(String(cString: strerror(errno)))", file: out) }
        defer { close(outFD) }
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var done: UInt64 = 0
        while done < m.size {
            let want = Int(min(UInt64(buf.count), m.size - done))
            let n = buf.withUnsafeMutableBytes { pread(inFD, $0.baseAddress, want, off_t(m.offset + done)) }
            guard n > 0 else { throw WardenError(.io, "short read of the disk member", file: tar) }
            try buf.withUnsafeBytes { try RawExport.writeNonZero(UnsafeRawBufferPointer(rebasing: $0[0..<n]), fd: outFD, at: done, name: out) }
            done += UInt64(n)
        }
        guard ftruncate(outFD, off_t(m.size)) == 0 else { throw WardenError(.io, "cannot size the disk", file: out) }
    }

    /// gzip (zlib), zstd or plain bytes into a file descriptor, with an output cap.
    final class Decoder {
        enum Kind { case gzip, zstd, none }
        let kind: Kind
        let fd: Int32
        let path: String
        let cap: Int64
        let what: String
        var written: Int64 = 0
        var z = z_stream()
        var dctx: OpaquePointer?
        var ended = false
        var out = [UInt8](repeating: 0, count: 1 << 20)

        init(_ kind: Kind, fd: Int32, path: String, cap: Int64, what: String) throws {
            self.kind = kind; self.fd = fd; self.path = path; self.cap = cap; self.what = what
            switch kind {
            case .gzip:
                guard inflateInit2_(&z, 15 + 16, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                    throw WardenError(.internal, "cannot initialise zlib")
                }
            case .zstd:
                guard let d = ZSTD_createDCtx() else { throw WardenError(.internal, "cannot initialise zstd") }
                dctx = d
            case .none: break
            }
        }

        deinit {
            if kind == .gzip { inflateEnd(&z) }
            if let dctx { ZSTD_freeDCtx(dctx) }
        }

        func emit(_ p: UnsafeRawBufferPointer) throws {
            guard !p.isEmpty else { return }
            written += Int64(p.count)
            guard written <= cap else { throw WardenError(.limitExceeded, "\(what) decompresses to more than \(cap) bytes") }
            try FileDescriptorIO.writeAll(fd, p, name: path)
        }

        func feed(_ input: UnsafeRawBufferPointer) throws {
            guard !input.isEmpty else { return }
            switch kind {
            case .none:
                try emit(input)
            case .gzip:
                guard !ended else { return }   // trailing bytes after the gzip stream are ignored
                z.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: UInt8.self).baseAddress)
                z.avail_in = UInt32(input.count)
                repeat {
                    let r: Int32 = out.withUnsafeMutableBytes { o in
                        z.next_out = o.bindMemory(to: UInt8.self).baseAddress
                        z.avail_out = UInt32(o.count)
                        return inflate(&z, Z_NO_FLUSH)
                    }
                    guard r == Z_OK || r == Z_STREAM_END || r == Z_BUF_ERROR else { throw WardenError(.corrupt, "\(what) is not valid gzip") }
                    let n = out.count - Int(z.avail_out)
                    try out.withUnsafeBytes { try emit(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                    if r == Z_STREAM_END { ended = true; break }
                    if r == Z_BUF_ERROR && n == 0 { break }
                } while z.avail_in > 0 || z.avail_out == 0
            case .zstd:
                var inBuf = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
                var n = 0
                repeat {
                    n = try out.withUnsafeMutableBytes { o in
                        var outBuf = ZSTD_outBuffer(dst: o.baseAddress, size: o.count, pos: 0)
                        let r = ZSTD_decompressStream(dctx, &outBuf, &inBuf)
                        guard ZSTD_isError(r) == 0 else { throw WardenError(.corrupt, "\(what) is not valid zstd") }
                        return outBuf.pos
                    }
                    try out.withUnsafeBytes { try emit(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                } while inBuf.pos < inBuf.size || n == out.count
            }
        }

        func finish() throws {
            if kind == .gzip && !ended { throw WardenError(.corrupt, "\(what) ends inside its gzip stream") }
        }
    }
}
