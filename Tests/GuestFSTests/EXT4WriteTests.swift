import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// Checked ext2/3/4 writes. After every operation `e2fsck -fn` must be clean;
/// contents, modes, owners and link counts are read back with debugfs.
enum EXT4WriteFixture {
    static let treeScript = #"""
    T="$1/tree"
    mkdir -p "$T/etc/ssh" "$T/big" "$T/frag" "$T/var/lib/cloud/instances/i-1/sem"
    cd "$T"
    echo old-host > etc/hostname
    printf '0123456789abcdef0123456789abcdef\n' > etc/machine-id
    echo private > etc/ssh/ssh_host_ed25519_key; chmod 600 etc/ssh/ssh_host_ed25519_key
    echo public > etc/ssh/ssh_host_ed25519_key.pub
    for i in $(seq 1 3000); do : > "big/entry_with_a_long_name_$i"; done
    for i in $(seq 1 400); do head -c 900 /dev/urandom > "frag/f$i"; done
    ln etc/hostname hardlink
    ln -s hostname etc/hostlink
    ln -s /../../etc/machine-id escape
    chown -R 1000:1000 etc/ssh
    """#

    struct Variant: Sendable, CustomStringConvertible {
        var name: String
        var mkfs: [String]
        var extents = true
        var description: String { name }
    }

    static let variants: [Variant] = [
        Variant(name: "ext4-4k", mkfs: ["mkfs.ext4", "-b", "4096"]),
        Variant(name: "ext4-1k", mkfs: ["mkfs.ext4", "-b", "1024"]),
        Variant(name: "ext4-nocsum", mkfs: ["mkfs.ext4", "-b", "4096", "-O", "^metadata_csum"]),
        Variant(name: "ext4-gdtcsum-1k", mkfs: ["mkfs.ext4", "-b", "1024", "-O", "^metadata_csum,uninit_bg"]),
        Variant(name: "ext4-32bit-1k", mkfs: ["mkfs.ext4", "-b", "1024", "-O", "^64bit"]),
        Variant(name: "ext4-csumseed", mkfs: ["mkfs.ext4", "-b", "4096", "-O", "metadata_csum_seed"]),
        Variant(name: "ext3", mkfs: ["mkfs.ext3", "-b", "4096"], extents: false),
        Variant(name: "ext3-1k", mkfs: ["mkfs.ext3", "-b", "1024"], extents: false),
        Variant(name: "ext2", mkfs: ["mkfs.ext2", "-b", "1024"], extents: false),
    ]

    /// A fresh copy of the variant's image (built once, cached): directories indexed by `e2fsck -fyD`.
    static func image(_ v: Variant, in dir: String) throws -> String {
        let recipe = treeScript + "\n" + v.mkfs.joined(separator: " ") + " 48M +e2fsck -fyD"
        let cached = try Fixtures.cached("ext4-write-\(v.name)", recipe: recipe) { d in
            try Tool.run(["bash", "-euo", "pipefail", "-c", treeScript, "tree", d])
            try Tool.run(v.mkfs + ["-q", "-F", "-d", d + "/tree", d + "/fs.img", "48M"])
            let r = try Tool.run(["e2fsck", "-fyD", d + "/fs.img"], check: false)
            if r.status > 1 { throw WardenError(.internal, "e2fsck -fyD exited \(r.status)") }
            try FileManager.default.removeItem(atPath: d + "/tree")
        }
        let out = dir + "/fs.img"
        try Tool.run(["cp", "--sparse=always", cached + "/fs.img", out])
        return out
    }

    /// `e2fsck -fn` must exit 0.
    static func fsck(_ image: String, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let r = try Tool.run(["e2fsck", "-fn", image], check: false)
        #expect(r.status == 0, "e2fsck -fn after \(what): \(r.stdoutText.suffix(1500)) \(r.stderr.suffix(300))", sourceLocation: sourceLocation)
    }

    static func cat(_ image: String, _ path: String) throws -> [UInt8] {
        [UInt8](try Tool.run(["debugfs", "-R", "cat \"\(path)\"", image]).stdout)
    }

    /// (mode, uid, gid, links, size) from `debugfs stat`.
    static func stat(_ image: String, _ path: String) throws -> (mode: String, uid: Int, gid: Int, links: Int, size: Int) {
        let out = try Tool.run(["debugfs", "-R", "stat \"\(path)\"", image]).stdoutText
        func field(_ name: String) -> String? {
            guard let r = out.range(of: name + ":") else { return nil }
            return out[r.upperBound...].split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).first.map(String.init)
        }
        return (field("Mode") ?? "?", Int(field("User") ?? "") ?? -1, Int(field("Group") ?? "") ?? -1,
                Int(field("Links") ?? "") ?? -1, Int(field("Size") ?? "") ?? -1)
    }

    static func sha(_ path: String) throws -> String {
        String(try Tool.run(["sha256sum", path]).stdoutText.prefix(64))
    }
}

@Suite struct EXT4WriteTests {
    typealias F = EXT4WriteFixture

    @Test(arguments: EXT4WriteFixture.variants)
    func operationsStayClean(_ v: EXT4WriteFixture.Variant) throws {
        try Fixtures.withTemporaryDirectory { dir in
            let img = try F.image(v, in: dir)
            try F.fsck(img, "building the fixture")
            let dev = try ImageOpener.openWritable(img).device
            let fs = try EXT4.openWritable(dev)
            var rng = SeededRandom(seed: 7)
            func random(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }

            // 1. Overwrite keeps inode, mode, owner, links.
            try fs.replaceContents(of: "/etc/hostname", with: Array("new-host\n".utf8))
            try F.fsck(img, "replaceContents")
            #expect(try F.cat(img, "/etc/hostname") == Array("new-host\n".utf8))
            var st = try F.stat(img, "/hardlink")
            #expect(st.mode == "0644" && st.links == 2 && st.size == 9)

            // 2. Through symlinks, confined to the guest root.
            try fs.replaceContents(of: "/etc/hostlink", with: Array("via-link\n".utf8))
            #expect(try F.cat(img, "/etc/hostname") == Array("via-link\n".utf8))
            try fs.replaceContents(of: "/escape", with: Array("fedcba9876543210fedcba9876543210\n".utf8))
            #expect(try F.cat(img, "/etc/machine-id") == Array("fedcba9876543210fedcba9876543210\n".utf8))
            try F.fsck(img, "writes through symlinks")

            // 3. A new file with mode and owner.
            let key = random(5000)
            try fs.createFile("/etc/ssh/ssh_host_rsa_key", contents: key, mode: 0o600, uid: 1000, gid: 1001)
            try F.fsck(img, "createFile")
            #expect(try F.cat(img, "/etc/ssh/ssh_host_rsa_key") == key)
            st = try F.stat(img, "/etc/ssh/ssh_host_rsa_key")
            #expect(st.mode == "0600" && st.uid == 1000 && st.gid == 1001 && st.links == 1 && st.size == 5000)
            #expect { try fs.createFile("/etc/ssh/ssh_host_rsa_key", contents: [], mode: 0o600, uid: 0, gid: 0) } throws: { e in
                (e as? WardenError)?.code == .conflict
            }
            // An empty file.
            try fs.createFile("/etc/empty", contents: [], mode: 0o644, uid: 0, gid: 0)
            #expect(try F.stat(img, "/etc/empty").size == 0)

            // 4. Fragment free space: unlink every other one-block file.
            for i in stride(from: 1, through: 400, by: 2) { try fs.unlink("/frag/f\(i)") }
            try F.fsck(img, "200 unlinks")
            #expect(try fs.readDirectory(try GuestPathResolver(fs).resolve("/frag").inode).count == 200)


            // Holes next to where the writer allocates: 300 one-block files, every other one unlinked.
            for i in 0..<300 { try fs.createFile("/frag/n\(i)", contents: [UInt8(i & 0xff)], mode: 0o644, uid: 0, gid: 0) }
            for i in stride(from: 0, to: 300, by: 2) { try fs.unlink("/frag/n\(i)") }
            try F.fsck(img, "300 creates and 150 unlinks")

            // 5. A file (next to the holes) growing across many fragmented blocks (extent tree depth 1 / indirect blocks).
            let bs = fs.sb.blockSize
            let grow = random(bs * 150 + 123)
            try fs.replaceContents(of: "/frag/grow", with: grow)
            try F.fsck(img, "a 150-block fragmented file")
            #expect(try F.cat(img, "/frag/grow") == grow)
            if v.extents {
                // 151 blocks into one-block holes: more than 4 extents, so a depth-1 tree with a leaf block.
                let ex = try Tool.run(["debugfs", "-R", "ex /frag/grow", img]).stdoutText
                #expect(ex.contains(" 1/ 1 "), "expected a depth-1 extent tree: \(ex.split(separator: "\n").prefix(4))")
            } else {
                let text = try Tool.run(["debugfs", "-R", "blocks /frag/grow", img]).stdoutText
                let blocks = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).count
                #expect(blocks == 152, "block-mapped file has \(blocks) blocks (151 data + 1 indirect expected): \(text.prefix(100))")
            }
            let bigger = random(bs * 700 + 1)
            try fs.replaceContents(of: "/frag/grow", with: bigger)
            try F.fsck(img, "growing to 700 blocks")
            #expect(try F.cat(img, "/frag/grow") == bigger)
            let gi = try GuestPathResolver(fs).resolve("/frag/grow").inode
            #expect(try fs.read(gi, at: 0, count: bigger.count) == bigger)

            // 6. Truncate down, then up (the new part reads as zeros).
            try fs.truncate("/frag/grow", to: 1000)
            try F.fsck(img, "truncate down")
            #expect(try F.cat(img, "/frag/grow") == Array(bigger[0..<1000]))
            try fs.truncate("/frag/grow", to: UInt64(bs * 5 + 7))
            try F.fsck(img, "truncate up")
            #expect(try F.cat(img, "/frag/grow") == Array(bigger[0..<1000]) + [UInt8](repeating: 0, count: bs * 5 + 7 - 1000))
            try fs.replaceContents(of: "/frag/grow", with: [])
            try F.fsck(img, "replace with nothing")

            // 7. Unlink with hard links: the link count drops, then the inode goes.
            try fs.unlink("/etc/hostname")
            try F.fsck(img, "unlink of one of two links")
            st = try F.stat(img, "/hardlink")
            #expect(st.links == 1)
            try fs.unlink("/hardlink")
            try fs.unlink("/etc/hostlink")
            try F.fsck(img, "unlink of the last link and a symlink")
            #expect { try fs.unlink("/hardlink") } throws: { e in (e as? WardenError)?.code == .notFound }
            #expect { try fs.unlink("/etc") } throws: { e in (e as? WardenError)?.code == .invalidArgument }

            // 8. Insert into an htree directory (made linear) and a small directory until it grows.
            for i in 0..<40 { try fs.createFile("/big/new_\(i)", contents: random(10), mode: 0o644, uid: 0, gid: 0) }
            try F.fsck(img, "inserts into an htree directory")
            for i in 0..<120 {
                try fs.createFile("/etc/ssh/a_rather_long_file_name_to_fill_directory_blocks_\(i)", contents: [], mode: 0o600, uid: 0, gid: 0)
            }
            try F.fsck(img, "a directory growing by blocks")
            let names = Set(try fs.readDirectory(try GuestPathResolver(fs).resolve("/etc/ssh").inode).map(\.name))
            #expect(names.count == 123 && names.contains("ssh_host_rsa_key"))
            for i in 0..<120 { try fs.unlink("/etc/ssh/a_rather_long_file_name_to_fill_directory_blocks_\(i)") }
            try F.fsck(img, "unlinking them again")

            // 9. Removing empty directories (the parent loses a link), refusing non-empty ones.
            let cloudLinks = try F.stat(img, "/var/lib/cloud/instances").links
            #expect { try fs.removeDirectory("/var/lib/cloud/instances") } throws: { e in (e as? WardenError)?.code == .conflict }
            #expect { try fs.removeDirectory("/etc/hostlink") } throws: { e in (e as? WardenError)?.code == .notFound }
            try fs.removeDirectory("/var/lib/cloud/instances/i-1/sem")
            try fs.removeDirectory("/var/lib/cloud/instances/i-1")
            try F.fsck(img, "removeDirectory")
            #expect(try F.stat(img, "/var/lib/cloud/instances").links == cloudLinks - 1)
            #expect(try fs.readDirectory(try GuestPathResolver(fs).resolve("/var/lib/cloud/instances").inode).isEmpty)
            #expect { try fs.removeDirectory("/big") } throws: { e in (e as? WardenError)?.code == .conflict }

            // 10. New filesystem UUID.
            let u = UUID()
            try fs.setFilesystemUUID(u)
            try fs.commit()
            try F.fsck(img, "setFilesystemUUID")
            let h = try Tool.run(["dumpe2fs", "-h", img]).stdoutText
            #expect(h.contains(u.uuidString.lowercased()))
            #expect(fs.uuid == u.uuidString.lowercased())
            // The reader sees the same bytes as debugfs, with no checksum warnings.
            let fresh = try EXT4.open(RawDevice(file: try ImageFile(path: img)))
            _ = try fresh.readDirectory(try GuestPathResolver(fresh).resolve("/big").inode)
            #expect(fresh.warnings.isEmpty, "\(fresh.warnings.prefix(3))")
        }
    }

    /// Writes that must reach BLOCK_UNINIT and INODE_UNINIT groups (small groups, few inodes).
    @Test(arguments: [["mkfs.ext4", "-b", "1024"], ["mkfs.ext4", "-b", "1024", "-O", "^metadata_csum,uninit_bg"],
                      ["mkfs.ext4", "-b", "4096", "-g", "2048"]])
    func uninitialisedGroups(_ mkfs: [String]) throws {
        try Fixtures.withTemporaryDirectory { dir in
            let img = dir + "/fs.img"
            try FileManager.default.createDirectory(atPath: dir + "/tree/d", withIntermediateDirectories: true)
            try Tool.run(mkfs + ["-q", "-F", "-N", "256", "-d", dir + "/tree", img, "48M"])
            func uninit() throws -> (blocks: Int, inodes: Int) {
                let out = try Tool.run(["dumpe2fs", img]).stdoutText
                return (out.components(separatedBy: "BLOCK_UNINIT").count - 1, out.components(separatedBy: "INODE_UNINIT").count - 1)
            }
            let before = try uninit()
            #expect(before.blocks > 0 && before.inodes > 0, "the fixture has no uninitialised groups: \(before)")
            let fs = try EXT4.openWritable(try ImageOpener.openWritable(img).device)
            var rng = SeededRandom(seed: 99)
            let big = (0..<(30 << 20)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            try fs.replaceContents(of: "/big", with: big)
            try EXT4WriteFixture.fsck(img, "a 30 MiB file across uninitialised block groups")
            #expect(try EXT4WriteFixture.cat(img, "/big") == big)
            for i in 0..<120 { try fs.createFile("/d/f\(i)", contents: [UInt8(i)], mode: 0o644, uid: 0, gid: 0) }
            try EXT4WriteFixture.fsck(img, "inodes in uninitialised inode groups")
            let after = try uninit()
            #expect(after.blocks < before.blocks && after.inodes < before.inodes, "\(before) -> \(after)")
            try fs.unlink("/big")
            for i in 0..<120 { try fs.unlink("/d/f\(i)") }
            try EXT4WriteFixture.fsck(img, "freeing it all again")
        }
    }

    /// A raw image must stay byte-identical when the writer refuses.
    func expectRefusal(_ img: String, _ contains: String) throws {
        let before = try F.sha(img)
        #expect { _ = try EXT4.openWritable(try ImageOpener.openWritable(img).device) } throws: { e in
            guard let w = e as? WardenError else { return false }
            return "\(w)".contains(contains) && !"\(w)".contains("\n")
        }
        #expect(try F.sha(img) == before)
    }

    @Test func refusesJournalRecoveryUnknownFeaturesAndBadChecksums() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let img = dir + "/a.img"
            try Tool.run(["mkfs.ext4", "-q", "-F", "-b", "4096", img, "16M"])
            try Tool.run(["debugfs", "-w", "-R", "feature needs_recovery", img])
            try expectRefusal(img, "needs_recovery")
            let b = dir + "/b.img"
            try Tool.run(["mkfs.ext4", "-q", "-F", "-O", "inline_data", b, "16M"])
            try expectRefusal(b, "inline_data")
            let c = dir + "/c.img"
            try Tool.run(["mkfs.ext4", "-q", "-F", "-O", "quota", c, "16M"])
            try expectRefusal(c, "quota")
            // A flipped byte in the superblock: checksum mismatch.
            let d = dir + "/d.img"
            try Tool.run(["mkfs.ext4", "-q", "-F", d, "16M"])
            var bytes = try Fixtures.read(d)
            bytes[1024 + 0x78] ^= 0x41   // volume name
            try Fixtures.write(bytes, to: d)
            try expectRefusal(d, "checksum")
            // An unknown incompatible bit is refused by the reader, naming it.
            let e = dir + "/e.img"
            try Tool.run(["mkfs.ext2", "-q", "-F", e, "8M"])
            bytes = try Fixtures.read(e)
            bytes[1024 + 0x60 + 3] |= 0x40
            try Fixtures.write(bytes, to: e)
            try expectRefusal(e, "unknown 0x40000000")
            // XFS and FAT cannot be written.
            let x = dir + "/x.img"
            try Tool.run(["mkfs.vfat", "-C", x, "8192"])
            #expect { _ = try GuestDisk.openMutableFileSystem(try ImageOpener.openWritable(x).device) } throws: { e in
                (e as? WardenError)?.code == .unsupported
            }
        }
    }

    @Test func writesThroughAQCOW2OverlayOfAPartitionedDisk() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let v = EXT4WriteFixture.variants[0]
            let fsImg = try F.image(v, in: dir)
            // GPT disk: partition 1 = the ext4 image.
            let disk = dir + "/disk.raw"
            try Tool.run(["truncate", "-s", "60M", disk])
            try Tool.run(["sgdisk", "-n", "1:2048:+48M", "-t", "1:8300", disk])
            try Tool.run(["dd", "if=\(fsImg)", "of=\(disk)", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"])
            try Tool.run(["qemu-img", "convert", "-O", "qcow2", disk, dir + "/base.qcow2"])
            let baseSum = try F.sha(dir + "/base.qcow2")
            try QCOW2Overlay.create(at: dir + "/clone.qcow2", backing: "base.qcow2", backingFormat: "qcow2")
            let overlay = try QCOW2Overlay.open(dir + "/clone.qcow2")
            // The fixture has /etc but no os-release or fstab: open the partition directly.
            let layout = try GuestDisk.layout(of: overlay)
            let vol = try GuestDisk.select(layout, partition: 1)
            let dev = try GuestDisk.device(for: vol, in: layout, on: overlay)
            let fs = try GuestDisk.openMutableFileSystem(try #require(dev as? any WritableBlockDevice))
            try fs.replaceContents(of: "/etc/machine-id", with: Array("11112222333344445555666677778888\n".utf8))
            try fs.createFile("/etc/os-release", contents: Array("ID=debian\n".utf8), mode: 0o644, uid: 0, gid: 0)
            try fs.unlink("/etc/ssh/ssh_host_ed25519_key")
            try fs.commit()
            // The writable guest view now finds the root (it has /etc/os-release).
            let view = try WritableGuestView.assemble(disk: overlay)
            let (rootFS, inside) = try view.resolve("/etc/../etc/hostname")
            #expect(inside == "/etc/hostname")
            try rootFS.replaceContents(of: inside, with: Array("clone-1\n".utf8))
            try view.commit()
            try QCOW2WriteChecks.check(dir + "/clone.qcow2")
            try Tool.run(["qemu-img", "convert", "-O", "raw", dir + "/clone.qcow2", dir + "/clone.raw"])
            try Tool.run(["dd", "if=\(dir)/clone.raw", "of=\(dir)/part.img", "bs=1M", "skip=1", "count=48", "status=none"])
            try F.fsck(dir + "/part.img", "writes through a qcow2 overlay")
            #expect(try F.cat(dir + "/part.img", "/etc/hostname") == Array("clone-1\n".utf8))
            #expect(try F.cat(dir + "/part.img", "/etc/machine-id") == Array("11112222333344445555666677778888\n".utf8))
            #expect(try F.sha(dir + "/base.qcow2") == baseSum)
            let cmp = try Tool.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", disk, dir + "/base.qcow2"], check: false)
            #expect(cmp.status == 0)
        }
    }
}

/// qemu-img check, shared with the overlay tests in this target.
enum QCOW2WriteChecks {
    static func check(_ image: String) throws {
        let r = try Tool.run(["qemu-img", "check", "--output=json", image], check: false)
        let json = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
        #expect((json["corruptions"] as? Int ?? 0) == 0 && (json["check-errors"] as? Int ?? 0) == 0
                && (json["leaks"] as? Int ?? 0) == 0, "\(r.stdoutText)")
    }
}
