import Foundation
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// Builds ext2/3/4 images with real tools (mkfs -d) from one populated tree.
enum EXT4Fixture {
    /// Populates `$1/tree` and writes `$1/listing.tsv` (GNU find: path, type, perms, uid, gid, size, mtime, link).
    static let treeScript = #"""
    T="$1/tree"
    mkdir -p "$T"
    cd "$T"
    : > empty
    printf 'hello, world\n' > small.txt
    for n in 1 59 60 61 1023 1024 1025 4095 4096 4097 65536 1048577 3000000; do
      head -c $n /dev/urandom > "size_$n"
    done
    truncate -s 10M sparse
    dd if=/dev/urandom of=sparse bs=4096 count=3 seek=100 conv=notrunc status=none
    dd if=/dev/urandom of=sparse bs=1000 count=1 seek=7000 conv=notrunc status=none
    truncate -s 12M sparse
    truncate -s 5G huge
    printf 'abc' | dd of=huge conv=notrunc status=none
    dd if=/dev/urandom of=huge bs=4096 count=2 seek=1048832 conv=notrunc status=none
    printf 'tail!' | dd of=huge bs=1 seek=$((5368709120 - 5)) conv=notrunc status=none
    truncate -s $((4096 * 2400)) frag
    for i in $(seq 0 2 2399); do
      dd if=/dev/urandom of=frag bs=4096 count=1 seek=$i conv=notrunc status=none
    done
    mkdir many
    for i in $(seq 1 5000); do : > "many/entry_with_a_longish_name_$i"; done
    ln -s small.txt fastlink
    ln -s "$(printf 'a%.0s' $(seq 1 80))/../small.txt" slowlink
    ln -s "$(printf 'b%.0s' $(seq 1 300))" verylonglink
    ln -s /../../etc escape
    ln -s nowhere dangling
    ln -s small.txt chain0
    for i in $(seq 1 20); do ln -s chain$((i - 1)) chain$i; done
    mkfifo fifo
    mknod chardev c 1 3
    mknod blockdev b 7 0
    echo suid > suid; chmod 4755 suid
    mkdir sticky; chmod 1777 sticky
    echo secret > private; chmod 0600 private
    echo owned > owned; chown 1000:1234 owned
    mkdir -p dir/sub/deeper dir/tiny
    echo deep > dir/sub/deeper/file
    echo t > dir/tiny/t
    chown -R 1234:1000 dir/sub
    echo spaced > "name with spaces"
    ln small.txt hardlink
    touch -d '2001-02-03 04:05:06' small.txt
    touch -h -d '1960-01-01 00:00:00' empty
    touch -d '2100-06-07 08:09:10' size_1
    cd "$1"
    find tree -mindepth 1 -printf '%P\t%y\t%m\t%U\t%G\t%s\t%T@\t%l\n' > listing.tsv
    """#

    static func tree() throws -> String {
        try Fixtures.cached("ext4-tree", recipe: treeScript) { dir in
            try Tool.run(["bash", "-euo", "pipefail", "-c", treeScript, "tree-script", dir])
        }
    }

    struct Variant: Sendable, CustomStringConvertible {
        var name: String
        /// mkfs command, with the image path and size appended.
        var mkfs: [String]
        var size: String = "96M"
        /// Whether to stream the 5 GiB sparse file fully.
        var streamHuge = false
        /// Run `e2fsck -fyD` afterwards (rebuilds directories as htrees).
        var reindex = false
        var description: String { name }
    }

    static let variants: [Variant] = [
        Variant(name: "ext4", mkfs: ["mkfs.ext4", "-b", "4096", "-L", "warden-ext4"], streamHuge: true),
        Variant(name: "ext4-32bit", mkfs: ["mkfs.ext4", "-b", "4096", "-O", "^64bit"]),
        Variant(name: "ext4-1k", mkfs: ["mkfs.ext4", "-b", "1024", "-L", "one-k"]),
        Variant(name: "ext4-nocsum", mkfs: ["mkfs.ext4", "-b", "4096", "-O", "^metadata_csum"]),
        Variant(name: "ext4-inline", mkfs: ["mkfs.ext4", "-b", "4096", "-O", "inline_data"]),
        Variant(name: "ext4-noextent", mkfs: ["mkfs.ext4", "-b", "4096", "-O", "^extent,^64bit"]),
        Variant(name: "ext4-metabg", mkfs: ["mkfs.ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"], size: "200M"),
        Variant(name: "ext4-csumseed", mkfs: ["mkfs.ext4", "-b", "4096", "-O", "metadata_csum_seed"]),
        Variant(name: "ext4-64k", mkfs: ["mkfs.ext4", "-b", "65536", "-N", "8192"], size: "160M"),
        Variant(name: "ext4-htree", mkfs: ["mkfs.ext4", "-b", "4096"], reindex: true),
        Variant(name: "ext3", mkfs: ["mkfs.ext3", "-b", "4096"]),
        Variant(name: "ext2", mkfs: ["mkfs.ext2", "-b", "1024"], streamHuge: true),
        // bigalloc: 64 KiB and 16 KiB clusters (s_blocks_per_group counts blocks, 8 × block
        // size × cluster ratio of them); ea_inode: large xattrs in inodes of their own.
        Variant(name: "ext4-bigalloc", mkfs: ["mkfs.ext4", "-b", "4096", "-O", "bigalloc", "-C", "65536", "-N", "8192"], size: "200M"),
        Variant(name: "ext4-bigalloc-1k", mkfs: ["mkfs.ext4", "-b", "1024", "-O", "bigalloc", "-C", "16384"], size: "200M"),
        Variant(name: "ext4-ea-inode", mkfs: ["mkfs.ext4", "-b", "4096", "-O", "ea_inode"]),
    ]

    /// Path of the image for `v`, built on first use.
    static func image(_ v: Variant) throws -> (image: String, tree: String) {
        let tree = try tree()
        let recipe = treeScript + "\n" + v.mkfs.joined(separator: " ") + " " + v.size + (v.reindex ? " +e2fsck -fyD" : "")
        let dir = try Fixtures.cached("ext4-img-\(v.name)", recipe: recipe) { dir in
            try Tool.run(v.mkfs + ["-q", "-F", "-d", tree + "/tree", dir + "/fs.img", v.size])
            if v.reindex {
                // Exit status 1 means "errors corrected" (the directories were rewritten).
                let r = try Tool.run(["e2fsck", "-fyD", dir + "/fs.img"], check: false)
                if r.status > 1 { throw WardenError(.internal, "e2fsck -fyD exited \(r.status): \(r.stderr)") }
            }
        }
        return (dir + "/fs.img", tree)
    }

    static func open(_ path: String) throws -> EXT4Volume {
        let dev = RawDevice(file: try ImageFile(path: path))
        return try EXT4.open(dev)
    }

    /// A small image for damage tests: a few files, a depth >= 1 extent tree, 1 KiB blocks.
    static let smallScript = #"""
    T="$1/tree"
    mkdir -p "$T/d"
    cd "$T"
    echo hello > a
    echo world > d/b
    for i in $(seq 1 40); do echo $i > "d/f$i"; done
    truncate -s $((4096 * 400)) frag
    for i in $(seq 0 2 399); do dd if=/dev/urandom of=frag bs=4096 count=1 seek=$i conv=notrunc status=none; done
    ln -s a link
    mkfs.ext4 -q -F -b 1024 -d "$T" "$1/fs.img" 4M
    """#

    static func small() throws -> String {
        let dir = try Fixtures.cached("ext4-small", recipe: smallScript) { dir in
            try Tool.run(["bash", "-euo", "pipefail", "-c", smallScript, "small-script", dir])
        }
        return dir + "/fs.img"
    }

    /// Runs debugfs commands (one per line) against `image`, returning stdout.
    static func debugfs(_ image: String, _ commands: [String], write: Bool = false) throws -> String {
        try Fixtures.withTemporaryDirectory { tmp in
            let cmdFile = tmp + "/cmds"
            try Fixtures.write(Array(commands.joined(separator: "\n").utf8) + [10], to: cmdFile)
            return try Tool.run(["debugfs"] + (write ? ["-w"] : []) + ["-f", cmdFile, image]).stdoutText
        }
    }
}

/// Walks every reachable object, swallowing WardenErrors; returns any other error seen.
func walkEverything(_ fs: any FileSystem, budget: Int = 50_000) -> [String] {
    var problems: [String] = []
    var seen = Set<UInt64>()
    var queue: [UInt64] = [fs.rootInode]
    var steps = 0
    func attempt(_ body: () throws -> Void) {
        do { try body() } catch is WardenError {} catch { problems.append("\(type(of: error)): \(error)") }
    }
    while let ino = queue.popLast(), steps < budget {
        steps += 1
        guard seen.insert(ino).inserted else { continue }
        attempt {
            let st = try fs.stat(ino)
            switch st.type {
            case .directory:
                for e in try fs.readDirectory(ino) { queue.append(e.inode) }
            case .regular:
                var total: UInt64 = 0
                try fs.forEachChunk(ino, chunkSize: 1 << 20) { total += UInt64($0.count); if total > 64 << 20 { throw WardenError.limit("test budget") } }
                _ = try fs.read(ino, at: 0, count: 4096)
            case .symlink:
                _ = try fs.readLink(ino)
            default: break
            }
        }
    }
    return problems
}
