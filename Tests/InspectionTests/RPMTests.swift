import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
import GuestFS
@testable import Inspection

/// Real rpm databases built with rpmbuild + rpm (sqlite backend) and, from the same
/// header blobs, BerkeleyDB hash databases built with db5.3_load in both byte orders.
///
/// Guest layout (not realistic, but every probed path is exercised at once):
/// - /usr/lib/sysimage/rpm/rpmdb.sqlite   rpm's own sqlite database (with a gpg-pubkey)
/// - /usr/lib/sysimage/rpm/Packages       BerkeleyDB hash, big-endian, 1 KiB pages
/// - /var/lib/rpm/Packages                BerkeleyDB hash, little-endian, 4 KiB pages
enum RPMFixture {
    static let script = #"""
    B="$PWD/../build"
    mkdir -p "$B/specs" usr/lib/sysimage/rpm var/lib/rpm
    cat > "$B/specs/alpha.spec" <<'EOF'
    Name: warden-alpha
    Version: 1.2~rc1
    Release: 3.fc40
    Epoch: 2
    Summary: alpha
    License: MIT
    BuildArch: noarch
    %description
    alpha package
    %package -n warden-alpha-tools
    Summary: tools built from the alpha source
    %description -n warden-alpha-tools
    tools
    %files
    %files -n warden-alpha-tools
    EOF
    cat > "$B/specs/gamma.spec" <<'EOF'
    Name: warden-gamma
    Version: 3.0^20240101git
    Release: 0.1
    Epoch: 0
    Summary: gamma
    License: MIT
    BuildArch: noarch
    %description
    gamma package
    %files
    EOF
    { printf 'Name: warden-beta\nVersion: 0.9\nRelease: 1\nSummary: beta\nLicense: MIT\nBuildArch: noarch\n%%description\n'
      seq 1 4000 | sed 's/^/a long description line forcing overflow pages /'
      printf '%%files\n'; } > "$B/specs/beta.spec"
    for s in "$B"/specs/*.spec; do rpmbuild -bb --define "_topdir $B/top" "$s" > /dev/null; done
    DB="$PWD/usr/lib/sysimage/rpm"
    rpm --initdb --dbpath "$DB" --define '_db_backend sqlite'
    rpm -i --justdb --nodeps --noscripts --ignorearch --dbpath "$DB" --define '_db_backend sqlite' "$B"/top/RPMS/*/*.rpm
    # A short GNUPGHOME: gpg-agent's socket path must fit in sockaddr_un.
    export GNUPGHOME=$(mktemp -d /tmp/wgpg.XXXXXX)
    gpg -q --batch --pinentry-mode loopback --passphrase '' --quick-gen-key 'Warden Test <t@example.org>' rsa2048 sign never 2> /dev/null
    gpg -q --armor --export > "$B/key.asc"
    gpgconf --kill gpg-agent || true
    rm -rf "$GNUPGHOME"
    rpm --import --dbpath "$DB" "$B/key.asc"
    rm -f "$DB"/rpmdb.sqlite-shm "$DB"/rpmdb.sqlite-wal "$DB"/.rpm.lock
    sqlite3 "$DB/rpmdb.sqlite" "SELECT lower(hex(blob)) FROM Packages ORDER BY hnum" > ../blobs.hex
    NEXT=$(sqlite3 "$DB/rpmdb.sqlite" "SELECT max(hnum) + 1 FROM Packages")
    # db_load dump format: one key line then one value line, each a space and hex bytes.
    mkdump() { # $1 key byte order (big|little), $2 page size, $3 output file
      if [ "$1" = big ]; then k="printf('%08x', N)"; else k="printf('%02x%02x%02x%02x', N & 255, (N >> 8) & 255, (N >> 16) & 255, (N >> 24) & 255)"; fi
      { printf 'VERSION=3\nformat=bytevalue\ntype=hash\ndb_pagesize=%s\nHEADER=END\n' "$2"
        sqlite3 "$DB/rpmdb.sqlite" "SELECT ' 00000000' UNION ALL SELECT ' ' || ${k//N/$NEXT}"
        sqlite3 -newline $'\n' -separator $'\n' "$DB/rpmdb.sqlite" "SELECT ' ' || ${k//N/hnum}, ' ' || lower(hex(blob)) FROM Packages"
        echo DATA=END; } > "$3"
    }
    mkdump big 1024 ../be.dump
    mkdump little 4096 ../le.dump
    db5.3_load -c db_lorder=4321 -f ../be.dump usr/lib/sysimage/rpm/Packages
    db5.3_load -c db_lorder=1234 -f ../le.dump var/lib/rpm/Packages
    # db5.3_dump must give back exactly the records loaded
    pairs() { sed -n '/^HEADER=END/,/^DATA=END/p' "$1" | grep '^ ' | paste - - | sort; }
    for o in be:usr/lib/sysimage/rpm/Packages le:var/lib/rpm/Packages; do
      db5.3_dump -f ../${o%%:*}.redump "${o#*:}"
      cmp <(pairs ../${o%%:*}.dump) <(pairs ../${o%%:*}.redump)
    done
    """#

    static let extra = #"""
    rpm -qa --dbpath "$PWD/root/usr/lib/sysimage/rpm" --qf '%{NAME}\t%{EPOCH}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\t%{SOURCERPM}\n' > rpm-qa.out
    """#

    static func guest() throws -> (GuestFiles, String) {
        try PkgFixture.guest("pkg-rpm-real", size: "16M", script: script, extra: extra)
    }

    static func blobs(_ dir: String) throws -> [[UInt8]] {
        try String(contentsOfFile: dir + "/blobs.hex", encoding: .utf8).split(separator: "\n").map { line in
            var out: [UInt8] = []
            var it = line.utf8.makeIterator()
            while let a = it.next(), let b = it.next() {
                out.append(UInt8(String(decoding: [a, b], as: UTF8.self), radix: 16) ?? 0)
            }
            return out
        }
    }
}


/// The `rpm -qa` line for a package as this reader sees it.
func rpmQALine(_ p: InstalledPackage) -> String {
    let srcVersion = p.sourceVersion.split(separator: ":", maxSplits: 1).last.map(String.init) ?? ""
    return [p.name, p.epoch.map(String.init) ?? "(none)", p.upstreamVersion ?? "?", p.revision ?? "?",
            p.architecture, "\(p.sourceName)-\(srcVersion).src.rpm"].joined(separator: "\t")
}

@Suite struct RPMDatabaseTests {
    @Test func allThreeDatabasesMatchRpmQueryAll() throws {
        let (g, dir) = try RPMFixture.guest()
        let oracleAll = try String(contentsOfFile: dir + "/rpm-qa.out", encoding: .utf8)
            .split(separator: "\n").map(String.init)
        // rpm lists the imported key as a pseudo-package; Warden deliberately does not.
        #expect(oracleAll.contains { $0.hasPrefix("gpg-pubkey\t") })
        let oracle = oracleAll.filter { !$0.hasPrefix("gpg-pubkey\t") }.sorted()
        #expect(oracle.count == 4)

        let invs = try Inspection.packages(g)
        #expect(invs.map(\.source) == ["/usr/lib/sysimage/rpm/rpmdb.sqlite", "/usr/lib/sysimage/rpm/Packages", "/var/lib/rpm/Packages"])
        for inv in invs {
            #expect(inv.manager == .rpm)
            #expect(inv.unknownReason == nil, "\(inv.source)")
            #expect(inv.warnings == [], "\(inv.source)")
            #expect(inv.incomplete == [])
            #expect(inv.packages.map(rpmQALine).sorted() == oracle, "\(inv.source)")
            #expect(inv.packages.map(\.name) == inv.packages.map(\.name).sorted())
        }
        let pkgs = try #require(invs.first).packages
        let tools = try #require(pkgs.first { $0.name == "warden-alpha-tools" })
        #expect(tools == InstalledPackage(name: "warden-alpha-tools", version: "2:1.2~rc1-3.fc40", epoch: 2,
                                          upstreamVersion: "1.2~rc1", revision: "3.fc40", architecture: "noarch",
                                          sourceName: "warden-alpha", sourceVersion: "2:1.2~rc1-3.fc40",
                                          manager: .rpm, status: "installed"))
        let gamma = try #require(pkgs.first { $0.name == "warden-gamma" })
        #expect(gamma.version == "0:3.0^20240101git-0.1" && gamma.epoch == 0)
        let beta = try #require(pkgs.first { $0.name == "warden-beta" })
        #expect(beta.version == "0.9-1" && beta.epoch == nil && beta.sourceName == "warden-beta" && beta.sourceVersion == "0.9-1")
    }

    @Test func berkeleyRecordsBothByteOrdersWithOverflowPages() throws {
        let (_, dir) = try RPMFixture.guest()
        let blobs = try RPMFixture.blobs(dir)
        #expect(blobs.count == 5)
        #expect(blobs.contains { $0.count > 4096 }, "one header must need overflow pages")
        for (file, bigEndian, pageSize) in [("usr/lib/sysimage/rpm/Packages", true, 1024), ("var/lib/rpm/Packages", false, 4096)] {
            let bytes = try Fixtures.read(try exportedFile(dir, file))
            var db = try BerkeleyHash(bytes)
            #expect(db.bigEndian == bigEndian && db.pageSize == pageSize && db.warnings == [])
            var warnings: [String] = []
            let recs = db.records(maxRecords: 100) { warnings.append($0) }
            #expect(warnings == [])
            #expect(recs.compactMap { db.keyNumber($0.key) }.sorted() == [0, 1, 2, 3, 4, 5])
            #expect(Set(recs.filter { db.keyNumber($0.key) != 0 }.map(\.value)) == Set(blobs))
            // overflow pages exist
            #expect((1..<db.pageCount).contains { bytes[$0 * pageSize + 25] == BerkeleyHash.PageType.overflow })
        }
    }

    /// The BerkeleyDB files as loaded by db5.3_load (kept beside the fixture image).
    func exportedFile(_ dir: String, _ guestPath: String) throws -> String {
        let out = dir + "/" + guestPath.replacingOccurrences(of: "/", with: "_")
        if !FileManager.default.fileExists(atPath: out) {
            try Tool.run(["debugfs", "-R", "dump /\(guestPath) \(out)", dir + "/fs.img"])
        }
        return out
    }

    @Test func headerParsing() throws {
        let (_, dir) = try RPMFixture.guest()
        let blobs = try RPMFixture.blobs(dir)
        let parsed = try blobs.map(RPMHeader.parse)
        #expect(parsed.map(\.name).sorted() == ["gpg-pubkey", "warden-alpha", "warden-alpha-tools", "warden-beta", "warden-gamma"])
        let key = try #require(parsed.first { $0.name == "gpg-pubkey" })
        #expect(key.arch == nil && key.sourceRPM == "(none)")  // rpm stores the text "(none)"
        // With the 8-byte lead, as in a package file.
        for (b, h) in zip(blobs, parsed) {
            #expect(try RPMHeader.parse([0x8E, 0xAD, 0xE8, 0x01, 0, 0, 0, 0] + b) == h)
        }
        #expect(RPMHeader.splitSourceRPM("bash-5.2.26-3.fc40.src.rpm")! == ("bash", "5.2.26", "3.fc40"))
        #expect(RPMHeader.splitSourceRPM("nvidia-x11-550-1.nosrc.rpm")! == ("nvidia-x11", "550", "1"))
        #expect(RPMHeader.splitSourceRPM("bash-5.2.src.rpm") == nil)
        #expect(RPMHeader.splitSourceRPM("bash-5.2-1.rpm") == nil)
        #expect(RPMHeader.splitSourceRPM("-1-2.src.rpm") == nil)
    }

    @Test func damagedHeadersThrowNeverTrap() throws {
        let (_, dir) = try RPMFixture.guest()
        let blobs = try RPMFixture.blobs(dir)
        let b = try #require(blobs.min { $0.count < $1.count })
        func set32(_ v: UInt32, at o: Int, in x: inout [UInt8]) {
            for i in 0..<4 { x[o + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * i)) }
        }
        var huge = b; set32(0xFFFF_FFFF, at: 0, in: &huge)
        #expect(throws: WardenError.self) { try RPMHeader.parse(huge) }
        var zero = b; set32(0, at: 0, in: &zero)
        #expect(throws: WardenError.self) { try RPMHeader.parse(zero) }
        var bigStore = b; set32(0x7FFF_FFFF, at: 4, in: &bigStore)
        #expect(throws: WardenError.self) { try RPMHeader.parse(bigStore) }
        var pastStore = b; set32(0x00FF_FFFF, at: 8 + 16 + 8, in: &pastStore)  // entry 1 offset
        #expect(throws: WardenError.self) { try RPMHeader.parse(pastStore) }
        var badType = b; set32(77, at: 8 + 16 + 4, in: &badType)
        #expect(throws: WardenError.self) { try RPMHeader.parse(badType) }
        // A string with no NUL before the end of the store.
        let il = Int(try b.be(0, UInt32.self)), dl = Int(try b.be(4, UInt32.self))
        var noNul = b
        for i in 0..<dl where noNul[8 + il * 16 + i] == 0 { noNul[8 + il * 16 + i] = 0x41 }
        #expect(throws: WardenError.self) { try RPMHeader.parse(noNul) }
        #expect(throws: WardenError.self) { try RPMHeader.parse([]) }
        #expect(throws: WardenError.self) { try RPMHeader.parse([0x8E, 0xAD, 0xE8, 0x01]) }
        // Every truncation fails cleanly.
        for n in stride(from: 0, to: b.count, by: 7) {
            #expect(throws: WardenError.self) { try RPMHeader.parse(Array(b[0..<n])) }
        }
        // Random byte damage: either an error or a header, never a trap.
        var rng = SeededRandom(seed: 42)
        for _ in 0..<2000 {
            var x = b
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                x[Int.random(in: 0..<x.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            _ = try? RPMHeader.parse(x)
        }
    }

    @Test func damagedBerkeleyNeverTraps() throws {
        let (_, dir) = try RPMFixture.guest()
        let good = try Fixtures.read(try exportedFile(dir, "var/lib/rpm/Packages"))
        let ps = 4096
        #expect(throws: WardenError.self) { try BerkeleyHash(Array(good[0..<100])) }
        var magic = good; magic[12] = 0x99
        #expect(throws: WardenError.self) { try BerkeleyHash(magic) }
        var pageSize = good; pageSize[20] = 0x01  // 4097
        #expect(throws: WardenError.self) { try BerkeleyHash(pageSize) }
        var metaType = good; metaType[25] = 9
        #expect(throws: WardenError.self) { try BerkeleyHash(metaType) }
        // last_pgno far past the file: read what is there, with a warning.
        var last = good; last[32] = 0xFF; last[33] = 0xFF; last[34] = 0xFF; last[35] = 0x7F
        let lastDB = try BerkeleyHash(last)
        #expect(lastDB.warnings.count == 1)
        // An overflow page chained to itself: that record is skipped, the rest are read.
        var loop = good
        let ovf = try #require((1..<(good.count / ps)).first { good[$0 * ps + 25] == BerkeleyHash.PageType.overflow && good[$0 * ps + 16..<$0 * ps + 20] != [0, 0, 0, 0] })
        for i in 0..<4 { loop[ovf * ps + 16 + i] = loop[ovf * ps + 8 + i] }
        var db = try BerkeleyHash(loop)
        var warnings: [String] = []
        let recs = db.records(maxRecords: 100) { warnings.append($0) }
        #expect(warnings.count == 1 && warnings.first?.contains("loops") == true, "\(warnings)")
        #expect(recs.count == 5)
        var inv = PackageInventory(manager: .rpm, source: "x")
        var w = CappedWarnings()
        try RPMDatabase.readBerkeley(loop, into: &inv, warnings: &w)
        #expect(inv.packages.count == 3 && w.all.count == 1)
        // Random damage anywhere: errors and warnings only.
        var rng = SeededRandom(seed: 7)
        for _ in 0..<300 {
            var x = good
            for _ in 0..<Int.random(in: 1...32, using: &rng) {
                x[Int.random(in: 0..<x.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            var inv = PackageInventory(manager: .rpm, source: "x")
            var w = CappedWarnings()
            _ = try? RPMDatabase.readBerkeley(x, into: &inv, warnings: &w)
        }
        // Damage concentrated in hash page headers and item tables.
        for _ in 0..<300 {
            var x = good
            let page = Int.random(in: 1..<(good.count / ps), using: &rng)
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                x[page * ps + Int.random(in: 0..<64, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            var inv = PackageInventory(manager: .rpm, source: "x")
            var w = CappedWarnings()
            _ = try? RPMDatabase.readBerkeley(x, into: &inv, warnings: &w)
        }
    }

    @Test func damagedSQLiteNeverTraps() throws {
        let (_, dir) = try RPMFixture.guest()
        let good = try Fixtures.read(try exportedFile(dir, "usr/lib/sysimage/rpm/rpmdb.sqlite"))
        var rng = SeededRandom(seed: 9)
        var inputs = Rejections(.corrupt, .limitExceeded)
        for _ in 0..<100 {
            var x = good
            for _ in 0..<Int.random(in: 1...64, using: &rng) {
                x[Int.random(in: 0..<x.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            var inv = PackageInventory(manager: .rpm, source: "x")
            var w = CappedWarnings()
            inputs.feed { try RPMDatabase.readSQLite(x, name: "x", into: &inv, warnings: &w) }
        }
        #expect(inputs.accepted + inputs.rejected == 100)
    }

    /// Garbage under every rpm path: unknown reasons, never a crash.
    @Test func garbageDatabasesAreUnknown() throws {
        let script = """
        mkdir -p var/lib/rpm usr/lib/sysimage/rpm
        { printf 'SQLite format 3\\0'; head -c 8192 /dev/zero | tr '\\0' 'x'; } > var/lib/rpm/rpmdb.sqlite
        printf 'not a database at all\\n' > usr/lib/sysimage/rpm/rpmdb.sqlite
        seq 1 2000 > var/lib/rpm/Packages
        head -c 4096 /dev/zero > var/lib/rpm/Packages.db
        sqlite3 usr/lib/sysimage/rpm/Packages 'CREATE TABLE t(x)'
        """
        let (g, _) = try PkgFixture.guest("pkg-rpm-garbage", size: "8M", script: script)
        let invs = try Inspection.packages(g)
        #expect(invs.map(\.source) == ["/usr/lib/sysimage/rpm/rpmdb.sqlite", "/var/lib/rpm/rpmdb.sqlite",
                                       "/var/lib/rpm/Packages.db", "/usr/lib/sysimage/rpm/Packages", "/var/lib/rpm/Packages"])
        for inv in invs {
            #expect(inv.packages == [])
            #expect(inv.unknownReason != nil, "\(inv.source)")
        }
        #expect(invs[2].unknownReason?.contains("ndb") == true)
        #expect(invs[3].unknownReason?.contains("BerkeleyDB") == true)
    }

    /// A sqlite database without the Packages table, and one whose blobs are not headers.
    @Test func sqliteWithoutRpmContent() throws {
        let script = """
        mkdir -p var/lib/rpm usr/lib/sysimage/rpm
        sqlite3 var/lib/rpm/rpmdb.sqlite 'CREATE TABLE Other(x)'
        sqlite3 usr/lib/sysimage/rpm/rpmdb.sqlite "CREATE TABLE Packages(hnum INTEGER PRIMARY KEY, blob BLOB); INSERT INTO Packages VALUES (1, x'00000001'), (2, NULL), (3, 'text'), (4, x'ffffffffffffffff')"
        """
        let (g, _) = try PkgFixture.guest("pkg-rpm-sqlite-odd", size: "8M", script: script)
        let invs = try Inspection.packages(g)
        #expect(invs.count == 2)
        let odd = try #require(invs.first)
        #expect(odd.unknownReason == nil && odd.packages == [] && odd.warnings.count == 4, "\(odd.warnings)")
        #expect(invs.last?.unknownReason?.contains("sqlite") == true)
    }
}
