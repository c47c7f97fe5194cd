import Foundation
import Testing
import WardenCore
import WardenTestSupport

/// `warden vm push` / `warden vm pull` against Debian's docker-registry, started by the tests
/// (RegistryServer): round trips, dedupe measured in the registry's storage, faults (a killed
/// registry, a corrupted blob, a swapped manifest), policy, and skopeo on the same content.
@Suite(.serialized) struct RegistryTests {
    static func warden(_ args: [String], home: String, env: [String: String] = [:], timeout: Double = 600) throws -> ToolResult {
        try Tool.run([Fixtures.wardenBinary] + args,
                     environment: ["WARDEN_HOME": home, "WARDEN_DB": home + "/warden.db", "WARDEN_POLICY": home + "/policy"].merging(env) { $1 },
                     check: false, timeout: timeout)
    }

    static func json(_ r: ToolResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(r.stdoutText.utf8)) as? [String: Any], "\(r.stdoutText) \(r.stderr)")
    }

    /// A home whose policy trusts this host's signing key, with `policy` as its rules.
    static func makeHome(_ dir: String, policy: String = "") throws -> String {
        let home = dir + "/home"
        try FileManager.default.createDirectory(atPath: home + "/policy/trusted-keys", withIntermediateDirectories: true)
        let key = try warden(["registry", "key"], home: home)
        #expect(key.status == 0, "\(key.stderr)")
        try Data(key.stdout).write(to: URL(fileURLWithPath: home + "/policy/trusted-keys/this-host.pub"))
        if !policy.isEmpty { try Data(policy.utf8).write(to: URL(fileURLWithPath: home + "/policy/rules.yaml")) }
        return home
    }

    /// A 64 MiB qcow2 with `mib` MiB of random (incompressible) data at its start (not an OS: pulls use
    /// `--operations none`), registered as VM `name`.
    static func dataVM(_ dir: String, home: String, name: String, mib: Int = 12, sizeMiB: Int = 64) throws -> String {
        let path = "\(dir)/\(name).qcow2"
        let raw = "\(dir)/\(name).raw"
        try Tool.sh("""
            set -e
            truncate -s \(sizeMiB)M '\(raw)'
            dd if=/dev/urandom of='\(raw)' bs=1M count=\(mib) conv=notrunc status=none
            yes Z | tr -d '\\n' | dd of='\(raw)' bs=1M count=1 seek=40 iflag=fullblock conv=notrunc status=none || true
            qemu-img convert -q -O qcow2 '\(raw)' '\(path)'
            rm -f '\(raw)'
            """)
        let r = try warden(["vm", "register", "--name", name, "--owner", "alice", path], home: home)
        #expect(r.status == 0, "\(r.stderr)")
        return path
    }

    @Test func aVMRoundTripsThroughTheRegistryAsASignedCopyInItsLineage() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir)
                let disk = try Self.dataVM(dir, home: home, name: "web1")
                let ref = "\(reg.host)/team/web1:2026-12"
                let push = try Self.warden(["vm", "push", "web1", ref, "--plain-http", "--json"], home: home)
                #expect(push.status == 0, "\(push.stderr)")
                let p = try Self.json(push)
                #expect((p["chunks"] as? Int) == 4, "12 MiB of data and 1 MiB of 0x5a in 4 MiB chunks: \(p)")
                #expect((p["uploaded"] as? Int) == 4)
                #expect(push.stderr.contains("pushed"), "progress on stderr: \(push.stderr)")
                try JSONSchemaTests().validate(push.stdout, schema: "oci.v1.json")
                let pull = try Self.warden(["vm", "pull", ref, "--plain-http", "--name", "web1-copy", "--dir", dir + "/pulled",
                                            "--operations", "none", "--json"], home: home)
                #expect(pull.status == 0, "\(pull.stderr)")
                let q = try Self.json(pull)
                try JSONSchemaTests().validate(pull.stdout, schema: "oci.v1.json")
                try JSONSchemaTests().validate(try Self.warden(["registry", "key", "--json"], home: home).stdout, schema: "oci.v1.json")
                #expect(q["signature"] as? String == "trusted")
                #expect(q["linked_to_origin"] as? Bool == true)
                let copy = dir + "/pulled/web1-copy.qcow2"
                #expect(try Tool.run(["qemu-img", "compare", disk, copy], check: false).status == 0)
                // Sparse: the copy takes about the data's room, not the 64 MiB disk.
                let info = try Tool.run(["qemu-img", "info", "--output=json", copy])
                let obj = try #require(try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any])
                #expect((obj["format"] as? String) == "qcow2")
                #expect(((obj["actual-size"] as? Int) ?? Int.max) < 20 << 20)
                // The ledger: a `pulled` event, the copy's parent is the pushed VM.
                let show = try Self.json(try Self.warden(["vm", "show", "web1-copy", "--json"], home: home))
                let src = try Self.json(try Self.warden(["vm", "show", "web1", "--json"], home: home))
                let vm = show["vm"] as? [String: Any] ?? show
                let sv = src["vm"] as? [String: Any] ?? src
                #expect(vm["parent"] as? String == sv["id"] as? String, "\(show)")
                // The fingerprint computed while writing equals the source disk's.
                let fpCopy = (show["disks"] as? [[String: Any]])?.first?["fingerprint"] as? String
                #expect(fpCopy != nil && fpCopy == (src["disks"] as? [[String: Any]])?.first?["fingerprint"] as? String)
                let events = try Self.warden(["vm", "history", "web1-copy", "--json"], home: home)
                #expect(events.stdoutText.contains("\"pulled\""), "\(events.stdoutText.prefix(2000))")
                let srcEvents = try Self.warden(["vm", "history", "web1", "--json"], home: home)
                #expect(srcEvents.stdoutText.contains("\"pushed\""))
                // Nothing hidden is left in the folder.
                let left = try FileManager.default.contentsOfDirectory(atPath: dir + "/pulled")
                #expect(left == ["web1-copy.qcow2"], "\(left)")
            }
        }
    }

    static let keepIdentityPolicy = """
        apiVersion: warden/v1
        kind: Policy
        name: registry-tests
        rules:
          - name: keep-identity-for-tests
            on: [pull]
            allow: { keepIdentity: true }
        """

    /// The inspection parts that must survive a push and pull (identity aside).
    static func inspection(_ image: String, home: String) throws -> (os: String, packages: String, machineID: String) {
        let r = try warden(["inspect", "--json", image], home: home)
        let arr = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]], "\(r.stderr)")
        let d = try #require(arr.first)
        func text(_ v: Any?) throws -> String {
            String(decoding: try JSONSerialization.data(withJSONObject: v ?? NSNull(), options: [.sortedKeys, .fragmentsAllowed]), as: UTF8.self)
        }
        let identity = d["identity"] as? [String: Any] ?? [:]
        return (try text(d["os"]), try text(d["packages"]), identity["machine_id"] as? String ?? "")
    }

    @Test(.disabled(if: !GuestFixtures.available, "needs root, debootstrap and the Debian mirror"))
    func aDebootstrapGuestRoundTripsAndItsClonesUploadLittle() throws {
        let guest = try SysprepFixtures.identityGuest() + "/disk.qcow2"
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir, policy: Self.keepIdentityPolicy)
                let tmpl = dir + "/tmpl.qcow2"
                try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", guest, "-F", "qcow2", tmpl])
                #expect(try Self.warden(["vm", "register", "--name", "tmpl", "--owner", "alice", tmpl], home: home).status == 0)
                let base = try Self.warden(["vm", "push", "tmpl", "\(reg.host)/golden/tmpl:1", "--plain-http", "--json"], home: home)
                #expect(base.status == 0, "\(base.stderr)")
                let baseBytes = try reg.storedBlobBytes()
                // Kept identity: byte-identical; refreshed: the same OS and packages, a new machine-id.
                let kept = try Self.warden(["vm", "pull", "\(reg.host)/golden/tmpl:1", "--plain-http", "--name", "kept", "--dir", dir + "/kept",
                                            "--keep-identity", "--json"], home: home)
                #expect(kept.status == 0, "\(kept.stderr)")
                #expect(try Tool.run(["qemu-img", "compare", tmpl, dir + "/kept/kept.qcow2"], check: false).status == 0)
                let fresh = try Self.warden(["vm", "pull", "\(reg.host)/golden/tmpl:1", "--plain-http", "--name", "web2", "--dir", dir + "/web2", "--json"],
                                            home: home)
                #expect(fresh.status == 0, "\(fresh.stderr)")
                #expect(try Self.json(fresh)["identity_refreshed"] as? Bool == true)
                let a = try Self.inspection(tmpl, home: home)
                let b = try Self.inspection(dir + "/web2/web2.qcow2", home: home)
                #expect(a.os == b.os)
                #expect(a.packages == b.packages)
                #expect(a.machineID == SysprepFixtures.machineID)
                #expect(!b.machineID.isEmpty && b.machineID != a.machineID)
                // Without an allow rule, --keep-identity is refused.
                try FileManager.default.removeItem(atPath: home + "/policy/rules.yaml")
                let refused = try Self.warden(["vm", "pull", "\(reg.host)/golden/tmpl:1", "--plain-http", "--name", "kept2", "--dir", dir + "/kept2",
                                               "--keep-identity"], home: home)
                #expect(refused.status == 3, "\(refused.stderr)")
                #expect(refused.stderr.contains("keepIdentity: true"))
                #expect(!FileManager.default.fileExists(atPath: dir + "/kept2"))

                // Dedupe: ten clones (fresh identities, overlays over tmpl) pushed after it.
                var perClone: [Int64] = []
                for i in 1...10 {
                    let c = try Self.warden(["vm", "clone", "tmpl", "--name", "c\(i)", "--dir", dir + "/clones"], home: home)
                    #expect(c.status == 0, "\(c.stderr)")
                    let before = try reg.storedBlobBytes()
                    let push = try Self.warden(["vm", "push", "c\(i)", "\(reg.host)/team/c\(i):1", "--plain-http", "--json"], home: home)
                    #expect(push.status == 0, "\(push.stderr)")
                    let pj = try Self.json(push)
                    #expect((pj["mounted"] as? Int ?? 0) > 0, "chunks are mounted from golden/tmpl: \(pj)")
                    perClone.append(try reg.storedBlobBytes() - before)
                }
                let total = perClone.reduce(0, +)
                print("registry dedupe: base \(baseBytes) bytes stored; ten clones added \(total) bytes (\(perClone))")
                #expect(baseBytes > 50 << 20)
                // Each clone adds less than a tenth of the base; all ten together less than the base.
                #expect(perClone.allSatisfy { $0 * 10 < baseBytes }, "\(perClone) vs \(baseBytes)")
                #expect(total < baseBytes)
                // A clone pulled back is its source's copy, with its own new identity.
                let c1 = try Self.warden(["vm", "pull", "\(reg.host)/team/c1:1", "--plain-http", "--name", "c1-pulled", "--dir", dir + "/c1p", "--json"],
                                         home: home)
                #expect(c1.status == 0, "\(c1.stderr)")
            }
        }
    }

    /// Runs `args` while the registry is killed during the first batch's pause (when the command
    /// has created the marker file); returns the result.
    static func runKillingRegistry(_ args: [String], home: String, registry: RegistryServer) throws -> ToolResult {
        let result = Locked<Result<ToolResult, Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let marker = registry.directory + "/batch-\(UUID().uuidString)"
        Thread.detachNewThread {
            let r = Result { try warden(args, home: home, env: ["WARDEN_TEST_HOOKS": "1", "WARDEN_TEST_BATCH_PAUSE": "5",
                                                              "WARDEN_TEST_BATCH_MARKER": marker]) }
            result.withLock { $0 = r }
            done.signal()
        }
        for _ in 0..<1200 where !FileManager.default.fileExists(atPath: marker) && result.withLock({ $0 == nil }) { usleep(50_000) }
        #expect(FileManager.default.fileExists(atPath: marker), "the command paused after its first batch")
        registry.kill()
        done.wait()
        return try result.withLock { $0! }.get()
    }

    @Test func aKilledRegistryStopsAPushOrPullThatThenResumes() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir)
                // 96 MiB of data in 4 MiB chunks (24 + 1): the pause comes after the first 8, while
                // most chunks are still to be sent or fetched.
                let disk = try Self.dataVM(dir, home: home, name: "big", mib: 96, sizeMiB: 128)
                let ref = "\(reg.host)/team/big:1"
                let cut = try Self.runKillingRegistry(["vm", "push", "big", ref, "--plain-http"], home: home, registry: reg)
                #expect(cut.status != 0)
                #expect(cut.stderr.contains(reg.host), "\(cut.stderr)")
                try reg.start()
                #expect(try Tool.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://\(reg.host)/v2/team/big/manifests/1"]).stdoutText == "404",
                        "no tag for a half-pushed VM")
                let again = try Self.warden(["vm", "push", "big", ref, "--plain-http", "--json"], home: home)
                #expect(again.status == 0, "\(again.stderr)")
                let pj = try Self.json(again)
                #expect((pj["reused"] as? Int ?? 0) >= 8, "the first batch is not uploaded again: \(pj)")

                let pcut = try Self.runKillingRegistry(["vm", "pull", ref, "--plain-http", "--name", "big2", "--dir", dir + "/p", "--operations", "none"],
                                                       home: home, registry: reg)
                #expect(pcut.status != 0)
                #expect(!FileManager.default.fileExists(atPath: dir + "/p/big2.qcow2"), "no half-written disk in place")
                #expect(try Self.warden(["vm", "show", "big2"], home: home).status != 0)
                try reg.start()
                let pull = try Self.warden(["vm", "pull", ref, "--plain-http", "--name", "big2", "--dir", dir + "/p", "--operations", "none", "--json"],
                                           home: home)
                #expect(pull.status == 0, "\(pull.stderr)")
                #expect((try Self.json(pull)["resumed_chunks"] as? Int ?? 0) >= 8)
                #expect(try Tool.run(["qemu-img", "compare", disk, dir + "/p/big2.qcow2"], check: false).status == 0)
                #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/p") == ["big2.qcow2"])
            }
        }
    }

    @Test func aCorruptedBlobFailsThePullNamingItsDigestAndLeavesNothing() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir)
                _ = try Self.dataVM(dir, home: home, name: "v")
                let ref = "\(reg.host)/team/v:1"
                #expect(try Self.warden(["vm", "push", "v", ref, "--plain-http"], home: home).status == 0)
                // The config lists the chunks; corrupt the second one's blob in the registry's storage.
                let manifest = try Tool.run(["curl", "-s", "-H", "Accept: application/vnd.oci.image.manifest.v1+json", "http://\(reg.host)/v2/team/v/manifests/1"])
                let m = try #require(try JSONSerialization.jsonObject(with: manifest.stdout) as? [String: Any])
                let layers = try #require(m["layers"] as? [[String: Any]])
                let digest = try #require(layers[1]["digest"] as? String)
                let file = reg.blobFile(digest)
                let h = try #require(FileHandle(forUpdatingAtPath: file))
                try h.seek(toOffset: 100)
                let byte = try #require(try h.read(upToCount: 1)).first ?? 0
                try h.seek(toOffset: 100)
                try h.write(contentsOf: Data([byte ^ 0xFF]))
                try h.close()
                let pull = try Self.warden(["vm", "pull", ref, "--plain-http", "--name", "v2", "--dir", dir + "/p", "--operations", "none"], home: home)
                #expect(pull.status == 2, "\(pull.stderr)")
                #expect(pull.stderr.contains(digest), "\(pull.stderr)")
                #expect(pull.stderr.split(separator: "\n").filter { !$0.hasPrefix("pulled") }.count == 1, "one line: \(pull.stderr)")
                let left = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/p")) ?? []
                #expect(left.isEmpty, "nothing left: \(left)")
                #expect(try Self.warden(["vm", "show", "v2"], home: home).status != 0)
            }
        }
    }

    @Test func aManifestSwappedForAnotherVMsFailsItsSignature() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir)
                _ = try Self.dataVM(dir, home: home, name: "a")
                _ = try Self.dataVM(dir, home: home, name: "b")
                #expect(try Self.warden(["vm", "push", "a", "\(reg.host)/team/x:a", "--plain-http"], home: home).status == 0)
                #expect(try Self.warden(["vm", "push", "b", "\(reg.host)/team/x:b", "--plain-http"], home: home).status == 0)
                let accept = "Accept: application/vnd.oci.image.manifest.v1+json"
                let bBytes = try Tool.run(["curl", "-s", "-H", accept, "http://\(reg.host)/v2/team/x/manifests/b"]).stdout
                try bBytes.write(to: URL(fileURLWithPath: dir + "/b.json"))
                // Tag a now names b's (validly signed) manifest.
                let put = try Tool.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json",
                                        "--data-binary", "@" + dir + "/b.json", "http://\(reg.host)/v2/team/x/manifests/a"])
                #expect(put.stdoutText == "201")
                let pull = try Self.warden(["vm", "pull", "\(reg.host)/team/x:a", "--plain-http", "--name", "a2", "--dir", dir + "/p", "--operations", "none"],
                                           home: home)
                #expect(pull.status == 3, "\(pull.stderr)")
                #expect(pull.stderr.contains("signature"), "\(pull.stderr)")
                #expect(!FileManager.default.fileExists(atPath: dir + "/p"))
                // A manifest changed in any byte has no signature at all.
                var obj = try #require(try JSONSerialization.jsonObject(with: bBytes) as? [String: Any])
                var ann = obj["annotations"] as? [String: String] ?? [:]
                ann["org.opencontainers.image.title"] = "evil"
                obj["annotations"] = ann
                try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]).write(to: URL(fileURLWithPath: dir + "/evil.json"))
                _ = try Tool.run(["curl", "-s", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json",
                                  "--data-binary", "@" + dir + "/evil.json", "http://\(reg.host)/v2/team/x/manifests/evil"])
                let evil = try Self.warden(["vm", "pull", "\(reg.host)/team/x:evil", "--plain-http", "--name", "e", "--dir", dir + "/p", "--operations", "none"],
                                           home: home)
                #expect(evil.status == 3, "\(evil.stderr)")
                #expect(evil.stderr.contains("unsigned"), "\(evil.stderr)")
                // A policy may accept unsigned images explicitly (here from this test's repository only).
                try Data("""
                    apiVersion: warden/v1
                    kind: Policy
                    name: unsigned-from-team
                    rules:
                      - name: unsigned-team-images
                        on: [pull]
                        allow: { signature: [unsigned], registries: ["\(reg.host)/team/*"] }
                    """.utf8).write(to: URL(fileURLWithPath: home + "/policy/rules.yaml"))
                let ok = try Self.warden(["vm", "pull", "\(reg.host)/team/x:evil", "--plain-http", "--name", "e", "--dir", dir + "/p", "--operations", "none", "--json"],
                                         home: home)
                #expect(ok.status == 0, "\(ok.stderr)")
                #expect(try Self.json(ok)["signature"] as? String == "unsigned")
                // Unsigned: the fingerprint is computed from the bytes written, and equals b's.
                func fingerprint(_ vm: String) throws -> String? {
                    (try Self.json(try Self.warden(["vm", "show", vm, "--json"], home: home))["disks"] as? [[String: Any]])?.first?["fingerprint"] as? String
                }
                let fe = try fingerprint("e"), fb = try fingerprint("b")
                #expect(fe != nil && fe == fb)
            }
        }
    }

    @Test func aDeniedPushUploadsNothingAndADeniedPullWritesNothing() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir, policy: """
                    apiVersion: warden/v1
                    kind: Policy
                    name: registry-rules
                    rules:
                      - name: only-the-golden-repository
                        on: [push]
                        require: { registries: ["*/golden/*"] }
                      - name: no-unscanned-vms-with-criticals
                        on: [pull]
                        deny: { findings: { severity: critical } }
                    """)
                _ = try Self.dataVM(dir, home: home, name: "v")
                let denied = try Self.warden(["vm", "push", "v", "\(reg.host)/team/v:1", "--plain-http"], home: home)
                #expect(denied.status == 3, "\(denied.stderr)")
                #expect(denied.stderr.contains("only-the-golden-repository"))
                #expect(try reg.storedBlobBytes() == 0)
                #expect(reg.repositories().isEmpty)
                #expect(try Self.warden(["vm", "push", "v", "\(reg.host)/golden/v:1", "--plain-http"], home: home).status == 0)
                // The VM was never scanned: its findings are unknown, and the deny rule fails closed.
                let pull = try Self.warden(["vm", "pull", "\(reg.host)/golden/v:1", "--plain-http", "--name", "v2", "--dir", dir + "/p", "--operations", "none"],
                                           home: home)
                #expect(pull.status == 3, "\(pull.stderr)")
                #expect(pull.stderr.contains("no-unscanned-vms-with-criticals"), "\(pull.stderr)")
                #expect(!FileManager.default.fileExists(atPath: dir + "/p"))
                #expect(try Self.warden(["vm", "show", "v2"], home: home).status != 0)
                // Both decisions are in the ledger.
                let history = try Self.warden(["vm", "history", "v", "--json"], home: home).stdoutText
                #expect(history.contains("only-the-golden-repository"))
            }
        }
    }

    @Test func skopeoCopiesAPushedVMToAnotherRegistryWhereItStillPullsAndVerifies() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { one in
                try RegistryServer.with { two in
                    let home = try Self.makeHome(dir)
                    let disk = try Self.dataVM(dir, home: home, name: "v")
                    let push = try Self.warden(["vm", "push", "v", "\(one.host)/team/v:1", "--plain-http", "--json"], home: home)
                    #expect(push.status == 0, "\(push.stderr)")
                    let sigTag = try #require(try Self.json(push)["signature_tag"] as? String)
                    let raw = try Tool.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://\(one.host)/team/v:1"])
                    let m = try #require(try JSONSerialization.jsonObject(with: raw.stdout) as? [String: Any])
                    #expect(m["artifactType"] as? String == "application/vnd.warden.vm.v1")
                    for tag in ["1", sigTag] {
                        let c = try Tool.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                                              "docker://\(one.host)/team/v:\(tag)", "docker://\(two.host)/mirror/vm:\(tag)"], check: false, timeout: 120)
                        #expect(c.status == 0, "\(c.stderr)")
                    }
                    let pull = try Self.warden(["vm", "pull", "\(two.host)/mirror/vm:1", "--plain-http", "--name", "v2", "--dir", dir + "/p",
                                                "--operations", "none", "--json"], home: home)
                    #expect(pull.status == 0, "\(pull.stderr)")
                    #expect(try Self.json(pull)["signature"] as? String == "trusted")
                    #expect(try Tool.run(["qemu-img", "compare", disk, dir + "/p/v2.qcow2"], check: false).status == 0)
                }
            }
        }
    }

    @Test func basicAuthOverTLSWithATestCA() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with(auth: .basic(user: "ci", password: "s3cret-pass"), tls: true) { reg in
                let home = try Self.makeHome(dir)
                let disk = try Self.dataVM(dir, home: home, name: "v")
                let ca = try #require(reg.caFile)
                let ref = "\(reg.host)/team/v:1"
                // No login: refused, naming how to log in; the password never appears anywhere.
                let anon = try Self.warden(["vm", "push", "v", ref, "--ca-file", ca], home: home, env: ["REGISTRY_AUTH_FILE": dir + "/none.json"])
                #expect(anon.status == 3, "\(anon.stderr)")
                #expect(anon.stderr.contains("login"))
                // The system's roots do not trust the test CA.
                let auth = "{\"auths\":{\"\(reg.host)\":{\"auth\":\"\(Data("ci:s3cret-pass".utf8).base64EncodedString())\"}}}"
                try Data(auth.utf8).write(to: URL(fileURLWithPath: dir + "/auth.json"))
                let untrusted = try Self.warden(["vm", "push", "v", ref], home: home, env: ["REGISTRY_AUTH_FILE": dir + "/auth.json"])
                #expect(untrusted.status != 0)
                #expect(untrusted.stderr.contains("TLS") || untrusted.stderr.contains("certificate"), "\(untrusted.stderr)")
                let push = try Self.warden(["vm", "push", "v", ref, "--ca-file", ca, "--auth-file", dir + "/auth.json"], home: home)
                #expect(push.status == 0, "\(push.stderr)")
                let pull = try Self.warden(["vm", "pull", ref, "--ca-file", ca, "--name", "v2", "--dir", dir + "/p", "--operations", "none"],
                                           home: home, env: ["REGISTRY_AUTH_FILE": dir + "/auth.json"])
                #expect(pull.status == 0, "\(pull.stderr)")
                #expect(try Tool.run(["qemu-img", "compare", disk, dir + "/p/v2.qcow2"], check: false).status == 0)
                for r in [anon, untrusted, push, pull] { #expect(!r.stderr.contains("s3cret") && !r.stdoutText.contains("s3cret")) }
                // Plain HTTP with a login for a host that is not loopback is refused before any request.
                let other = "{\"auths\":{\"registry.example:5000\":{\"auth\":\"\(Data("ci:s3cret-pass".utf8).base64EncodedString())\"}}}"
                try Data(other.utf8).write(to: URL(fileURLWithPath: dir + "/auth2.json"))
                let plain = try Self.warden(["vm", "pull", "registry.example:5000/team/v:1", "--plain-http", "--name", "x", "--dir", dir + "/x"],
                                            home: home, env: ["REGISTRY_AUTH_FILE": dir + "/auth2.json"])
                #expect(plain.status == 3, "\(plain.stderr)")
                #expect(plain.stderr.contains("plain HTTP"), "\(plain.stderr)")
            }
        }
    }

    /// Uploads `bytes` as a blob of `repo` with curl; returns its digest.
    @discardableResult
    static func curlBlob(_ bytes: Data, registry: String, repo: String, dir: String) throws -> String {
        let file = dir + "/blob-\(UUID().uuidString)"
        try bytes.write(to: URL(fileURLWithPath: file))
        let digest = "sha256:" + String(try Tool.run(["sha256sum", file]).stdoutText.prefix(64))
        let loc = try Tool.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "-X", "POST", "http://\(registry)/v2/\(repo)/blobs/uploads/"]).stdoutText
        let location = try #require(loc.split(separator: "\r\n").first { $0.lowercased().hasPrefix("location:") }).dropFirst(9)
            .trimmingCharacters(in: .whitespaces)
        let url = (location.hasPrefix("http") ? location : "http://\(registry)" + location) + (location.contains("?") ? "&" : "?") + "digest=" + digest
        let put = try Tool.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                                "--data-binary", "@" + file, url])
        #expect(put.stdoutText == "201", "blob upload: \(put.stdoutText)")
        return digest
    }

    /// PUTs `manifest` under `tag`; returns the HTTP status.
    static func curlManifest(_ manifest: Data, registry: String, repo: String, tag: String, dir: String) throws -> String {
        let file = dir + "/manifest-\(tag)"
        try manifest.write(to: URL(fileURLWithPath: file))
        return try Tool.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json",
                             "--data-binary", "@" + file, "http://\(registry)/v2/\(repo)/manifests/\(tag)"]).stdoutText
    }

    @Test func hostileManifestsInARealRegistryGiveOneLineAndWriteNothing() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir)
                _ = try Self.dataVM(dir, home: home, name: "v")
                #expect(try Self.warden(["vm", "push", "v", "\(reg.host)/team/v:1", "--plain-http"], home: home).status == 0)
                let good = try Tool.run(["curl", "-s", "-H", "Accept: application/vnd.oci.image.manifest.v1+json", "http://\(reg.host)/v2/team/v/manifests/1"]).stdout
                let m = try #require(try JSONSerialization.jsonObject(with: good) as? [String: Any])
                let config = try #require(m["config"] as? [String: Any])
                let configBytes = try Tool.run(["curl", "-s", "http://\(reg.host)/v2/team/v/blobs/\(config["digest"] as! String)"]).stdout
                let cfg = try #require(try JSONSerialization.jsonObject(with: configBytes) as? [String: Any])

                func withConfig(_ change: (inout [String: Any]) -> Void) throws -> Data {
                    var c = cfg
                    change(&c)
                    let bytes = try JSONSerialization.data(withJSONObject: c, options: [.sortedKeys])
                    let digest = try Self.curlBlob(bytes, registry: reg.host, repo: "team/v", dir: dir)
                    var mm = m
                    mm["config"] = ["mediaType": config["mediaType"]!, "digest": digest, "size": bytes.count]
                    return try JSONSerialization.data(withJSONObject: mm, options: [.sortedKeys])
                }
                func withManifest(_ change: (inout [String: Any]) -> Void) throws -> Data {
                    var mm = m
                    change(&mm)
                    return try JSONSerialization.data(withJSONObject: mm, options: [.sortedKeys])
                }
                var cases: [(String, Data, String)] = [
                    ("chunk0", try withConfig { $0["chunk_size"] = 0 }, "chunk size of 0"),
                    ("chunk40", try withConfig { $0["chunk_size"] = 1 << 40 }, "chunk size of 1099511627776"),
                    ("schema", try withConfig { $0["schema"] = "evil/v9" }, "schema"),
                    ("image", try withManifest { mm in
                        var c = config; c["mediaType"] = "application/vnd.oci.image.config.v1+json"; mm["config"] = c
                    }, "not a container image layer"),
                    ("layertype", try withManifest { mm in
                        var layers = mm["layers"] as! [[String: Any]]; layers[0]["mediaType"] = "application/x-evil"; mm["layers"] = layers
                    }, "media type"),
                    ("size", try withManifest { mm in
                        var c = config; c["size"] = (c["size"] as! Int) + 1; mm["config"] = c
                    }, "not the"),
                ]
                // Deep nesting in a field the registry ignores.
                var deep = String(decoding: good, as: UTF8.self)
                deep.removeLast()
                deep += ",\"x\":" + String(repeating: "[", count: 500) + String(repeating: "]", count: 500) + "}"
                cases.append(("deep", Data(deep.utf8), "nests deeper"))
                for (tag, bytes, expected) in cases {
                    let status = try Self.curlManifest(bytes, registry: reg.host, repo: "team/v", tag: tag, dir: dir)
                    #expect(status == "201", "\(tag): the registry took it (\(status))")
                    let r = try Self.warden(["vm", "pull", "\(reg.host)/team/v:\(tag)", "--plain-http", "--name", "x-\(tag)", "--dir", dir + "/p",
                                             "--operations", "none"], home: home)
                    #expect(r.status == 2, "\(tag): \(r.stderr)")
                    #expect(r.stderr.contains(expected), "\(tag): \(r.stderr)")
                    #expect(r.stderr.split(separator: "\n").count == 1, "\(tag): one line: \(r.stderr)")
                    #expect(!FileManager.default.fileExists(atPath: dir + "/p"), "\(tag): nothing written")
                }
                #expect(try Self.warden(["vm", "list", "--json"], home: home).stdoutText.contains("x-") == false)
            }
        }
    }

    /// A registry that lies: Distribution refuses manifests over 4 MiB, so a hostile server
    /// (python3's http.server, loopback, started and killed here) sends a 64 MiB manifest and a
    /// blob longer than its descriptor; Warden stops reading at its bounds.
    @Test func aHostileServerCannotMakeWardenReadWithoutBound() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let script = """
                import http.server, sys
                class H(http.server.BaseHTTPRequestHandler):
                    def log_message(self, *a): pass
                    def do_GET(self):
                        if self.path.endswith("/manifests/huge"):
                            self.send_response(200)
                            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                            self.send_header("Content-Length", str(64 << 20))
                            self.end_headers()
                            chunk = b" " * (1 << 20)
                            try:
                                for _ in range(64): self.wfile.write(chunk)
                            except Exception: pass
                        elif self.path == "/v2/":
                            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
                        else:
                            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers()
                    do_HEAD = do_GET
                http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
                """
            try Data(script.utf8).write(to: URL(fileURLWithPath: dir + "/hostile.py"))
            let port = try PostgresServer.freePort()
            let pid = try Tool.run(["/bin/sh", "-c", "python3 \"$0/hostile.py\" \(port) >/dev/null 2>&1 </dev/null & echo $!", dir]).stdoutText
                .trimmingCharacters(in: .whitespacesAndNewlines)
            defer { _ = try? Tool.run(["kill", "-9", pid], check: false) }
            for _ in 0..<100 {
                if (try? Tool.run(["curl", "-sf", "http://127.0.0.1:\(port)/v2/"], check: false))?.status == 0 { break }
                usleep(50_000)
            }
            let home = try Self.makeHome(dir)
            let r = try WardenRun.run(["vm", "pull", "127.0.0.1:\(port)/team/v:huge", "--plain-http", "--name", "x", "--dir", dir + "/p",
                                       "--db", home + "/warden.db", "--policy", home + "/policy"])
            #expect(r.status == 2, "\(r.stderr)")
            #expect(r.stderr.contains("larger than 4194304 bytes"), "\(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1)
            #expect(r.maxRSSKiB > 0 && r.maxRSSKiB < 200_000, "peak memory \(r.maxRSSKiB) KiB for a 64 MiB answer")
            #expect(!FileManager.default.fileExists(atPath: dir + "/p"))
        }
    }

    @Test func encryptedPushesShowTheRegistryOnlySizesAndOpenForTheirRecipientsAndTheFamily() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                try FileManager.default.createDirectory(atPath: dir + "/a", withIntermediateDirectories: true)
                try FileManager.default.createDirectory(atPath: dir + "/b", withIntermediateDirectories: true)
                let a = try Self.makeHome(dir + "/a")
                let b = try Self.makeHome(dir + "/b")
                // Host b trusts host a's signatures.
                try FileManager.default.copyItem(atPath: a + "/policy/trusted-keys/this-host.pub", toPath: b + "/policy/trusted-keys/host-a.pub")
                let disk = try Self.dataVM(dir, home: a, name: "secretvm")
                let sealedRef = "\(reg.host)/vault/img1:1"
                let push = try Self.warden(["vm", "push", "secretvm", sealedRef, "--plain-http", "--encrypt", "--json"], home: a)
                #expect(push.status == 0, "\(push.stderr)")
                #expect(try Self.json(push)["encrypted"] as? Bool == true)
                // The registry holds no plaintext: no VM name or owner, no zstd frame, not the 0x5a run (the
                // repository name is the only name it sees, and it is chosen not to be the VM's).
                let storage = reg.directory + "/storage"
                for needle in ["secretvm", "alice", String(repeating: "Z", count: 64)] {
                    let g = try Tool.run(["grep", "-rl", "--", needle, storage], check: false)
                    #expect(g.stdoutText.isEmpty, "\(needle) found in \(g.stdoutText)")
                }
                let zstd = try Tool.sh("find '\(reg.blobsDirectory)' -name data -exec head -c 4 {} \\; | od -An -tx1 | tr -s ' ' '\\n' | paste -sd' '")
                #expect(!zstd.stdoutText.contains("28 b5 2f fd"), "a blob starts with a zstd frame")
                // The pushing host pulls it back from its vault.
                let back = try Self.warden(["vm", "pull", sealedRef, "--plain-http", "--name", "back", "--dir", dir + "/back", "--operations", "none", "--json"], home: a)
                #expect(back.status == 0, "\(back.stderr)")
                #expect(try Tool.run(["qemu-img", "compare", disk, dir + "/back/back.qcow2"], check: false).status == 0)
                // Host b is not a recipient: refused, nothing written.
                let refused = try Self.warden(["vm", "pull", sealedRef, "--plain-http", "--name", "x", "--dir", dir + "/bx", "--operations", "none"], home: b)
                #expect(refused.status == 3, "\(refused.stderr)")
                #expect(refused.stderr.contains("encrypted for"))
                #expect(!FileManager.default.fileExists(atPath: dir + "/bx"))
                // Pushed again with host b as a recipient: b pulls it.
                let bKey = try Self.warden(["registry", "key", "--recipient"], home: b).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
                let forB = try Self.warden(["vm", "push", "secretvm", "\(reg.host)/vault/img1:for-b", "--plain-http", "--encrypt", "--recipient", bKey, "--json"],
                                           home: a)
                #expect(forB.status == 0, "\(forB.stderr)")
                #expect((try Self.json(forB)["reused"] as? Int) == 4, "the same family key: every chunk is already there")
                let pulledB = try Self.warden(["vm", "pull", "\(reg.host)/vault/img1:for-b", "--plain-http", "--name", "on-b", "--dir", dir + "/onb",
                                               "--operations", "none", "--json"], home: b)
                #expect(pulledB.status == 0, "\(pulledB.stderr)")
                #expect(try Tool.run(["qemu-img", "compare", disk, dir + "/onb/on-b.qcow2"], check: false).status == 0)
                // The dedupe domain is the lineage family: a copy reuses every chunk, an
                // unrelated VM with the same bytes (another family, another key) reuses none.
                #expect(try Self.warden(["vm", "copy", "secretvm", dir + "/copies", "--name", "copy1"], home: a).status == 0)
                let copy = try Self.warden(["vm", "push", "copy1", "\(reg.host)/vault/copy1:1", "--plain-http", "--encrypt", "--json"], home: a)
                #expect(try Self.json(copy)["uploaded"] as? Int == 0, "\(copy.stdoutText)")
                try FileManager.default.createDirectory(atPath: dir + "/twin", withIntermediateDirectories: true)
                try Tool.run(["cp", disk, dir + "/twin/twin.qcow2"])
                #expect(try Self.warden(["vm", "register", "--name", "twin", "--owner", "bob", dir + "/twin/twin.qcow2"], home: a).status == 0)
                let twin = try Self.warden(["vm", "push", "twin", "\(reg.host)/vault/twin:1", "--plain-http", "--encrypt", "--json"], home: a)
                #expect(try Self.json(twin)["reused"] as? Int == 0, "\(twin.stdoutText)")
                // Crypto-shredding the family: its images no longer open here.
                #expect(try Self.warden(["vault", "shred", "secretvm", "--yes"], home: a).status == 0)
                let gone = try Self.warden(["vm", "pull", sealedRef, "--plain-http", "--name", "gone", "--dir", dir + "/gone", "--operations", "none"], home: a)
                #expect(gone.status == 3, "\(gone.stderr)")
                #expect(!FileManager.default.fileExists(atPath: dir + "/gone"))
            }
        }
    }

    /// A KubeVirt containerDisk: an OCI image whose one layer (tar+gzip, written by tar and
    /// gzip) holds `disk/disk.qcow2`, laid out as an OCI directory by this test and copied into
    /// the registry with `skopeo copy`; `warden scan REF` reads it as it reads the same file.
    @Test func aKubeVirtContainerDiskScansLikeTheSameQcow2ReadFromAFile() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                try Tool.sh("""
                    set -e
                    cd '\(dir)'
                    mkdir -p root/etc root/var/lib/dpkg layer/disk oci/blobs/sha256
                    printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\\nNAME="Debian GNU/Linux"\\nVERSION_ID="12"\\nID=debian\\n' > root/etc/os-release
                    printf 'Package: openssl\\nStatus: install ok installed\\nArchitecture: amd64\\nVersion: 3.0.11-1~deb12u2\\n\\nPackage: bash\\nStatus: install ok installed\\nArchitecture: amd64\\nVersion: 5.2.15-2+b2\\n\\n' > root/var/lib/dpkg/status
                    truncate -s 16M fs.img
                    mkfs.ext4 -q -F -d root fs.img
                    qemu-img convert -q -f raw -O qcow2 fs.img layer/disk/disk.qcow2
                    tar --owner=107 --group=107 -C layer -cf layer.tar disk
                    gzip -n -c layer.tar > layer.tar.gz
                    """)
                func sha(_ f: String) throws -> String { String(try Tool.run(["sha256sum", dir + "/" + f]).stdoutText.prefix(64)) }
                func size(_ f: String) throws -> Int { (try FileManager.default.attributesOfItem(atPath: dir + "/" + f)[.size] as? Int) ?? 0 }
                let layer = try sha("layer.tar.gz"), diff = try sha("layer.tar")
                try Tool.run(["cp", dir + "/layer.tar.gz", dir + "/oci/blobs/sha256/" + layer])
                let config = #"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:\#(diff)"]}}"#
                try Data(config.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
                let configSHA = try sha("config.json")
                try Tool.run(["cp", dir + "/config.json", dir + "/oci/blobs/sha256/" + configSHA])
                let manifest = #"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:\#(configSHA)","size":\#(try size("config.json"))},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:\#(layer)","size":\#(try size("layer.tar.gz"))}]}"#
                try Data(manifest.utf8).write(to: URL(fileURLWithPath: dir + "/manifest.json"))
                let mSHA = try sha("manifest.json")
                try Tool.run(["cp", dir + "/manifest.json", dir + "/oci/blobs/sha256/" + mSHA])
                let index = #"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:\#(mSHA)","size":\#(try size("manifest.json")),"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}"#
                try Data(index.utf8).write(to: URL(fileURLWithPath: dir + "/oci/index.json"))
                try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: dir + "/oci/oci-layout"))
                let copy = try Tool.run(["skopeo", "copy", "--dest-tls-verify=false", "oci:\(dir)/oci:v1", "docker://\(reg.host)/kubevirt/tiny-cd:v1"],
                                        check: false, timeout: 120)
                #expect(copy.status == 0, "\(copy.stderr)")
                let home = try Self.makeHome(dir)
                let fromFile = try Self.warden(["scan", "--json", dir + "/layer/disk/disk.qcow2"], home: home)
                try FileManager.default.createDirectory(atPath: dir + "/tmp", withIntermediateDirectories: true)
                let fromRef = try Self.warden(["scan", "--json", "--plain-http", "\(reg.host)/kubevirt/tiny-cd:v1"], home: home, env: ["TMPDIR": dir + "/tmp/"])
                #expect(fromRef.status == fromFile.status, "\(fromRef.stderr)")
                let a = try #require((try Self.json(fromFile)["images"] as? [[String: Any]])?.first)
                let b = try #require((try Self.json(fromRef)["images"] as? [[String: Any]])?.first, "\(fromRef.stdoutText) \(fromRef.stderr)")
                #expect(b["image"] as? String == "\(reg.host)/kubevirt/tiny-cd:v1")
                for k in ["os_id", "version_id", "packages", "inventory", "ecosystems"] {
                    #expect(String(describing: a[k] ?? "-") == String(describing: b[k] ?? "-"), "\(k): \(a[k] ?? "-") vs \(b[k] ?? "-")")
                }
                #expect((a["packages"] as? Int) == 2)
                // Nothing is left in the temporary folder.
                #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/tmp").isEmpty)
                // A Warden VM is not a containerDisk, and an image without /disk/ is named as such.
                let missing = try Self.warden(["scan", "--plain-http", "\(reg.host)/kubevirt/none:v1"], home: home)
                #expect(missing.status == 2 && missing.stderr.contains("no such manifest"), "\(missing.stderr)")
                _ = try Self.dataVM(dir, home: home, name: "wvm")
                #expect(try Self.warden(["vm", "push", "wvm", "\(reg.host)/kubevirt/wvm:1", "--plain-http"], home: home).status == 0)
                let notCD = try Self.warden(["scan", "--plain-http", "\(reg.host)/kubevirt/wvm:1"], home: home)
                #expect(notCD.status == 2 && notCD.stderr.contains("not a container image"), "\(notCD.stderr)")
                // `vm pull` of the containerDisk: unsigned, so only with an allow rule naming it;
                // then registered as a VM whose disk is the containerDisk's.
                let denied = try Self.warden(["vm", "pull", "--plain-http", "\(reg.host)/kubevirt/tiny-cd:v1", "--dir", dir + "/cd", "--operations", "none"],
                                             home: home)
                #expect(denied.status == 3 && denied.stderr.contains("unsigned"), "\(denied.stderr)")
                #expect(!FileManager.default.fileExists(atPath: dir + "/cd"))
                try Data("""
                    apiVersion: warden/v1
                    kind: Policy
                    name: kubevirt
                    rules:
                      - name: unsigned-containerdisks-from-kubevirt
                        on: [pull]
                        allow: { signature: [unsigned], registries: ["*/kubevirt/*"] }
                    """.utf8).write(to: URL(fileURLWithPath: home + "/policy/rules.yaml"))
                let pulled = try Self.warden(["vm", "pull", "--plain-http", "\(reg.host)/kubevirt/tiny-cd:v1", "--dir", dir + "/cd", "--operations", "none",
                                              "--json"], home: home)
                #expect(pulled.status == 0, "\(pulled.stderr)")
                #expect(try Self.json(pulled)["name"] as? String == "tiny-cd")
                #expect(try Tool.run(["qemu-img", "compare", dir + "/layer/disk/disk.qcow2", dir + "/cd/tiny-cd.qcow2"], check: false).status == 0)
                #expect(try Self.warden(["vm", "show", "tiny-cd", "--json"], home: home).stdoutText.contains("containerdisk"))
                #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/cd") == ["tiny-cd.qcow2"])
            }
        }
    }

    /// Bearer tokens: the registry (token auth, trusting a test certificate) sends the client to a
    /// token service, here a small python3 server that checks the login and signs ES256 JWTs
    /// (python3-cryptography) carrying the certificate in `x5c`, as Docker's token spec says.
    @Test func bearerTokensFromATokenService() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("""
                set -e
                cd '\(dir)'
                openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=warden-test-token \\
                    -keyout token.key -out token.pem 2>/dev/null
                """)
            let script = """
                import base64, json, sys, time, uuid, http.server, urllib.parse
                from cryptography import x509
                from cryptography.hazmat.primitives import hashes, serialization
                from cryptography.hazmat.primitives.asymmetric import ec
                from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
                d = sys.argv[2]
                key = serialization.load_pem_private_key(open(d + "/token.key", "rb").read(), None)
                cert = x509.load_pem_x509_certificate(open(d + "/token.pem", "rb").read())
                x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
                def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
                class H(http.server.BaseHTTPRequestHandler):
                    def log_message(self, *a): pass
                    def do_GET(self):
                        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                        auth = self.headers.get("Authorization", "")
                        if auth != "Basic " + base64.b64encode(b"ci:t0ken-pass").decode():
                            self.send_response(401); self.send_header("Content-Length", "0"); self.end_headers(); return
                        access = []
                        for scope in q.get("scope", []):
                            kind, name, actions = scope.split(":")
                            access.append({"type": kind, "name": name, "actions": actions.split(",")})
                        now = int(time.time())
                        claims = {"iss": "warden-test-issuer", "sub": "ci", "aud": q.get("service", [""])[0], "exp": now + 300,
                                  "nbf": now - 10, "iat": now, "jti": str(uuid.uuid4()), "access": access}
                        head = {"typ": "JWT", "alg": "ES256", "x5c": [x5c]}
                        signing = b64(json.dumps(head).encode()) + "." + b64(json.dumps(claims).encode())
                        r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
                        token = signing + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
                        body = json.dumps({"token": token, "expires_in": 300}).encode()
                        self.send_response(200); self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
                http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
                """
            try Data(script.utf8).write(to: URL(fileURLWithPath: dir + "/tokensvc.py"))
            let port = try PostgresServer.freePort()
            let pid = try Tool.run(["/bin/sh", "-c", "python3 \"$0/tokensvc.py\" \(port) \"$0\" >\"$0/token.log\" 2>&1 </dev/null & echo $!", dir]).stdoutText
                .trimmingCharacters(in: .whitespacesAndNewlines)
            defer { _ = try? Tool.run(["kill", "-9", pid], check: false) }
            for _ in 0..<100 {
                if (try? Tool.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/token"], check: false))?.stdoutText == "401" { break }
                usleep(50_000)
            }
            try RegistryServer.with(auth: .token(realm: "http://127.0.0.1:\(port)/token", service: "warden-test-registry", issuer: "warden-test-issuer",
                                                 certificate: dir + "/token.pem")) { reg in
                let home = try Self.makeHome(dir)
                let disk = try Self.dataVM(dir, home: home, name: "v")
                let auth = "{\"auths\":{\"\(reg.host)\":{\"auth\":\"\(Data("ci:t0ken-pass".utf8).base64EncodedString())\"}}}"
                try Data(auth.utf8).write(to: URL(fileURLWithPath: dir + "/auth.json"))
                let ref = "\(reg.host)/team/v:1"
                let anon = try Self.warden(["vm", "push", "v", ref, "--plain-http"], home: home, env: ["REGISTRY_AUTH_FILE": dir + "/none.json"])
                #expect(anon.status == 3, "\(anon.stderr)")
                #expect(anon.stderr.contains("token service"), "\(anon.stderr)")
                let push = try Self.warden(["vm", "push", "v", ref, "--plain-http", "--auth-file", dir + "/auth.json"], home: home)
                #expect(push.status == 0, "\(push.stderr) \((try? String(contentsOfFile: reg.directory + "/registry.log", encoding: .utf8))?.suffix(800) ?? "")")
                let pull = try Self.warden(["vm", "pull", ref, "--plain-http", "--auth-file", dir + "/auth.json", "--name", "v2", "--dir", dir + "/p",
                                            "--operations", "none"], home: home)
                #expect(pull.status == 0, "\(pull.stderr)")
                #expect(try Tool.run(["qemu-img", "compare", disk, dir + "/p/v2.qcow2"], check: false).status == 0)
                for r in [anon, push, pull] { #expect(!r.stderr.contains("t0ken-pass")) }
            }
        }
    }

    /// Chunks larger than the 8 MiB upload part go up in chunked PATCHes (Content-Range) and a
    /// closing PUT; the registry reassembles them and the pull verifies every digest.
    @Test func largeChunksGoUpInChunkedUploads() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir)
                let disk = try Self.dataVM(dir, home: home, name: "v", mib: 40)
                let push = try Self.warden(["vm", "push", "v", "\(reg.host)/team/v:16m", "--plain-http", "--chunk-size", "16M", "--json"], home: home)
                #expect(push.status == 0, "\(push.stderr)")
                let pj = try Self.json(push)
                #expect(pj["uploaded"] as? Int == 3, "\(pj)")   // 16 + 16 + (8 MiB random and the MiB of Z at 40 MiB)
                let manifest = try Tool.run(["curl", "-s", "-H", "Accept: application/vnd.oci.image.manifest.v1+json", "http://\(reg.host)/v2/team/v/manifests/16m"])
                let m = try #require(try JSONSerialization.jsonObject(with: manifest.stdout) as? [String: Any])
                let sizes = (m["layers"] as? [[String: Any]] ?? []).compactMap { $0["size"] as? Int }
                #expect(sizes.filter { $0 > 8 << 20 }.count == 3, "three blobs larger than one part: \(sizes)")
                let pull = try Self.warden(["vm", "pull", "\(reg.host)/team/v:16m", "--plain-http", "--name", "v2", "--dir", dir + "/p", "--operations", "none"],
                                           home: home)
                #expect(pull.status == 0, "\(pull.stderr)")
                #expect(try Tool.run(["qemu-img", "compare", disk, dir + "/p/v2.qcow2"], check: false).status == 0)
                #expect(try Self.warden(["vm", "push", "v", "\(reg.host)/team/v:x", "--plain-http", "--chunk-size", "3M"], home: home).status == 2)
            }
        }
    }

    /// `maxReplicas` on pull is decided in the transaction that registers the copy: six pulls
    /// of one VM started at once, as separate processes, under `maxReplicas: 3` (the pushed VM
    /// and two copies) register exactly two copies; the others are denied and leave nothing.
    @Test func concurrentPullsCannotBeatMaxReplicas() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try RegistryServer.with { reg in
                let home = try Self.makeHome(dir, policy: """
                    apiVersion: warden/v1
                    kind: Policy
                    name: replicas
                    rules:
                      - name: three-in-a-family
                        on: [pull]
                        require: { maxReplicas: 3 }
                    """)
                _ = try Self.dataVM(dir, home: home, name: "v")
                #expect(try Self.warden(["vm", "push", "v", "\(reg.host)/team/v:1", "--plain-http"], home: home).status == 0)
                let results = Locked<[Int: ToolResult]>([:])
                DispatchQueue.concurrentPerform(iterations: 6) { i in
                    let r = try? Self.warden(["vm", "pull", "\(reg.host)/team/v:1", "--plain-http", "--quiet", "--name", "p\(i)", "--dir", dir + "/p\(i)",
                                              "--operations", "none"], home: home)
                    results.withLock { $0[i] = r }
                }
                let all = results.withLock { $0 }
                #expect(all.count == 6)
                let ok = all.filter { $0.value.status == 0 }.map(\.key)
                let denied = all.filter { $0.value.status == 3 }.map(\.key)
                #expect(ok.count == 2, "\(all.mapValues { $0.stderr })")
                #expect(denied.count == 4, "\(all.mapValues { $0.stderr })")
                for i in denied {
                    #expect(all[i]!.stderr.contains("three-in-a-family"))
                    #expect(((try? FileManager.default.contentsOfDirectory(atPath: dir + "/p\(i)")) ?? []).isEmpty, "p\(i) left files")
                    #expect(try Self.warden(["vm", "show", "p\(i)"], home: home).status != 0)
                }
                for i in ok { #expect(try Self.warden(["vm", "show", "p\(i)"], home: home).status == 0) }
            }
        }
    }
}

