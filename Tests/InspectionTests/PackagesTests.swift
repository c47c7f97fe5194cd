import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
import GuestFS
@testable import Inspection

/// Builds a guest: runs `script` inside an empty `root/` directory, then
/// `mkfs.ext4 -d root`, and opens the result through EXT4 + GuestFiles.
/// `extra` is run in the fixture directory before mkfs (for oracles that need the tree).
enum PkgFixture {
    static func guest(_ name: String, size: String = "32M", script: String, extra: String = "",
                      recipeSalt: String = "") throws -> (GuestFiles, String) {
        let dir = try Fixtures.cached(name, recipe: script + "\u{0}" + extra + "\u{0}" + recipeSalt + size) { dir in
            try Tool.sh("mkdir -p \"\(dir)/root\" && cd \"\(dir)/root\"\n" + script)
            if !extra.isEmpty { try Tool.sh("cd \"\(dir)\"\n" + extra) }
            try Tool.sh("""
            cd "\(dir)" && truncate -s \(size) fs.img && mkfs.ext4 -q -F -d root fs.img && rm -rf root
            """)
        }
        let fs = try EXT4.open(try ImageOpener.open(dir + "/fs.img").device)
        return (GuestFiles(fs), dir)
    }
}

/// dpkg's `db:Status-Abbrev` for a status line: want, state, error flag letters.
func dpkgAbbrev(_ status: String) -> String {
    let w = status.split(separator: " ").map(String.init)
    guard w.count == 3 else { return "???" }
    let want = ["unknown": "u", "install": "i", "hold": "h", "deinstall": "r", "purge": "p"][w[0]] ?? "?"
    let eflag = ["ok": " ", "reinstreq": "R"][w[1]] ?? "?"
    let state = ["not-installed": "n", "config-files": "c", "half-installed": "H", "unpacked": "U",
                 "half-configured": "F", "triggers-awaited": "W", "triggers-pending": "t", "installed": "i"][w[2]] ?? "?"
    return want + state + eflag
}

let handStanzas = """
Package: warden-test-src
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 10
Maintainer: Test <t@example.org>
Architecture: amd64
Multi-Arch: same
Source: warden-upstream (1:2.0-3)
Version: 1:2.0-3+b1
Description: test package
 with a continuation line
 .
 Source: not-a-field (9)

Package: warden-test-held
Status: hold ok installed
Maintainer: Test <t@example.org>
Architecture: all
Version: 7.0
Description: held package

Package: warden-test-rc
Status: deinstall ok config-files
Maintainer: Test <t@example.org>
Architecture: amd64
Source: warden-rc-src
Version: 2:1.0~rc1-1
Config-Version: 2:1.0~rc1-1
Description: removed package

Package: warden-test-half
Status: install reinstreq half-installed
Maintainer: Test <t@example.org>
Architecture: amd64
Version: 3.0-1
Description: half installed

Package: warden-test-unpacked
Status: install ok unpacked
Maintainer: Test <t@example.org>
Architecture: arm64
Version: 0.1
Description: unpacked

Package: warden-test-gone
Status: purge ok not-installed
Maintainer: Test <t@example.org>
Architecture: amd64

"""

@Suite struct PackagesDpkgTests {
    /// The host's real status file plus hand-written stanzas, compared with dpkg-query on the same admindir.
    @Test func matchesDpkgQueryOnHostStatus() throws {
        let host = try Fixtures.read("/var/lib/dpkg/status")
        let script = """
        mkdir -p var/lib/dpkg/info var/lib/dpkg/updates
        cp /var/lib/dpkg/status var/lib/dpkg/status
        printf '\\n' >> var/lib/dpkg/status
        cat >> var/lib/dpkg/status <<'STANZAS'
        \(handStanzas)STANZAS
        """
        let extra = """
        dpkg-query --admindir=root/var/lib/dpkg -W -f='${Package}\\t${Version}\\t${Architecture}\\t${source:Package}\\t${source:Version}\\t${db:Status-Abbrev}\\n' > dpkg-query.out
        """
        let (g, dir) = try PkgFixture.guest("pkg-dpkg-host", size: "64M", script: script, extra: extra,
                                            recipeSalt: Fixtures.key(String(decoding: host, as: UTF8.self)))
        let oracle = try String(contentsOfFile: dir + "/dpkg-query.out", encoding: .utf8)
            .split(separator: "\n").map(String.init).sorted()
        #expect(oracle.count > 100)

        let invs = try Inspection.packages(g)
        #expect(invs.count == 1)
        let inv = try #require(invs.first)
        #expect(inv.manager == .dpkg)
        #expect(inv.source == "/var/lib/dpkg/status")
        #expect(inv.unknownReason == nil)
        #expect(inv.warnings == [])
        let mine = (inv.packages + inv.incomplete).map {
            "\($0.name)\t\($0.version)\t\($0.architecture)\t\($0.sourceName)\t\($0.sourceVersion)\t\(dpkgAbbrev($0.status))"
        }.sorted()
        #expect(mine.count == oracle.count)
        #expect(mine == oracle)
        // Every "installed" one in packages, every other in incomplete.
        #expect(inv.packages.allSatisfy { dpkgAbbrev($0.status).dropFirst().hasPrefix("i ") })
        #expect(inv.incomplete.allSatisfy { !dpkgAbbrev($0.status).dropFirst().hasPrefix("i ") })
        #expect(!inv.packages.contains { $0.name == "warden-test-gone" } && !inv.incomplete.contains { $0.name == "warden-test-gone" })

        // Hand-written stanzas, field by field.
        let src = try #require(inv.packages.first { $0.name == "warden-test-src" })
        #expect(src == InstalledPackage(name: "warden-test-src", version: "1:2.0-3+b1", epoch: 1, upstreamVersion: "2.0",
                                        revision: "3+b1", architecture: "amd64", sourceName: "warden-upstream",
                                        sourceVersion: "1:2.0-3", manager: .dpkg, status: "install ok installed"))
        let held = try #require(inv.packages.first { $0.name == "warden-test-held" })
        #expect(held.epoch == nil && held.upstreamVersion == "7.0" && held.revision == nil)
        #expect(held.sourceName == "warden-test-held" && held.sourceVersion == "7.0" && held.status == "hold ok installed")
        let rc = try #require(inv.incomplete.first { $0.name == "warden-test-rc" })
        #expect(rc.epoch == 2 && rc.upstreamVersion == "1.0~rc1" && rc.revision == "1")
        #expect(rc.sourceName == "warden-rc-src" && rc.sourceVersion == "2:1.0~rc1-1" && rc.status == "deinstall ok config-files")
        #expect(inv.incomplete.map(\.name).sorted() == ["warden-test-half", "warden-test-rc", "warden-test-unpacked"])
    }

    /// CRLF line endings, distroless status.d, an oversized field, a stanza without Package.
    @Test func crlfStatusDirAndLimits() throws {
        let script = #"""
        mkdir -p var/lib/dpkg/status.d
        printf 'Package: crlf-pkg\r\nStatus: install ok installed\r\nVersion: 1:4.5-6\r\nArchitecture: amd64\r\nSource: crlf-src (4.5-5)\r\nDescription: x\r\n more\r\n\r\nVersion: 9\r\nStatus: install ok installed\r\n\r\n\r\nPackage: second\r\nStatus: install ok installed\r\nVersion: 2.0\r\nArchitecture: all\r\n' > var/lib/dpkg/status
        printf '\nPackage: huge\nStatus: install ok installed\nVersion: 1.0\nArchitecture: all\nDescription: ' >> var/lib/dpkg/status
        head -c 70000 /dev/zero | tr '\0' 'a' >> var/lib/dpkg/status
        printf '\n\n' >> var/lib/dpkg/status
        printf 'Package: base-files\nVersion: 12.4+deb12u5\nArchitecture: amd64\nMaintainer: x\n' > var/lib/dpkg/status.d/base-files
        printf 'abc  /etc/issue\n' > var/lib/dpkg/status.d/base-files.md5sums
        printf 'Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\nArchitecture: amd64\nSource: openssl\n' > var/lib/dpkg/status.d/libssl3
        """#
        let (g, _) = try PkgFixture.guest("pkg-dpkg-misc", script: script)
        let invs = try Inspection.packages(g)
        try #require(invs.map(\.source) == ["/var/lib/dpkg/status", "/var/lib/dpkg/status.d"])
        let st = invs[0]
        try #require(st.packages.map(\.name) == ["crlf-pkg", "huge", "second"])
        #expect(st.packages[0] == InstalledPackage(name: "crlf-pkg", version: "1:4.5-6", epoch: 1, upstreamVersion: "4.5",
                                                   revision: "6", architecture: "amd64", sourceName: "crlf-src",
                                                   sourceVersion: "4.5-5", manager: .dpkg, status: "install ok installed"))
        #expect(st.packages[2].version == "2.0" && st.packages[2].architecture == "all")
        #expect(st.warnings.contains { $0.contains("no Package field") })
        #expect(st.warnings.contains { $0.contains("Description") && $0.contains("cut at") })
        let dist = invs[1]
        #expect(dist.manager == .dpkg && dist.unknownReason == nil)
        try #require(dist.packages.map(\.name) == ["base-files", "libssl3"])
        #expect(dist.packages[0].status == "install ok installed")
        #expect(dist.packages[0].sourceName == "base-files" && dist.packages[0].sourceVersion == "12.4+deb12u5")
        #expect(dist.packages[1].sourceName == "openssl" && dist.packages[1].sourceVersion == "3.0.11-1~deb12u2")
        #expect(dist.packages[1].upstreamVersion == "3.0.11" && dist.packages[1].revision == "1~deb12u2")
    }

    /// A database that exists but cannot be read is reported with a reason, never as empty.
    @Test func unreadableDatabasesHaveAReason() throws {
        let script = #"""
        mkdir -p var/lib/dpkg/status.d var/lib/dpkg/status lib/apk/db
        printf 'P:musl\nV:1.2.4-r2\n' > lib/apk/db/installed
        head -c 5000 /dev/zero | tr '\0' 'x' >> lib/apk/db/installed
        """#
        var (g, _) = try PkgFixture.guest("pkg-unreadable", size: "8M", script: script)
        g.maxFileSize = 1000
        let invs = try Inspection.packages(g)
        try #require(invs.map(\.source) == ["/var/lib/dpkg/status", "/var/lib/dpkg/status.d", "/lib/apk/db/installed"])
        #expect(invs[0].unknownReason?.contains("not a regular file") == true)
        #expect(invs[1].unknownReason == nil && invs[1].packages.isEmpty)
        #expect(invs[2].unknownReason?.contains("larger than") == true && invs[2].packages.isEmpty)
    }

    @Test func noDatabasesMeansNoInventories() throws {
        let (g, _) = try PkgFixture.guest("pkg-none", size: "8M", script: "mkdir -p etc var/lib")
        #expect(try Inspection.packages(g) == [])
    }

    /// A database file that cannot be read is an explicit unknown, never an empty list.
    @Test func unreadableRpmDatabasesAreReportedAsUnknown() throws {
        let script = """
        mkdir -p usr/lib/sysimage/rpm var/lib
        printf 'SQLite format 3\\0' > usr/lib/sysimage/rpm/rpmdb.sqlite
        ln -s ../../usr/lib/sysimage/rpm var/lib/rpm
        mkdir -p old/var/lib/rpm
        """
        let (g, _) = try PkgFixture.guest("pkg-rpm", size: "8M", script: script)
        let invs = try Inspection.packages(g)
        #expect(invs.count == 1)
        #expect(invs.first?.manager == .rpm)
        #expect(invs.first?.source == "/usr/lib/sysimage/rpm/rpmdb.sqlite")
        #expect(invs.first?.unknownReason?.lowercased().contains("sqlite") == true)
        #expect(invs.first?.packages == [])

        let (g2, _) = try PkgFixture.guest("pkg-rpm-bdb", size: "8M", script: "mkdir -p var/lib/rpm && head -c 4096 /dev/zero > var/lib/rpm/Packages")
        let bdb = try Inspection.packages(g2)
        #expect(bdb.map(\.source) == ["/var/lib/rpm/Packages"])
        #expect(bdb.first?.unknownReason?.contains("BerkeleyDB") == true)
    }

    @Test func versionSplitting() {
        #expect(DpkgStatus.splitVersion("1:2.3-4") == .init(epoch: 1, upstream: "2.3", revision: "4"))
        #expect(DpkgStatus.splitVersion("2.3-4-5") == .init(epoch: nil, upstream: "2.3-4", revision: "5"))
        #expect(DpkgStatus.splitVersion("1.0") == .init(epoch: nil, upstream: "1.0", revision: nil))
        #expect(DpkgStatus.splitVersion("a:1") == nil)
        #expect(DpkgStatus.splitVersion("") == nil)
        #expect(DpkgStatus.splitVersion("1-") == nil)
        #expect(DpkgStatus.splitVersion("99999999999999999999:1") == nil)
        let a = DpkgStatus.splitSource("glibc (2.36-9+deb12u4)"), b = DpkgStatus.splitSource(" glibc ")
        #expect(a.name == "glibc" && a.version == "2.36-9+deb12u4")
        #expect(b.name == "glibc" && b.version == nil)
    }
}
