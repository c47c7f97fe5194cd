import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

@Suite struct XFSTests {
    static func dbType(_ t: FileType?) -> String {
        switch t {
        case .regular?: return "regular"
        case .directory?: return "directory"
        case .symlink?: return "symlink"
        case .characterDevice?: return "chardev"
        case .blockDevice?: return "blkdev"
        case .fifo?: return "fifo"
        case .socket?: return "socket"
        case nil: return "unknown"
        }
    }

    static func lookup(_ fs: XFSVolume, _ path: String) throws -> UInt64 {
        var ino = fs.rootInode
        for part in path.split(separator: "/") {
            guard let e = try fs.readDirectory(ino).first(where: { $0.name == part }) else {
                throw WardenError.notFound("no \(path)")
            }
            ino = e.inode
        }
        return ino
    }

    @Test(arguments: XFSFixture.variants)
    func treeMatchesModelAndXfsDB(_ v: XFSFixture.Variant) throws {
        let image = try XFSFixture.image(v)
        let src = try XFSFixture.sources()
        let fs = try XFSFixture.open(image)
        #expect(fs.typeName == "xfs")
        #expect(fs.sb.hasCRC == v.crc)
        #expect(fs.sb.hasFtype == v.ftype)
        #expect(fs.warnings.isEmpty, "\(fs.warnings)")

        // Label, UUID, type against blkid.
        let blk = try Tool.run(["blkid", "-p", "-o", "export", image]).stdoutText
        var tags: [String: String] = [:]
        for line in blk.split(separator: "\n") {
            let kv = line.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { tags[String(kv[0])] = String(kv[1]) }
        }
        #expect(tags["TYPE"] == "xfs")
        #expect(tags["UUID"] == fs.uuid)
        #expect(tags["LABEL"] == v.label)
        #expect(fs.label == v.label)

        var coreChecks: [(UInt64, XFSFixture.Node, String)] = []
        func walk(_ node: XFSFixture.Node, ino: UInt64, path: String) throws {
            let st = try fs.stat(ino)
            #expect(st.permissions == node.perms, "\(v) \(path) mode")
            #expect(st.uid == node.uid && st.gid == node.gid, "\(v) \(path) owner")
            if node.name != "many" && !path.hasPrefix("/many/") { coreChecks.append((ino, node, path)) }
            switch node.kind {
            case .dir(let kids):
                #expect(st.type == .directory)
                let entries = try fs.readDirectory(ino)
                #expect(entries.count == kids.count, "\(v) \(path) entry count")
                let byName = Dictionary(entries.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
                #expect(byName.count == entries.count, "\(v) \(path) duplicate names")
                let oracle = try XFSFixture.dbList(image, path.isEmpty ? "/" : path)
                #expect(oracle.count == entries.count, "\(v) \(path) xfs_db count")
                for e in entries {
                    let o = oracle[e.name]
                    #expect(o?.0 == e.inode, "\(v) \(path)/\(e.name) inode")
                    if v.ftype { #expect(o?.1 == Self.dbType(e.type), "\(v) \(path)/\(e.name) type") }
                    else { #expect(e.type == nil) }
                }
                for k in kids {
                    guard let e = byName[k.name] else {
                        Issue.record("\(v) \(path)/\(k.name) missing")
                        continue
                    }
                    try walk(k, ino: e.inode, path: path + "/" + k.name)
                }
            case .file(let s):
                #expect(st.type == .regular)
                let want = try Fixtures.read(src + "/" + s)
                #expect(st.size == UInt64(want.count), "\(v) \(path) size")
                var got: [UInt8] = []
                try fs.forEachChunk(ino, chunkSize: 65536) { got += $0 }
                #expect(got == want, "\(v) \(path) content")
                if want.count > 10 {
                    let mid = want.count / 3
                    #expect(try fs.read(ino, at: UInt64(mid), count: 7) == Array(want[mid..<(mid + 7)]))
                    #expect(try fs.read(ino, at: UInt64(want.count - 3), count: 100) == Array(want.suffix(3)))
                }
                #expect(try fs.read(ino, at: UInt64(want.count), count: 10) == [])
            case .symlink(let t):
                #expect(st.type == .symlink)
                #expect(try fs.readLink(ino) == Array(t.utf8), "\(v) \(path) target")
                #expect(st.size == UInt64(t.utf8.count))
            case .fifo: #expect(st.type == .fifo)
            case .char: #expect(st.type == .characterDevice)
            case .block: #expect(st.type == .blockDevice)
            }
        }
        try walk(XFSFixture.model(), ino: fs.rootInode, path: "")

        // Inode cores against xfs_db, in one batch.
        var cmds: [String] = []
        for (ino, _, _) in coreChecks { cmds += ["inode \(ino)", "print core.mode core.uid core.gid core.size core.nlinkv2"] }
        let out = try XFSFixture.xfsDB(image, cmds)
        var blocks: [[String: String]] = []
        for line in out.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let k = parts[0].trimmingCharacters(in: .whitespaces), val = parts[1].trimmingCharacters(in: .whitespaces)
            if k == "core.mode" { blocks.append([:]) }
            if !blocks.isEmpty { blocks[blocks.count - 1][k] = val }
        }
        #expect(blocks.count == coreChecks.count)
        for (i, (ino, _, path)) in coreChecks.enumerated() where i < blocks.count {
            let st = try fs.stat(ino)
            let b = blocks[i]
            #expect(b["core.mode"].flatMap { UInt32($0, radix: 8) } == st.mode, "\(v) \(path) core.mode")
            #expect(b["core.uid"] == String(st.uid))
            #expect(b["core.gid"] == String(st.gid))
            if st.type == .regular || st.type == .directory || st.type == .symlink {
                #expect(b["core.size"] == String(st.size), "\(v) \(path) core.size")
            }
            #expect(b["core.nlinkv2"] == String(st.links), "\(v) \(path) nlink")
            #expect(st.mtime > 1_600_000_000)
        }
        // mkfs.xfs -p 6.1 writes headerless v5 remote symlink blocks: the only warnings allowed.
        #expect(fs.warnings.allSatisfy { $0.contains("lacks its XSLM header") }, "\(fs.warnings)")
    }

    @Test(arguments: XFSFixture.variants)
    func directoryAndForkFormats(_ v: XFSFixture.Variant) throws {
        let image = try XFSFixture.image(v)
        let fs = try XFSFixture.open(image)
        var formats: [String: String] = [:]
        for p in ["/few", "/mid", "/many", "/size_3000000", "/fastlink", "/remotelink", "/longlink"] {
            let ino = try Self.lookup(fs, p)
            let f = try XFSFixture.dbCore(image, ino, ["core.format"])["core.format"] ?? "?"
            formats[p] = f
            let ours = try fs.inode(ino).format
            #expect(f.hasPrefix("\(ours) "), "\(v) \(p): xfs_db \(f), ours \(ours)")
        }
        #expect(formats["/few"]?.contains("local") == true)
        #expect(formats["/fastlink"]?.contains("local") == true)
        #expect(formats["/longlink"]?.contains("extents") == true)
        #expect(formats["/many"]?.contains("local") == false)
        // Record which shapes this variant exercised (the 5000-entry directory is btree-format
        // on the fixtures this was written against: its blocks interleave with file data).
        print("xfs \(v): formats \(formats.sorted { $0.key < $1.key })")
    }

    @Test func probeAndRefuseOthers() throws {
        let image = try XFSFixture.image(XFSFixture.variants[0])
        let dev = RawDevice(file: try ImageFile(path: image))
        #expect(XFS.probe(dev))
        #expect(!XFS.probe(MemoryDevice([UInt8](repeating: 0, count: 4096))))
        #expect(!XFS.probe(MemoryDevice([0x58, 0x46])))
        let fs = try XFS.open(dev)
        let file = try Self.lookup(fs, "/small.txt")
        let dir = try Self.lookup(fs, "/few")
        #expect(throws: WardenError.self) { try fs.readDirectory(file) }
        #expect(throws: WardenError.self) { try fs.read(dir, at: 0, count: 1) }
        #expect(throws: WardenError.self) { try fs.readLink(file) }
        #expect(throws: WardenError.self) { try fs.read(file, at: 0, count: -1) }
        #expect(throws: WardenError.self) { try fs.stat(0) }
        #expect(throws: WardenError.self) { try fs.stat(UInt64.max) }
        // Block 1 of AG 0 holds a btree root, not inodes.
        #expect(throws: WardenError.self) { try fs.stat(UInt64(1) << UInt64(fs.sb.inodesPerBlockLog)) }
    }
}

/// Holes and unwritten extents, made with `xfs_db -x` (mkfs.xfs -p fills holes in with zeros).
@Suite struct XFSHoleTests {
    @Test func holesAndUnwrittenExtentsReadAsZeros() throws {
        let v = XFSFixture.variants[0]
        let image = try XFSFixture.image(v)
        let fs0 = try XFSFixture.open(image)
        let sparseIno = try XFSTests.lookup(fs0, "/size_65536")
        let unwrittenIno = try XFSTests.lookup(fs0, "/size_4097")
        let cmds = ["inode \(sparseIno)", "write u3.bmx[0].startoff 100", "write core.size 10000000",
                    "inode \(unwrittenIno)", "write u3.bmx[0].extentflag 1"]
        let dir = try Fixtures.cached("xfs-holes", recipe: image + cmds.joined(separator: ";")) { dir in
            try Tool.run(["cp", "--sparse=always", image, dir + "/fs.img"])
            _ = try XFSFixture.xfsDB(dir + "/fs.img", cmds, expert: true)
        }
        let patched = dir + "/fs.img"
        // Oracle: xfs_db's own view of the two maps.
        let bmap1 = try XFSFixture.xfsDB(patched, ["inode \(sparseIno)", "bmap"])
        #expect(bmap1.contains("data offset 100 "), "\(bmap1)")
        let bmap2 = try XFSFixture.xfsDB(patched, ["inode \(unwrittenIno)", "bmap"])
        #expect(bmap2.contains("flag 1"), "\(bmap2)")

        let fs = try XFSFixture.open(patched)
        let src = try XFSFixture.sources()
        let data = try Fixtures.read(src + "/size_65536")
        var want = [UInt8](repeating: 0, count: 10_000_000)
        want.replaceSubrange(409_600..<(409_600 + data.count), with: data)
        #expect(try fs.stat(sparseIno).size == 10_000_000)
        var got: [UInt8] = []
        try fs.forEachChunk(sparseIno, chunkSize: 1 << 20) { got += $0 }
        #expect(got == want)
        #expect(try fs.read(sparseIno, at: 409_590, count: 20) == Array(want[409_590..<409_610]))
        #expect(try fs.read(sparseIno, at: 9_999_990, count: 100) == [UInt8](repeating: 0, count: 10))
        #expect(try fs.read(unwrittenIno, at: 0, count: 5000) == [UInt8](repeating: 0, count: 4097))
        #expect(fs.warnings.isEmpty, "\(fs.warnings)")
    }
}
