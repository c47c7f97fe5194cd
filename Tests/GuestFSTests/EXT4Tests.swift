import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// One line of `find -printf` output for the source tree.
struct SourceEntry {
    var path: String
    var type: String
    var perms: UInt32
    var uid: UInt32
    var gid: UInt32
    var size: UInt64
    var mtime: Int64
    var link: String
}

func loadListing(_ tree: String) throws -> [SourceEntry] {
    let text = String(decoding: try Fixtures.read(tree + "/listing.tsv"), as: UTF8.self)
    return text.split(separator: "\n").compactMap { line in
        let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        guard f.count >= 8 else { return nil }
        let t = Double(f[6]) ?? 0
        return SourceEntry(path: f[0], type: f[1], perms: UInt32(f[2], radix: 8) ?? 0, uid: UInt32(f[3]) ?? 0,
                           gid: UInt32(f[4]) ?? 0, size: UInt64(f[5]) ?? 0, mtime: Int64(t.rounded(.down)),
                           link: f[7...].joined(separator: "\t"))
    }
}

/// debugfs `ls -p` records: per directory path, name -> (inode, mode, uid, gid, size or nil).
struct DebugfsEntry { var inode: UInt64; var mode: UInt32; var uid: UInt32; var gid: UInt32; var size: UInt64? }

func debugfsListings(_ image: String, dirs: [String]) throws -> [String: [String: DebugfsEntry]] {
    let out = try EXT4Fixture.debugfs(image, dirs.map { "ls -p \"/\($0)\"" })
    var result: [String: [String: DebugfsEntry]] = [:]
    var current: String?
    for line in out.split(separator: "\n", omittingEmptySubsequences: true) {
        if line.hasPrefix("debugfs: ls -p ") {
            var p = String(line.dropFirst("debugfs: ls -p ".count))
            if p.hasPrefix("\"") && p.hasSuffix("\"") { p = String(p.dropFirst().dropLast()) }
            current = String(p.dropFirst())  // drop leading "/"
            result[current!] = [:]
            continue
        }
        guard let cur = current, line.hasPrefix("/") else { continue }
        let f = line.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        // "", ino, mode, uid, gid, name, size, ""
        guard f.count >= 8 else { continue }
        let name = f[5..<(f.count - 2)].joined(separator: "/")
        if name == "." || name == ".." || name.isEmpty || f[1] == "0" { continue }
        result[cur]![name] = DebugfsEntry(inode: UInt64(f[1]) ?? 0, mode: UInt32(f[2], radix: 8) ?? 0,
                                          uid: UInt32(f[3]) ?? 0, gid: UInt32(f[4]) ?? 0,
                                          size: f[f.count - 2].isEmpty ? nil : UInt64(f[f.count - 2]))
    }
    return result
}

/// Compares a file's content streamed by `fs` with the source file, chunk by chunk.
func compareContent(_ fs: any FileSystem, _ ino: UInt64, source: String) throws -> Bool {
    guard let h = FileHandle(forReadingAtPath: source) else { return false }
    defer { try? h.close() }
    var offset: UInt64 = 0
    var same = true
    try fs.forEachChunk(ino) { chunk in
        let expected = h.readData(ofLength: chunk.count)
        if expected.count != chunk.count { same = false; return }
        let eq = expected.withUnsafeBytes { e in chunk.withUnsafeBytes { c in memcmp(e.baseAddress!, c.baseAddress!, c.count) == 0 } }
        if !eq { same = false }
        offset += UInt64(chunk.count)
    }
    let rest = h.readData(ofLength: 1)
    return same && rest.isEmpty
}

@Suite struct EXT4TreeTests {
    @Test(arguments: EXT4Fixture.variants)
    func treeMatchesTools(_ v: EXT4Fixture.Variant) throws {
        let (image, tree) = try EXT4Fixture.image(v)
        let fs = try EXT4Fixture.open(image)

        // Identity against blkid.
        let blkid = try Tool.run(["blkid", "-p", "-o", "export", image]).stdoutText
        var tags: [String: String] = [:]
        for line in blkid.split(separator: "\n") {
            let kv = line.split(separator: "=", maxSplits: 1).map(String.init)
            if kv.count == 2 { tags[kv[0]] = kv[1] }
        }
        #expect(fs.typeName == tags["TYPE"])
        #expect(fs.uuid == tags["UUID"])
        #expect(fs.label == tags["LABEL"])
        #expect(fs.warnings.isEmpty, "\(fs.warnings)")

        // Walk our view of the tree.
        var pathToInode: [String: UInt64] = ["": fs.rootInode]
        var ourDirs: [String: [DirectoryEntry]] = [:]
        var pending = [""]
        while let dir = pending.popLast() {
            let entries = try fs.readDirectory(try #require(pathToInode[dir]))
            ourDirs[dir] = entries
            for e in entries {
                let p = dir.isEmpty ? e.name : dir + "/" + e.name
                pathToInode[p] = e.inode
                let st = try fs.stat(e.inode)
                if let t = e.type { #expect(t == st.type, "\(p)") }
                if st.type == .directory { pending.append(p) }
            }
        }

        // Every directory entry matches debugfs ls -p.
        let oracle = try debugfsListings(image, dirs: ourDirs.keys.sorted())
        #expect(oracle.count == ourDirs.count)
        for (dir, entries) in ourDirs {
            let expected = try #require(oracle[dir], "debugfs did not list /\(dir)")
            #expect(Set(entries.map(\.name)) == Set(expected.keys), "/\(dir)")
            #expect(entries.count == expected.count, "/\(dir)")
            for e in entries {
                guard let x = expected[e.name] else { continue }
                let st = try fs.stat(e.inode)
                #expect(e.inode == x.inode, "/\(dir)/\(e.name)")
                #expect(st.mode == x.mode, "/\(dir)/\(e.name)")
                #expect(st.uid == x.uid && st.gid == x.gid, "/\(dir)/\(e.name)")
                if let size = x.size { #expect(st.size == size, "/\(dir)/\(e.name)") }
            }
        }

        // Every source entry matches: type, permissions, owner, mtime, size, target, content.
        let listing = try loadListing(tree)
        #expect(listing.count > 5000)
        for s in listing {
            guard let ino = pathToInode[s.path] else {
                Issue.record("missing \(s.path)")
                continue
            }
            let st = try fs.stat(ino)
            #expect(st.type.rawValue == s.type, "\(s.path)")
            #expect(st.permissions == s.perms, "\(s.path)")
            #expect(st.uid == s.uid && st.gid == s.gid, "\(s.path)")
            // mkfs -d (e2fsprogs 1.47.0) drops the epoch bits of times past 2038, so only
            // 32-bit source times are an oracle.
            if s.type != "d" && s.mtime <= Int64(Int32.max) { #expect(st.mtime == s.mtime, "\(s.path)") }
            switch s.type {
            case "f":
                var source = tree + "/tree/" + s.path
                if st.size != s.size {
                    // mkfs -d -O inline_data (e2fsprogs 1.47.0) loses trailing holes; debugfs is the oracle then.
                    let dumped = image + ".dump-" + s.path.replacingOccurrences(of: "/", with: "_")
                    if !FileManager.default.fileExists(atPath: dumped) {
                        _ = try EXT4Fixture.debugfs(image, ["dump \"/\(s.path)\" \"\(dumped)\""])
                    }
                    source = dumped
                }
                if s.path == "huge" && !v.streamHuge {
                    let src = try #require(FileHandle(forReadingAtPath: tree + "/tree/huge"))
                    for off: UInt64 in [0, 4096, 4_295_016_448, 4_295_020_544, 5_368_709_110] {
                        try src.seek(toOffset: off)
                        let want = [UInt8](src.readData(ofLength: 8192))
                        #expect(try fs.read(ino, at: off, count: 8192) == want, "huge at \(off)")
                    }
                    try src.close()
                } else {
                    #expect(try compareContent(fs, ino, source: source), "content of \(s.path)")
                }
            case "l":
                #expect(String(decoding: try fs.readLink(ino), as: UTF8.self) == s.link, "\(s.path)")
                #expect(st.size == UInt64(s.link.utf8.count))
            default: break
            }
        }
        #expect(fs.warnings.isEmpty, "\(fs.warnings)")
    }

    @Test func smallReadsAtOddOffsets() throws {
        let (image, tree) = try EXT4Fixture.image(EXT4Fixture.variants[2])
        let fs = try EXT4Fixture.open(image)
        let entries = try fs.readDirectory(fs.rootInode)
        for name in ["sparse", "size_3000000", "frag", "size_61"] {
            let e = try #require(entries.first { $0.name == name })
            let src = try Fixtures.read(tree + "/tree/" + name)
            for (off, n) in [(0, 1), (1, 1023), (1023, 2), (4095, 4099), (409_500, 13_000), (src.count - 7, 100), (src.count, 10)] {
                guard off >= 0, off <= src.count else { continue }
                let want = Array(src[off..<min(src.count, off + n)])
                #expect(try fs.read(e.inode, at: UInt64(off), count: n) == want, "\(name) at \(off)")
            }
        }
        #expect(try fs.read(try #require(entries.first { $0.name == "small.txt" }).inode, at: 1 << 40, count: 10) == [])
    }

    @Test func extentTreeDepthMatchesDebugfs() throws {
        for v in [EXT4Fixture.variants[0], EXT4Fixture.variants[2]] {
            let (image, _) = try EXT4Fixture.image(v)
            let fs = try EXT4Fixture.open(image)
            let e = try #require(try fs.readDirectory(fs.rootInode).first { $0.name == "frag" })
            let ino = try fs.inode(e.inode)
            let depth = Int(try ino.iBlock.le(6) as UInt16)
            // debugfs ex prints "Level Entries ..." rows like " 0/ 2   1/  1 ...": the "/ N" is the tree depth.
            let ex = try EXT4Fixture.debugfs(image, ["ex /frag"])
            let row = try #require(ex.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("0/") })
            let toolDepth = Int(row.split(separator: "/")[1].trimmingCharacters(in: .whitespaces).split(separator: " ")[0])
            #expect(depth == toolDepth, "\(v.name)")
            #expect(depth >= 1, "\(v.name)")
            if v.name == "ext4-1k" { #expect(depth >= 2) }
            #expect(try fs.extents(of: ino).count >= 1200)
        }
    }

    @Test func htreeDirectoriesAreIndexedAndListed() throws {
        let v = try #require(EXT4Fixture.variants.first { $0.name == "ext4-htree" })
        let (image, _) = try EXT4Fixture.image(v)
        let fs = try EXT4Fixture.open(image)
        let many = try #require(try fs.readDirectory(fs.rootInode).first { $0.name == "many" })
        #expect(try fs.inode(many.inode).has(EXT4.InodeFlags.indexDir))
        // debugfs agrees the directory is an htree.
        let htree = try EXT4Fixture.debugfs(image, ["htree /many"])
        #expect(htree.contains("Root node dump"))
        let names = try fs.readDirectory(many.inode).map(\.name)
        #expect(names.count == 5000)
        #expect(Set(names).count == 5000)
        #expect(fs.warnings.isEmpty, "\(fs.warnings)")
    }

    @Test func htreeChecksumMismatchIsAWarning() throws {
        let v = try #require(EXT4Fixture.variants.first { $0.name == "ext4-htree" })
        let (image, _) = try EXT4Fixture.image(v)
        let stat = try EXT4Fixture.debugfs(image, ["stat /many"])
        let r = try #require(stat.range(of: "(0):") ?? stat.range(of: "(0-") .flatMap { x in stat[x.upperBound...].range(of: "):") })
        let block = try #require(Int(stat[r.upperBound...].prefix { $0.isNumber }))
        try Fixtures.withTemporaryDirectory { dir in
            var bytes = try Fixtures.read(image)
            let bs = try EXT4Fixture.open(image).sb.blockSize
            bytes[block * bs + 0x2C] ^= 0x55  // inside the dx root's entries
            try Fixtures.write(bytes, to: dir + "/fs.img")
            let fs = try EXT4Fixture.open(dir + "/fs.img")
            let many = try #require(try fs.readDirectory(fs.rootInode).first { $0.name == "many" })
            #expect(try fs.readDirectory(many.inode).count == 5000)
            #expect(fs.warnings.contains { $0.contains("directory inode \(many.inode) htree block 0 checksum mismatch") }, "\(fs.warnings)")
        }
    }

    @Test func probeRecognisesTheMagic() throws {
        let (image, _) = try EXT4Fixture.image(EXT4Fixture.variants[0])
        #expect(EXT4.probe(RawDevice(file: try ImageFile(path: image))))
        try Fixtures.withTemporaryDirectory { dir in
            try Fixtures.write([UInt8](repeating: 0, count: 4096), to: dir + "/zero.img")
            #expect(!EXT4.probe(RawDevice(file: try ImageFile(path: dir + "/zero.img"))))
            try Fixtures.write([UInt8](repeating: 0, count: 1000), to: dir + "/tiny.img")
            #expect(!EXT4.probe(RawDevice(file: try ImageFile(path: dir + "/tiny.img"))))
        }
    }

    @Test func forEachChunkDispatchesThroughProtocol() throws {
        let (image, tree) = try EXT4Fixture.image(EXT4Fixture.variants[0])
        let fs: any FileSystem = try EXT4Fixture.open(image)
        let e = try #require(try fs.readDirectory(fs.rootInode).first { $0.name == "size_3000000" })
        var sizes: [Int] = []
        var all: [UInt8] = []
        try fs.forEachChunk(e.inode, chunkSize: 1 << 16) { sizes.append($0.count); all += $0 }
        #expect(sizes.allSatisfy { $0 <= 1 << 16 })
        #expect(all == (try Fixtures.read(tree + "/tree/size_3000000")))
    }
}


/// Symlinks whose i_blocks is not zero though their target is in i_block — as the kernel leaves
/// a short symlink with an xattr stored in an inode of its own (ea_inode charges it to the
/// link): read as debugfs reads them ("Fast link dest").
@Suite struct EXT4FastSymlinkTests {
    @Test func aShortTargetIsReadFromIBlockWhateverIBlocksSays() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try FileManager.default.createDirectory(atPath: dir + "/t/etc", withIntermediateDirectories: true)
            try "x\n".write(toFile: dir + "/t/etc/os-release", atomically: true, encoding: .utf8)
            try FileManager.default.createSymbolicLink(atPath: dir + "/t/link", withDestinationPath: "/etc/os-release")
            try FileManager.default.createSymbolicLink(atPath: dir + "/t/long", withDestinationPath: String(repeating: "d/", count: 40) + "os-release")
            try Tool.run(["mkfs.ext4", "-q", "-F", "-O", "ea_inode", "-d", dir + "/t", dir + "/fs.img", "16M"])
            #expect(try Tool.run(["e2fsck", "-fn", dir + "/fs.img"], check: false).status == 0)
            // The kernel's charge of an xattr inode to the link, emulated: i_blocks = 8.
            _ = try EXT4Fixture.debugfs(dir + "/fs.img", ["sif /link blocks 8"], write: true)
            let stat = try EXT4Fixture.debugfs(dir + "/fs.img", ["stat /link", "stat /long"])
            #expect(stat.contains("Fast link dest: \"/etc/os-release\"") && stat.contains("Blockcount: 8"), "\(stat)")
            let fs = try EXT4Fixture.open(dir + "/fs.img")
            let r = GuestPathResolver(fs)
            let link = try r.resolve("/link", followFinal: false)
            #expect(String(decoding: try fs.readLink(link.inode), as: UTF8.self) == "/etc/os-release")
            let long = try r.resolve("/long", followFinal: false)
            #expect(String(decoding: try fs.readLink(long.inode), as: UTF8.self) == String(repeating: "d/", count: 40) + "os-release")
        }
    }
}
