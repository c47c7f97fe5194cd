import Foundation
import Testing
import WardenTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `warden vm patch`, `warden image patch` and `warden fleet patch` on the debootstrapped
/// Debian 12 guest (``PatchFixtures``), in real maintenance boots (QEMU, TCG), checked with
/// dpkg itself (`dpkg-query --admindir` on the exported layers).
@Suite(.serialized) struct PatchCommandTests {
    static var unavailable: String? {
        if !GuestFixtures.available { return "needs root, debootstrap and the Debian mirror" }
        if let why = TestGuest.unavailableReason { return why }
        return nil
    }

    static func warden(_ args: [String], home: String, env: [String: String] = [:]) throws -> ToolResult {
        try Tool.run([Fixtures.wardenBinary] + args,
                     environment: ["WARDEN_HOME": home, "WARDEN_DB": home + "/warden.db", "WARDEN_POLICY": home + "/policy"].merging(env) { $1 },
                     check: false, timeout: 900)
    }

    static func json(_ r: ToolResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(r.stdoutText.utf8)) as? [String: Any], "\(r.stdoutText) \(r.stderr)")
    }

    /// A home with an allow-all policy, the advisories imported, and VM `demo` registered on an
    /// overlay of the fixture guest (so nothing is written into the fixture cache).
    static func setUp(_ home: String, disk: String = "disk.qcow2", name: String = "demo") throws -> String {
        let guest = try PatchFixtures.guest()
        try PolicyFiles.write(PolicyFiles.allowAll, in: home)
        chmod(home, 0o755)
        let vmDisk = "\(home)/\(name).qcow2"
        try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "\(guest)/\(disk)", vmDisk])
        try PatchFixtures.tracker.write(toFile: home + "/tracker.json", atomically: true, encoding: .utf8)
        var r = try warden(["advisories", "import", home + "/tracker.json"], home: home)
        #expect(r.status == 0, "\(r.stderr)")
        r = try warden(["vm", "register", "--name", name, "--owner", "ops", vmDisk], home: home)
        #expect(r.status == 0, "\(r.stderr)")
        return vmDisk
    }

    static func mirror() throws -> String { try PatchFixtures.packages() + "/mirror" }

    /// Files in `dir` whose names contain `.patch-` (new layers).
    static func layers(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.contains(".patch-") }.sorted()
    }

    static func patchedEvents(_ home: String, vm: String = "demo") throws -> [[String: Any]] {
        let r = try warden(["vm", "history", vm, "--json"], home: home)
        let doc = try JSONSerialization.jsonObject(with: Data(r.stdoutText.utf8))
        let events = (doc as? [[String: Any]]) ?? ((doc as? [String: Any])?["events"] as? [[String: Any]]) ?? []
        return events.filter { $0["kind"] as? String == "patched" }
    }

    @Test func patchClosesTheFindingAndDpkgAgrees() throws {
        if let why = Self.unavailable { print("skipped: \(why)"); return }
        try Fixtures.withTemporaryDirectory { home in
            let vmDisk = try Self.setUp(home)
            // The plan first: only the high finding's package, nothing written.
            var r = try Self.warden(["vm", "patch", "demo", "--findings", "--severity", "high", "--mirror", try Self.mirror(), "--dry-run", "--json"], home: home)
            #expect(r.status == 0, "\(r.stderr)")
            try JSONSchemaTests().validate(r.stdout, schema: "patch.v1.json")
            var doc = try Self.json(r)
            #expect(doc["status"] as? String == "planned")
            let targets = try #require(doc["targets"] as? [[String: Any]])
            #expect(targets.map { $0["package"] as? String } == ["warden-demo"])
            #expect(targets.first?["installed"] as? String == "1.0-1" && targets.first?["fixed_version"] as? String == "1.1-1")
            #expect(Self.layers(home).isEmpty)

            r = try Self.warden(["vm", "patch", "demo", "--findings", "--severity", "high", "--mirror", try Self.mirror(), "--accel", "tcg", "--json"], home: home)
            #expect(r.status == 0, "\(r.stderr) \(r.stdoutText)")
            try JSONSchemaTests().validate(r.stdout, schema: "patch.v1.json")
            doc = try Self.json(r)
            #expect(doc["schema"] as? String == "warden.patch/v1")
            #expect(doc["status"] as? String == "patched")
            let packages = try #require(doc["packages"] as? [[String: Any]])
            let demo = try #require(packages.first { $0["name"] as? String == "warden-demo" })
            #expect(demo["before"] as? String == "1.0-1" && demo["after"] as? String == "1.1-1")
            #expect(!packages.contains { $0["name"] as? String == "warden-broken" && $0["before"] as? String != $0["after"] as? String })
            #expect(doc["findings_closed"] as? [String] == ["CVE-2099-4242 warden-demo"])
            let layer = try #require(doc["layer"] as? [String: Any])
            let layerPath = try #require(layer["path"] as? String)
            #expect(layer["backing"] as? String == vmDisk)
            #expect((layer["digest"] as? String)?.hasPrefix("sha256:") == true)

            // dpkg itself: the new layer has 1.1-1 installed, the pre-patch state still 1.0-1.
            #expect(try PatchFixtures.dpkgVersion("warden-demo", image: layerPath, scratch: home) == "1.1-1 ii")
            #expect(try PatchFixtures.dpkgVersion("warden-demo", image: vmDisk, scratch: home) == "1.0-1 ii")
            #expect(try PatchFixtures.dpkgVersion("warden-broken", image: layerPath, scratch: home) == "1.0-1 ii")
            // The maintainer script ran inside the maintenance VM (its kernel command line).
            let marker = try #require(try PatchFixtures.file(PatchFixtures.marker, image: layerPath, scratch: home))
            #expect(marker.contains("console=ttyS0") && marker.contains("panic=-1"), "\(marker)")
            // Nothing of the maintenance boot stays in the guest: no apt lists of the mirror, no policy-rc.d.
            #expect(try PatchFixtures.file("/usr/sbin/policy-rc.d", image: layerPath, scratch: home) == nil)

            // The ledger: the VM's disk is the new layer; the event says what happened.
            r = try Self.warden(["vm", "show", "demo", "--json"], home: home)
            #expect(r.stdoutText.contains(layerPath), "\(r.stdoutText)")
            let events = try Self.patchedEvents(home)
            let payload = try #require(events.last?["payload"] as? [String: Any])
            #expect(payload["outcome"] as? String == "patched")
            #expect((payload["mirror"] as? String)?.hasPrefix("dir:/") == true)
            #expect(payload["findings_closed"] as? [String] == ["CVE-2099-4242 warden-demo"])
            #expect((payload["layer"] as? [String: Any])?["digest"] as? String == layer["digest"] as? String)
            let console = try #require((payload["console"] as? [String: Any])?["path"] as? String)
            #expect(FileManager.default.fileExists(atPath: console))
            // Re-assessment: the VM has no high finding left.
            r = try Self.warden(["scan", "--json", "--fail-on", "high", layerPath], home: home)
            #expect(r.status == 0, "\(r.stdoutText)")

            // Patching again: nothing to do at high; the low finding's package fails to configure.
            r = try Self.warden(["vm", "patch", "demo", "--severity", "high", "--mirror", try Self.mirror(), "--accel", "tcg", "--json"], home: home)
            #expect(r.status == 0)
            #expect(try Self.json(r)["status"] as? String == "nothing-to-do")

            // Undoing the patch is a rollback that re-opens the finding: a reexposes rule denies it.
            try """
            apiVersion: warden/v1
            kind: Policy
            rules:
              - name: no-reopening-high
                on: [rollback]
                deny: { reexposes: { severity: high } }
            """.write(toFile: home + "/policy/rollback.yaml", atomically: true, encoding: .utf8)
            r = try Self.warden(["vm", "unpatch", "demo"], home: home)
            #expect(r.status == 3 && r.stderr.contains("no-reopening-high"), "\(r.stderr)")
            try FileManager.default.removeItem(atPath: home + "/policy/rollback.yaml")
            r = try Self.warden(["vm", "unpatch", "demo", "--json"], home: home)
            #expect(r.status == 0, "\(r.stderr)")
            try JSONSchemaTests().validate(r.stdout, schema: "patch.v1.json")
            let undo = try Self.json(r)
            #expect(undo["restored"] as? String == vmDisk && undo["layer"] as? String == layerPath)
            #expect(undo["reopens"] as? [String] == ["CVE-2099-4242 warden-demo"])
            r = try Self.warden(["vm", "show", "demo", "--json"], home: home)
            #expect(r.stdoutText.contains(vmDisk) && !r.stdoutText.contains(layerPath), "\(r.stdoutText)")
            #expect(FileManager.default.fileExists(atPath: layerPath))
        }
    }

    @Test func failuresLeaveTheVMAsItWasAndAreRecorded() throws {
        if let why = Self.unavailable { print("skipped: \(why)"); return }
        try Fixtures.withTemporaryDirectory { home in
            let vmDisk = try Self.setUp(home)
            let before = try Data(contentsOf: URL(fileURLWithPath: vmDisk))
            func unchanged(_ what: String) throws {
                #expect(Self.layers(home).isEmpty, "\(what): \(Self.layers(home))")
                let r = try Self.warden(["vm", "show", "demo", "--json"], home: home)
                #expect(r.stdoutText.contains(vmDisk) && !r.stdoutText.contains(".patch-"), "\(what)")
                #expect(try Data(contentsOf: URL(fileURLWithPath: vmDisk)) == before, "\(what): the disk changed")
            }

            // A package that fails to configure: apt-get fails inside the VM.
            var r = try Self.warden(["vm", "patch", "demo", "--packages", "warden-broken", "--mirror", try Self.mirror(), "--accel", "tcg"], home: home)
            #expect(r.status == 4, "\(r.stderr)")
            #expect(r.stderr.contains("apt-get failed"), "\(r.stderr)")
            try unchanged("broken package")
            var events = try Self.patchedEvents(home)
            #expect((events.last?["payload"] as? [String: Any])?["outcome"] as? String == "failed")

            // A mirror that is down: the relay cannot connect, apt-get update fails.
            r = try Self.warden(["vm", "patch", "demo", "--mirror", "http://127.0.0.1:9/debian", "--suite", "./", "--trust-mirror", "--accel", "tcg"], home: home)
            #expect(r.status == 4, "\(r.stderr)")
            #expect(r.stderr.contains("apt-get update failed"), "\(r.stderr)")
            try unchanged("mirror down")

            // A boot that exceeds its timeout: a mirror that accepts and never answers.
            let hold = Process()
            hold.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            hold.arguments = ["-c", """
            import socket, time, sys
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
            print(s.getsockname()[1], flush=True)
            conns = []
            s.settimeout(1)
            end = time.time() + 120
            while time.time() < end:
                try: conns.append(s.accept()[0])
                except OSError: pass
            """]
            let pipe = Pipe()
            hold.standardOutput = pipe
            try hold.run()
            defer { hold.terminate(); hold.waitUntilExit() }
            let port = String(decoding: pipe.fileHandleForReading.availableData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            r = try Self.warden(["vm", "patch", "demo", "--mirror", "http://127.0.0.1:\(port)/", "--suite", "./", "--trust-mirror",
                                 "--accel", "tcg", "--timeout", "30"], home: home)
            #expect(r.status == 4, "\(r.stderr)")
            #expect(r.stderr.contains("did not finish within 30 s"), "\(r.stderr)")
            try unchanged("timeout")

            // A policy deny: only the corporate mirror may be used. Nothing is booted or written.
            try """
            apiVersion: warden/v1
            kind: Policy
            rules:
              - name: corporate-mirror-only
                on: [patch]
                require: { mirrors: ["http://mirror.corp.example/*"] }
            """.write(toFile: home + "/policy/patch.yaml", atomically: true, encoding: .utf8)
            let eventsBefore = try Self.patchedEvents(home).count
            r = try Self.warden(["vm", "patch", "demo", "--mirror", try Self.mirror(), "--accel", "tcg"], home: home)
            #expect(r.status == 3, "\(r.stderr)")
            #expect(r.stderr.contains("corporate-mirror-only"), "\(r.stderr)")
            try unchanged("policy deny")
            #expect(try Self.patchedEvents(home).count == eventsBefore)
            try FileManager.default.removeItem(atPath: home + "/policy/patch.yaml")

            // A guest whose /var cannot be assembled: refused before any boot, recorded.
            let novar = try Self.setUp(home, disk: "disk-novar.qcow2", name: "novar")
            r = try Self.warden(["vm", "patch", "novar", "--mirror", try Self.mirror(), "--accel", "tcg"], home: home)
            #expect(r.status == 2, "\(r.stderr)")
            #expect(r.stderr.contains("/var cannot be assembled"), "\(r.stderr)")
            events = try Self.patchedEvents(home, vm: "novar")
            #expect((events.last?["payload"] as? [String: Any])?["outcome"] as? String == "failed")
            #expect(Self.layers(home).isEmpty)
            _ = novar

            // A running VM is refused.
            r = try Self.warden(["vm", "start", "demo", "--memory", "64", "--accel", "tcg"], home: home)
            #expect(r.status == 0, "\(r.stderr)")
            defer { _ = try? Self.warden(["vm", "stop", "demo", "--timeout", "1"], home: home) }
            r = try Self.warden(["vm", "patch", "demo", "--mirror", try Self.mirror(), "--accel", "tcg"], home: home)
            #expect(r.status == 2, "\(r.stderr)")
            #expect(r.stderr.contains("is running: patch it in-guest, or stop it first"), "\(r.stderr)")
        }
    }

    @Test func fleetPatchSkipsTheRunningAndPatchesTheRest() throws {
        if let why = Self.unavailable { print("skipped: \(why)"); return }
        try Fixtures.withTemporaryDirectory { home in
            let a = try Self.setUp(home, name: "a")
            _ = try Self.setUp(home, name: "b")
            _ = try Self.setUp(home, name: "c")
            var r = try Self.warden(["vm", "start", "c", "--memory", "64", "--accel", "tcg"], home: home)
            #expect(r.status == 0, "\(r.stderr)")
            defer { _ = try? Self.warden(["vm", "stop", "c", "--timeout", "1"], home: home) }
            r = try Self.warden(["fleet", "patch", "--severity", "high", "--mirror", try Self.mirror(), "--accel", "tcg", "--parallel", "2", "--json"], home: home)
            #expect(r.status == 0, "\(r.stderr)")
            try JSONSchemaTests().validate(r.stdout, schema: "patch.v1.json")
            let doc = try Self.json(r)
            #expect(doc["schema"] as? String == "warden.fleet.patch/v1")
            #expect(doc["patched"] as? Int == 2 && doc["skipped"] as? Int == 1 && doc["failed"] as? Int == 0, "\(doc)")
            let results = try #require(doc["results"] as? [[String: Any]])
            let c = try #require(results.first { $0["name"] as? String == "c" })
            #expect(c["status"] as? String == "skipped" && (c["reason"] as? String)?.contains("running") == true)
            #expect(r.stderr.contains("[2/2]"), "\(r.stderr)")
            for name in ["a", "b"] {
                let layer = try #require(((results.first { $0["name"] as? String == name })?["layer"] as? [String: Any])?["path"] as? String)
                #expect(try PatchFixtures.dpkgVersion("warden-demo", image: layer, scratch: home) == "1.1-1 ii")
            }
            #expect(try PatchFixtures.dpkgVersion("warden-demo", image: a, scratch: home) == "1.0-1 ii")
        }
    }

    @Test func imagePatchWritesAnOverlayAndLeavesTheImage() throws {
        if let why = Self.unavailable { print("skipped: \(why)"); return }
        try Fixtures.withTemporaryDirectory { home in
            let guest = try PatchFixtures.guest()
            chmod(home, 0o755)
            let image = home + "/base.qcow2"
            try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "\(guest)/disk.qcow2", image])
            try PatchFixtures.tracker.write(toFile: home + "/tracker.json", atomically: true, encoding: .utf8)
            _ = try Self.warden(["advisories", "import", home + "/tracker.json"], home: home)
            let before = try Data(contentsOf: URL(fileURLWithPath: image))
            var r = try Self.warden(["image", "patch", image, "--output", home + "/patched.qcow2", "--severity", "high",
                                     "--mirror", try Self.mirror(), "--accel", "tcg", "--json"], home: home)
            #expect(r.status == 0, "\(r.stderr)")
            try JSONSchemaTests().validate(r.stdout, schema: "patch.v1.json")
            let doc = try Self.json(r)
            #expect(doc["status"] as? String == "patched")
            #expect(doc["findings_closed"] as? [String] == ["CVE-2099-4242 warden-demo"])
            #expect(try PatchFixtures.dpkgVersion("warden-demo", image: home + "/patched.qcow2", scratch: home) == "1.1-1 ii")
            #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == before)
            // The output must not exist already.
            r = try Self.warden(["image", "patch", image, "--output", home + "/patched.qcow2", "--mirror", try Self.mirror(), "--accel", "tcg"], home: home)
            #expect(r.status == 2 && r.stderr.contains("already exists"), "\(r.stderr)")
        }
    }

    /// A root on LVM (guest C: GPT partition 2 is a PV, the root is vg0/root): the appliance
    /// activates the volume group itself; the package is installed (NAME=VERSION).
    @Test func lvmRootIsAssembledInTheAppliance() throws {
        if let why = Self.unavailable { print("skipped: \(why)"); return }
        guard GuestFixtures.lvmAvailable else { print("skipped: needs lvm and loop devices"); return }
        try Fixtures.withTemporaryDirectory { home in
            let guest = try GuestFixtures.guestC()
            try PolicyFiles.write(PolicyFiles.allowAll, in: home)
            chmod(home, 0o755)
            let disk = home + "/lvm.qcow2"
            try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "\(guest)/disk.raw", disk])
            var r = try Self.warden(["vm", "register", "--name", "lvm", "--owner", "ops", disk], home: home)
            #expect(r.status == 0, "\(r.stderr)")
            r = try Self.warden(["vm", "patch", "lvm", "--packages", "warden-demo=1.1-1", "--mirror", try Self.mirror(), "--accel", "tcg", "--json"], home: home)
            #expect(r.status == 0, "\(r.stderr) \(r.stdoutText)")
            let doc = try Self.json(r)
            #expect(doc["status"] as? String == "patched")
            let change = (doc["packages"] as? [[String: Any]])?.first { $0["name"] as? String == "warden-demo" }
            #expect(change?["before"] == nil && change?["after"] as? String == "1.1-1")
            #expect((doc["steps"] as? [String])?.contains { $0.hasPrefix("mount / ok") } == true, "\(doc["steps"] ?? "")")
            let layer = try #require((doc["layer"] as? [String: Any])?["path"] as? String)
            #expect(try PatchFixtures.dpkgVersion("warden-demo", image: layer, scratch: home, lvm: true) == "1.1-1 ii")
        }
    }

    /// Bad input: one line naming it, exit 2, nothing booted or written.
    @Test func badInputIsOneLineAndExitTwo() throws {
        if let why = Self.unavailable { print("skipped: \(why)"); return }
        try Fixtures.withTemporaryDirectory { home in
            _ = try Self.setUp(home)
            let mirror = try Self.mirror()
            let closed = home + "/closed-mirror"
            try FileManager.default.copyItem(atPath: mirror, toPath: closed)
            chmod(closed, 0o700)
            let cases: [([String], String)] = [
                (["vm", "patch", "nosuch", "--mirror", mirror], "nosuch"),
                (["vm", "patch", "demo", "--packages", "a;b", "--mirror", mirror], "not a Debian package name"),
                (["vm", "patch", "demo", "--packages", "x", "--all", "--mirror", mirror], "give one of"),
                (["vm", "patch", "demo", "--mirror", "ftp://mirror.example/debian"], "only http:// mirrors"),
                (["vm", "patch", "demo", "--mirror", home + "/no-such-dir"], "no such mirror directory"),
                (["vm", "patch", "demo", "--mirror", "http://192.0.2.1/debian", "--suite", "bookworm"], "--mirror-key"),
                (["vm", "patch", "demo", "--mirror", "http://user:pw@192.0.2.1/debian", "--trust-mirror"], "no credentials"),
                (["vm", "patch", "demo", "--mirror", mirror, "--timeout", "5"], "--timeout"),
                (["vm", "patch", "demo", "--mirror", mirror, "--suite", "book worm"], "bad suite"),
                (["vm", "patch", "demo", "--mirror", closed, "--accel", "tcg"], "readable by others"),
            ]
            for (args, needle) in cases {
                let r = try Self.warden(args, home: home)
                #expect(r.status == 2, "\(args): \(r.status) \(r.stderr)")
                #expect(r.stderr.contains(needle), "\(args): \(r.stderr)")
                #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
            }
            #expect(Self.layers(home).isEmpty)
            #expect(!(try Self.patchedEvents(home)).contains { ($0["payload"] as? [String: Any])?["outcome"] as? String == "patched" })
        }
    }

    /// A signed mirror: with its key apt verifies `InRelease` and the patch goes through; with
    /// another key apt refuses the repository, and nothing changes.
    @Test func aSignedMirrorIsVerifiedByTheGuestsApt() throws {
        if let why = Self.unavailable { print("skipped: \(why)"); return }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/gpg") else { print("skipped: needs gpg (package gnupg)"); return }
        try Fixtures.withTemporaryDirectory { home in
            _ = try Self.setUp(home)
            let signed = try PatchFixtures.signedMirror()
            var r = try Self.warden(["vm", "patch", "demo", "--severity", "high", "--mirror", signed + "/mirror",
                                     "--mirror-key", signed + "/other.gpg", "--accel", "tcg"], home: home)
            #expect(r.status == 4 && r.stderr.contains("apt-get update failed"), "\(r.stderr)")
            #expect(Self.layers(home).isEmpty)
            r = try Self.warden(["vm", "patch", "demo", "--severity", "high", "--mirror", signed + "/mirror",
                                 "--mirror-key", signed + "/key.gpg", "--accel", "tcg", "--json"], home: home)
            #expect(r.status == 0, "\(r.stderr)")
            let doc = try Self.json(r)
            #expect(doc["status"] as? String == "patched")
            #expect(doc["findings_closed"] as? [String] == ["CVE-2099-4242 warden-demo"])
        }
    }
}
