import Foundation
import Testing
import WardenCore
import WardenTestSupport
import GuestFS
@testable import Inspection

/// A guest with real keys (ssh-keygen, openssl), fake credentials and histories.
enum SecretsFixture {
    static let awsSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY-warden"
    static let historyText = "mysql -u root -pHunter2SecretWarden"

    static let script = """
    mkdir -p etc/ssh root/.ssh home/alice/.ssh home/alice/.aws home/alice/.docker home/alice/.kube \
             home/bob/.aws home/bob/.docker opt/app/conf srv/deep var/lib/svc usr/local/share
    printf 'ID=debian\\nVERSION_ID="12"\\n' > etc/os-release
    cat > etc/passwd <<'PW'
    root:x:0:0:root:/root:/bin/bash
    daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
    alice:x:1000:1000:Alice:/home/alice/:/bin/bash
    bob:x:1001:1001:Bob:/home/bob:/bin/zsh
    weird:x:1002:1002::/:/bin/sh
    PW
    sed -i 's/^ *//' etc/passwd
    ssh-keygen -q -t ed25519 -N '' -C host -f etc/ssh/ssh_host_ed25519_key
    ssh-keygen -q -t ed25519 -N '' -C alice -f home/alice/.ssh/id_ed25519
    ssh-keygen -q -t ed25519 -N 'passphrase' -C bob -f root/.ssh/id_protected
    ssh-keygen -q -t rsa -b 1024 -m PEM -N '' -C legacy -f opt/app/conf/legacy_rsa
    openssl genpkey -algorithm ed25519 -out opt/app/conf/tls.key 2>/dev/null
    openssl genpkey -algorithm ed25519 -aes256 -pass pass:warden -out var/lib/svc/enc.pem 2>/dev/null
    openssl genrsa -aes128 -traditional -passout pass:warden -out usr/local/share/trad.pem 1024 2>/dev/null
    cp etc/ssh/ssh_host_ed25519_key srv/copied_host_key
    cat > home/alice/.aws/credentials <<'AWS'
    [default]
    aws_access_key_id = AKIAIOSFODNN7WARDEN1
    aws_secret_access_key = \(awsSecret)
    AWS
    printf '[default]\\nregion = eu-west-1\\n' > home/bob/.aws/config
    printf '[default]\\naws_access_key_id = AKIAIOSFODNN7WARDEN2\\n' > home/alice/.aws/config
    printf '{"auths": {"registry.example": {"auth": "d2FyZGVuOnNlY3JldA=="}}}' > home/alice/.docker/config.json
    printf '{"auths": {}, "credsStore": "pass"}' > home/bob/.docker/config.json
    printf 'apiVersion: v1\\nkind: Config\\n' > home/alice/.kube/config
    printf 'machine example.org login alice password netrcSecretWarden\\n' > home/alice/.netrc
    echo '\(historyText)' > root/.bash_history
    echo 'ls' > home/bob/.zsh_history
    echo 'import os' > home/alice/.python_history
    ln -s /dev/null home/alice/.bash_history
    # A deep tree, deeper than the depth cap, with a key at the bottom.
    d=srv/deep; for i in $(seq 1 14); do d=$d/d$i; done; mkdir -p $d
    ssh-keygen -q -t ed25519 -N '' -f $d/id_deep
    # Package-manager state and a vendored dependency tree: not where keys are deployed, so not
    # searched (a test fixture key inside node_modules is not the guest's secret).
    mkdir -p var/lib/dpkg/info srv/app/node_modules/tls-fixtures/test srv/app/keys
    for i in $(seq 1 300); do printf 'package file list %s\n' $i > var/lib/dpkg/info/p$i.list; done
    for i in $(seq 1 500); do printf 'module.exports = %s\n' $i > srv/app/node_modules/tls-fixtures/m$i.js; done
    ssh-keygen -q -t ed25519 -N '' -f srv/app/node_modules/tls-fixtures/test/fixture_key
    ssh-keygen -q -t ed25519 -N '' -f srv/app/keys/deploy_key
    chmod 600 home/alice/.aws/credentials
    chown -R 1000:1000 home/alice
    """

    static func guest() throws -> (GuestFiles, String) {
        try PkgFixture.guest("secrets", size: "16M", script: script, recipeSalt: "secrets-v2")
    }
}

@Suite struct SecretsTests {
    func kinds(_ r: SecretsReport) -> [String: SecretKind] {
        Dictionary(r.findings.map { ($0.path, $0.kind) }, uniquingKeysWith: { a, _ in a })
    }

    @Test func findsKeysCredentialsAndHistories() throws {
        let (g, _) = try SecretsFixture.guest()
        let r = Inspection.secrets(g)
        let k = kinds(r)
        #expect(k["/home/alice/.ssh/id_ed25519"] == .privateKey(.openssh, passphraseProtected: false))
        #expect(k["/root/.ssh/id_protected"] == .privateKey(.openssh, passphraseProtected: true))
        #expect(k["/opt/app/conf/legacy_rsa"] == .privateKey(.rsa, passphraseProtected: false))
        #expect(k["/opt/app/conf/tls.key"] == .privateKey(.pkcs8, passphraseProtected: false))
        #expect(k["/var/lib/svc/enc.pem"] == .privateKey(.encryptedPkcs8, passphraseProtected: true))
        #expect(k["/usr/local/share/trad.pem"] == .privateKey(.rsa, passphraseProtected: true))
        // A copy of a host key elsewhere is a finding; the host key itself is not.
        #expect(k["/srv/copied_host_key"] == .privateKey(.openssh, passphraseProtected: false))
        #expect(k["/srv/app/keys/deploy_key"] == .privateKey(.openssh, passphraseProtected: false))
        #expect(!r.findings.contains { $0.path.contains("/node_modules/") })
        // The 800 files of package state and the dependency tree are not visited.
        #expect(r.filesVisited < 200, "\(r.filesVisited)")
        #expect(k["/etc/ssh/ssh_host_ed25519_key"] == nil)
        #expect(!r.findings.contains { $0.path.hasPrefix("/etc/ssh/ssh_host_") })

        #expect(k["/home/alice/.aws/credentials"] == .cloudCredentials(.aws))
        #expect(k["/home/alice/.aws/config"] == .cloudCredentials(.aws))
        #expect(k["/home/bob/.aws/config"] == nil, "config without keys")
        #expect(k["/home/alice/.docker/config.json"] == .cloudCredentials(.docker))
        #expect(k["/home/bob/.docker/config.json"] == nil, "empty auths, credential helper")
        #expect(k["/home/alice/.kube/config"] == .cloudCredentials(.kubernetes))
        #expect(k["/home/alice/.netrc"] == .cloudCredentials(.netrc))

        #expect(k["/root/.bash_history"] == .shellHistory("bash"))
        #expect(k["/home/bob/.zsh_history"] == .shellHistory("zsh"))
        #expect(k["/home/alice/.python_history"] == .shellHistory("python"))
        #expect(k["/home/alice/.bash_history"] == nil, "symlink to /dev/null is not a history")

        let creds = try #require(r.findings.first { $0.path == "/home/alice/.aws/credentials" })
        #expect(creds.uid == 1000 && creds.mode == "0600" && creds.size > 50)
        // Every finding is accounted for: nothing unexpected shows up.
        #expect(r.findings.count == 16, "\(r.findings.map(\.path))")
    }

    @Test func depthCapTruncates() throws {
        let (g, _) = try SecretsFixture.guest()
        let r = Inspection.secrets(g)
        #expect(r.truncated)
        #expect(r.truncatedReason?.contains("deeper than 12") == true)
        #expect(!r.findings.contains { $0.path.hasSuffix("id_deep") })
        var limits = SecretsLimits()
        limits.maxDepth = 20
        let deep = Inspection.secrets(g, limits: limits)
        #expect(deep.findings.contains { $0.path.hasSuffix("/d14/id_deep") })
        #expect(!deep.truncated)
    }

    @Test func visitCapTruncates() throws {
        let (g, _) = try SecretsFixture.guest()
        var limits = SecretsLimits()
        limits.maxFilesVisited = 5
        let r = Inspection.secrets(g, limits: limits)
        #expect(r.truncated)
        #expect(r.filesVisited == 5)
        #expect(r.truncatedReason?.contains("5 entries") == true)
        // Credential files and histories are checked by path, not by the walk.
        #expect(r.findings.contains { $0.path == "/home/alice/.aws/credentials" })
    }

    @Test func jsonHoldsNoSecretBytes() throws {
        let (g, dir) = try SecretsFixture.guest()
        let r = Inspection.secrets(g)
        let enc = JSONEncoder()
        enc.keyEncodingStrategy = .convertToSnakeCase
        let json = String(decoding: try enc.encode(r), as: UTF8.self)
        #expect(json.contains("\"type\":\"private_key\"") && json.contains("\"passphrase_protected\":true"))
        for needle in [SecretsFixture.awsSecret, "AKIAIOSFODNN7WARDEN", "Hunter2SecretWarden", "netrcSecretWarden",
                       "d2FyZGVuOnNlY3JldA", "BEGIN", "PRIVATE KEY-----", "b3BlbnNzaC1rZXktdjE"] {
            #expect(!json.contains(needle), "\(needle) leaked")
        }
        // No line of any key's body appears (the keys are read back from the guest here).
        var checked = 0
        for f in r.findings {
            guard case .privateKey = f.kind, let text = try g.text(f.path) else { continue }
            for line in text.split(separator: "\n") where line.count >= 16 && !line.hasPrefix("-----") && !line.contains(":") {
                #expect(!json.contains(line), "key bytes of \(f.path) leaked")
                checked += 1
            }
        }
        #expect(checked > 20)
        _ = dir
    }

    @Test func pemHeaderRecognition() {
        func d(_ s: String) -> (PrivateKeyFormat, Bool?)? { PrivateKeyHeader.detect(Array(s.utf8)) }
        #expect(d("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n")! == (.ec, false))
        #expect(d("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nabc\n")! == (.rsa, true))
        #expect(d("-----BEGIN DSA PRIVATE KEY-----\nabc")! == (.dsa, false))
        #expect(d("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxyz")! == (.pgp, nil))
        #expect(d("-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n") == nil)
        #expect(d("-----BEGIN PUBLIC KEY-----\n") == nil)
        // OpenSSH key whose body is garbage: the cipher cannot be told.
        #expect(d("-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n")! == (.openssh, nil))
        #expect(d("garbage -----BEGIN") == nil)
        #expect(d(String(repeating: "-----BEGIN ", count: 500)) == nil)
    }
}
