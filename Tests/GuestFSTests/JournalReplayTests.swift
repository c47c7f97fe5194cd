import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// Dirty ext4 journals made with debugfs's journal commands (`jo`, `jw`, `jc`), replayed in
/// memory, against e2fsck: a copy of each image recovered by `e2fsck -fy` must show the same
/// tree (manifest) as Warden's in-memory replay of the untouched image.
@Suite struct JournalReplayTests {
    static let scenarios = ["meta", "meta1k", "revoke", "csum", "escape", "torn", "badcsum"]

    static let recipe = #"""
    set -eu
    mkdir -p tree/etc tree/data
    echo "original content" > tree/hello.txt
    for i in $(seq 1 24); do head -c $((i * 700 + 13)) /dev/urandom > tree/data/f$i; done
    echo base > tree/etc/hostname
    printf 'write /etc/hostname /etc/newfile\nrm /data/f3\nmkdir /newdir\nwrite /hello.txt /newdir/copy\nsymlink /newdir/link /etc/hostname\n' > cmds
    # meta / meta1k: the blocks a real change wrote, journalled into the unchanged image.
    meta() {
      name=$1; shift
      truncate -s 64M $name.base; mkfs.ext4 -q -F "$@" -d tree $name.base
      cp $name.base $name.after; debugfs -w -f cmds $name.after >/dev/null 2>&1
      bs=$(dumpe2fs -h $name.base 2>/dev/null | awk '/^Block size/ {print $3}')
      { cmp -l $name.base $name.after || true; } | awk -v bs=$bs '{print int(($1-1)/bs)}' | sort -un > $name.blocks
      : > $name.bin
      for b in $(cat $name.blocks); do dd if=$name.after bs=$bs skip=$b count=1 status=none >> $name.bin; done
      cp $name.base $name.img
      printf 'jo\njw -b %s %s.bin\njc\n' "$(paste -sd, $name.blocks)" $name >jcmds
      debugfs -w -f jcmds $name.img >/dev/null 2>&1
    }
    meta meta -b 4096
    meta meta1k -b 1024 -O ^64bit,^metadata_csum
    B=$(debugfs -R "bmap /hello.txt 0" meta.base 2>/dev/null)
    head -c 4096 /dev/zero > zero.bin
    python3 -c "open('a.bin','wb').write(b'first transaction\n'.ljust(4096, b'\0'))"
    python3 -c "open('e.bin','wb').write(bytes([0xc0, 0x3b, 0x39, 0x98]) + b'escaped'.ljust(4092, b'\0'))"
    one() { cp meta.base $1.img; printf "$2" > jcmds; debugfs -w -f jcmds $1.img >/dev/null 2>&1; }
    one revoke "jo\njw -b $B a.bin\njc\njo\njw -r $B zero.bin\njc\n"
    one csum "jo -c\njw -b $B a.bin\njc\n"
    one escape "jo\njw -b $B e.bin\njc\n"
    # torn: the commit block (log block 3: descriptor 1, data 2) never reached the disk.
    one torn "jo\njw -b $B a.bin\njc\n"
    c=$(debugfs -R "bmap <8> 3" torn.img 2>/dev/null); dd if=/dev/zero of=torn.img bs=4096 seek=$c count=1 conv=notrunc status=none
    # badcsum: a checksummed journal whose data block was damaged after its checksum.
    one badcsum "jo -c\njw -b $B a.bin\njc\n"
    d=$(debugfs -R "bmap <8> 2" badcsum.img 2>/dev/null); printf 'X' | dd of=badcsum.img bs=1 seek=$((d * 4096 + 5)) conv=notrunc status=none
    for s in meta meta1k revoke csum escape torn badcsum; do cp $s.img $s.fixed; e2fsck -fy $s.fixed >/dev/null 2>&1 || true; done
    rm -rf tree *.bin jcmds
    """#

    static func fixtures() throws -> String {
        try Fixtures.cached("ext4-journal-replay", recipe: recipe) { dir in try Tool.sh(recipe, cwd: dir) }
    }

    static func manifest(_ fs: any FileSystem) throws -> [String] {
        var lines: [String] = []
        var b = ManifestBuilder(fs)
        try b.build { lines.append($0.line) }
        #expect(b.errors.isEmpty, "\(b.errors)")
        return lines
    }

    static func open(_ path: String, replay: Bool) throws -> EXT4Volume {
        let file = try ImageFile(path: path)
        return try EXT4.open(RawDevice(file: file), replay: replay)
    }

    @Test(arguments: scenarios) func replayedInMemoryAsE2fsckRecovers(_ scenario: String) throws {
        let dir = try Self.fixtures()
        let dirty = try Self.open(dir + "/\(scenario).img", replay: true)
        let fixed = try Self.open(dir + "/\(scenario).fixed", replay: true)
        #expect(!fixed.sb.hasIncompat(EXT4.Incompat.recover), "e2fsck recovered its copy")
        #expect(try Self.manifest(dirty) == Self.manifest(fixed))
        let r = try #require(dirty.journalReplay, "the replayed view says so: \(dirty.warnings)")
        #expect(dirty.warnings.contains { $0.contains("replayed in memory") })
        switch scenario {
        case "meta", "meta1k":
            #expect(r.transactions == 1 && r.blocks > 3 && r.revoked == 0)
            // The change is visible only through the replay.
            let raw = try Self.open(dir + "/\(scenario).img", replay: false)
            #expect(try Self.manifest(raw) != Self.manifest(fixed))
            #expect(raw.journalReplay == nil && raw.warnings.contains { $0.contains("not replayed") })
            #expect(try Self.manifest(dirty) == Self.manifest(try Self.open(dir + "/\(scenario).after", replay: true)))
        case "revoke": #expect(r.transactions == 2 && r.blocks == 0 && r.revoked == 1)
        case "csum", "escape": #expect(r.transactions == 1 && r.blocks == 1)
        case "torn": #expect(r.transactions == 0 && r.blocks == 0 && r.incompleteTransaction)
        case "badcsum": #expect(r.transactions == 1 && r.blocks == 0 && r.badChecksums == 1)
        default: Issue.record("unknown scenario \(scenario)")
        }
        // The image files themselves are never written.
        #expect(try Self.open(dir + "/\(scenario).img", replay: false).sb.hasIncompat(EXT4.Incompat.recover))
    }

    @Test func escapedBlockGetsItsMagicBack() throws {
        let dir = try Self.fixtures()
        let fs = try Self.open(dir + "/escape.img", replay: true)
        let ino = try #require(try fs.readDirectory(fs.rootInode).first { $0.name == "hello.txt" })
        let head = try fs.read(ino.inode, at: 0, count: 11)
        #expect(head == [0xC0, 0x3B, 0x39, 0x98] + Array("escaped".utf8))
    }

    /// Damaged journal superblocks leave the filesystem readable, with a warning, unreplayed.
    @Test func aDamagedJournalIsReportedNotTrusted() throws {
        let dir = try Self.fixtures()
        try Fixtures.withTemporaryDirectory { tmp in
            var bytes = try Fixtures.read(dir + "/csum.img")
            let fs = try Self.open(dir + "/csum.img", replay: false)
            let jsb = try #require(try fs.runs(try fs.inode(8), from: 0, to: 1).first?.physical)
            bytes[Int(jsb) * 4096 + 0x1C] ^= 0x40     // s_start, under the superblock checksum
            try Fixtures.write(bytes, to: tmp + "/bad.img")
            let v = try Self.open(tmp + "/bad.img", replay: true)
            #expect(v.journalReplay == nil)
            #expect(v.warnings.contains { $0.contains("could not be replayed") && $0.contains("checksum") }, "\(v.warnings)")
        }
    }
}
