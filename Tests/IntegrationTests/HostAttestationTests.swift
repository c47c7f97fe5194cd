import Foundation
import Testing
import WardenCore
import WardenTestSupport

/// `warden host init --tpm`, `host baseline`, `host attest`, `host verify-quote` and the
/// `attested` policy condition, end to end against real software TPMs (swtpm + tpm2-tools).
@Suite(.serialized) struct HostAttestationTests {
    static func warden(_ args: [String], home: String, env: [String: String] = [:], check: Bool = true) throws -> ToolResult {
        let r = try Tool.run(["timeout", "-s", "KILL", "300", Fixtures.wardenBinary] + args,
                             environment: ["WARDEN_HOME": home, "WARDEN_DB": "", "WARDEN_POLICY": home + "/policy",
                                           "WARDEN_KEYS": "", "TPM2TOOLS_TCTI": ""].merging(env) { _, n in n }, check: false)
        if check && r.status != 0 { throw TestGuestError("warden \(args.joined(separator: " ")) exited \(r.status): \(r.stderr.prefix(500))") }
        return r
    }

    static let policy = """
        apiVersion: warden/v1
        kind: Policy
        rules:
          - name: attested-hosts-only
            on: [start, unlock, migrate, restore]
            require:
              attested: true
        """

    /// A home with a ledger, a registered VM `web` and the policy above.
    static func home(_ dir: String) throws -> String {
        let home = dir + "/home"
        try FileManager.default.createDirectory(atPath: home + "/policy/hosts", withIntermediateDirectories: true)
        try policy.write(toFile: home + "/policy/attested.yaml", atomically: true, encoding: .utf8)
        try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", dir + "/web.qcow2", "16M"])
        _ = try warden(["vm", "register", dir + "/web.qcow2", "--name", "web", "--owner", "alice"], home: home)
        return home
    }

    @Test func attestedHostsArePolicyFacts() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try SoftwareTPM.with { tpm in
                let home = try Self.home(dir)
                let env = ["TPM2TOOLS_TCTI": tpm.tcti]
                // Never attested: start and unlock are denied, the reason says so.
                let before = try Self.warden(["policy", "check", "--op", "start", "web"], home: home, check: false)
                #expect(before.status == 3)
                #expect(before.stdoutText.contains("has never been attested"), "\(before.stdoutText)")

                // Enrol, write the baseline from the TPM's current PCRs, attest.
                let initJSON = try Self.warden(["host", "init", "--tpm", "--json"], home: home, env: env)
                let enrolled = try JSONSerialization.jsonObject(with: initJSON.stdout) as? [String: Any]
                #expect((enrolled?["attestation_key_sha256"] as? String)?.count == 64, "\(initJSON.stdoutText)")
                #expect((enrolled?["public_key"] as? String)?.count == 64)
                let baseline = try Self.warden(["host", "baseline", "--pcrs", "0,7", "--name", "lab"], home: home, env: env)
                try baseline.stdoutText.write(toFile: home + "/policy/hosts/trust.yaml", atomically: true, encoding: .utf8)
                let good = try Self.warden(["host", "attest", "--json", "--save-evidence", dir + "/e1"], home: home, env: env)
                let verdict = try JSONSerialization.jsonObject(with: good.stdout) as? [String: Any]
                #expect(verdict?["trusted"] as? Bool == true)
                #expect(verdict?["baseline"] as? String == "lab")
                for op in ["start", "unlock"] {
                    let r = try Self.warden(["policy", "check", "--op", op, "web"], home: home, check: false)
                    #expect(r.status == 0, "\(op): \(r.stdoutText)")
                }
                // `host list` shows it, in the documented shape.
                let list = try Self.warden(["host", "list", "--json"], home: home)
                try JSONSchemaTests().validate(list.stdout, schema: "host-list.v1.json")
                let hosts = (try JSONSerialization.jsonObject(with: list.stdout) as? [String: Any])?["hosts"] as? [[String: Any]]
                #expect(hosts?.contains { ($0["attestation"] as? [String: Any])?["current"] as? Bool == true } == true, "\(list.stdoutText)")
                // Too old for a later decision: the trust policy's maxAge (8h) counts.
                let later = ISO8601DateFormatter().string(from: Date().addingTimeInterval(86_400))
                let stale = try Self.warden(["policy", "check", "--op", "start", "web", "--at", later], home: home, check: false)
                #expect(stale.status == 3)
                #expect(stale.stdoutText.contains("at most 8h allowed"), "\(stale.stdoutText)")

                // A boot component changes PCR 7: attestation fails naming the PCR, and so do start and unlock.
                try tpm.extend(pcr: 7, with: "a boot loader nobody signed")
                let bad = try Self.warden(["host", "attest"], home: home, env: env, check: false)
                #expect(bad.status == 3)
                #expect(bad.stdoutText.contains("NOT trusted") && bad.stdoutText.contains("PCR 7 (sha256)"), "\(bad.stdoutText)")
                for op in ["start", "unlock"] {
                    let r = try Self.warden(["policy", "check", "--op", op, "web"], home: home, check: false)
                    #expect(r.status == 3)
                    #expect(r.stdoutText.contains("PCR 7"), "\(op): \(r.stdoutText)")
                }
                // The verdicts are ledger events.
                let events = try Self.warden(["ledger", "export"], home: home, check: false)
                #expect(events.stdoutText.contains("host-attested") && events.stdoutText.contains("host-enrolled"), "\(events.stdoutText.prefix(400))")
                let status = try Self.warden(["host", "status", "--json"], home: home)
                let st = try JSONSerialization.jsonObject(with: status.stdout) as? [String: Any]
                #expect(st?["enrolled"] as? Bool == true && st?["attested"] as? Bool == false)

                // Replay: the first, good quote offered against a fresh nonce is refused.
                let fresh = String(repeating: "5a", count: 32)
                let replay = try Self.warden(["host", "verify-quote", "--quote", dir + "/e1/quote", "--signature", dir + "/e1/signature",
                                              "--pcrs", dir + "/e1/pcrs", "--nonce", fresh], home: home, check: false)
                #expect(replay.status == 3)
                #expect(replay.stdoutText.contains("nonce"), "\(replay.stdoutText)")

                // Garbled evidence: exit 2 and one line naming the file.
                let q = try Fixtures.read(dir + "/e1/quote")
                try Fixtures.write(Array(q.prefix(40)), to: dir + "/short")
                let garbled = try Self.warden(["host", "verify-quote", "--quote", dir + "/short", "--signature", dir + "/e1/signature",
                                               "--pcrs", dir + "/e1/pcrs", "--nonce", fresh], home: home, check: false)
                #expect(garbled.status == 2)
                #expect(garbled.stderr.hasPrefix("warden: \(dir)/short: quote (TPMS_ATTEST)"), "\(garbled.stderr)")
                #expect(garbled.stderr.split(separator: "\n").count == 1)

                // A quote made by another TPM, with the nonce we issued, is refused.
                try SoftwareTPM.with { other in
                    let otherHome = dir + "/other"
                    try FileManager.default.createDirectory(atPath: otherHome + "/policy/hosts", withIntermediateDirectories: true)
                    try baseline.stdoutText.write(toFile: otherHome + "/policy/hosts/trust.yaml", atomically: true, encoding: .utf8)
                    _ = try Self.warden(["host", "init", "--tpm"], home: otherHome, env: ["TPM2TOOLS_TCTI": other.tcti])
                    _ = try Self.warden(["host", "attest", "--save-evidence", dir + "/e2"], home: otherHome, env: ["TPM2TOOLS_TCTI": other.tcti], check: false)
                    let nonce = Data(try Fixtures.read(dir + "/e2/nonce")).hexEncoded
                    let forged = try Self.warden(["host", "verify-quote", "--quote", dir + "/e2/quote", "--signature", dir + "/e2/signature",
                                                  "--pcrs", dir + "/e2/pcrs", "--nonce", nonce], home: home, check: false)
                    #expect(forged.status == 3)
                    #expect(forged.stdoutText.contains("another TPM"), "\(forged.stdoutText)")
                }
            }
        }
    }

    @Test func withoutATPMAHostIsNeverAttested() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let home = try Self.home(dir)
            try "kind: HostTrust\nbaselines: [{name: a, pcrs: {0: \(String(repeating: "00", count: 32))}}]\n"
                .write(toFile: home + "/policy/hosts/trust.yaml", atomically: true, encoding: .utf8)
            guard !FileManager.default.fileExists(atPath: "/dev/tpmrm0") else { return }
            let r = try Self.warden(["host", "attest"], home: home, check: false)
            #expect(r.status == 3)
            #expect(r.stdoutText.contains("has no TPM"), "\(r.stdoutText)")
            let c = try Self.warden(["policy", "check", "--op", "unlock", "web"], home: home, check: false)
            #expect(c.status == 3)
            #expect(c.stdoutText.contains("has no TPM"), "\(c.stdoutText)")
            let noTPM = try Self.warden(["host", "init", "--tpm"], home: home, check: false)
            #expect(noTPM.status == 4)
            #expect(noTPM.stderr.contains("no TPM"))
            // A pinned key for a host: a different key for the same name is refused.
            let k1 = String(repeating: "11", count: 32), k2 = String(repeating: "22", count: 32)
            _ = try Self.warden(["host", "add", "h2", "--public-key", k1], home: home)
            let clash = try Self.warden(["host", "add", "h2", "--public-key", k2], home: home, check: false)
            #expect(clash.status == 2)
            #expect(clash.stderr.contains("different public key"))
            let badKey = try Self.warden(["host", "add", "h3", "--public-key", "zz"], home: home, check: false)
            #expect(badKey.status == 64 || badKey.status == 2)
        }
    }

    /// The fleet server as the verifier: the agent ships the host's enrolment, asks the server for
    /// a nonce, quotes with its TPM and gets the server's verdict, recorded in the fleet ledger
    /// (PostgreSQL). A replayed nonce is refused; a changed PCR is named.
    @Test func theFleetServerAttestsItsHosts() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try SoftwareTPM.with { tpm in
                for d in ["srv/policy/hosts", "h1/policy"] { try FileManager.default.createDirectory(atPath: "\(tmp)/\(d)", withIntermediateDirectories: true) }
                let pg = try PostgresServer.shared()
                let dbName = try pg.createDatabase()
                defer { pg.dropDatabase(dbName) }
                let server = ServeProcess(dir: tmp + "/srv", listen: "127.0.0.1:0", database: pg.url(dbName), environment: pg.environment)
                server.extraArguments = ["--policy", tmp + "/srv/policy"]
                let admin = try server.token("root", role: "admin")
                let h1 = tmp + "/h1", env = ["TPM2TOOLS_TCTI": tpm.tcti]
                _ = try wardenOn(nil, "h1", home: h1, ["host", "init", "--tpm"], env: env)
                let baseline = try wardenOn(nil, "h1", home: h1, ["host", "baseline", "--pcrs", "0,7", "--name", "lab"], env: env)
                try baseline.stdoutText.write(toFile: tmp + "/srv/policy/hosts/trust.yaml", atomically: true, encoding: .utf8)
                try server.start()
                defer { server.kill9() }
                try server.enrol(nil, "h1", home: h1)
                _ = try wardenOn(nil, "h1", home: h1, ["agent", "run", "--once"])   // ships host-enrolled
                // The server pinned h1's signing key: another machine enrolling as h1 (a new
                // one-time token, another key) is refused.
                let imposter = tmp + "/imposter"
                try FileManager.default.createDirectory(atPath: imposter, withIntermediateDirectories: true)
                let token = try server.token("enrol-h1-again", role: "host", host: "h1")
                let refused = try wardenOn(nil, "h1", home: imposter, ["agent", "enrol", server.url, "--host", "h1", "--ca-file", server.caFile],
                                           env: ["WARDEN_AGENT_TOKEN": token], check: false)
                #expect(refused.status != 0 && refused.stderr.contains("different signing key"), "\(refused.status) \(refused.stderr)")
                let good = try wardenOn(nil, "h1", home: h1, ["agent", "attest", "--json"], env: env, check: false)
                #expect(good.status == 0, "\(good.stdoutText) \(good.stderr)")
                let answer = try JSONSerialization.jsonObject(with: good.stdout) as? [String: Any]
                #expect(answer?["trusted"] as? Bool == true && answer?["baseline"] as? String == "lab", "\(good.stdoutText)")
                // The verdict is in the fleet ledger, for h1.
                let events = try Tool.run(["curl", "-sS", "--max-time", "20"] + server.curlTrust + ["-H", "Authorization: Bearer \(admin)",
                                                                                                 server.url + "/v1/events?limit=1000"]).stdoutText
                #expect(events.contains("host-attested") && events.contains("host-enrolled"), "\(events.prefix(300))")
                // …and in the host's own ledger, where its local decisions read it.
                let status = try wardenOn(nil, "h1", home: h1, ["host", "status", "--json"])
                let st = try JSONSerialization.jsonObject(with: status.stdout) as? [String: Any]
                #expect(st?["attested"] as? Bool == true, "\(status.stdoutText)")

                // A nonce is good once: replaying a quote with a spent nonce is refused (403).
                let cert = ["--cert", h1 + "/agent/host.pem", "--key", h1 + "/agent/host.key"]
                func post(_ path: String, _ body: String) throws -> (Int, String) {
                    try Data(body.utf8).write(to: URL(fileURLWithPath: tmp + "/req"))
                    let r = try Tool.run(["curl", "-sS", "--max-time", "20", "-o", tmp + "/resp", "-w", "%{http_code}", "-X", "POST"] + server.curlTrust + cert
                                         + ["-H", "Content-Type: application/json", "--data-binary", "@" + tmp + "/req", server.url + path], check: false)
                    return (Int(r.stdoutText) ?? -1, (try? String(contentsOfFile: tmp + "/resp", encoding: .utf8)) ?? "")
                }
                let (s1, challenge) = try post("/v1/hosts/h1/attestation-nonce", "{}")
                #expect(s1 == 200, "\(challenge)")
                let nonce = try #require((try JSONSerialization.jsonObject(with: Data(challenge.utf8)) as? [String: Any])?["nonce"] as? String)
                try tpm.tool(["tpm2_quote", "-c", "0x81010020", "-l", "sha256:0,7", "-q", nonce, "-g", "sha256",
                              "-m", tmp + "/q", "-s", tmp + "/s", "-o", tmp + "/p", "-F", "values"])
                _ = try? tpm.tool(["tpm2_flushcontext", "-t"])
                let b64 = { (f: String) in (try? Data(contentsOf: URL(fileURLWithPath: tmp + "/" + f)).base64EncodedString()) ?? "" }
                let evidence = #"{"nonce":"\#(nonce)","quote":"\#(b64("q"))","signature":"\#(b64("s"))","pcrs":"\#(b64("p"))"}"#
                let (s2, first) = try post("/v1/hosts/h1/attestation", evidence)
                #expect(s2 == 200 && first.contains("\"trusted\":true"), "\(first)")
                let (s3, again) = try post("/v1/hosts/h1/attestation", evidence)
                #expect(s3 == 403 && again.contains("replayed"), "\(s3) \(again)")
                // Garbled evidence with a fresh nonce: 400, nothing recorded as trusted.
                let (_, c2) = try post("/v1/hosts/h1/attestation-nonce", "{}")
                let n2 = try #require((try JSONSerialization.jsonObject(with: Data(c2.utf8)) as? [String: Any])?["nonce"] as? String)
                let (s4, garbled) = try post("/v1/hosts/h1/attestation", #"{"nonce":"\#(n2)","quote":"AAEC","signature":"\#(b64("s"))","pcrs":"\#(b64("p"))"}"#)
                #expect(s4 == 400, "\(s4) \(garbled)")

                // PCR 7 changes: the server says which.
                try tpm.extend(pcr: 7, with: "a changed boot loader")
                let bad = try wardenOn(nil, "h1", home: h1, ["agent", "attest"], env: env, check: false)
                #expect(bad.status == 3)
                #expect(bad.stdoutText.contains("PCR 7 (sha256)"), "\(bad.stdoutText)")
            }
        }
    }
}
