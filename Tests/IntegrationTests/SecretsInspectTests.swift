import Foundation
import Testing
import WardenTestSupport

/// `warden inspect --json` reports secrets at rest by path and kind, and never their bytes.
@Suite struct SecretsInspectTests {
    static let awsSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYINTEGRATIONKEY"

    @Test func inspectJSONListsSecretsWithoutContent() throws {
        let dir = try Fixtures.cached("secrets-inspect", recipe: "v1 \(Self.awsSecret)") { dir in
            try Tool.sh("""
            cd "\(dir)"
            mkdir -p root/etc/ssh root/root/.ssh root/root/.aws
            printf 'ID=debian\\nVERSION_ID="12"\\n' > root/etc/os-release
            printf 'root:x:0:0:root:/root:/bin/bash\\n' > root/etc/passwd
            ssh-keygen -q -t ed25519 -N '' -f root/etc/ssh/ssh_host_ed25519_key
            ssh-keygen -q -t ed25519 -N '' -f root/root/.ssh/id_ed25519
            printf '[default]\\naws_secret_access_key = \(Self.awsSecret)\\n' > root/root/.aws/credentials
            echo 'echo historySecretWarden' > root/root/.bash_history
            truncate -s 8M disk.raw && mkfs.ext4 -q -F -d root disk.raw
            """)
        }
        let r = try WardenRun.run(["inspect", "--json", dir + "/disk.raw"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let inv = try #require((try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]])?.first)
        let secrets = try #require(inv["secrets"] as? [String: Any])
        let findings = try #require(secrets["findings"] as? [[String: Any]])
        let byPath = Dictionary(findings.compactMap { f in (f["path"] as? String).map { ($0, f) } }, uniquingKeysWith: { a, _ in a })
        #expect(Set(byPath.keys) == ["/root/.ssh/id_ed25519", "/root/.aws/credentials", "/root/.bash_history"])
        let key = try #require(byPath["/root/.ssh/id_ed25519"]?["kind"] as? [String: Any])
        #expect(key["type"] as? String == "private_key" && key["format"] as? String == "openssh")
        #expect(key["passphrase_protected"] as? Bool == false)
        #expect(secrets["truncated"] as? Bool == false)
        for needle in [Self.awsSecret, "historySecretWarden", "BEGIN OPENSSH", "b3BlbnNzaC1rZXktdjE"] {
            #expect(!r.stdoutText.contains(needle), "\(needle) leaked")
        }
    }
}
