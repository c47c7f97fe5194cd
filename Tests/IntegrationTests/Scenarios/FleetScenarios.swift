import Foundation
import Testing
import WardenTestSupport

/// Scenarios S1, S7, S9 and S10: what a fleet is, where its copies went, who owns an image,
/// and clones that share an identity (docs/scenarios.md).
@Suite struct FleetScenarios {
    /// A small guest filesystem (ext4 made by mkfs.ext4 -d) with an OS, a machine-id, an SSH
    /// host key and a dpkg database, as a raw image at `image`.
    static func guest(_ s: Scenario, at image: String, os: (id: String, version: String, pretty: String), tree: String) throws {
        try Tool.sh("""
        set -e
        R='\(tree)'
        mkdir -p "$R/etc/ssh" "$R/var/lib/dpkg"
        printf 'ID=%s\\nVERSION_ID="%s"\\nPRETTY_NAME="%s"\\n' '\(os.id)' '\(os.version)' '\(os.pretty)' > "$R/etc/os-release"
        head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > "$R/etc/machine-id"; echo >> "$R/etc/machine-id"
        ssh-keygen -q -t ed25519 -N '' -C base -f "$R/etc/ssh/ssh_host_ed25519_key"
        printf 'Package: openssh-server\\nStatus: install ok installed\\nSource: openssh\\nVersion: 1:9.2p1-2+deb12u2\\nArchitecture: amd64\\n\\n' > "$R/var/lib/dpkg/status"
        truncate -s 8M '\(image)'
        mkfs.ext4 -q -F -d "$R" '\(image)'
        """)
    }

    static func json(_ r: ToolResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
    }

    @Test func s1Scaling() throws {
        let s = try Scenario("S1", "Scaling: 200 images copied from three bases",
                             section: "§2, Scaling",
                             problem: "VMs are files: they are copied, shared and forgotten, so a fleet grows faster than anyone can count it, and copies keep no record of whose they are or where they came from.")
        defer { s.cleanUp() }
        let W = s.dir
        let bases = [("web", ("debian", "12", "Debian GNU/Linux 12 (bookworm)")),
                     ("db", ("ubuntu", "22.04", "Ubuntu 22.04.4 LTS")),
                     ("ci", ("debian", "11", "Debian GNU/Linux 11 (bullseye)"))]
        for (name, os) in bases { try Self.guest(s, at: "\(W)/base-\(name).raw", os: os, tree: "\(W)/tree-\(name)") }
        // 200 copies made over time by three groups, each changed a little after the copy (a log
        // line written by debugfs), as running VMs change their disks.
        try s.sh("""
        mkdir -p $W/images/team-a $W/images/team-b $W/images/found
        for i in $(seq 1 200); do
          base=$(echo web db ci | cut -d' ' -f$(( i % 3 + 1 )))
          dir=$(echo team-a team-b found | cut -d' ' -f$(( (i / 3) % 3 + 1 )))
          cp --sparse=always $W/base-$base.raw $W/images/$dir/vm-$i.img
          echo "copy $i" > $W/note && debugfs -w -R "write $W/note /etc/copy-note" $W/images/$dir/vm-$i.img 2>/dev/null
        done
        """, show: 0)

        try s.arm(.without, "An administrator with the usual tools counts files, hashes and owners.") {
            let count = try s.sh("find $W/images -type f | wc -l")
            let distinct = try s.sh("sha256sum $W/images/*/* | cut -c1-64 | sort -u | wc -l")
            let owners = try s.sh("stat -c %U $W/images/*/* | sort | uniq -c")
            let info = try s.run(["qemu-img", "info", "--output=json", "\(W)/images/found/vm-7.img"], show: 20)
            try #require(count.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "200")
            try #require(distinct.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "200")
            try #require(owners.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "200 root")
            let keys = try Self.json(info).keys.sorted()
            try #require(!keys.contains { $0.contains("owner") || $0.contains("parent") || $0.contains("origin") })
            s.outcome("200 files, 200 different hashes (every copy has drifted), one owner (`root`, whoever ran `cp`), and no owner or origin in the image metadata (`qemu-img info` keys: \(keys.joined(separator: ", "))). Which images are copies of which, and whose they are, cannot be told.")
        }

        try s.arm(.with, "Warden reads the images' contents: identities group the copies into families, and registration gives each an owner in the ledger.") {
            _ = try s.warden(["discover", "\(W)/images/team-a", "--register", "--owner", "team-a"], show: 0)
            _ = try s.warden(["discover", "\(W)/images/team-b", "--register", "--owner", "team-b"], show: 0)
            _ = try s.warden(["discover", "\(W)/images", "--register"], show: 0)
            _ = try s.sh("warden discover $W/images | tail -n 8")
            let found = try s.warden(["discover", "\(W)/images", "--json"], show: 0)
            let doc = try Self.json(found)
            let images = try #require(doc["images"] as? [[String: Any]])
            let collisions = try #require(doc["collisions"] as? [[String: Any]])
            let machineIDs = collisions.filter { $0["kind"] as? String == "machine-id" }
            let familySizes = machineIDs.map { ($0["guests"] as? [Any])?.count ?? 0 }.sorted()
            try #require(images.count == 200)
            try #require(familySizes == [66, 67, 67], "machine-id groups: \(familySizes)")
            _ = try s.warden(["census"], show: 10)
            let census = try Self.json(try s.warden(["census", "--json"], show: 0))
            let owners = try #require(census["by_owner"] as? [String: Int])
            let byOS = try #require(census["by_os"] as? [String: Int])
            try #require(census["total"] as? Int == 200)
            try #require(owners["team-a"] == 68 && owners["team-b"] == 66 && owners["unowned"] == 66, "\(owners)")
            try #require(byOS.count == 3, "\(byOS)")
            s.evidence(["`discover`: 200 images; machine-id collisions group them into 3 families of \(familySizes.map(String.init).joined(separator: ", ")) (the copies of each base)",
                        "`census`: 200 VMs, by owner \(owners.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")), by OS \(byOS.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))"])
            s.outcome("The count (200), the families (3, with their sizes), the owners (two teams and 66 found images marked `unowned` for follow-up) and the OS mix are answered from the images' contents and the ledger.")
        }
        try s.finish()
    }
}

extension FleetScenarios {
    static let debian12 = ("debian", "12", "Debian GNU/Linux 12 (bookworm)")

    /// A qcow2 guest at `path` (via a raw image built by mkfs.ext4 -d).
    static func qcow2Guest(_ s: Scenario, _ path: String) throws {
        let raw = path + ".raw"
        try guest(s, at: raw, os: debian12, tree: path + ".tree")
        try Tool.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path])
        try FileManager.default.removeItem(atPath: raw)
    }

    /// The SSH host key fingerprint and machine-id inside a disk, read with plain tools
    /// (qemu-img to raw, debugfs, ssh-keygen -l): the independent oracle.
    static func identity(_ s: Scenario, _ image: String) throws -> (key: String, machineID: String) {
        let r = try s.sh("""
        qemu-img convert -O raw \(image) $W/peek.raw
        debugfs -R "dump /etc/ssh/ssh_host_ed25519_key.pub $W/peek.pub" $W/peek.raw 2>/dev/null
        echo "machine-id $(debugfs -R 'cat /etc/machine-id' $W/peek.raw 2>/dev/null)"
        ssh-keygen -lf $W/peek.pub
        rm -f $W/peek.raw $W/peek.pub
        """)
        let lines = r.stdoutText.split(separator: "\n")
        let mid = try #require(lines.first { $0.hasPrefix("machine-id ") }).dropFirst("machine-id ".count)
        let key = try #require(lines.last?.split(separator: " ").dropFirst().first)
        return (String(key), String(mid))
    }

    @Test func s10Identity() throws {
        let s = try Scenario("S10", "Identity: a `cp` clone shares the SSH host key and machine-id",
                             section: "§2, Identity",
                             problem: "Copying a VM copies its identity: the SSH host keys that clients trust, the machine-id that logs, DHCP and monitoring key on. Two machines now answer as one, and a key stolen from one opens both.")
        defer { s.cleanUp() }
        let W = s.dir
        try Self.qcow2Guest(s, "\(W)/base.qcow2")
        try s.arm(.without, "The clone is made the usual way, by copying the file.") {
            try s.run(["cp", "--sparse=always", "\(W)/base.qcow2", "\(W)/naive.qcow2"])
            // The copy boots and writes its disk (a block of logs), as any running clone does.
            try s.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 7M 4k", "\(W)/naive.qcow2"], show: 0)
            let base = try Self.identity(s, "$W/base.qcow2"), naive = try Self.identity(s, "$W/naive.qcow2")
            try #require(base == naive)
            s.outcome("The copy answers with the same SSH host key (`\(base.key)`) and the same machine-id (`\(base.machineID)`) as its parent.")
        }
        try s.arm(.with, "Warden finds the collision among the images, and its clone refreshes the identity offline.") {
            try s.warden(["vm", "register", "--name", "base", "--owner", "ops", "\(W)/base.qcow2"], show: 0)
            let found = try Self.json(try s.warden(["discover", W, "--json"], show: 0))
            try s.sh("warden discover $W | tail -n 4")
            let collisions = try #require(found["collisions"] as? [[String: Any]])
            let kinds = Set(collisions.compactMap { $0["kind"] as? String })
            try #require(kinds.contains("machine-id") && kinds.contains { $0.contains("ssh") }, "\(collisions)")
            try s.warden(["vm", "clone", "base", "--name", "fresh", "--dir", "\(W)/clones"], show: 6)
            let base = try Self.identity(s, "$W/base.qcow2")
            let clone = try Self.identity(s, "$W/clones/" + (try FileManager.default.contentsOfDirectory(atPath: "\(W)/clones").first { $0.hasSuffix(".qcow2") } ?? "missing"))
            try #require(base.key != clone.key && base.machineID != clone.machineID)
            s.evidence(["`discover` collisions: \(kinds.sorted().joined(separator: ", ")) shared by base.qcow2 and naive.qcow2",
                        "parent: key \(base.key), machine-id \(base.machineID)",
                        "Warden's clone: key \(clone.key), machine-id \(clone.machineID) (read back with debugfs and `ssh-keygen -l`)"])
            s.outcome("`discover` names the naive copy's shared machine-id and SSH host key; `vm clone` gives the clone a new key and machine-id, checked with `ssh-keygen -l` on the files inside the disk.")
        }
        try s.finish()
    }

    @Test func s9WhoseImageIsThis() throws {
        let s = try Scenario("S9", "Identity: an image turns up; whose is it, where did it come from?",
                             section: "§2, Identity",
                             problem: "A disk image found on a share, a laptop or a backup carries no owner and no history: nobody can say who is responsible for it, what it was copied from, or whether the story told about it is true.")
        defer { s.cleanUp() }
        let W = s.dir
        try Self.qcow2Guest(s, "\(W)/app.qcow2")
        try s.warden(["vm", "register", "--name", "app", "--owner", "alice", "\(W)/app.qcow2"], show: 0)
        try s.warden(["vm", "copy", "app", "\(W)/copies", "--name", "app-staging"], show: 0)
        try s.warden(["vm", "transfer", "app-staging", "--owner", "bob"], check: false, show: 0)
        // Months later, a copy of the staging disk is found on a share.
        let staged = try #require(try FileManager.default.contentsOfDirectory(atPath: "\(W)/copies").first)
        try FileManager.default.createDirectory(atPath: "\(W)/share", withIntermediateDirectories: true)
        try s.run(["cp", "--sparse=always", "\(W)/copies/\(staged)", "\(W)/share/mystery.img"])

        try s.arm(.without, "The finder has the file and the usual tools.") {
            let info = try s.run(["qemu-img", "info", "\(W)/share/mystery.img"])
            let stat = try s.sh("stat -c '%U %y' $W/share/mystery.img")
            try #require(!info.stdoutText.lowercased().contains("owner") && !info.stdoutText.contains("alice") && !info.stdoutText.contains("bob"))
            try #require(stat.stdoutText.hasPrefix("root "))
            s.outcome("The file says its format and size; its owner is whoever copied it (`root`) and its date is the copy's. Nothing names alice, bob, app or app-staging.")
        }
        try s.arm(.with, "Warden matches the image by content to a VM in the ledger, tells its history and lineage, and proves the record with the ledger's signed Merkle log.") {
            let found = try Self.json(try s.warden(["discover", "\(W)/share", "--json"], show: 0))
            try s.warden(["discover", "\(W)/share"])
            let copies = try #require(found["copies"] as? [[String: Any]])
            let vm = try #require(copies.first?["of_vm"] as? String, "\(found)")
            let shown = try s.warden(["vm", "show", vm], show: 12).stdoutText
            try s.warden(["vm", "history", vm], show: 6)
            let lineage = try s.warden(["vm", "lineage", vm]).stdoutText
            let history = try Self.json(try s.warden(["vm", "history", vm, "--json"], show: 0))
            let events = try #require(history["events"] as? [[String: Any]])
            let seq = try #require(events.compactMap { $0["seq"] as? Int }.first, "\(events.first ?? [:])")
            try s.sh("warden ledger proof --event \(seq) --json > $W/proof.json && python3 scripts/verify-proof.py inclusion $W/proof.json",
                     show: 4)
            try #require(shown.contains("alice") && lineage.contains("app-staging"), "\(shown)\n\(lineage)")
            s.evidence(["the image's fingerprint matches VM \(vm) (`app`, owner alice: the staging copy was never started, so it has the same content)",
                        "the lineage shows the copy app-staging, transferred to bob",
                        "event \(seq)'s inclusion proof verifies with scripts/verify-proof.py (hashlib and openssl, independent of Warden)"])
            s.outcome("The found image is alice's `app` (or its unstarted copy app-staging, now bob's); history and lineage say who did what and when, and the record's inclusion in the signed log verifies independently.")
        }
        try s.finish()
    }

    @Test func s7CompromisedHost() throws {
        let s = try Scenario("S7", "Mobility: host h2 is found compromised",
                             section: "§2, Mobility",
                             problem: "VMs move between hosts and are copied as they go. When a host turns out to have been compromised, every VM that ran or was stored there may be tainted, and so is every copy made from them since, wherever it now lives.")
        defer { s.cleanUp() }
        let W = s.dir
        for name in ["web", "db", "ci"] {
            try Self.qcow2Guest(s, "\(W)/\(name).qcow2")
            try s.warden(["vm", "register", "--name", name, "--owner", "ops", "--host", "h1", "\(W)/\(name).qcow2"], check: false, show: 0)
        }
        // What happened, recorded as it happened (the hook and `warden vm` record these
        // themselves on real hosts; here the scenario reports them with `event record`).
        try s.sh("""
        warden event record --vm web --kind started --host h1
        warden event record --vm db --kind started --host h1
        sleep 1; date -u +%Y-%m-%dT%H:%M:%SZ > $W/t0; sleep 1
        warden event record --vm web --kind migrated --host h2
        warden event record --vm ci --kind moved-storage --host h2
        sleep 1; date -u +%Y-%m-%dT%H:%M:%SZ > $W/t1; sleep 1
        warden event record --vm web --kind migrated --host h3
        warden event record --vm ci --kind moved-storage --host h4
        warden vm copy web $W/copies --name web-copy --host h5
        warden vm copy web-copy $W/copies2 --name web-copy-2 --host h6
        warden vm clone ci --name ci-clone --dir $W/clones
        """, show: 0)
        let t0 = try String(contentsOfFile: W + "/t0", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let t1 = try String(contentsOfFile: W + "/t1", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        s.note("h2 held web (running) and ci (storage) between \(t0) and \(t1); both moved on, and copies and clones were made of them afterwards on other hosts.")
        try s.arm(.without, "The incident team has the image files, wherever they now are; h2's own logs cannot be trusted.") {
            let r = try s.sh("grep -l -a -e h2 $W/*.qcow2 $W/copies/* $W/copies2/* $W/clones/* || echo 'no image records h2'")
            try #require(r.stdoutText.contains("no image records h2"))
            s.outcome("No image records where it ran or was stored. Which VMs passed through h2 in the window, and which copies were made of them since, is unknown.")
        }
        try s.arm(.with, "The ledger recorded residency and lineage as they happened.") {
            try s.warden(["exposure", "--host", "h2", "--from", t0, "--to", t1], show: 20)
            let doc = try Self.json(try s.warden(["exposure", "--host", "h2", "--from", t0, "--to", t1, "--json"], show: 0))
            let names = Set(Self.strings(named: "name", in: doc))
            try #require(names.isSuperset(of: ["web", "ci", "web-copy", "web-copy-2", "ci-clone"]) && !names.contains("db"), "\(names)")
            s.evidence(["exposure names: \(names.sorted().joined(separator: ", "))", "db, which never touched h2, is not named"])
            s.outcome("`exposure` names web (ran on h2) and ci (stored on h2), and every descendant made since: web-copy, web-copy-2 (a copy of the copy) and ci-clone, wherever they live now; db is not named.")
        }
        try s.finish()
    }

    /// Every string under key `key` anywhere in a JSON document.
    static func strings(named key: String, in value: Any) -> [String] {
        if let d = value as? [String: Any] {
            return d.flatMap { k, v in (k == key ? [v as? String].compactMap { $0 } : []) + strings(named: key, in: v) }
        }
        if let a = value as? [Any] { return a.flatMap { strings(named: key, in: $0) } }
        return []
    }
}
