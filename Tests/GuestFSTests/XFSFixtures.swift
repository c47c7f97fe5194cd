import Foundation
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// Builds XFS images without mounting: `mkfs.xfs -p PROTOFILE` from a tree described here.
enum XFSFixture {
    /// Source files the protofile copies contents from.
    static let sourceScript = #"""
    S="$1/src"
    mkdir -p "$S"
    cd "$S"
    : > empty
    printf 'hello, world\n' > small
    printf 'x\n' > one
    for n in 1 1023 1024 1025 4095 4096 4097 65536 1048577 3000000; do
      head -c $n /dev/urandom > "size_$n"
    done
    head -c 2000000 /dev/zero > zeros
    printf 'tail' >> zeros
    """#

    static func sources() throws -> String {
        try Fixtures.cached("xfs-src", recipe: sourceScript) { dir in
            try Tool.run(["bash", "-euo", "pipefail", "-c", sourceScript, "src-script", dir])
        } + "/src"
    }

    indirect enum Kind {
        case dir([Node])
        case file(String)  // source file name under src/
        case symlink(String)
        case fifo
        case char(Int, Int)
        case block(Int, Int)
    }

    struct Node {
        var name: String
        var kind: Kind
        var perms: UInt32 = 0o644
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }

    static let remoteTarget1 = String(repeating: "remote-symlink-component/", count: 24) + "end"  // 603 bytes
    static let remoteTarget2 = String(repeating: "b", count: 1000)

    /// The tree every variant holds.
    static func model() -> Node {
        var root: [Node] = []
        root.append(Node(name: "empty", kind: .file("empty")))
        root.append(Node(name: "small.txt", kind: .file("small")))
        for n in [1, 1023, 1024, 1025, 4095, 4096, 4097, 65536, 1048577, 3000000] {
            root.append(Node(name: "size_\(n)", kind: .file("size_\(n)")))
        }
        root.append(Node(name: "zeros", kind: .file("zeros")))
        root.append(Node(name: "suid", kind: .file("small"), perms: 0o4755))
        root.append(Node(name: "sgid", kind: .file("small"), perms: 0o2711))
        root.append(Node(name: "owned", kind: .file("small"), perms: 0o600, uid: 1000, gid: 1234))
        root.append(Node(name: "fastlink", kind: .symlink("small.txt"), perms: 0o777))
        root.append(Node(name: "remotelink", kind: .symlink(remoteTarget1), perms: 0o777))
        root.append(Node(name: "longlink", kind: .symlink(remoteTarget2), perms: 0o777))
        root.append(Node(name: "escape", kind: .symlink("/../../etc"), perms: 0o777))
        root.append(Node(name: "fifo", kind: .fifo, perms: 0o644))
        root.append(Node(name: "chardev", kind: .char(1, 3), perms: 0o666))
        root.append(Node(name: "blockdev", kind: .block(8, 0), perms: 0o660, gid: 6))
        root.append(Node(name: "few", kind: .dir([
            Node(name: "a", kind: .file("one")),
            Node(name: "b", kind: .symlink("a"), perms: 0o777),
            Node(name: "c", kind: .dir([]), perms: 0o700, uid: 5, gid: 6),
        ]), perms: 0o755))
        root.append(Node(name: "mid", kind: .dir((1...40).map { Node(name: "entry-\($0)", kind: .file("one")) }), perms: 0o755))
        root.append(Node(name: "many", kind: .dir((1...5000).map {
            Node(name: "entry_with_a_longish_name_\($0)", kind: .file("one"))
        }), perms: 0o755))
        root.append(Node(name: "deep", kind: .dir([Node(name: "a", kind: .dir([Node(name: "b", kind: .dir([
            Node(name: "leaf", kind: .file("size_4097"), perms: 0o640, uid: 1234, gid: 1000),
        ]), perms: 0o755)]), perms: 0o755)]), perms: 0o750, uid: 1234, gid: 1000))
        return Node(name: "", kind: .dir(root), perms: 0o755)
    }

    /// Renders the protofile (see mkfs.xfs(8), "-p protofile").
    static func protofile(_ root: Node, sources: String) -> String {
        var out = "warden-fixture\n0 0\n"
        func mode(_ n: Node) -> String {
            let t: String
            switch n.kind {
            case .dir: t = "d"
            case .file: t = "-"
            case .symlink: t = "l"
            case .fifo: t = "p"
            case .char: t = "c"
            case .block: t = "b"
            }
            var perm = String(n.perms & 0o777, radix: 8)
            while perm.count < 3 { perm = "0" + perm }
            return t + (n.perms & 0o4000 != 0 ? "u" : "-") + (n.perms & 0o2000 != 0 ? "g" : "-") + perm
        }
        func emit(_ n: Node, top: Bool) {
            let head = (top ? "" : n.name + " ") + mode(n) + " \(n.uid) \(n.gid)"
            switch n.kind {
            case .dir(let kids):
                out += head + "\n"
                for k in kids { emit(k, top: false) }
                out += "$\n"
            case .file(let src): out += head + " \(sources)/\(src)\n"
            case .symlink(let t): out += head + " \(t)\n"
            case .fifo: out += head + "\n"
            case .char(let a, let b), .block(let a, let b): out += head + " \(a) \(b)\n"
            }
        }
        emit(root, top: true)
        return out
    }

    struct Variant: Sendable, CustomStringConvertible {
        var name: String
        var mkfs: [String]
        var label: String?
        var crc: Bool
        var ftype: Bool
        var description: String { name }
    }

    static let variants: [Variant] = [
        Variant(name: "v5", mkfs: ["-L", "warden-xfs"], label: "warden-xfs", crc: true, ftype: true),
        Variant(name: "v5-1k", mkfs: ["-b", "size=1024", "-L", "one-k"], label: "one-k", crc: true, ftype: true),
        Variant(name: "v4", mkfs: ["-m", "crc=0", "-n", "ftype=0"], label: nil, crc: false, ftype: false),
        Variant(name: "v4-1k-ftype", mkfs: ["-m", "crc=0", "-b", "size=1024", "-n", "ftype=1", "-L", "v4ft"],
                label: "v4ft", crc: false, ftype: true),
    ]

    /// Path of the image for `v`, built on first use.
    static func image(_ v: Variant) throws -> String {
        let src = try sources()
        let proto = protofile(model(), sources: src)
        let recipe = sourceScript + proto + v.mkfs.joined(separator: " ")
        let dir = try Fixtures.cached("xfs-img-\(v.name)", recipe: recipe) { dir in
            try proto.write(toFile: dir + "/proto", atomically: true, encoding: .utf8)
            try Tool.run(["truncate", "-s", "320M", dir + "/fs.img"])
            try Tool.run(["mkfs.xfs", "-q", "-f"] + v.mkfs + ["-p", dir + "/proto", dir + "/fs.img"])
        }
        return dir + "/fs.img"
    }

    static func open(_ path: String) throws -> XFSVolume {
        try XFS.open(RawDevice(file: try ImageFile(path: path)))
    }

    /// Runs `xfs_db -r` with one `-c` per command.
    static func xfsDB(_ image: String, _ commands: [String], expert: Bool = false) throws -> String {
        var args = ["xfs_db", expert ? "-x" : "-r"]
        for c in commands { args += ["-c", c] }
        return try Tool.run(args + [image]).stdoutText
    }

    /// `xfs_db ls` of `path`: name -> (inode, type word), without . and ..
    static func dbList(_ image: String, _ path: String) throws -> [String: (UInt64, String)] {
        var out: [String: (UInt64, String)] = [:]
        for line in try xfsDB(image, ["ls \(path)"]).split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 6, let ino = UInt64(f[1]) else { continue }
            let name = String(f[5])
            if name == "." || name == ".." { continue }
            out[name] = (ino, String(f[2]))
        }
        return out
    }

    /// The inode number of `path` according to xfs_db.
    static func dbInode(_ image: String, _ path: String) throws -> UInt64 {
        let parent = (path as NSString).deletingLastPathComponent
        let name = (path as NSString).lastPathComponent
        guard let e = try dbList(image, parent.isEmpty ? "/" : parent)[name] else {
            throw WardenError.notFound("xfs_db has no \(path)")
        }
        return e.0
    }

    /// `print` of `fields` for inode `n`, as name -> value text.
    static func dbCore(_ image: String, _ n: UInt64, _ fields: [String]) throws -> [String: String] {
        var out: [String: String] = [:]
        for line in try xfsDB(image, ["inode \(n)", "print " + fields.joined(separator: " ")]).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { continue }
            out[parts[0].trimmingCharacters(in: .whitespaces)] = parts[1].trimmingCharacters(in: .whitespaces)
        }
        return out
    }
}
