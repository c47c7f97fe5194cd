import Foundation
import WardenTestSupport

/// Disk fixtures for the CLI tests, built with real tools and cached by recipe.
enum ImageFixtures {
    struct Variant: Sendable, CustomStringConvertible {
        var name: String
        /// The mkfs command, given the tree in $ROOT and the image in $IMG.
        var mkfs: String
        var description: String { name }
    }

    static let variants: [Variant] = [
        Variant(name: "ext4-default", mkfs: "mkfs.ext4 -q -F -L fixture -d \"$ROOT\" \"$IMG\""),
        Variant(name: "ext4-1k-no64bit", mkfs: "mkfs.ext4 -q -F -b 1024 -O ^64bit -d \"$ROOT\" \"$IMG\""),
        Variant(name: "ext4-inline", mkfs: "mkfs.ext4 -q -F -O inline_data -d \"$ROOT\" \"$IMG\""),
        Variant(name: "ext4-noextent", mkfs: "mkfs.ext4 -q -F -O ^extent,^64bit,^flex_bg -d \"$ROOT\" \"$IMG\""),
        Variant(name: "ext3", mkfs: "mkfs.ext3 -q -F -d \"$ROOT\" \"$IMG\""),
        Variant(name: "ext2-1k", mkfs: "mkfs.ext2 -q -F -b 1024 -d \"$ROOT\" \"$IMG\""),
    ]

    /// A directory holding `fs.img` (a bare filesystem) for `variant`.
    static func filesystem(_ variant: Variant, wide: Int = 5000) throws -> String {
        try Fixtures.cached("fs-\(variant.name)", recipe: "tree-\(FixtureTrees.standardVersion) wide=\(wide) \(variant.mkfs)") { dir in
            let root = dir + "/root"
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            try FixtureTrees.standard(at: root, wide: wide)
            try Tool.sh("""
            ROOT="\(root)"; IMG="\(dir)/fs.img"
            truncate -s 96M "$IMG"
            \(variant.mkfs)
            rm -rf "$ROOT"
            """)
        }
    }

    /// A GPT disk (`disk.raw`) with a 1 MiB BIOS-boot partition 1, a 4 MiB FAT-typed
    /// partition 2 (empty), and the ext4-default filesystem in partition 3,
    /// plus `disk.qcow2` (zstd-compressed), `disk.vmdk` (streamOptimized) from it.
    static func gptDisk() throws -> String {
        let fsDir = try filesystem(variants[0])
        return try Fixtures.cached("gpt-disk", recipe: "gpt-v1 \(fsDir)") { dir in
            try Tool.sh("""
            cd "\(dir)"
            truncate -s 110M disk.raw
            sgdisk -n 1:2048:+1M -t 1:ef02 -c 1:bios -n 2:0:+4M -t 2:0700 -c 2:data -n 3:0:0 -t 3:8300 -c 3:root disk.raw >/dev/null
            start=$(sgdisk -i 3 disk.raw | awk '/First sector/ {print $3}')
            dd if="\(fsDir)/fs.img" of=disk.raw bs=512 seek="$start" conv=notrunc status=none
            qemu-img convert -q -c -O qcow2 -o compression_type=zstd disk.raw disk.qcow2
            qemu-img convert -q -O vmdk -o subformat=streamOptimized disk.raw disk.vmdk
            """)
        }
    }
}

/// Runs the built `warden` binary under `timeout`, capturing its peak RSS with GNU time.
struct WardenRun {
    var status: Int32
    var stdout: Data
    var stderr: String
    var maxRSSKiB: Int
    var stdoutText: String { String(decoding: stdout, as: UTF8.self) }

    static func run(_ args: [String], timeoutSeconds: Int = 60, stdin: Data? = nil) throws -> WardenRun {
        let r = try Fixtures.withTemporaryDirectory { tmp -> (ToolResult, Int) in
            let rssFile = tmp + "/rss"
            let res = try Tool.run(["timeout", "-s", "KILL", "\(timeoutSeconds)",
                                    "/usr/bin/time", "-q", "-f", "%M", "-o", rssFile,
                                    Fixtures.wardenBinary] + args, stdin: stdin, check: false)
            let rssText = (try? String(contentsOfFile: rssFile, encoding: .utf8)) ?? ""
            let rss = rssText.split(separator: "\n").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }.last ?? -1
            return (res, rss)
        }
        ExitCodeDoc.check(args, status: r.0.status)
        return WardenRun(status: r.0.status, stdout: r.0.stdout, stderr: r.0.stderr, maxRSSKiB: r.1)
    }
}
