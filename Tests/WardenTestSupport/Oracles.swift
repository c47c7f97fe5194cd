import Foundation

/// Builds guest directory trees for `mkfs.ext4 -d`.
public enum FixtureTrees {
    /// Bump when `standard` changes, so cached fixtures built from it are rebuilt.
    public static let standardVersion = "2"

    /// A tree exercising every entry type and the awkward cases: empty, sparse and
    /// multi-extent files, a wide directory, fast and slow symlinks, a symlink chain,
    /// a symlink aiming above the root, device nodes, fifos, odd modes and owners.
    /// `wide` sets the size of the wide directory.
    public static func standard(at root: String, wide: Int = 300) throws {
        var script = """
        set -euo pipefail
        cd "\(root)"
        mkdir -p etc/ssh usr/bin var/log home/alice/.ssh wide deep/a/b/c/d/e tmp dev links
        printf 'PRETTY_NAME="Fixture Linux"\\nID=fixture\\n' > etc/os-release
        echo fixture-host > etc/hostname
        : > empty
        head -c 70000 /dev/urandom > usr/bin/tool
        head -c 3000000 /dev/urandom > var/log/big.log
        printf 'x' > deep/a/b/c/d/e/leaf
        truncate -s 10M sparse.img
        printf 'middle' | dd of=sparse.img bs=1 seek=5000000 conv=notrunc status=none
        printf 'end' | dd of=sparse.img bs=1 seek=10485757 conv=notrunc status=none
        chmod 4755 usr/bin/tool
        chmod 1777 tmp
        chmod 0600 etc/ssh
        echo key > home/alice/.ssh/authorized_keys
        chown -R 1000:1234 home/alice
        ln -s ../usr/bin links/bin
        ln -s /../../etc links/escape
        ln -s \(String(repeating: "long-target-component/", count: 5))end links/slow
        ln -s c2 links/c1
        ln -s c3 links/c2
        ln -s c4 links/c3
        ln -s ../etc/hostname links/c4
        ln -s missing links/dangling
        mkfifo dev/fifo
        mknod dev/null c 1 3
        mknod dev/sda b 8 0
        ln var/log/big.log hardlink.log
        for i in $(seq 1 \(wide)); do echo "$i" > "wide/entry-$i"; done
        """
        script += "\n"
        try Tool.sh(script)
    }
}

/// A manifest built from `debugfs` output alone: the oracle for `warden image manifest`.
///
/// Types, modes, owners and sizes come from `debugfs -R "ls -p DIR"`; file digests from
/// `debugfs -R "rdump / OUT"` followed by `sha256sum`; symlink targets from the rdump'ed links.
public enum DebugfsOracle {
    public static func manifest(filesystemImage fs: String) throws -> [String] {
        try Fixtures.withTemporaryDirectory { tmp in
            // 1. Walk directories breadth-first with `ls -p`, one debugfs run per level.
            struct Entry { var mode: UInt32; var uid: String; var gid: String; var size: String; var path: String }
            var entries: [Entry] = []
            var level = ["/"]
            var rootMode: UInt32 = 0o40755, rootUID = "0", rootGID = "0"
            let rootLine = try Tool.run(["debugfs", "-R", "ls -p /", fs]).stdoutText
                .split(separator: "\n").first { $0.split(separator: "/", omittingEmptySubsequences: false).count > 5 && $0.split(separator: "/", omittingEmptySubsequences: false)[5] == "." }
            if let r = rootLine {
                let f = r.split(separator: "/", omittingEmptySubsequences: false)
                rootMode = UInt32(f[2], radix: 8) ?? rootMode
                rootUID = String(f[3]); rootGID = String(f[4])
            }
            entries.append(Entry(mode: rootMode, uid: rootUID, gid: rootGID, size: "0", path: "/"))
            while !level.isEmpty {
                let cmds = level.map { "ls -p \"\($0)\"" }.joined(separator: "\n") + "\n"
                let cmdFile = tmp + "/cmds"
                try cmds.write(toFile: cmdFile, atomically: true, encoding: .utf8)
                let out = try Tool.run(["debugfs", "-f", cmdFile, fs]).stdoutText
                var next: [String] = []
                var current = ""
                var idx = -1
                for line in out.split(separator: "\n", omittingEmptySubsequences: false) {
                    if line.hasPrefix("debugfs:") { idx += 1; current = level[min(idx, level.count - 1)]; continue }
                    // /inode/mode/uid/gid/name/size/
                    let f = line.split(separator: "/", omittingEmptySubsequences: false)
                    guard f.count >= 7, let mode = UInt32(f[2], radix: 8) else { continue }
                    let name = String(f[5])
                    if name == "." || name == ".." || f[1] == "0" { continue }
                    let path = current == "/" ? "/" + name : current + "/" + name
                    entries.append(Entry(mode: mode, uid: String(f[3]), gid: String(f[4]), size: String(f[6]), path: path))
                    if mode & 0o170000 == 0o040000 { next.append(path) }
                }
                level = next
            }
            // 2. Dump the tree and hash the files.
            let dump = tmp + "/dump"
            try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: true)
            try Tool.run(["debugfs", "-R", "rdump / \(dump)", fs])
            // debugfs 1.47 dumps the whole 60-byte inline area of an inline_data file, ignoring
            // i_size; the inode size from `ls -p` is authoritative, so cut the dump to it.
            for e in entries where e.mode & 0o170000 == 0o100000 {
                if let size = UInt64(e.size), let attrs = try? FileManager.default.attributesOfItem(atPath: dump + e.path),
                   let actual = (attrs[.size] as? NSNumber)?.uint64Value, actual > size {
                    _ = truncate(dump + e.path, off_t(size))
                }
            }
            var sums: [String: String] = [:]
            let files = entries.filter { $0.mode & 0o170000 == 0o100000 }.map { dump + $0.path }
            if !files.isEmpty {
                for line in try Tool.run(["sha256sum", "--"] + files).stdoutText.split(separator: "\n") {
                    let digest = String(line.prefix(64))
                    let path = String(line.dropFirst(66))
                    sums[path] = digest
                }
            }
            var lines: [String] = []
            for e in entries {
                let type: String
                var digest = "-"
                var size = "0"
                let local = dump + e.path
                switch e.mode & 0o170000 {
                case 0o100000:
                    type = "f"; size = e.size
                    digest = sums[local] ?? "missing"
                case 0o040000: type = "d"
                case 0o120000:
                    type = "l"; size = e.size
                    digest = try FileManager.default.destinationOfSymbolicLink(atPath: local)
                case 0o020000: type = "c"
                case 0o060000: type = "b"
                case 0o010000: type = "p"
                case 0o140000: type = "s"
                default: type = "?"
                }
                var mode = String(e.mode & 0o7777, radix: 8)
                while mode.count < 4 { mode = "0" + mode }
                lines.append([type, mode, e.uid, e.gid, size, digest, e.path].joined(separator: "\t"))
            }
            return lines.sorted { a, b in
                let pa = a.split(separator: "\t", maxSplits: 6).last ?? ""
                let pb = b.split(separator: "\t", maxSplits: 6).last ?? ""
                return pa.utf8.lexicographicallyPrecedes(pb.utf8)
            }
        }
    }
}
