import Testing
import WardenCore
import WardenTestSupport
import GuestFS
@testable import Inspection

/// apk-tools is not available on the host, so the installed database is written by hand
/// in the documented format (one-letter keys, blocks separated by blank lines).
let apkInstalledDB = """
C:Q1Lm6ZVDy3IN0fXVFe5Q2PnA8FXrU=
P:musl
V:1.2.4-r2
A:x86_64
S:383152
I:622592
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teräs <timo.teras@iki.fi>
t:1694532543
c:a1b2c3d4
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1Sx3KbzPN3NGmX9bKpPjIiVnLgHs=
R:libc.musl-x86_64.so.1

C:Q1aaaaaaaaaaaaaaaaaaaaaaaaaaa=
P:libcrypto3
V:3.1.4-r5
A:x86_64
S:1700000
I:4000000
T:Crypto library from openssl
U:https://www.openssl.org/
L:Apache-2.0
o:openssl
m:Ariadne Conill <ariadne@dereferenced.org>
t:1700000000
c:deadbeef
D:so:libc.musl-x86_64.so.1
p:so:libcrypto.so.3=3
F:usr/lib
R:libcrypto.so.3

P:ca-certificates-bundle
V:20230506-r0
A:x86_64
o:ca-certificates
F:etc/ssl/certs
R:ca-certificates.crt

P:alpine-baselayout-data
V:3.4.3-r2
A:x86_64
o:alpine-baselayout

P:noarch-thing
V:1.0
A:noarch

V:9.9-r9
A:x86_64

"""

@Suite struct PackagesApkTests {
    @Test func parsesInstalledDatabaseFieldByField() throws {
        let script = """
        mkdir -p lib/apk/db etc
        cat > lib/apk/db/installed <<'APK'
        \(apkInstalledDB)APK
        """
        let (g, _) = try PkgFixture.guest("pkg-apk", size: "8M", script: script)
        let invs = try Inspection.packages(g)
        #expect(invs.count == 1)
        let inv = try #require(invs.first)
        #expect(inv.manager == .apk && inv.source == "/lib/apk/db/installed" && inv.unknownReason == nil)
        #expect(inv.incomplete == [])
        #expect(inv.warnings.count == 1 && inv.warnings.first?.contains("no P") == true)
        func pkg(_ n: String, _ v: String, _ up: String, _ rev: String?, _ arch: String, _ src: String) -> InstalledPackage {
            InstalledPackage(name: n, version: v, epoch: nil, upstreamVersion: up, revision: rev, architecture: arch,
                             sourceName: src, sourceVersion: v, manager: .apk, status: "installed")
        }
        #expect(inv.packages == [
            pkg("alpine-baselayout-data", "3.4.3-r2", "3.4.3", "r2", "x86_64", "alpine-baselayout"),
            pkg("ca-certificates-bundle", "20230506-r0", "20230506", "r0", "x86_64", "ca-certificates"),
            pkg("libcrypto3", "3.1.4-r5", "3.1.4", "r5", "x86_64", "openssl"),
            pkg("musl", "1.2.4-r2", "1.2.4", "r2", "x86_64", "musl"),
            pkg("noarch-thing", "1.0", "1.0", nil, "noarch", "noarch-thing"),
        ])
    }

    @Test func versionSplitting() {
        let v = ApkInstalled.splitVersion("1.2.4-r2")
        #expect(v.upstream == "1.2.4" && v.revision == "r2")
        #expect(ApkInstalled.splitVersion("1.0_rc1-r10").upstream == "1.0_rc1")
        #expect(ApkInstalled.splitVersion("1.0-rx").revision == nil)
        #expect(ApkInstalled.splitVersion("-r1").revision == nil)
        #expect(ApkInstalled.splitVersion("2.0").revision == nil)
    }
}
