import Foundation
import Testing
import WardenTestSupport

/// Guests for the ledger commands: two small ext4 guests built with mkfs.ext4 -d, sharing one
/// /etc/machine-id but with their own SSH host keys from ssh-keygen.
enum LedgerFixtures {
    static let machineID = "5c0ffee0d15ea5e0123456789abcdef0"

    /// `base.qcow2` (guest alpha) and `other.raw` (guest beta, raw ext4, same machine-id).
    static func guests() throws -> String {
        try Fixtures.cached("ledger-guests", recipe: "v1 \(machineID)") { dir in
            try Tool.sh("""
            cd "\(dir)"
            mk() {
              mkdir -p "$1/etc/ssh" "$1/root"
              echo \(machineID) > "$1/etc/machine-id"
              echo "$1" > "$1/etc/hostname"
              printf 'ID=debian\\nVERSION_ID="12"\\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\\n' > "$1/etc/os-release"
              printf 'UUID=%s / ext4 defaults 0 1\\n' "$2" > "$1/etc/fstab"
              ssh-keygen -q -t ed25519 -N '' -C "root@$1" -f "$1/etc/ssh/ssh_host_ed25519_key"
              truncate -s 16M "$1.raw"
              mkfs.ext4 -q -F -U "$2" -d "$1" "$1.raw"
            }
            mk alpha 7d1e0f5a-1111-4c2b-9d3e-000000000001
            mk beta 7d1e0f5a-2222-4c2b-9d3e-000000000002
            qemu-img convert -f raw -O qcow2 alpha.raw base.qcow2
            mv beta.raw other.raw
            rm -rf alpha beta alpha.raw
            """)
        }
    }

    /// A folder holding base.qcow2, a byte copy, a qcow2 overlay on base, the second guest under
    /// a misleading name, a text file named like an image and a symbolic link to base.
    static func discoveryFolder(in tmp: String) throws -> String {
        let src = try guests()
        let dir = tmp + "/images"
        try Tool.sh("""
        mkdir -p "\(dir)/nested"
        cp "\(src)/base.qcow2" "\(dir)/base.qcow2"
        cp "\(src)/base.qcow2" "\(dir)/nested/copy.qcow2"
        cp "\(src)/other.raw" "\(dir)/other.img.bak"
        cd "\(dir)" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
        echo 'not a disk image' > "\(dir)/notes.qcow2"
        ln -s base.qcow2 "\(dir)/nested/link.qcow2"
        """)
        return dir
    }
}

/// Runs warden with `--db` appended and decodes JSON output.
struct LedgerCLI {
    let db: String
    @discardableResult
    func run(_ args: [String], expect status: Int32 = 0, sourceLocation: SourceLocation = #_sourceLocation) throws -> WardenRun {
        let r = try WardenRun.run(args + ["--db", db])
        #expect(r.status == status, "warden \(args.joined(separator: " ")): \(r.stderr)", sourceLocation: sourceLocation)
        return r
    }
    func json(_ args: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let r = try run(args + ["--json"], sourceLocation: sourceLocation)
        return try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any], sourceLocation: sourceLocation)
    }
}

@Suite struct LedgerCommandTests {
    @Test func vmLifecycleCopyLineageHistoryExposure() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let l = LedgerCLI(db: tmp + "/w.db")
            let base = try LedgerFixtures.guests() + "/base.qcow2"
            try Tool.run(["cp", base, tmp + "/base.qcow2"])
            let id = try l.run(["vm", "register", tmp + "/base.qcow2", "--name", "web", "--owner", "alice", "--label", "env=prod"])
                .stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(id.count == 36)
            // The same disk cannot be registered twice.
            let again = try l.run(["vm", "register", tmp + "/base.qcow2", "--name", "x", "--owner", "y"], expect: 2)
            #expect(again.stderr.hasPrefix("warden: \(tmp)/base.qcow2: already registered"))

            let show = try l.json(["vm", "show", "web"])
            let vm = try #require(show["vm"] as? [String: Any])
            #expect(vm["id"] as? String == id && vm["owner"] as? String == "alice")
            #expect(vm["labels"] as? [String: String] == ["env": "prod"])
            let disk = try #require((show["disks"] as? [[String: Any]])?.first)
            #expect(disk["format"] as? String == "qcow2" && disk["path"] as? String == tmp + "/base.qcow2")
            #expect((disk["fingerprint"] as? String)?.hasPrefix("sha256:") == true)
            let residency = try #require((show["residency"] as? [[String: Any]])?.first)
            #expect(residency["kind"] as? String == "stored" && residency["to"] is NSNull)

            // Full copy: byte-identical file; overlay: a qcow2 backed by the copy, same guest content.
            let copyID = try l.run(["vm", "copy", "web", tmp + "/copies", "--name", "web-2"]).stdoutText
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try Tool.run(["cmp", tmp + "/base.qcow2", tmp + "/copies/base.qcow2"])
            let ovID = try l.run(["vm", "copy", copyID, tmp + "/overlays", "--overlay", "--name", "web-3"]).stdoutText
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let info = try Tool.run(["qemu-img", "info", "--output=json", tmp + "/overlays/base.qcow2"]).stdoutText
            #expect(info.contains("\"backing-filename\": \"\(tmp)/copies/base.qcow2\""))
            try Tool.run(["qemu-img", "compare", "-q", tmp + "/base.qcow2", tmp + "/overlays/base.qcow2"])
            // Copying into a folder that already holds the file is refused, and nothing is recorded.
            try l.run(["vm", "copy", "web", tmp + "/copies"], expect: 2)
            #expect(try (l.json(["vm", "list"])["vms"] as? [Any])?.count == 3)

            let lineage = try l.json(["vm", "lineage", "web-2"])
            let nodes = try #require(lineage["nodes"] as? [[String: Any]])
            #expect(nodes.map { $0["name"] as? String } == ["web", "web-2", "web-3"])
            #expect(nodes.map { $0["role"] as? String } == ["ancestor", "self", "descendant"])
            #expect(nodes.map { $0["relation"] as? String } == ["registered", "copied", "copied"])
            #expect(nodes[1]["parent_generation"] as? String == vm["generation"] as? String)
            let dot = try l.run(["vm", "lineage", "web", "--dot"]).stdoutText
            #expect(dot.hasPrefix("digraph lineage {") && dot.contains("\"\(id)\" -> \"\(copyID)\""))
            // Graphviz parses it (scripts/install-deps installs it).
            let svg = try Tool.run(["dot", "-Tsvg"], stdin: Data(dot.utf8)).stdoutText
            #expect(svg.components(separatedBy: "class=\"node\"").count - 1 == 3)
            #expect(svg.components(separatedBy: "class=\"edge\"").count - 1 == 2)

            // Residency from an orchestrator: started on h1, stopped two days later.
            try l.run(["host", "add", "h1", "--label", "dc=par"])
            try l.run(["host", "add", "h1"], expect: 2)
            let hosts = try l.json(["host", "list"])
            #expect((hosts["hosts"] as? [[String: Any]])?.contains { $0["name"] as? String == "h1" } == true)
            try l.run(["event", "record", "--vm", "web", "--kind", "started", "--host", "h1", "--at", "2026-01-10T00:00:00Z"])
            try l.run(["event", "record", "--vm", "web", "--kind", "stopped", "--host", "h1", "--at", "2026-01-12T00:00:00Z",
                       "--payload", "{\"reason\":\"maintenance\"}"])
            // The copies were made now, after web's exposure began: they inherit it.
            // 2026-01-11T00:00:00Z, written with a zone offset; the end as seconds since the epoch.
            let exp = try l.json(["exposure", "--host", "h1", "--from", "2026-01-11T01:00:00+01:00", "--to", "@1768132800"])
            #expect(exp["to"] as? String == "2026-01-11T12:00:00.000000Z")
            let exposed = try #require(exp["vms"] as? [[String: Any]])
            #expect(exposed.map { $0["vm"] as? String } == [id, copyID, ovID])
            #expect(exposed.map { $0["how"] as? String } == ["direct", "inherited", "inherited"])
            #expect(exposed[0]["exposed_since"] as? String == "2026-01-11T00:00:00.000000Z")
            // Before web arrived: nothing.
            let none = try l.json(["exposure", "--host", "h1", "--from", "2026-01-01", "--to", "2026-01-09T23:59:59Z"])
            #expect((none["vms"] as? [Any])?.isEmpty == true)

            try l.run(["vm", "transfer", "web", "--to", "bob"])
            let hist = try l.json(["vm", "history", "web"])
            let all = try #require(hist["events"] as? [[String: Any]])
            // vm copy (from web) and vm transfer decide; each decision is a policy-decision event
            // of the VM (issue 6), committed with the change it allowed. The refused copy into a
            // folder that holds the file stopped before its decision, so it recorded nothing.
            // The rest of the history is checked without them.
            #expect(all.filter { $0["kind"] as? String == "policy-decision" }.count == 2)
            let events = all.filter { $0["kind"] as? String != "policy-decision" }
            #expect(events.map { $0["kind"] as? String } == ["registered", "started", "stopped", "ownership-transferred"])
            #expect(events.map { $0["reported_by_caller"] as? Bool } == [false, true, true, false])
            #expect((events[2]["payload"] as? [String: String]) == ["reason": "maintenance"])
            #expect((events[3]["payload"] as? [String: String]) == ["from": "alice", "to": "bob"])
            let text = try l.run(["vm", "history", "web"]).stdoutText
            #expect(text.split(separator: "\n").count == 7)   // header, 4 events, 2 policy decisions

            try l.run(["vm", "retire", "web-3"])
            try l.run(["vm", "retire", "web-3"], expect: 2)
            let census = try l.json(["census"])
            #expect(census["total"] as? Int == 3 && census["live"] as? Int == 2)
            #expect((census["by_state"] as? [String: Int])?["retired"] == 1)
            #expect((census["by_os"] as? [String: Int]) == ["debian 12": 2])
        }
    }

    @Test func eventRecordMovesResidency() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let l = LedgerCLI(db: tmp + "/w.db")
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/d.qcow2"])
            try l.run(["vm", "register", tmp + "/d.qcow2", "--name", "m", "--owner", "o", "--host", "h0"])
            try l.run(["event", "record", "--vm", "m", "--kind", "started", "--host", "h1", "--at", "2027-01-01T00:00:00Z"])
            let mig = try l.run(["event", "record", "--vm", "m", "--kind", "migrated", "--host", "h2", "--at", "2027-01-02T00:00:00Z"])
            try l.run(["event", "record", "--vm", "m", "--kind", "moved-storage", "--host", "h3", "--at", "2027-01-03T00:00:00Z"])
            try l.run(["event", "record", "--vm", "m", "--kind", "stopped", "--at", "2027-01-04T00:00:00Z"])
            // Closing an interval before it began is refused.
            try l.run(["event", "record", "--vm", "m", "--kind", "moved-storage", "--host", "h4", "--at", "2027-01-02T00:00:00Z"], expect: 2)
            let show = try l.json(["vm", "show", "m"])
            #expect((show["vm"] as? [String: Any])?["state"] as? String == "stopped")
            let res = try #require(show["residency"] as? [[String: Any]]).map {
                [$0["kind"] as? String ?? "", $0["host"] as? String ?? "", ($0["from"] as? String ?? "").prefix(10).description,
                 ($0["to"] as? String)?.prefix(10).description ?? "open"]
            }
            #expect(res.count == 4)
            #expect(res.contains(["ran", "h1", "2027-01-01", "2027-01-02"]))
            #expect(res.contains(["ran", "h2", "2027-01-02", "2027-01-04"]))
            #expect(res.contains(["stored", "h3", "2027-01-03", "open"]))
            #expect(res.contains { $0[0] == "stored" && $0[1] == "h0" && $0[3] == "2027-01-03" })
            // migrated names where it came from.
            let seq = mig.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            let hist = try #require(try l.json(["vm", "history", "m"])["events"] as? [[String: Any]])
            let migrated = try #require(hist.first { "\($0["seq"] as? Int ?? 0)" == seq })
            #expect(migrated["kind"] as? String == "migrated" && (migrated["payload"] as? [String: String]) == ["from": "h1"])
            // Exposure of h2 over the migration day: m, directly.
            let exp = try l.json(["exposure", "--host", "h2", "--from", "2027-01-02T12:00:00Z", "--to", "2027-01-02T13:00:00Z"])
            #expect((exp["vms"] as? [[String: Any]])?.map { $0["name"] as? String } == ["m"])
        }
    }

    @Test func badInputIsOneLineAndExitTwo() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let l = LedgerCLI(db: tmp + "/w.db")
            try l.run(["host", "add", "h1"])
            let kind = try l.run(["event", "record", "--vm", "x", "--kind", "registered"], expect: 2)
            #expect(kind.stderr.contains("use `warden vm register`"))
            let missing = try l.run(["vm", "show", "nope"], expect: 2)
            #expect(missing.stderr == "warden: no VM named nope or with an id starting with it\n")
            let time = try l.run(["exposure", "--host", "h1", "--from", "yesterday"], expect: 2)
            #expect(time.stderr.hasPrefix("warden: not a time: yesterday") && time.stderr.split(separator: "\n").count == 1)
            try l.run(["exposure", "--host", "h1", "--from", "2026-02-01", "--to", "2026-01-01"], expect: 2)
            let notImage = tmp + "/junk.qcow2"
            try Data([0x51, 0x46, 0x49, 0xFB, 0, 0, 0, 9]).write(to: URL(fileURLWithPath: notImage))
            let bad = try l.run(["vm", "register", notImage, "--name", "n", "--owner", "o"], expect: 2)
            #expect(bad.stderr.hasPrefix("warden: \(notImage): ") && bad.stderr.split(separator: "\n").count == 1)
            // A read command on a missing database fails closed.
            let r = try WardenRun.run(["vm", "list", "--db", tmp + "/none.db"])
            #expect(r.status == 4)
        }
    }
}

@Suite struct DiscoverTests {
    @Test func findsCopiesOverlaysAndCollisions() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let dir = try LedgerFixtures.discoveryFolder(in: tmp)
            let l = LedgerCLI(db: tmp + "/w.db")
            let first = try l.json(["discover", dir, "--register", "--owner", "ops"])
            let images = try #require(first["images"] as? [[String: Any]])
            // By content: the text file named .qcow2 and the symbolic link are not images.
            #expect(images.map { $0["path"] as? String } == ["\(dir)/base.qcow2", "\(dir)/nested/copy.qcow2",
                                                              "\(dir)/other.img.bak", "\(dir)/overlay.qcow2"])
            #expect(images.map { $0["status"] as? String } == ["registered", "registered", "registered", "registered"])
            #expect(images.map { $0["format"] as? String } == ["qcow2", "qcow2", "raw", "qcow2"])
            #expect(images.allSatisfy { $0["machine_id"] as? String == LedgerFixtures.machineID })
            let baseVM = try #require(images[0]["vm"] as? String)
            let fp = images.map { $0["fingerprint"] as? String }
            #expect(fp[0] == fp[1] && fp[0] == fp[3] && fp[0] != fp[2])

            // One collision: two distinct guests share the machine-id; the copy and the overlay are
            // the same guest as base (same content), so their shared host key is no collision.
            let collisions = try #require(first["collisions"] as? [[String: Any]])
            #expect(collisions.count == 1)
            #expect(collisions.first?["kind"] as? String == "machine-id")
            #expect(collisions.first?["value"] as? String == LedgerFixtures.machineID)
            let guests = try #require(collisions.first?["guests"] as? [[String: Any]])
            #expect(Set(guests.map { $0["images"] as? [String] ?? [] }) ==
                    [["\(dir)/base.qcow2", "\(dir)/nested/copy.qcow2", "\(dir)/overlay.qcow2"], ["\(dir)/other.img.bak"]])

            let copies = try #require(first["copies"] as? [[String: Any]])
            #expect(copies.count == 1)
            #expect(copies.first?["path"] as? String == "\(dir)/nested/copy.qcow2")
            #expect(copies.first?["of_vm"] as? String == baseVM)
            #expect(copies.first?["of_path"] as? String == "\(dir)/base.qcow2")

            let backing = try #require(first["backing_dependencies"] as? [[String: Any]])
            #expect(backing.count == 1)
            #expect(backing.first?["path"] as? String == "\(dir)/overlay.qcow2")
            #expect(backing.first?["backing_chain"] as? [String] == ["\(dir)/base.qcow2"])
            #expect(backing.first?["backing_vms"] as? [String] == [baseVM])
            #expect((first["problems"] as? [Any])?.isEmpty == true)

            // The VMs are in the ledger as discovered; a second run knows them all.
            let list = try l.json(["vm", "list"])
            let vms = try #require(list["vms"] as? [[String: Any]])
            #expect(vms.count == 4 && vms.allSatisfy { $0["state"] as? String == "discovered" && $0["owner"] as? String == "ops" })
            let second = try l.json(["discover", dir])
            #expect((second["images"] as? [[String: Any]])?.allSatisfy { $0["status"] as? String == "known" } == true)
            #expect((second["copies"] as? [Any])?.isEmpty == true)
            #expect((second["collisions"] as? [Any])?.count == 1)
            let hist = try l.json(["vm", "history", baseVM])
            let payload = try #require((hist["events"] as? [[String: Any]])?.first?["payload"] as? [String: Any])
            #expect(payload["machine_id"] as? String == LedgerFixtures.machineID && payload["os"] as? String == "debian 12")
        }
    }

    @Test func unregisteredCopyOfARegisteredVM() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let dir = try LedgerFixtures.discoveryFolder(in: tmp)
            let l = LedgerCLI(db: tmp + "/w.db")
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/registered.qcow2"])
            let id = try l.run(["vm", "register", tmp + "/registered.qcow2", "--name", "golden", "--owner", "alice"]).stdoutText
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let r = try l.json(["discover", dir])
            let images = try #require(r["images"] as? [[String: Any]])
            #expect(images.allSatisfy { $0["status"] as? String == "unregistered" && $0["vm"] is NSNull })
            // base and its byte copy are both unregistered copies of golden; the overlay is a backing dependency.
            let copies = try #require(r["copies"] as? [[String: Any]])
            #expect(copies.map { $0["path"] as? String } == ["\(dir)/base.qcow2", "\(dir)/nested/copy.qcow2"])
            #expect(copies.allSatisfy { $0["of_vm"] as? String == id && $0["of_path"] as? String == tmp + "/registered.qcow2" })
            #expect((r["backing_dependencies"] as? [[String: Any]])?.map { $0["path"] as? String } == ["\(dir)/overlay.qcow2"])
            #expect((r["backing_dependencies"] as? [[String: Any]])?.first?["backing_vms"] as? [String] == [])
            // Nothing was registered without --register.
            #expect((try l.json(["vm", "list"])["vms"] as? [Any])?.count == 1)
            // Human output names all three findings.
            let text = try l.run(["discover", dir]).stdoutText
            #expect(text.contains("identity collisions:") && text.contains("unregistered copies:") && text.contains("backing-file dependencies:"))
        }
    }

    @Test func damagedImageIsReportedAndTheRestStillRuns() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let dir = try LedgerFixtures.discoveryFolder(in: tmp)
            // A qcow2 whose backing file is gone.
            try Tool.sh("""
            qemu-img create -q -f qcow2 "\(tmp)/gone.qcow2" 16M
            qemu-img create -q -f qcow2 -b "\(tmp)/gone.qcow2" -F qcow2 "\(dir)/orphan.qcow2"
            rm "\(tmp)/gone.qcow2"
            """)
            let l = LedgerCLI(db: tmp + "/w.db")
            let r = try l.run(["discover", dir, "--register", "--json"], expect: 2)
            let doc = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
            #expect((doc["images"] as? [Any])?.count == 4)
            let problems = try #require(doc["problems"] as? [[String: Any]])
            #expect(problems.map { $0["path"] as? String } == ["\(dir)/orphan.qcow2"])
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.hasPrefix("warden: \(dir)/orphan.qcow2"))
        }
    }
}

/// The ledger commands' JSON validates against the documented schemas.
@Suite struct LedgerSchemaTests {
    @Test func everyLedgerDocumentMatchesItsSchema() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let dir = try LedgerFixtures.discoveryFolder(in: tmp)
            let l = LedgerCLI(db: tmp + "/w.db")
            let schemas = JSONSchemaTests()
            try schemas.validate(try l.run(["discover", dir, "--register", "--json"]).stdout, schema: "discover.v1.json")
            try l.run(["host", "add", "h1", "--label", "rack=7"])
            try l.run(["event", "record", "--vm", "base.qcow2", "--kind", "started", "--host", "h1", "--at", "2026-01-10T00:00:00Z"])
            try l.run(["event", "record", "--vm", "base.qcow2", "--kind", "snapshotted", "--payload", "{\"snapshot\":\"s1\"}"])
            try l.run(["event", "record", "--vm", "base.qcow2", "--kind", "rolled-back", "--payload", "{\"snapshot\":\"s1\"}"])
            try l.run(["vm", "copy", "base.qcow2", tmp + "/c", "--overlay"])
            try schemas.validate(try l.run(["vm", "list", "--json"]).stdout, schema: "vm-list.v1.json")
            try schemas.validate(try l.run(["vm", "show", "base.qcow2", "--json"]).stdout, schema: "vm-show.v1.json")
            try schemas.validate(try l.run(["vm", "history", "base.qcow2", "--json"]).stdout, schema: "vm-history.v1.json")
            try schemas.validate(try l.run(["vm", "lineage", "base.qcow2", "--json"]).stdout, schema: "lineage.v1.json")
            try schemas.validate(try l.run(["host", "list", "--json"]).stdout, schema: "host-list.v1.json")
            try schemas.validate(try l.run(["exposure", "--host", "h1", "--from", "2026-01-01", "--json"]).stdout, schema: "exposure.v1.json")
            try schemas.validate(try l.run(["census", "--json"]).stdout, schema: "census.v1.json")
        }
    }
}
