import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// FAT12/16/32 images built with mkfs.vfat and populated with mtools (no mounting).
enum FATFixture {
    static let script = #"""
    export LC_ALL=C.UTF-8 MTOOLS_SKIP_CHECK=1
    D="$1"; cd "$D"
    mkdir -p tree/EFI/BOOT tree/deep/a/b/c/d tree/wide tree/emptydir
    cd tree
    : > empty.txt
    printf 'hello, world\n' > HELLO.TXT
    printf 'lower\n' > lower.txt
    printf 'mixed\n' > MixedCase.Txt
    printf 'spaces\n' > "Long File Name With Spaces.txt"
    printf 'unicode\n' > "héllo wörld.txt"
    printf 'cjk\n' > "日本語のファイル.txt"
    head -c 100000 /dev/urandom > EFI/BOOT/BOOTX64.EFI
    head -c 1000000 /dev/urandom > big.bin
    printf 'leaf\n' > deep/a/b/c/d/leaf.txt
    for i in $(seq 1 500); do
      if [ $((i % 50)) -eq 0 ]; then echo "$i" > "wide/wide entry number $i.txt"; else : > "wide/wide entry number $i.txt"; fi
    done
    touch -d '2001-02-03 04:05:06' HELLO.TXT
    cd "$D"
    for F in 12 16 32; do
      case $F in 12) S=4M; C=4;; 16) S=24M; C=1;; 32) S=40M; C=1;; esac
      truncate -s $S fat$F.img
      mkfs.vfat -F $F -S 512 -s $C -n "LABEL$F" -i 1234AB$F fat$F.img >/dev/null
      (cd tree && mcopy -i ../fat$F.img -s -m -- * ::/)
      mdir -i fat$F.img -/ -b ::/ > mdir$F.txt
      mkdir out$F
      mcopy -i fat$F.img -s -n '::/*' out$F/
      blkid -p -o export fat$F.img > blkid$F.txt
    done
    """#

    static func dir() throws -> String {
        try Fixtures.cached("fat", recipe: script) { dir in
            try Tool.run(["bash", "-euo", "pipefail", "-c", script, "fat", dir])
        }
    }

    static func open(_ path: String) throws -> FATVolume {
        try FAT.open(RawDevice(file: try ImageFile(path: path)))
    }

    /// Every path under the root, mdir style: "::/a/b" for files, "::/a/" for directories.
    static func walk(_ fs: FATVolume, _ inode: UInt64 = FAT.rootInode, prefix: String = "::/",
                     into out: inout [String: UInt64]) throws {
        for e in try fs.readDirectory(inode) {
            if e.type == .directory {
                out[prefix + e.name + "/"] = e.inode
                try walk(fs, e.inode, prefix: prefix + e.name + "/", into: &out)
            } else {
                out[prefix + e.name] = e.inode
            }
        }
    }
}

@Suite struct FATTests {
    @Test(arguments: [12, 16, 32])
    func listingAndContentsMatchMtools(bits: Int) throws {
        let dir = try FATFixture.dir()
        let fs = try FATFixture.open("\(dir)/fat\(bits).img")
        #expect(fs.typeName == "vfat")
        #expect(fs.boot.kind.rawValue == "FAT\(bits)")
        #expect(fs.warnings.isEmpty)
        var paths: [String: UInt64] = [:]
        try FATFixture.walk(fs, into: &paths)
        let mdir = try String(contentsOfFile: "\(dir)/mdir\(bits).txt", encoding: .utf8)
        let expected = Set(mdir.split(separator: "\n").map(String.init))
        #expect(Set(paths.keys) == expected)
        #expect(paths.count > 500)
        var files = 0
        for (path, inode) in paths where !path.hasSuffix("/") {
            let rel = String(path.dropFirst(3))
            let want = try Fixtures.read("\(dir)/out\(bits)/\(rel)")
            let st = try fs.stat(inode)
            #expect(st.type == .regular)
            #expect(st.mode == 0o100644)
            #expect(st.size == UInt64(want.count), "\(rel)")
            let got = try fs.read(inode, at: 0, count: want.count + 10)
            #expect(got == want, "\(rel)")
            var streamed: [UInt8] = []
            try fs.forEachChunk(inode, chunkSize: 3000) { streamed += $0 }
            #expect(streamed == want, "\(rel)")
            files += 1
        }
        #expect(files > 500)
        for (path, inode) in paths where path.hasSuffix("/") {
            let st = try fs.stat(inode)
            #expect(st.type == .directory && st.mode == 0o40755)
        }
        let root = try fs.stat(fs.rootInode)
        #expect(root.type == .directory)
        // Reads at an offset inside a multi-cluster file.
        if let big = paths["::/big.bin"] {
            let want = try Fixtures.read("\(dir)/out\(bits)/big.bin")
            #expect(try fs.read(big, at: 123_457, count: 5000) == Array(want[123_457..<128_457]))
            #expect(try fs.read(big, at: 999_990, count: 100) == Array(want[999_990...]))
            #expect(try fs.read(big, at: 2_000_000, count: 100).isEmpty)
        }
        #expect(paths["::/wide/"].map { (try? fs.readDirectory($0).count) ?? -1 } == 500)
    }

    @Test(arguments: [12, 16, 32])
    func labelUUIDMatchBlkid(bits: Int) throws {
        let dir = try FATFixture.dir()
        let fs = try FATFixture.open("\(dir)/fat\(bits).img")
        let blkid = try String(contentsOfFile: "\(dir)/blkid\(bits).txt", encoding: .utf8)
        var kv: [String: String] = [:]
        for line in blkid.split(separator: "\n") {
            let p = line.split(separator: "=", maxSplits: 1)
            if p.count == 2 { kv[String(p[0])] = String(p[1]) }
        }
        #expect(kv["TYPE"] == fs.typeName)
        #expect(kv["LABEL"] == fs.label)
        #expect(kv["UUID"] == fs.uuid)
        #expect(kv["VERSION"] == fs.boot.kind.rawValue)
        #expect(FAT.probe(RawDevice(file: try ImageFile(path: "\(dir)/fat\(bits).img"))))
    }

    @Test func mtimeFromDOSDateTime() throws {
        let dir = try FATFixture.dir()
        let fs = try FATFixture.open("\(dir)/fat16.img")
        let e = try #require(try fs.readDirectory(fs.rootInode).first { $0.name == "HELLO.TXT" })
        // 2001-02-03 04:05:06 UTC (mtools writes local time; the sandbox runs in UTC).
        let st = try fs.stat(e.inode)
        #expect(abs(st.mtime - 981_173_106) <= 1 || abs(st.mtime - 981_173_106) % 1800 <= 1)
        #expect(FAT.dosTime(date: (21 << 9) | (2 << 5) | 3, time: (4 << 11) | (5 << 5) | 3) == 981_173_106)
    }

    @Test func shortNameCaseFlags() throws {
        let dir = try FATFixture.dir()
        let fs = try FATFixture.open("\(dir)/fat12.img")
        let names = Set(try fs.readDirectory(fs.rootInode).map(\.name))
        #expect(names.contains("lower.txt"))
        #expect(names.contains("HELLO.TXT"))
        #expect(names.contains("MixedCase.Txt"))
        #expect(names.contains("日本語のファイル.txt"))
        var entry = [UInt8](repeating: 0x20, count: 32)
        entry.replaceSubrange(0..<5, with: Array("ABCDE".utf8))
        entry.replaceSubrange(8..<11, with: Array("TXT".utf8))
        entry[12] = 0x08
        #expect(String(decoding: FATVolume.shortName(entry[...]), as: UTF8.self) == "abcde.TXT")
        entry[12] = 0x18
        #expect(String(decoding: FATVolume.shortName(entry[...]), as: UTF8.self) == "abcde.txt")
    }

    @Test func probeRejectsOtherData() throws {
        #expect(!FAT.probe(MemoryDevice([UInt8](repeating: 0, count: 65536))))
        #expect(!FAT.probe(MemoryDevice([0xEB, 0x3C, 0x90])))
    }
}
