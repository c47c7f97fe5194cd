import Crypto
import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import ImageStore

/// What a registry (or whoever controls one) can send Warden, parsed as hostile input: every
/// case is refused with a typed error naming the problem, after a bounded read.
@Suite struct ReferenceTests {
    @Test func referencesParseAsTheDistributionSpecWritesThem() throws {
        let a = try ImageReference(parsing: "localhost:5000/team/web1:2026-12")
        #expect(a.registry == "localhost:5000" && a.repository == "team/web1" && a.tag == "2026-12" && a.digest == nil)
        let d = "sha256:" + String(repeating: "ab", count: 32)
        let b = try ImageReference(parsing: "registry.example/a/b-c__d.e@" + d)
        #expect(b.repository == "a/b-c__d.e" && b.digest == d && b.tag == nil && b.reference == d)
        #expect(try ImageReference(parsing: "127.0.0.1:5000/x").tag == "latest")
        #expect(try ImageReference(parsing: "localhost/x:1").name == "localhost/x")
    }

    @Test(arguments: [
        "team/web1:1", "web1", "", "localhost:5000/Team/web", "localhost:5000/team//web", "localhost:5000/-team/web",
        "localhost:5000/team/web:.bad", "localhost:5000/team/web@sha256:abc", "localhost:5000/team/web@md5:" + String(repeating: "a", count: 32),
        "local host:5000/x", "localhost:99999/x", "localhost:5000/team/web:" + String(repeating: "t", count: 129),
        "localhost:5000/" + String(repeating: "a/", count: 600) + "b", "exa_mple.com/x", "localhost:5000/team/we..b", "localhost:5000/x\u{00e9}",
    ])
    func badReferencesAreRefusedWithOneLine(_ text: String) {
        #expect(throws: WardenError.self) { try ImageReference(parsing: text) }
        do { _ = try ImageReference(parsing: text) } catch let e as WardenError {
            #expect(e.code == .invalidArgument)
            #expect(!e.description.contains("\n"))
        } catch { Issue.record("not a WardenError: \(error)") }
    }
}

@Suite struct HostileDocumentTests {
    static let digest = "sha256:" + String(repeating: "0", count: 64)

    @Test func deeplyNestedJSONIsRefusedBeforeDecoding() {
        let deep = Array(("{\"a\":" + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000) + "}").utf8)
        do {
            _ = try BoundedJSON.decode(Manifest.self, from: deep, limit: 1 << 20, what: "the manifest")
            Issue.record("accepted")
        } catch let e as WardenError {
            #expect(e.code == .corrupt && e.message.contains("nests deeper"), "\(e)")
        } catch { Issue.record("\(error)") }
        // Brackets inside strings do not count.
        #expect(JSONNesting.isShallow(Array(("{\"a\":\"" + String(repeating: "[", count: 100) + "\"}").utf8)))
    }

    @Test func oversizedDocumentsAreRefusedByTheirSize() {
        let big = [UInt8](repeating: 0x20, count: RegistryLimits.manifestBytes + 1)
        do {
            _ = try BoundedJSON.decode(Manifest.self, from: big, limit: RegistryLimits.manifestBytes, what: "the manifest")
            Issue.record("accepted")
        } catch let e as WardenError {
            #expect(e.code == .limitExceeded, "\(e)")
        } catch { Issue.record("\(error)") }
    }

    @Test func wrongTypesNameTheField() {
        let text = #"{"schemaVersion":"two","config":{},"layers":[]}"#
        do {
            _ = try BoundedJSON.decode(Manifest.self, from: Array(text.utf8), limit: 1 << 20, what: "the manifest")
            Issue.record("accepted")
        } catch let e as WardenError {
            #expect(e.code == .corrupt && e.message.contains("schemaVersion"), "\(e)")
        } catch { Issue.record("\(error)") }
    }

    static func manifest(config: String = MediaType.vmConfig, layers: [Descriptor]) -> Manifest {
        Manifest(artifactType: MediaType.vm, config: Descriptor(mediaType: config, digest: digest, size: 100), layers: layers)
    }

    @Test func manifestsOfTheWrongShapeAreRefused() throws {
        let ref = try ImageReference(parsing: "localhost:5000/a:1")
        let chunk = Descriptor(mediaType: MediaType.chunk, digest: Self.digest, size: 10)
        #expect(throws: WardenError.self) { try VMPuller.checkManifest(Self.manifest(config: MediaType.imageConfig, layers: [chunk]), ref: ref) }
        #expect(throws: WardenError.self) {
            try VMPuller.checkManifest(Self.manifest(layers: [Descriptor(mediaType: "application/x-evil", digest: Self.digest, size: 1)]), ref: ref)
        }
        #expect(throws: WardenError.self) {
            try VMPuller.checkManifest(Self.manifest(layers: [Descriptor(mediaType: MediaType.chunk, digest: "sha256:xyz", size: 1)]), ref: ref)
        }
        #expect(throws: WardenError.self) {
            try VMPuller.checkManifest(Self.manifest(layers: [Descriptor(mediaType: MediaType.chunk, digest: Self.digest, size: -5)]), ref: ref)
        }
        #expect(throws: WardenError.self) {
            try VMPuller.checkManifest(Self.manifest(layers: [Descriptor(mediaType: MediaType.chunk, digest: Self.digest, size: 1 << 40)]), ref: ref)
        }
        var m = Self.manifest(layers: [chunk])
        m.schemaVersion = 1
        #expect(throws: WardenError.self) { try VMPuller.checkManifest(m, ref: ref) }
        try VMPuller.checkManifest(Self.manifest(layers: [chunk]), ref: ref)
    }

    static func config(chunkSize: Int = 4 << 20, virtualSize: UInt64 = 64 << 20, chunks: [VMArtifactConfig.Chunk]) -> VMArtifactConfig {
        VMArtifactConfig(vm: .init(id: UUID().uuidString, name: "v", owner: "o", labels: [:], generation: UUID().uuidString, parent: nil),
                         origin: .init(host: "h", pushedAt: "2026-12-07T00:00:00Z"), chunkSize: chunkSize,
                         disks: [.init(index: 0, format: "qcow2", virtualSize: virtualSize, chunks: chunks)], findings: nil)
    }

    @Test(arguments: [0, 1, 3 << 20, 1 << 40, 128 << 20, -4096])
    func chunkSizesOutsideTheRangeAreRefused(_ size: Int) {
        let c = Self.config(chunkSize: size, chunks: [])
        do { try c.validate(layers: []); Issue.record("accepted \(size)") } catch let e as WardenError {
            #expect(e.code == .corrupt && e.message.contains("chunk size"), "\(e)")
        } catch { Issue.record("\(error)") }
    }

    @Test func chunkMapsThatLieAreRefused() {
        let layer = Descriptor(mediaType: MediaType.chunk, digest: Self.digest, size: 100)
        let good = VMArtifactConfig.Chunk(offset: 0, length: 4 << 20, digest: Self.digest, size: 100)
        #expect((try? Self.config(chunks: [good]).validate(layers: [layer])) != nil)
        let cases: [[VMArtifactConfig.Chunk]] = [
            [.init(offset: 1, length: 4 << 20, digest: Self.digest, size: 100)],                  // unaligned
            [good, good],                                                                       // repeated offset
            [.init(offset: 64 << 20, length: 4 << 20, digest: Self.digest, size: 100)],         // past the end
            [.init(offset: 0, length: 1, digest: Self.digest, size: 100)],                      // wrong length
            [.init(offset: 0, length: 4 << 20, digest: Self.digest, size: 99)],                 // size differs from the manifest
            [.init(offset: 0, length: 4 << 20, digest: "sha256:" + String(repeating: "1", count: 64), size: 100)],  // not listed
            [.init(offset: 0, length: 4 << 20, digest: Self.digest, size: 1 << 40)],            // bigger than zstd's bound
        ]
        for chunks in cases {
            #expect(throws: WardenError.self, "\(chunks)") { try Self.config(chunks: chunks).validate(layers: [layer]) }
        }
        #expect(throws: WardenError.self) { try Self.config(virtualSize: 0, chunks: []).validate(layers: []) }
        #expect(throws: WardenError.self) { try Self.config(virtualSize: 1 << 50, chunks: []).validate(layers: []) }
        var many = Self.config(chunks: [])
        many.disks = (0..<17).map { .init(index: $0, format: "raw", virtualSize: 1 << 20, chunks: []) }
        #expect(throws: WardenError.self) { try many.validate(layers: []) }
        var format = Self.config(chunks: [])
        format.disks[0].format = "vmdk"
        #expect(throws: WardenError.self) { try format.validate(layers: []) }
    }

    @Test func chunksRoundTripAndForgedFramesAreRefused() throws {
        let data = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
        let blob = try data.withUnsafeBytes { try ChunkCodec.compress($0) }
        var out = [UInt8](repeating: 0, count: 1 << 20)
        try out.withUnsafeMutableBytes { try ChunkCodec.decompress(blob, length: 1 << 20, into: $0, what: "c") }
        #expect(out == data)
        // A frame that declares another length, garbage, and a truncated frame.
        #expect(throws: WardenError.self) { try out.withUnsafeMutableBytes { try ChunkCodec.decompress(blob, length: 1 << 19, into: $0, what: "c") } }
        #expect(throws: WardenError.self) { try out.withUnsafeMutableBytes { try ChunkCodec.decompress([1, 2, 3, 4, 5, 6, 7, 8], length: 16, into: $0, what: "c") } }
        #expect(throws: WardenError.self) {
            try out.withUnsafeMutableBytes { try ChunkCodec.decompress(Array(blob.prefix(blob.count / 2)), length: 1 << 20, into: $0, what: "c") }
        }
    }
}

@Suite struct RegistryAuthTests {
    @Test func challengesParse() throws {
        let c = try #require(RegistryClient.parseChallenge(#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#))
        #expect(c.scheme == "bearer")
        #expect(c.parameters["realm"] == "https://auth.example/token")
        #expect(c.parameters["service"] == "registry.example")
        #expect(c.parameters["scope"] == "repository:a/b:pull")
        #expect(RegistryClient.parseChallenge(#"Basic realm="Registry Realm""#)?.scheme == "basic")
        #expect(RegistryClient.parseChallenge("") == nil)
    }

    @Test func loginsAreFoundInAuthFilesAndNeverPrinted() throws {
        let dir = NSTemporaryDirectory() + "warden-auth-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/auth.json"
        let auth = Data("ci:p4ss:with:colons".utf8).base64EncodedString()
        try Data(#"{"auths":{"https://reg.example:5000/v1/":{"auth":"\#(auth)"},"other.example":{"username":"u","password":"pw"}}}"#.utf8)
            .write(to: URL(fileURLWithPath: file))
        let c = try #require(try RegistryCredential.lookup(registry: "reg.example:5000", authFile: file))
        #expect(c.username == "ci")
        #expect(c.basicAuthorization == "Basic " + auth)
        #expect(!c.description.contains("p4ss"))
        #expect(try RegistryCredential.lookup(registry: "other.example", authFile: file)?.username == "u")
        #expect(try RegistryCredential.lookup(registry: "nowhere.example", authFile: file) == nil)
        // The environment's files, in order.
        #expect(try RegistryCredential.lookup(registry: "reg.example:5000", environment: ["REGISTRY_AUTH_FILE": file, "HOME": dir])?.username == "ci")
        try Data(#"{"credHelpers":{"reg.example:5000":"ecr-login"}}"#.utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: WardenError.self) { try RegistryCredential.lookup(registry: "reg.example:5000", authFile: file) }
        try Data(#"{"auths":{"reg.example:5000":{"auth":"!!!"}}}"#.utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: WardenError.self) { try RegistryCredential.lookup(registry: "reg.example:5000", authFile: file) }
        #expect(throws: WardenError.self) { try RegistryCredential.lookup(registry: "x.example", authFile: dir + "/missing.json") }
    }
}

@Suite struct SignatureTests {
    static let digest = "sha256:" + String(repeating: "c", count: 64)

    static func verify(_ made: (manifest: [UInt8], blobs: [(Descriptor, [UInt8])]), keys: [TrustedKey], digest: String = digest,
                       tag: String? = "1") async throws -> ManifestSignature.Verdict {
        try await ManifestSignature.verify(digest: digest, signatureManifest: made.manifest, payload: { d in
            guard let b = made.blobs.first(where: { $0.0.digest == d.digest })?.1 else { throw WardenError(.notFound, "no blob") }
            return b
        }, trusted: keys, tag: tag)
    }

    @Test func signaturesVerifyOnlyForTheTrustedKeyTheDigestAndTheTag() async throws {
        let key = Curve25519.Signing.PrivateKey()
        let other = Curve25519.Signing.PrivateKey()
        let trusted = try TrustedKey(name: "ops", raw: key.publicKey.rawRepresentation)
        let stranger = try TrustedKey(name: "stranger", raw: other.publicKey.rawRepresentation)
        let made = try ManifestSignature.make(digest: Self.digest, name: "localhost:5000/team/v:1", publicKey: key.publicKey.rawRepresentation,
                                              sign: { try key.signature(for: $0) })
        #expect(try await Self.verify(made, keys: [trusted]) == .trusted(key: "ops"))
        #expect(try await Self.verify(made, keys: [stranger]).isTrusted == false)
        #expect(try await Self.verify(made, keys: []).isTrusted == false)
        // Another manifest, another tag.
        #expect(try await Self.verify(made, keys: [trusted], digest: "sha256:" + String(repeating: "d", count: 64)).isTrusted == false)
        #expect(try await Self.verify(made, keys: [trusted], tag: "2").isTrusted == false)
        #expect(try await Self.verify(made, keys: [trusted], tag: nil) == .trusted(key: "ops"))
        // A second tag's signature is added, not replacing the first.
        let second = try ManifestSignature.make(digest: Self.digest, name: "localhost:5000/team/v:2", publicKey: key.publicKey.rawRepresentation,
                                                existing: made.manifest, sign: { try key.signature(for: $0) })
        let both = (second.manifest, second.blobs + made.blobs)
        #expect(try await Self.verify(both, keys: [trusted], tag: "1").isTrusted)
        #expect(try await Self.verify(both, keys: [trusted], tag: "2").isTrusted)
        // A forged payload (the signature of another payload) does not verify.
        var forged = made
        let evil = try ManifestSignature.payload(digest: "sha256:" + String(repeating: "e", count: 64), name: "x/y:1")
        forged.blobs[1].1 = evil
        #expect(try await Self.verify(forged, keys: [trusted]).isTrusted == false)
    }

    @Test func trustedKeyFilesAreCheckedAsKeys() throws {
        let dir = NSTemporaryDirectory() + "warden-keys-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try TrustedKey.load(directory: dir + "/none").isEmpty)
        let k = Curve25519.Signing.PrivateKey().publicKey.rawRepresentation.base64EncodedString()
        try Data((k + " ops laptop\n").utf8).write(to: URL(fileURLWithPath: dir + "/ops.pub"))
        try Data("ignored".utf8).write(to: URL(fileURLWithPath: dir + "/README"))
        #expect(try TrustedKey.load(directory: dir).map(\.name) == ["ops"])
        try Data(Data(repeating: 7, count: 16).base64EncodedString().utf8).write(to: URL(fileURLWithPath: dir + "/short.pub"))
        #expect(throws: WardenError.self) { try TrustedKey.load(directory: dir) }
    }
}

/// containerDisk layers: garbled or truncated gzip and zstd streams, and member paths.
@Suite struct ContainerDiskInputTests {
    func decode(_ kind: ContainerDisk.Decoder.Kind, _ bytes: [UInt8], cap: Int64 = 1 << 20) throws {
        let path = NSTemporaryDirectory() + "warden-layer-\(UUID().uuidString)"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        defer { close(fd); unlink(path) }
        let d = try ContainerDisk.Decoder(kind, fd: fd, path: path, cap: cap, what: "layer")
        try bytes.withUnsafeBytes { try d.feed($0) }
        try d.finish()
    }

    @Test func garbledAndTruncatedStreamsThrow() throws {
        let text = Array(String(repeating: "warden ", count: 20_000).utf8)
        let gz = try Tool.run(["gzip", "-c"], stdin: Data(text)).stdout
        let zs = try Tool.run(["zstd", "-q", "-c"], stdin: Data(text)).stdout
        try decode(.gzip, Array(gz))
        try decode(.zstd, Array(zs))
        #expect(throws: WardenError.self) { try decode(.gzip, Array(gz.prefix(gz.count / 2))) }   // ends inside the stream
        #expect(throws: WardenError.self) { try decode(.gzip, [0x1f, 0x8b, 8, 0] + [UInt8](repeating: 0xff, count: 64)) }
        #expect(throws: WardenError.self) { try decode(.zstd, [0x28, 0xb5, 0x2f, 0xfd] + [UInt8](repeating: 0xff, count: 64)) }
        #expect(throws: WardenError.self) { try decode(.gzip, Array(gz), cap: 1000) }   // more than the cap
    }

    @Test func onlyDiskMembersAreTaken() {
        #expect(ContainerDisk.diskName("disk/disk.qcow2") == "disk.qcow2")
        #expect(ContainerDisk.diskName("./disk/x.img") == "x.img")
        #expect(ContainerDisk.diskName("/disk/x.raw") == "x.raw")
        for bad in ["disk/../etc/passwd", "disk/a/b.qcow2", "etc/disk.qcow2", "disk/..", "disk/.", "disk", "../disk/x"] {
            #expect(ContainerDisk.diskName(bad) == nil, "\(bad)")
        }
    }
}
