import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// btrfs against the kernel and btrfs-progs: every entry of the top level (types, modes,
/// owners, sizes, inode numbers, times, link targets, file digests) as a read-only loop mount
/// shows it, on images written by mkfs.btrfs --rootdir and by the kernel with each compression.
@Suite(.enabled(if: BtrfsFixture.canMount, "needs root and loop devices to mount btrfs"))
struct BtrfsTests {
    /// (raid1-a and raid1-b are the two devices of one RAID1 filesystem, each read alone.)
    @Test(arguments: ["rootdir"] + BtrfsFixture.mounted + ["raid1-a", "raid1-b"])
    func topLevelMatchesTheKernel(_ name: String) throws {
        let dir = try BtrfsFixture.directory()
        let fs = try BtrfsFixture.open("\(dir)/\(name).img").subvolume(id: 5)
        #expect(fs.typeName == "btrfs")
        #expect(fs.warnings.isEmpty, "\(fs.warnings)")
        if name.hasPrefix("raid1") { #expect(fs.core.sb.numDevices == 2 && fs.core.sb.devid == (name == "raid1-a" ? 1 : 2)) }
        let oracle = try BtrfsFixture.oracle(dir, name.hasPrefix("raid1") ? "raid1" : name)
        let mine = try BtrfsFixture.walk(fs)
        #expect(oracle.lines.count > 1500, "the oracle listed the tree")
        #expect(Set(mine.lines.keys) == Set(oracle.lines.keys),
                "missing: \(Set(oracle.lines.keys).subtracting(mine.lines.keys).sorted().prefix(5)), extra: \(Set(mine.lines.keys).subtracting(oracle.lines.keys).sorted().prefix(5))")
        var compared = 0
        for (path, o) in oracle.lines {
            guard let m = mine.lines[path] else { continue }
            // type, mode, uid, gid, size
            #expect(Array(m[1...5]) == Array(o[1...5]), "\(name) \(path): \(m) vs \(o)")
            #expect(m[8] == o[8], "\(name) \(path) link target")
            if o[6] != "2" {   // the kernel makes up inode 2 (a missing nested subvolume) afresh, with the current time
                #expect(m[6] == o[6], "\(name) \(path) inode")
                let seconds = o[7].split(separator: ".").first.flatMap { Int64($0) }
                #expect(m[7] == seconds.map(String.init), "\(name) \(path) mtime \(m[7]) vs \(o[7])")
            }
            compared += 1
        }
        #expect(compared == oracle.lines.count)
        #expect(mine.sha == oracle.sha, "\(name): \(mine.sha.filter { oracle.sha[$0.key] != $0.value }.keys.sorted().prefix(5))")
        #expect(oracle.sha.count > 30)
    }

    /// Compressed extents were really met: the oracle's compressible files are stored
    /// compressed with the mount's algorithm, and inline.
    @Test(arguments: [("zstd-fedora", Btrfs.Compression.zstd), ("lzo-suse", Btrfs.Compression.lzo), ("zlib-plain", Btrfs.Compression.zlib)])
    func compressedExtentsAreRead(_ name: String, _ algorithm: UInt8) throws {
        let dir = try BtrfsFixture.directory()
        let top = try BtrfsFixture.open("\(dir)/\(name).img").subvolume(id: 5)
        let prefix = name == "zstd-fedora" ? "root/" : name == "lzo-suse" ? "@/.snapshots/1/snapshot/" : ""
        let r = GuestPathResolver(top)
        var kinds: Set<String> = []
        for file in ["numbers.txt", "inline-text"] {
            let ino = try r.resolve(prefix + file).inode
            let st = try top.stat(ino)
            for e in try top.extents(ino, size: st.size) where e.compression != 0 {
                #expect(e.compression == algorithm)
                switch e.kind {
                case .inline: kinds.insert("inline")
                case .regular: kinds.insert("regular")
                case .prealloc: break
                }
            }
        }
        #expect(kinds == ["inline", "regular"], "\(name): \(kinds)")
    }

    /// Subvolumes and snapshots against `btrfs subvolume list -p -u -q` and `get-default`.
    @Test(arguments: BtrfsFixture.mounted)
    func subvolumesMatchBtrfsProgs(_ name: String) throws {
        let dir = try BtrfsFixture.directory()
        let fs = try BtrfsFixture.open("\(dir)/\(name).img")
        let list = try fs.subvolumes()
        // ID 256 gen 7 parent 5 top level 5 parent_uuid - uuid U path P
        var oracle: [(UInt64, UInt64, String?, String, String)] = []
        for line in try String(contentsOfFile: "\(dir)/\(name).subvols", encoding: .utf8).split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard f.count >= 15, let id = UInt64(f[1]), let parent = UInt64(f[5]) else { continue }
            let puuid = f[10] == "-" ? nil : f[10]
            oracle.append((id, parent, puuid, f[12], f[14...].joined(separator: " ")))
        }
        #expect(list.count == oracle.count, "\(list.map(\.path)) vs \(oracle.map(\.4))")
        for (s, o) in zip(list, oracle) {
            #expect(s.id == o.0 && s.parentID == o.1 && s.parentUUID == o.2 && s.uuid == o.3 && s.path == o.4, "\(s) vs \(o)")
        }
        let def = UInt64(try String(contentsOfFile: "\(dir)/\(name).default", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(fs.subvolumeID == def, "the default subvolume")
        #expect(list.filter(\.isDefault).map(\.id) == (def == 5 ? [] : [def!]))
        if name == "zstd-fedora" {
            let snap = try #require(list.first { $0.path == "snapshots/root-1" })
            #expect(snap.readOnly && snap.isSnapshot)
            #expect(list.first { $0.path == "snapshots/home-rw" }?.readOnly == false)
            #expect(list.first { $0.path == "root/var/lib/machines" }?.parentID == list.first { $0.path == "root" }?.id)
            // The snapshot is a view of its own: the file changed after it is as it was.
            let view = try fs.subvolume(path: "/snapshots/root-1/")
            let r = GuestPathResolver(view)
            #expect(String(decoding: try view.read(try r.resolve("small.txt").inode, at: 0, count: 100), as: UTF8.self) == "hello, world\n")
            #expect((try? r.resolve("rand_100")) != nil)
            #expect(try view.readDirectory(try r.resolve("var/lib/machines").inode).isEmpty, "a nested subvolume is an empty directory in a snapshot")
            #expect(throws: WardenError.self) { try fs.subvolume(path: "no/such") }
        }
    }

    /// Distribution layouts assemble as the guest mounts them: Fedora's root and home
    /// subvolumes under a top-level default (fstab's subvol=), and openSUSE's default
    /// subvolume snapshot with /home from subvol=/@/home.
    @Test(arguments: [("zstd-fedora", "/root", "/home", "alice/notes"), ("lzo-suse", "/@/.snapshots/1/snapshot", "/@/home", "readme")])
    func guestViewAssemblesSubvolumes(_ name: String, _ rootSub: String, _ homeSub: String, _ homeFile: String) throws {
        let dir = try BtrfsFixture.directory()
        let disk = RawDevice(file: try ImageFile(path: "\(dir)/\(name).img"))
        let layout = try GuestDisk.layout(of: disk)
        let view = try GuestView.assemble(disk: disk, layout: layout)
        #expect(view.problems.isEmpty, "\(view.problems)")
        #expect(view.mounts.map(\.path) == ["/", "/home"])
        #expect(view.mounts.map(\.subvolume) == [rootSub, homeSub])
        #expect(view.mounts.allSatisfy { $0.type == "btrfs" })
        let hostname = try view.resolve("/etc/hostname")
        #expect(String(decoding: try hostname.fs.read(hostname.inode, at: 0, count: 64), as: UTF8.self) == "btrfs-guest\n")
        #expect((try? view.resolve("/home/" + homeFile)) != nil)
    }
}

/// Damaged and hostile btrfs images: typed errors or warnings, never a trap; the superblock
/// mirror stands in for a damaged primary.
@Suite(.enabled(if: BtrfsFixture.canMount, "needs root and loop devices to mount btrfs"))
struct BtrfsDamageTests {
    static func damaged(_ name: String, _ edit: (inout [UInt8]) throws -> Void, _ body: (String) throws -> Void) throws {
        let dir = try BtrfsFixture.directory()
        try Fixtures.withTemporaryDirectory { tmp in
            var bytes = try Fixtures.read("\(dir)/\(name).img")
            try edit(&bytes)
            try Fixtures.write(bytes, to: tmp + "/d.img")
            try body(tmp + "/d.img")
        }
    }

    @Test func aDamagedPrimarySuperblockFallsBackToTheMirror() throws {
        try Self.damaged("none-dup", { b in for i in 0x10040..<0x10048 { b[i] = 0 } }) { path in
            let fs = try BtrfsFixture.open(path)
            #expect(fs.warnings.contains { $0.contains("primary superblock is unusable") }, "\(fs.warnings)")
            #expect((try? GuestPathResolver(fs).resolve("etc/hostname")) != nil)
        }
        try Self.damaged("none-dup", { b in b[0x10100] ^= 0xFF }) { path in
            let fs = try BtrfsFixture.open(path)
            #expect(fs.warnings.contains { $0.contains("fails its checksum") }, "\(fs.warnings)")
        }
    }

    /// With DUP metadata a damaged copy of a node is read from the other copy, silently;
    /// with single metadata the damage is a warning (bad checksum) or a typed error.
    @Test func damagedNodesAreReportedOrReadFromTheirCopy() throws {
        for name in ["none-dup", "zlib-plain"] {
            let dir = try BtrfsFixture.directory()
            let clean = try BtrfsFixture.open("\(dir)/\(name).img")
            let root = try clean.core.treeRoot(clean.subvolumeID)
            let (offsets, _) = try clean.core.physical(root.bytenr)
            try Self.damaged(name, { b in
                let at = Int(offsets[0]) + 200
                for i in at..<(at + 64) { b[i] ^= 0x5A }
            }) { path in
                do {
                    let fs = try BtrfsFixture.open(path)
                    _ = try? BtrfsFixture.walk(fs)
                    if name == "none-dup" {
                        #expect(offsets.count == 2)
                        #expect(fs.warnings.isEmpty, "DUP: the other copy verifies: \(fs.warnings)")
                        #expect(try BtrfsFixture.walk(fs).lines.count == (try BtrfsFixture.walk(clean).lines.count))
                    } else {
                        #expect(fs.warnings.contains { $0.contains("checksum mismatch") }, "\(fs.warnings)")
                    }
                } catch let e as WardenError {
                    #expect(name == "zlib-plain", "\(e.message)")
                }
            }
        }
    }

    /// Random damage to the metadata of an image with one copy of it (so checksums cannot
    /// repair it): every open and walk ends in a result with warnings or in a typed error.
    @Test func randomMetadataDamageNeverTraps() throws {
        let dir = try BtrfsFixture.directory()
        let fs = try BtrfsFixture.open("\(dir)/zlib-plain.img")
        // The metadata nodes actually in use: the root, chunk and filesystem trees' blocks.
        var nodes: [UInt64] = []
        for root in [(fs.core.sb.root, fs.core.sb.rootLevel), (fs.core.sb.chunkRoot, fs.core.sb.chunkRootLevel)] {
            try fs.core.walkNodes(root: root.0, level: root.1) { nodes.append($0) }
        }
        let tree = try fs.core.treeRoot(fs.subvolumeID)
        try fs.core.walkNodes(root: tree.bytenr, level: tree.level) { nodes.append($0) }
        // Only the nodes a walk reads: leaves holding nothing but a large directory's
        // name-hash entries (DIR_ITEM; listings use DIR_INDEX) are never read, so damage there
        // changes nothing Warden reports.
        let reader = try BtrfsFixture.open("\(dir)/zlib-plain.img")
        _ = try BtrfsFixture.walk(reader)
        nodes = nodes.filter { reader.core.hasRead($0) }
        #expect(nodes.count > 5)
        var rng = SeededRandom(seed: 24)
        var detected = 0
        try Fixtures.withTemporaryDirectory { tmp in
            let path = tmp + "/d.img"
            try Tool.run(["cp", "--sparse=always", "\(dir)/zlib-plain.img", path])
            let handle = try #require(FileHandle(forUpdatingAtPath: path))
            defer { try? handle.close() }
            for _ in 0..<40 {
                // Damage 8 bytes of one or two nodes, then put them back.
                var saved: [(UInt64, Data)] = []
                for _ in 0..<(1 + rng.below(2)) {
                    let node = nodes[rng.below(nodes.count)]
                    // (Bytes 4…31 of the checksum field are unused by crc32c: damage there changes nothing.)
                    let at = try fs.core.physical(node).offsets[0] + 32 + UInt64(rng.below(fs.core.sb.nodeSize - 40))
                    try handle.seek(toOffset: at)
                    saved.append((at, try handle.read(upToCount: 8) ?? Data()))
                    try handle.seek(toOffset: at)
                    try handle.write(contentsOf: (0..<8).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
                }
                try handle.synchronize()
                do {
                    let d = try BtrfsFixture.open(path)
                    _ = try BtrfsFixture.walk(d, maxHashed: 16 << 20)
                    if !d.warnings.isEmpty { detected += 1 }
                } catch is WardenError {
                    detected += 1
                }
                for (at, bytes) in saved.reversed() {
                    try handle.seek(toOffset: at)
                    try handle.write(contentsOf: bytes)
                }
            }
        }
        #expect(detected == 40, "every damaged node is noticed (checksum warning or typed error): \(detected) of 40")
    }
}

