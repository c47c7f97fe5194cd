import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
import Crypto
@testable import GuestFS

/// NTFS volumes made by mkntfs and populated through the ntfs-3g driver (FUSE, on a file the
/// test made), read back by Warden and compared with ntfs-3g's own offline tools: ntfsls for
/// listings, ntfscat for contents.
enum NTFSFixture {
    /// A reparse buffer (symbolic link or junction) for ntfs-3g's `system.ntfs_reparse_data`.
    static let reparse = #"""
    import struct, sys
    kind, target = sys.argv[1], sys.argv[2]
    sub = target.encode("utf-16-le"); pr = target.replace("\\??\\", "").encode("utf-16-le")
    if kind == "junction":
        body = struct.pack("<HHHH", 0, len(sub), len(sub) + 2, len(pr)) + sub + b"\0\0" + pr + b"\0\0"
        tag = 0xA0000003
    else:
        flags = 1 if kind == "relative" else 0
        body = struct.pack("<HHHHI", 0, len(sub), len(sub), len(pr), flags) + sub + pr
        tag = 0xA000000C
    print("0x" + (struct.pack("<IHH", tag, len(body), 0) + body).hex())
    """#

    static let script = #"""
    export LC_ALL=C.UTF-8
    D="$1"; cd "$D"
    truncate -s 96M ntfs.img
    mkntfs -q -F -f -L WinTest -s 512 -c 4096 ntfs.img >/dev/null 2>&1
    mkdir mnt
    ntfs-3g -o compression ntfs.img mnt
    trap 'umount "$D/mnt" 2>/dev/null || true' EXIT
    cd mnt
    mkdir -p Windows/System32/config "Program Files/App" Users/alice/Documents Users/bob empty
    printf 'hello ntfs\n' > Users/alice/hello.txt
    printf 'Grüße € 日本\n' > "Users/alice/Übung ünïcödé 日本語.txt"
    long=$(printf 'L%.0s' $(seq 1 200)); printf 'long\n' > "Users/bob/$long.txt"
    for i in $(seq 1 700); do printf 'file %d\n' $i > "Windows/System32/f$i.dll"; done
    head -c 3000000 /dev/urandom > Users/alice/big.bin
    ln Users/alice/hello.txt Users/bob/hello-link.txt
    truncate -s 20M Users/alice/sparse.bin && printf 'tail\n' >> Users/alice/sparse.bin
    printf 'head\n' | dd of=Users/alice/sparse2.bin bs=1 seek=0 conv=notrunc 2>/dev/null; truncate -s 9M Users/alice/sparse2.bin
    setfattr -n user.Zone.Identifier -v "[ZoneTransfer] ZoneId=3" Users/alice/hello.txt
    setfattr -h -v 0x00000800 -n system.ntfs_attrib_be "Program Files/App"
    { yes 'compress me please, I repeat myself ' || true; } | head -c 300000 > "Program Files/App/readme.txt"
    head -c 50000 /dev/urandom > "Program Files/App/random.bin"
    cat /usr/share/common-licenses/GPL-3 > "Program Files/App/license.txt"
    : > Users/alice/Documents/empty.txt
    # 150 hard links: their $FILE_NAMEs overflow the 1 KiB record into extension records
    # listed by an $ATTRIBUTE_LIST.
    mkdir Users/carol; printf 'many names\n' > Users/carol/base.txt
    for i in $(seq 1 150); do ln Users/carol/base.txt "Users/carol/a-rather-long-hard-link-name-number-$i.txt"; done
    mkdir Users/alice/junction-in Users/alice/junction-out
    touch Users/alice/link-rel Users/alice/link-abs Users/alice/link-escape
    setfattr -h -n system.ntfs_reparse_data -v $(python3 "$D/reparse.py" junction '\??\C:\Windows\System32') Users/alice/junction-in
    setfattr -h -n system.ntfs_reparse_data -v $(python3 "$D/reparse.py" junction '\??\D:\elsewhere') Users/alice/junction-out
    setfattr -h -n system.ntfs_reparse_data -v $(python3 "$D/reparse.py" relative '..\bob\hello-link.txt') Users/alice/link-rel
    setfattr -h -n system.ntfs_reparse_data -v $(python3 "$D/reparse.py" absolute '\??\C:\Users\alice\hello.txt') Users/alice/link-abs
    setfattr -h -n system.ntfs_reparse_data -v $(python3 "$D/reparse.py" absolute '\??\C:\..\..\..\etc\passwd') Users/alice/link-escape
    cd "$D"
    umount mnt
    trap - EXIT
    ntfsinfo -m ntfs.img > ntfsinfo.txt 2>/dev/null
    """#

    static func dir() throws -> String {
        try Fixtures.cached("ntfs", recipe: script + reparse) { dir in
            try reparse.write(toFile: dir + "/reparse.py", atomically: true, encoding: .utf8)
            try Tool.run(["bash", "-euo", "pipefail", "-c", script, "ntfs", dir], timeout: 600)
        }
    }

    static func open(_ path: String) throws -> NTFSVolume {
        try NTFS.open(RawDevice(file: try ImageFile(path: path)))
    }

    static var available: Bool {
        getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/fuse")
            && ["/usr/bin/ntfs-3g", "/usr/sbin/mkntfs", "/usr/bin/ntfsls", "/usr/bin/ntfscat"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

@Suite(.enabled(if: NTFSFixture.available, "needs root, /dev/fuse and ntfs-3g"))
struct NTFSTests {
    /// Every directory's names against `ntfsls -p DIR`, every regular file's bytes against `ntfscat`.
    @Test func listingsAndContentsMatchNtfs3g() throws {
        let dir = try NTFSFixture.dir()
        let img = dir + "/ntfs.img"
        let fs = try NTFSFixture.open(img)
        #expect(fs.typeName == "ntfs" && fs.label == "WinTest")
        var directories = 0, files = 0, compared = 0
        func walk(_ inode: UInt64, _ path: String) throws {
            let entries = try fs.readDirectory(inode)
            let ours = Set(entries.map(\.name))
            let listed = try Tool.run(["ntfsls", "-p", path.isEmpty ? "/" : path, img]).stdoutText
                .split(separator: "\n").map(String.init).filter { $0 != "." && $0 != ".." }
            #expect(ours == Set(listed), "\(path): ours \(ours.subtracting(listed)), ntfsls \(Set(listed).subtracting(ours))")
            directories += 1
            for e in entries {
                let p = path + "/" + e.name
                let st = try fs.stat(e.inode)
                switch st.type {
                case .directory: try walk(e.inode, p)
                case .regular:
                    files += 1
                    // ntfscat for all but most of the 700 small files (every 25th of those).
                    if path.hasSuffix("System32") && files % 25 != 0 { continue }
                    let theirs = try Tool.run(["ntfscat", img, p]).stdout
                    let mine = try fs.read(e.inode, at: 0, count: Int(st.size) + 10)
                    #expect(Data(mine) == theirs, "\(p): \(mine.count) bytes, ntfscat \(theirs.count)")
                    #expect(st.size == UInt64(theirs.count))
                    compared += 1
                default: break
                }
            }
        }
        try walk(fs.rootInode, "")
        #expect(directories >= 10 && files > 700 && compared >= 35, "\(directories) \(files) \(compared)")
        // The CLI's manifest agrees with ntfscat too (hashes of a sample).
        let manifest = try Tool.run([Fixtures.wardenBinary, "image", "manifest", img]).stdoutText.split(separator: "\n")
        let rows = manifest.map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }.filter { $0.count == 7 && $0[0] == "f" }
        #expect(rows.count == files, "\(rows.count) manifest rows, \(files) files")
        for row in rows where !row[6].contains("System32/f") || row[6].hasSuffix("f7.dll") {
            let theirs = try Tool.run(["ntfscat", img, row[6]]).stdout
            #expect(row[5] == SHA256.hash(data: theirs).map { String(format: "%02x", $0) }.joined(), "\(row[6])")
        }
        #expect(fs.warnings.isEmpty, "\(fs.warnings)")
    }

    @Test func compressedSparseHardLinksStreamsAndNames() throws {
        let dir = try NTFSFixture.dir()
        let fs = try NTFSFixture.open(dir + "/ntfs.img")
        let view = GuestPathResolver(fs)
        let readme = try view.resolve(Array("/Program Files/App/readme.txt".utf8))
        let r = try fs.fileRecord(readme.inode)
        #expect(r.attribute(.data)?.isCompressed == true, "the fixture's file is compressed")
        let text = String(decoding: try fs.read(readme.inode, at: 0, count: 400_000), as: UTF8.self)
        #expect(text.count == 300_000 && text.hasPrefix("compress me please, I repeat myself \ncompress"))
        // A read starting inside a compression unit, across the next.
        let mid = try fs.read(readme.inode, at: 65_530, count: 20)
        #expect(String(decoding: mid, as: UTF8.self) == String(text.utf8.dropFirst(65_530).prefix(20))!)
        let sparse = try view.resolve(Array("/Users/alice/sparse.bin".utf8))
        #expect(sparse.stat.size == 20 * 1024 * 1024 + 5)
        #expect(try fs.read(sparse.inode, at: 10 << 20, count: 8) == [UInt8](repeating: 0, count: 8))
        #expect(String(decoding: try fs.read(sparse.inode, at: 20 << 20, count: 10), as: UTF8.self) == "tail\n")
        // Hard links: one record, two names, link count 2.
        let a = try view.resolve(Array("/Users/alice/hello.txt".utf8)), b = try view.resolve(Array("/Users/bob/hello-link.txt".utf8))
        #expect(a.inode == b.inode && a.stat.links == 2)
        // Alternate data streams are listed, never read as the file.
        #expect(try fs.streams(a.inode).map(\.name) == ["Zone.Identifier"])
        #expect(String(decoding: try fs.read(a.inode, at: 0, count: 100), as: UTF8.self) == "hello ntfs\n")
        // Case-insensitive lookup through $UpCase, including non-ASCII letters.
        #expect(try view.resolve(Array("/USERS/ALICE/HELLO.TXT".utf8)).inode == a.inode)
        #expect(try view.resolve(Array("/users/alice/übung ÜNÏCÖDÉ 日本語.TXT".utf8)).stat.size == UInt64("Grüße € 日本\n".utf8.count))
        // A file whose names spill into extension records through $ATTRIBUTE_LIST.
        let carol = try view.resolve(Array("/Users/carol/base.txt".utf8))
        #expect(carol.stat.links == 151)
        #expect(try fs.fileRecord(carol.inode).attributes.contains { $0.type == 0x30 } && String(decoding: try fs.read(carol.inode, at: 0, count: 64), as: UTF8.self) == "many names\n")
        let (raw, _, _) = try fs.rawRecord(carol.inode)
        let inBase = try NTFS.parseAttributes(raw, record: carol.inode, clusters: fs.clusters)
        #expect(inBase.contains { $0.type == 0x20 } && inBase.filter { $0.type == 0x30 }.count < 151, "the names are spread over extension records")
        let long = try fs.readDirectory(try view.resolve(Array("/Users/bob".utf8)).inode).first { $0.name.hasPrefix("LLLL") }
        #expect(long?.name.count == 204)
    }

    @Test func linksAndJunctionsResolveInsideTheVolume() throws {
        let dir = try NTFSFixture.dir()
        let fs = try NTFSFixture.open(dir + "/ntfs.img")
        let view = GuestPathResolver(fs)
        let hello = try view.resolve(Array("/Users/alice/hello.txt".utf8)).inode
        func link(_ p: String) throws -> String { String(decoding: try fs.readLink(try view.resolve(Array(p.utf8), followFinal: false).inode), as: UTF8.self) }
        #expect(try link("/Users/alice/junction-in") == "/Windows/System32")
        #expect(try link("/Users/alice/link-rel") == "../bob/hello-link.txt")
        #expect(try link("/Users/alice/link-abs") == "/Users/alice/hello.txt")
        #expect(try view.resolve(Array("/Users/alice/junction-in/f7.dll".utf8)).stat.size == 7)
        #expect(try view.resolve(Array("/Users/alice/link-rel".utf8)).inode == hello)
        #expect(try view.resolve(Array("/Users/alice/link-abs".utf8)).inode == hello)
        // Another drive and an escape by "..": both stay inside the guest root, and resolve nowhere.
        #expect(try link("/Users/alice/junction-out") == "/elsewhere")
        #expect(throws: WardenError.self) { _ = try view.resolve(Array("/Users/alice/junction-out/x".utf8)) }
        #expect(throws: WardenError.self) { _ = try view.resolve(Array("/Users/alice/link-escape".utf8)) }
        #expect(try fs.stat(try view.resolve(Array("/Users/alice/junction-in".utf8), followFinal: false).inode).type == .symlink)
    }
}

/// Hand-made damage on the ntfs-3g fixture: a record whose fixups do not match, a runlist that
/// points outside the volume, a directory index whose runs loop back onto the MFT. Each is a
/// WardenError from the library and exit 2 with one line from the CLI; nothing traps or hangs.
@Suite(.enabled(if: NTFSFixture.available, "needs root, /dev/fuse and ntfs-3g"))
struct NTFSDamageTests {
    /// The byte offset of MFT record `n` (mkntfs lays the MFT out contiguously).
    static func recordOffset(_ fs: NTFSVolume, _ n: UInt64) -> Int {
        Int(fs.boot.mftCluster * fs.boot.clusterSize) + Int(n) * fs.boot.recordSize
    }

    /// The offset (inside the record) of the runlist of the first non-resident attribute of `type`.
    static func runlist(_ image: [UInt8], record at: Int, type: UInt32) throws -> Int {
        var off = Int(try image.le(at + 0x14, UInt16.self))
        while true {
            let t = try image.le(at + off, UInt32.self)
            guard t != 0xFFFF_FFFF else { throw WardenError.notFound("no attribute 0x\(String(type, radix: 16))") }
            if t == type && image[at + off + 8] != 0 { return off + Int(try image.le(at + off + 32, UInt16.self)) }
            off += Int(try image.le(at + off + 4, UInt32.self))
        }
    }

    static func cli(_ args: [String]) throws -> ToolResult {
        try Tool.run([Fixtures.wardenBinary] + args, check: false, timeout: 60)
    }

    @Test func damagedRecordsAndRunsAreErrorsNotCrashes() throws {
        let dir = try NTFSFixture.dir()
        let good = try Fixtures.read(dir + "/ntfs.img")
        let fs = try NTFSFixture.open(dir + "/ntfs.img")
        let view = GuestPathResolver(fs)
        let big = try view.resolve(Array("/Users/alice/big.bin".utf8)).inode
        let system32 = try view.resolve(Array("/Windows/System32".utf8)).inode
        try Fixtures.withTemporaryDirectory { tmp in
            // 1. The root's record: the last two bytes of its first sector no longer match the
            //    update sequence number (a torn write).
            var torn = good
            torn[Self.recordOffset(fs, 5) + 510] ^= 0xFF
            try Fixtures.write(torn, to: tmp + "/torn.img")
            #expect(throws: WardenError.self) { _ = try NTFSFixture.open(tmp + "/torn.img").readDirectory(5) }
            // 2. big.bin's runlist: its first run starts far outside the volume.
            var outside = good
            let rl = Self.recordOffset(fs, big) + (try Self.runlist(good, record: Self.recordOffset(fs, big), type: 0x80))
            outside.replaceSubrange(rl..<rl + 6, with: [0x41, 0x10, 0xF0, 0xFF, 0xFF, 0x7F])
            try Fixtures.write(outside, to: tmp + "/outside.img")
            #expect(throws: WardenError.self) { _ = try NTFSFixture.open(tmp + "/outside.img").read(big, at: 0, count: 100) }
            // 3. System32's index allocation: its run loops back onto the MFT's own clusters,
            //    so its "index blocks" are FILE records.
            var loop = good
            let irl = Self.recordOffset(fs, system32) + (try Self.runlist(good, record: Self.recordOffset(fs, system32), type: 0xA0))
            let mft = fs.boot.mftCluster
            loop.replaceSubrange(irl..<irl + 6, with: [0x41, UInt8(4), UInt8(mft & 0xFF), UInt8(mft >> 8 & 0xFF), UInt8(mft >> 16 & 0xFF), UInt8(mft >> 24 & 0xFF)])
            try Fixtures.write(loop, to: tmp + "/loop.img")
            #expect(throws: WardenError.self) { _ = try NTFSFixture.open(tmp + "/loop.img").readDirectory(system32) }

            for (img, args) in [("torn", ["image", "ls"]), ("outside", ["image", "cat"]), ("loop", ["image", "ls"])] {
                let path = args[1] == "cat" ? "/Users/alice/big.bin" : (img == "loop" ? "/Windows/System32" : "/")
                let r = try Self.cli(args + [tmp + "/\(img).img", path])
                let lines = r.stderr.split(separator: "\n").filter { !$0.hasPrefix("warden: using ") }
                #expect(r.status == 2 && lines.count == 1 && lines[0].contains("\(img).img"), "\(img): \(r.status) \(r.stderr)")
            }
        }
    }
}

/// BitLocker volumes are recognised by their boot sector and reported, not read.
@Suite struct BitLockerTests {
    @Test func recognisedAndRefused() throws {
        var sector = [UInt8](repeating: 0, count: 64 * 1024)
        sector.replaceSubrange(0..<11, with: [0xEB, 0x58, 0x90] + Array("-FVE-FS-".utf8))
        sector[510] = 0x55; sector[511] = 0xAA
        #expect(try FilesystemProbe.probe(MemoryDevice(sector))?.type == "BitLocker")
        let e = try #require(throws: WardenError.self) { _ = try GuestDisk.openFileSystem(MemoryDevice(sector)) }
        #expect(e.code == .unsupported && e.message.contains("BitLocker"))
    }
}
