import Crypto
import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import Partitions
@testable import GuestFS

/// LVM thin volumes, made by lvm2 inside the libguestfs appliance (this machine's kernel has
/// no device-mapper): a thin LV and a thin snapshot of it that diverged afterwards, compared
/// byte for byte with the kernel's view of each (guestfish `checksum-device`), and damaged
/// pool metadata.
@Suite struct LVMThinTests {
    static let recipe = """
    set -e
    truncate -s 300M disk.img
    mkdir -p files
    head -c 1000000 /dev/urandom > files/big.bin
    printf 'thin data\\n' > files/hello.txt
    export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
    guestfish -a disk.img > out.txt <<'EOF'
    run
    part-init /dev/sda mbr
    part-add /dev/sda p 2048 600000
    pvcreate /dev/sda1
    vgcreate vg /dev/sda1
    debug sh "lvm lvcreate --type thin-pool -L 96M -n pool -y vg >/dev/null 2>&1; lvm lvcreate -V 128M -T vg/pool -n thin1 -y >/dev/null 2>&1; echo made"
    mkfs ext4 /dev/vg/thin1
    mount /dev/vg/thin1 /
    copy-in files/big.bin files/hello.txt /
    umount /
    debug sh "lvm lvcreate -s vg/thin1 -n snap1 -y >/dev/null 2>&1; lvm lvchange -ay -K vg/snap1 >/dev/null 2>&1; echo made"
    mount /dev/vg/snap1 /
    write /hello.txt "changed in snapshot"
    umount /
    mount /dev/vg/thin1 /
    write /only-origin.txt "after the snapshot"
    umount /
    checksum-device sha256 /dev/vg/thin1
    checksum-device sha256 /dev/vg/snap1
    EOF
    grep -E '^[0-9a-f]{64}$' out.txt > sums.txt
    test "$(wc -l < sums.txt)" = 2
    """

    static var guestfishAvailable: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/guestfish") }

    static func fixture() throws -> String {
        try Fixtures.cached("lvm-thin", recipe: recipe) { dir in try Tool.sh(recipe, cwd: dir) }
    }

    static func volume(_ disk: any BlockDevice, _ name: String) throws -> (any BlockDevice, any FileSystem) {
        let layout = try GuestDisk.layout(of: disk)
        let v = try GuestDisk.select(layout, partition: nil, logicalVolume: name)
        let dev = try GuestDisk.device(for: v, in: layout, on: disk)
        return (dev, try GuestDisk.openFileSystem(dev))
    }

    static func sha256(_ dev: any BlockDevice) throws -> String {
        var h = SHA256()
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var off: UInt64 = 0
        while off < dev.size {
            let n = Int(min(UInt64(buf.count), dev.size - off))
            try buf.withUnsafeMutableBytes { try dev.read(at: off, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<n])) }
            h.update(data: buf[0..<n])
            off += UInt64(n)
        }
        return h.finalize().map { String(format: "%02x", $0) }.joined()
    }

    static func text(_ fs: any FileSystem, _ path: String) throws -> [UInt8] {
        let r = try GuestPathResolver(fs).resolve(path)
        return try fs.read(r.inode, at: 0, count: Int(r.stat.size))
    }

    @Test(.enabled(if: LVMThinTests.guestfishAvailable, "needs libguestfs (guestfish) to make thin LVs"))
    func thinVolumeAndDivergedSnapshotMatchTheKernel() throws {
        let dir = try Self.fixture()
        let sums = try String(contentsOfFile: dir + "/sums.txt", encoding: .utf8).split(separator: "\n").map(String.init)
        let disk = try ImageOpener.open(dir + "/disk.img").device
        let layout = try GuestDisk.layout(of: disk)
        #expect(layout.warnings.isEmpty, "\(layout.warnings)")
        // The pool is not a volume; its hidden metadata and data LVs are not either.
        #expect(layout.volumes.compactMap(\.logicalVolume).sorted() == ["/dev/mapper/vg-snap1", "/dev/mapper/vg-thin1"])
        let big = Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/files/big.bin")))
        for (i, name) in ["vg/thin1", "vg/snap1"].enumerated() {
            let (dev, fs) = try Self.volume(disk, name)
            #expect(dev.size == 128 << 20)
            #expect(try Self.sha256(dev) == sums[i], "\(name): every byte as the kernel reads it")
            #expect(try Self.text(fs, "/big.bin") == big)
        }
        let (_, origin) = try Self.volume(disk, "vg/thin1")
        let (_, snap) = try Self.volume(disk, "vg/snap1")
        #expect(String(decoding: try Self.text(origin, "/hello.txt"), as: UTF8.self) == "thin data\n")
        #expect(String(decoding: try Self.text(snap, "/hello.txt"), as: UTF8.self) == "changed in snapshot")
        #expect(String(decoding: try Self.text(origin, "/only-origin.txt"), as: UTF8.self) == "after the snapshot")
        #expect(throws: WardenError.self) { _ = try GuestPathResolver(snap).resolve("/only-origin.txt") }
        // Unprovisioned chunks are holes: most of the 128 MiB volume is not mapped. The mapping
        // (from the tree's leaves) agrees with a lookup of every chunk.
        let thin = try #require(try Self.volume(disk, "vg/thin1").0 as? LVM2ThinDevice)
        let map = try thin.mapping(at: 0, length: 128 << 20)
        #expect(map.filter { $0.kind == .data }.reduce(0) { $0 + $1.length } < 64 << 20)
        let chunk = thin.metadata.chunkSize
        for v in 0..<(thin.size / chunk) {
            let kind = try #require(map.first { $0.offset <= v * chunk && v * chunk < $0.offset + $0.length }).kind
            #expect((kind == .data) == (try thin.dataChunk(v) != nil), "chunk \(v)")
        }
        #expect(try thin.mapping(at: 100_000, length: 5 * chunk).reduce(0) { $0 + $1.length } == 5 * chunk)
    }

    /// The offset of the pool's metadata superblock in the image (its magic, at byte 32 of a block).
    static func superblock(_ image: [UInt8]) throws -> Int {
        for off in stride(from: 0, to: image.count - 4096, by: 4096)
        where image[off + 32..<off + 40].elementsEqual([0xBA, 0x52, 0x9C, 0x01, 0, 0, 0, 0]) { return off }
        throw WardenError.notFound("no thin pool superblock in the fixture")
    }

    static func rechecksum(_ image: inout [UInt8], _ at: Int, xor: UInt32) {
        let c = CRC32.castagnoli.update(0xFFFF_FFFF, image[(at + 4)..<(at + 4096)]) ^ xor
        for i in 0..<4 { image[at + i] = UInt8((c >> (8 * UInt32(i))) & 0xff) }
    }

    @Test(.enabled(if: LVMThinTests.guestfishAvailable, "needs libguestfs (guestfish) to make thin LVs"))
    func damagedPoolMetadataIsReportedNotFollowed() throws {
        let dir = try Self.fixture()
        let clean = Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/disk.img")))
        let sb = try Self.superblock(clean)

        // Truncated metadata: shorter than a block, and cut after the superblock (its trees'
        // blocks are gone): typed errors, no trap.
        #expect(throws: WardenError.self) { _ = try LVM2Thin.Metadata(device: MemoryDevice(Array(clean[sb..<(sb + 100)])), name: "short") }
        #expect(throws: WardenError.self) {
            let m = try LVM2Thin.Metadata(device: MemoryDevice(Array(clean[sb..<(sb + 4096)])), name: "cut")
            _ = try m.deviceRoot(1)
        }

        // A flipped bit in the superblock: the checksum says so, and no thin LV is offered.
        var flipped = clean
        flipped[sb + 320] ^= 0x01
        var layout = try GuestDisk.layout(of: MemoryDevice(flipped))
        #expect(layout.warnings.contains { $0.contains("superblock checksum mismatch") }, "\(layout.warnings)")
        #expect(layout.volumes.allSatisfy { $0.logicalVolume == nil })

        // An internal node of a device's tree that points at itself (checksum made valid): the
        // first read through it (the filesystem probe) ends with an error naming the volume
        // instead of looping, and the other thin volume is still offered.
        var looped = clean
        let root = Int(UInt64(littleEndian: looped[(sb + 320)..<(sb + 328)].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }))
        let top = sb + root * 4096
        let entries = Int(looped[top + 16]) | Int(looped[top + 17]) << 8
        let capacity = Int(looped[top + 20]) | Int(looped[top + 21]) << 8
        #expect(entries >= 1)
        // The top tree's first value is thin device 1's root; make it internal and self-referring.
        let valueAt = top + 32 + capacity * 8
        let devRoot = Int(UInt64(littleEndian: looped[valueAt..<(valueAt + 8)].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }))
        let node = sb + devRoot * 4096
        looped[node + 4] = 1   // INTERNAL_NODE
        looped[node + 24] = 8; looped[node + 25] = 0   // 8-byte values (block numbers)
        let cap = Int(looped[node + 20]) | Int(looped[node + 21]) << 8
        let n = Int(looped[node + 16]) | Int(looped[node + 17]) << 8
        #expect(n >= 1)
        for i in 0..<n {
            let v = node + 32 + cap * 8 + i * 8
            for b in 0..<8 { looped[v + b] = UInt8((UInt64(devRoot) >> (8 * UInt64(b))) & 0xff) }
        }
        Self.rechecksum(&looped, node, xor: 121_107)
        // The leaf walk behind `mapping` stops too.
        let metadata = try LVM2Thin.Metadata(device: MemoryDevice(Array(looped[sb..<(sb + (4 << 20))])), name: "looped")
        let device = LVM2ThinDevice(size: 128 << 20, metadata: metadata, root: UInt64(devRoot), data: MemoryDevice([UInt8](repeating: 0, count: 96 << 20)), name: "looped")
        #expect(throws: WardenError.self) { _ = try device.mapping(at: 0, length: 128 << 20) }
        layout = try GuestDisk.layout(of: MemoryDevice(looped))
        #expect(layout.warnings.contains { $0.contains("vg-thin1") && $0.contains("deeper than 16 levels") }, "\(layout.warnings)")
        #expect(layout.volumes.compactMap(\.logicalVolume) == ["/dev/mapper/vg-snap1"])
    }
}
