import Foundation
import Testing
import WardenTestSupport

/// Damaged and hostile images through the CLI: exit code 2, one line on stderr naming
/// the file, no signal, no hang (timeout), and peak memory under 256 MiB.
@Suite struct DamagedImageTests {
    static let rssLimitKiB = 256 * 1024

    /// An 8 MiB GPT disk with a small ext4 partition, as raw and zlib-compressed qcow2.
    static func smallDisk() throws -> String {
        try Fixtures.cached("small-disk", recipe: "small-v1 tree-\(FixtureTrees.standardVersion)") { dir in
            let root = dir + "/root"
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            try FixtureTrees.standard(at: root, wide: 40)
            try Tool.sh("""
            cd "\(dir)"
            rm -f root/var/log/big.log root/hardlink.log root/sparse.img
            truncate -s 6M fs.img && mkfs.ext4 -q -F -d root fs.img && rm -rf root
            truncate -s 8M disk.raw
            sgdisk -n 1:2048:0 -t 1:8300 disk.raw >/dev/null
            dd if=fs.img of=disk.raw bs=512 seek=2048 conv=notrunc status=none
            qemu-img convert -q -c -O qcow2 -o cluster_size=4096 disk.raw disk.qcow2
            """)
        }
    }

    func expectCleanFailure(_ r: WardenRun, mentions file: String, _ context: String,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == 0 || r.status == 2, "\(context): exit \(r.status), stderr: \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.maxRSSKiB > 0 && r.maxRSSKiB < Self.rssLimitKiB, "\(context): peak RSS \(r.maxRSSKiB) KiB", sourceLocation: sourceLocation)
        if r.status == 2 {
            let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true)
            let messages = lines.filter { !$0.hasPrefix("warden: using ") }
            #expect(messages.count == 1, "\(context): stderr: \(r.stderr)", sourceLocation: sourceLocation)
            #expect(messages.first?.contains(file) == true, "\(context): stderr: \(r.stderr)", sourceLocation: sourceLocation)
        }
    }

    @Test func truncatedQcow2AtManyLengths() throws {
        let dir = try Self.smallDisk()
        let full = try Fixtures.read(dir + "/disk.qcow2")
        try Fixtures.withTemporaryDirectory { tmp in
            var lengths: [Int] = [0, 1, 4, 71, 72, 103, 104, 511, 512, 4095, 4096, 8191, 12288, 65536]
            for i in 1..<24 { lengths.append(full.count * i / 24) }
            lengths.append(full.count - 1)
            var failures = 0
            for n in Set(lengths).sorted() where n < full.count {
                let path = tmp + "/t.qcow2"
                try Fixtures.write(Array(full[0..<n]), to: path)
                let info = try WardenRun.run(["image", "info", path], timeoutSeconds: 30)
                expectCleanFailure(info, mentions: "t.qcow2", "info at \(n)")
                let manifest = try WardenRun.run(["image", "manifest", path], timeoutSeconds: 30)
                expectCleanFailure(manifest, mentions: "t.qcow2", "manifest at \(n)")
                let export = try WardenRun.run(["image", "export", path, "-o", tmp + "/out.raw"], timeoutSeconds: 30)
                expectCleanFailure(export, mentions: "t.qcow2", "export at \(n)")
                if export.status == 2 { failures += 1 }
                #expect(!FileManager.default.fileExists(atPath: tmp + "/out.raw") || export.status == 0)
                try? FileManager.default.removeItem(atPath: tmp + "/out.raw")
            }
            // A truncated qcow2 must not export successfully: its data clusters are gone.
            #expect(failures >= lengths.count - 2)
        }
    }

    @Test func damagedSuperblocks() throws {
        let dir = try Self.smallDisk()
        try Fixtures.withTemporaryDirectory { tmp in
            let base = try Fixtures.read(dir + "/fs.img")
            // Zeroed superblock, garbled superblock (magic kept), and a garbled group descriptor block.
            var zeroed = base
            for i in 1024..<2048 { zeroed[i] = 0 }
            var garbled = base
            var rng = SystemRandomNumberGenerator()
            for i in 1024..<2048 where i != 1024 + 56 && i != 1024 + 57 { garbled[i] = UInt8.random(in: 0...255, using: &rng) }
            var badGDT = base
            for i in 4096..<8192 { badGDT[i] = 0xFF }
            for (name, bytes) in [("zeroed.img", zeroed), ("garbled.img", garbled), ("badgdt.img", badGDT)] {
                let path = tmp + "/" + name
                try Fixtures.write(bytes, to: path)
                let r = try WardenRun.run(["image", "manifest", path], timeoutSeconds: 30)
                expectCleanFailure(r, mentions: name, name)
                let ls = try WardenRun.run(["image", "ls", "-l", path, "/etc"], timeoutSeconds: 30)
                expectCleanFailure(ls, mentions: name, name)
            }
            let zeroedRun = try WardenRun.run(["image", "manifest", tmp + "/zeroed.img"])
            #expect(zeroedRun.status == 2)
        }
    }

    @Test func cyclicBackingChain() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try Tool.sh("""
            cd "\(tmp)"
            qemu-img create -q -f qcow2 a.qcow2 16M
            qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2
            qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2
            """)
            let r = try WardenRun.run(["image", "info", tmp + "/b.qcow2"], timeoutSeconds: 30)
            #expect(r.status == 2)
            expectCleanFailure(r, mentions: "b.qcow2", "cycle")
            #expect(r.stderr.contains("cycle"))
        }
    }

    @Test func l2PointerPastEndOfFile() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let path = tmp + "/l2.qcow2"
            try Tool.sh("""
            qemu-img create -q -f qcow2 "\(path)" 64M
            qemu-io -c "write -P 0x5a 0 64k" "\(path)" >/dev/null
            """)
            var bytes = try Fixtures.read(path)
            // L1 table offset is the big-endian u64 at header offset 40; point entry 0 far past EOF.
            var l1: UInt64 = 0
            for i in 40..<48 { l1 = l1 << 8 | UInt64(bytes[i]) }
            let bogus: UInt64 = 0x8000_0000_0000_0000 | 0x7_0000_0000
            for i in 0..<8 { bytes[Int(l1) + i] = UInt8(truncatingIfNeeded: bogus >> (56 - 8 * UInt64(i))) }
            try Fixtures.write(bytes, to: path)
            let r = try WardenRun.run(["image", "export", path, "-o", "-"], timeoutSeconds: 30)
            #expect(r.status == 2)
            expectCleanFailure(r, mentions: "l2.qcow2", "l2")
            #expect(r.stderr.contains("beyond the end of the file"))
        }
    }

    @Test func hugeClaimedSize() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            let path = tmp + "/huge.qcow2"
            try Tool.sh("qemu-img create -q -f qcow2 \"\(path)\" 16M")
            var bytes = try Fixtures.read(path)
            // Virtual size: big-endian u64 at offset 24 -> 2^60 bytes.
            let size: UInt64 = 1 << 60
            for i in 0..<8 { bytes[24 + i] = UInt8(truncatingIfNeeded: size >> (56 - 8 * UInt64(i))) }
            try Fixtures.write(bytes, to: path)
            for args in [["image", "info", path], ["image", "manifest", path], ["image", "ls", path]] {
                let r = try WardenRun.run(args, timeoutSeconds: 30)
                expectCleanFailure(r, mentions: "huge.qcow2", args.joined(separator: " "))
            }
        }
    }

    @Test func rawWithQcow2HeaderNeverOpensItsBackingFile() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            // A "raw" disk whose first bytes are a qcow2 header naming a secret backing file.
            try Tool.sh("""
            cd "\(tmp)"
            head -c 1048576 /dev/urandom > secret.raw
            qemu-img create -q -f qcow2 -b secret.raw -F raw guest.img 1M
            truncate -s 1M guest.img
            """)
            let r = try WardenRun.run(["image", "export", "--format", "raw", tmp + "/guest.img", "-o", "-"])
            #expect(r.status == 0)
            let guest = try Data(contentsOf: URL(fileURLWithPath: tmp + "/guest.img"))
            let same = r.stdout == guest
            #expect(same)
            let info = try WardenRun.run(["image", "info", "--json", "--format", "raw", tmp + "/guest.img"])
            #expect(!info.stdoutText.contains("secret.raw"))
        }
    }
}

@Suite struct ChecksumWarningTests {
    /// A directory block whose metadata_csum tail is wrong still lists, with exit 0 and
    /// one warning line on stderr that names the image.
    @Test func directoryChecksumMismatchIsReported() throws {
        let dir = try DamagedImageTests.smallDisk()
        try Fixtures.withTemporaryDirectory { tmp in
            let path = tmp + "/csum.img"
            try Tool.run(["cp", dir + "/fs.img", path])
            let bs = try Tool.sh("dumpe2fs -h \"\(path)\" 2>/dev/null | awk -F: '/^Block size/ {gsub(/ /, \"\", $2); print $2}'").stdoutText
            let blockSize = try #require(Int(bs.trimmingCharacters(in: .whitespacesAndNewlines)))
            let bmap = try Tool.run(["debugfs", "-R", "bmap /etc 0", path]).stdoutText
            let block = try #require(Int(bmap.trimmingCharacters(in: .whitespacesAndNewlines)))
            var bytes = try Fixtures.read(path)
            // The dirent tail's crc32c is the block's last 4 bytes.
            bytes[block * blockSize + blockSize - 1] ^= 0xFF
            try Fixtures.write(bytes, to: path)
            let fsck = try Tool.run(["e2fsck", "-fn", path], check: false)
            #expect(fsck.status != 0, "e2fsck should see the damage too")
            let r = try WardenRun.run(["image", "ls", path, "/etc"])
            #expect(r.status == 0)
            #expect(r.stdoutText.split(separator: "\n") == ["hostname", "os-release", "ssh"])
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.count == 1)
            #expect(lines.first?.contains("csum.img: warning:") == true)
            #expect(r.stderr.lowercased().contains("checksum"))
        }
    }
}
