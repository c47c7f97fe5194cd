import Foundation
import Testing
import WardenTestSupport

/// What an administrator meets first: --version, the configuration, log levels, doctor.
@Suite struct ProductTests {
    static func warden(_ args: [String], env: [String: String] = [:]) throws -> ToolResult {
        var e = env
        if e["WARDEN_CONFIG"] == nil { e["WARDEN_CONFIG"] = "" }
        let r = try Tool.run([Fixtures.wardenBinary] + args, environment: e, check: false, timeout: 120)
        ExitCodeDoc.check(args, status: r.status)
        return r
    }

    @Test func versionNamesTheCommitItWasBuiltFrom() throws {
        let r = try Self.warden(["--version"])
        #expect(r.status == 0)
        let text = r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(text.range(of: #"^[0-9]+\.[0-9]+\.[0-9]+ \(commit ([0-9a-f]{12}(-dirty)?|unknown)\)$"#, options: .regularExpression) != nil, "\(text)")
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let git = try Tool.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], check: false)
        if git.status == 0 {
            #expect(text.contains(git.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)), "\(text)")
        }
    }

    @Test func configurationPrecedenceFlagsEnvironmentFileDefaults() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let file = tmp + "/config.yaml"
            try """
            # a site configuration
            db: \(tmp)/from-file.db
            log_level: warning
            advisories:
              osv_url: http://127.0.0.1:9/osv
            """.write(toFile: file, atomically: true, encoding: .utf8)
            let env = ["WARDEN_CONFIG": file, "WARDEN_HOME": tmp + "/home"]
            let show = try Self.warden(["config", "show", "--json", "--progress", "never"], env: env)
            #expect(show.status == 0, "\(show.stderr)")
            let doc = try #require(try JSONSerialization.jsonObject(with: show.stdout) as? [String: Any])
            #expect(doc["schema"] as? String == "warden.config/v1")
            #expect(doc["files"] as? [String] == [file])
            var by: [String: [String: Any]] = [:]
            for s in doc["settings"] as? [[String: Any]] ?? [] { by[s["key"] as? String ?? ""] = s }
            #expect(by["db"]?["value"] as? String == tmp + "/from-file.db")
            #expect(by["db"]?["source"] as? String == file + ":2")
            #expect(by["home"]?["source"] as? String == "environment WARDEN_HOME")
            #expect(by["log_level"]?["source"] as? String == file + ":3")
            #expect(by["advisories.osv_url"]?["source"] as? String == file + ":5")
            #expect(by["progress"]?["source"] as? String == "flag" && by["progress"]?["value"] as? String == "never")
            #expect(by["policy"]?["source"] as? String == "default" && by["policy"]?["value"] as? String == tmp + "/home/policy")
            // The file's db is the ledger commands use; the environment beats it; a flag beats both.
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/b.qcow2"])
            #expect(try Self.warden(["vm", "register", tmp + "/b.qcow2", "--name", "a", "--owner", "o"], env: env).status == 0)
            #expect(FileManager.default.fileExists(atPath: tmp + "/from-file.db"))
            var envDB = env; envDB["WARDEN_DB"] = tmp + "/from-env.db"
            #expect(try Self.warden(["vm", "register", tmp + "/b.qcow2", "--name", "b", "--owner", "o"], env: envDB).status == 0)
            #expect(FileManager.default.fileExists(atPath: tmp + "/from-env.db"))
            #expect(try Self.warden(["vm", "register", tmp + "/b.qcow2", "--name", "c", "--owner", "o", "--db", tmp + "/from-flag.db"], env: envDB).status == 0)
            #expect(FileManager.default.fileExists(atPath: tmp + "/from-flag.db"))
            // An unknown key stops every command with file:line:column, exit 2.
            try "db: /x\nlog-level: debug\n".write(toFile: file, atomically: true, encoding: .utf8)
            let bad = try Self.warden(["vm", "list"], env: env)
            #expect(bad.status == 2)
            #expect(bad.stderr == "warden: \(file):2:1: unknown key 'log-level' (home, db, database_url, policy, keys, vault, log_level, progress, advisories)\n", "\(bad.stderr)")
            let check = try Self.warden(["config", "check", file], env: ["WARDEN_CONFIG": ""])
            #expect(check.status == 2 && check.stderr.contains(":2:1: unknown key"))
            // A password in database_url is never shown.
            try "database_url: postgres://warden:hunter2@127.0.0.1:1/fleet\n".write(toFile: file, atomically: true, encoding: .utf8)
            let secret = try Self.warden(["config", "show"], env: env)
            #expect(secret.status == 0 && secret.stdoutText.contains("postgres://warden:***@127.0.0.1:1/fleet"))
            #expect(!secret.stdoutText.contains("hunter2") && !secret.stderr.contains("hunter2"))
        }
    }

    @Test func logLevelQuietsNotesAndJournaldGetsPriorities() throws {
        try Fixtures.withTemporaryDirectory { tmp in
        // A partitioned disk: reading it notes which partition was chosen (a notice).
        let image = tmp + "/d.raw"
        try Tool.run(["truncate", "-s", "40M", image])
        try Tool.run(["sgdisk", "-n", "1:2048:0", image])
        try Tool.run(["mkfs.ext4", "-q", "-F", "-E", "offset=1048576", image, "30M"])
        let normal = try Self.warden(["image", "manifest", image])
        #expect(normal.status == 0)
        #expect(normal.stderr.hasPrefix("warden: using "), "\(normal.stderr)")
        let quiet = try Self.warden(["image", "manifest", image, "--log-level", "warning"])
        #expect(quiet.status == 0 && quiet.stderr.isEmpty, "\(quiet.stderr)")
        #expect(quiet.stdout == normal.stdout)
        let viaEnv = try Self.warden(["image", "manifest", image], env: ["WARDEN_LOG": "error"])
        #expect(viaEnv.stderr.isEmpty)
        let journal = try Self.warden(["image", "manifest", image], env: ["JOURNAL_STREAM": "8:1234"])
        #expect(journal.stderr.hasPrefix("<5>using "), "\(journal.stderr)")
        // Progress never reaches standard output, even when forced.
        let forced = try Self.warden(["image", "manifest", image, "--progress", "always"])
        let plain = try Self.warden(["image", "manifest", image, "--progress=never"])
        #expect(forced.status == 0 && forced.stdout == plain.stdout)
        }
    }

    @Test func doctorReportsTheHostAndFailsOnOpenKeyFolders() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let env = ["WARDEN_HOME": tmp + "/home"]
            var r = try Self.warden(["doctor", "--json"], env: env)
            #expect(r.status == 0, "\(r.stderr)")
            var doc = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
            var checks = doc["checks"] as? [[String: Any]] ?? []
            let names = Set(checks.compactMap { $0["name"] as? String })
            #expect(names.isSuperset(of: ["qemu-system-x86_64", "qemu-img", "kvm", "libvirt", "nft", "swtpm", "state folder", "keys folder", "vault folder", "ledger"]))
            for c in checks where c["status"] as? String != "ok" && !["kvm", "libvirt hook", "ledger", "state folder"].contains(c["name"] as? String ?? "") {
                #expect(c["package"] as? String != nil, "\(c)")
            }
            // A ledger never verified warns; after `ledger verify` the age is reported.
            try Tool.run(["cp", try LedgerFixtures.guests() + "/base.qcow2", tmp + "/b.qcow2"])
            #expect(try Self.warden(["vm", "register", tmp + "/b.qcow2", "--name", "a", "--owner", "o"], env: env).status == 0)
            r = try Self.warden(["doctor"], env: env)
            #expect(r.stdoutText.contains("has never been verified"), "\(r.stdoutText)")
            #expect(try Self.warden(["ledger", "verify"], env: env).status == 0)
            r = try Self.warden(["doctor"], env: env)
            #expect(r.status == 0)
            #expect(r.stdoutText.range(of: #"ok +ledger +verified [0-9]+ hours ago"#, options: .regularExpression) != nil, "\(r.stdoutText)")
            // A keys folder others can read fails, with the fix named.
            #expect(chmod(tmp + "/home/keys", 0o755) == 0)
            r = try Self.warden(["doctor", "--json"], env: env)
            #expect(r.status == 1)
            doc = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
            checks = doc["checks"] as? [[String: Any]] ?? []
            let keys = checks.first { $0["name"] as? String == "keys folder" }
            #expect(keys?["status"] as? String == "fail")
            #expect((keys?["detail"] as? String ?? "").contains("chmod 700"))
        }
    }
}
