import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import Partitions

/// Partition-table fixtures built with sfdisk/sgdisk, and sfdisk --json as the oracle.
enum PartFixture {
    static let dosScript = """
    label: dos
    label-id: 0x1234abcd
    start=2048, size=8192, type=83, bootable
    start=10240, size=4096, type=82
    start=16384, size=80000, type=f
    start=18432, size=2048, type=83
    start=22528, size=4096, type=8e
    start=28672, size=1024, type=7
    start=32768, size=8000, type=c
    start=96384, size=20000, type=fd
    """

    static let gptRecipe = """
    truncate -s 64M disk.raw
    sgdisk -U 11111111-2222-4333-8444-555555555555 \
      -n1:2048:+1M -t1:ef00 -c1:'EFI system' \
      -n2:0:+1M -t2:ef02 -c2:'bios' \
      -n3:0:+8M -t3:8300 -c3:'root fs ü' \
      -n4:0:+4M -t4:8200 -c4:swap \
      -n5:0:+4M -t5:8e00 \
      -n6:0:+4M -t6:0700 -c6:'Basic data partition' \
      -n7:0:+4M -t7:8304 -c7:'x86-64 root' \
      -A3:set:2 disk.raw >/dev/null
    """

    static func dos() throws -> String {
        try Fixtures.cached("parts-dos", recipe: dosScript) { dir in
            try Tool.run(["truncate", "-s", "64M", dir + "/disk.raw"])
            try Tool.run(["sfdisk", "-q", dir + "/disk.raw"], stdin: Data(dosScript.utf8))
        } + "/disk.raw"
    }

    static func gpt() throws -> String {
        try Fixtures.cached("parts-gpt", recipe: gptRecipe) { dir in
            try Tool.sh(gptRecipe, cwd: dir)
        } + "/disk.raw"
    }

    struct Expected {
        var index: Int, start: UInt64, size: UInt64, type: String, name: String?, uuid: String?, bootable: Bool
    }

    /// What sfdisk --json reports, in bytes.
    static func sfdisk(_ path: String) throws -> (label: String, id: String, parts: [Expected]) {
        let r = try Tool.run(["sfdisk", "--json", path])
        let root = try JSONSerialization.jsonObject(with: r.stdout) as! [String: Any]
        let pt = root["partitiontable"] as! [String: Any]
        let parts = (pt["partitions"] as? [[String: Any]] ?? []).map { p -> Expected in
            let node = p["node"] as! String
            let index = Int(String(node.reversed().prefix { $0.isNumber }.reversed()))!
            return Expected(index: index, start: (p["start"] as! NSNumber).uint64Value * 512,
                            size: (p["size"] as! NSNumber).uint64Value * 512, type: p["type"] as! String,
                            name: p["name"] as? String, uuid: p["uuid"] as? String,
                            bootable: (p["bootable"] as? Bool) ?? ((p["attrs"] as? String)?.contains("LegacyBIOSBootable") ?? false))
        }
        return (pt["label"] as! String, pt["id"] as! String, parts)
    }

    /// Compares our table with sfdisk's view of `path`.
    static func check(_ table: PartitionTable, against path: String) throws {
        let o = try sfdisk(path)
        #expect(table.scheme == (o.label == "gpt" ? .gpt : .mbr))
        #expect(table.partitions.map(\.index) == o.parts.map(\.index))
        for (ours, theirs) in zip(table.partitions, o.parts) {
            #expect(ours.start == theirs.start, "partition \(theirs.index)")
            #expect(ours.size == theirs.size, "partition \(theirs.index)")
            #expect(ours.bootable == theirs.bootable, "partition \(theirs.index)")
            if table.scheme == .gpt {
                #expect(ours.typeCode == theirs.type.uppercased())
                #expect(ours.name == (theirs.name ?? ""))
                #expect(ours.uuid == theirs.uuid?.lowercased())
            } else {
                #expect(UInt8(ours.typeCode.dropFirst(2), radix: 16) == UInt8(theirs.type, radix: 16))
            }
        }
        if table.scheme == .gpt {
            #expect(table.diskID == o.id.lowercased())
        } else {
            #expect(table.diskID.map { "0x" + $0 } == o.id)
        }
    }

    static func open(_ path: String) throws -> PartitionTable {
        try PartitionReader.read(try ImageOpener.open(path, options: OpenOptions(format: .raw)).device)
    }
}

@Suite struct PartitionReaderTests {
    @Test func dosMatchesSfdisk() throws {
        let path = try PartFixture.dos()
        let table = try PartFixture.open(path)
        try PartFixture.check(table, against: path)
        #expect(table.warnings.isEmpty)
        #expect(table.partitions.map(\.kind) == [.primary, .primary, .extended, .primary, .logical, .logical, .logical, .logical])
        #expect(table.partition(1)?.typeName == "Linux")
        #expect(table.partition(6)?.typeName == "Linux LVM")
        #expect(table.partition(3)?.typeName == "W95 Ext'd (LBA)")
        // PARTUUID is PTUUID-NN (blkid's PTUUID is the oracle for the disk part).
        let blkid = try Tool.run(["blkid", "-p", "-o", "export", path]).stdoutText
        let ptuuid = blkid.split(separator: "\n").first { $0.hasPrefix("PTUUID=") }.map { String($0.dropFirst(7)) }
        #expect(ptuuid != nil)
        #expect(table.partition(1)?.uuid == "\(ptuuid ?? "")-01")
        #expect(table.partition(7)?.uuid == "\(ptuuid ?? "")-07")
    }

    @Test func gptMatchesSfdisk() throws {
        let path = try PartFixture.gpt()
        let table = try PartFixture.open(path)
        try PartFixture.check(table, against: path)
        #expect(table.warnings.isEmpty)
        #expect(table.partitions.count == 7)
        #expect(table.partition(1)?.typeName == "EFI System")
        #expect(table.partition(2)?.typeName == "BIOS boot")
        #expect(table.partition(3)?.typeName == "Linux filesystem")
        #expect(table.partition(3)?.name == "root fs ü")
        #expect(table.partition(3)?.bootable == true)  // legacy BIOS bootable attribute
        #expect(table.partition(4)?.typeName == "Linux swap")
        #expect(table.partition(5)?.typeName == "Linux LVM")
        #expect(table.partition(6)?.typeName == "Microsoft basic data")
        #expect(table.partition(7)?.typeName == "Linux root (x86-64)")
        #expect(table.diskID == "11111111-2222-4333-8444-555555555555")
        // A volume reads the partition's bytes.
        let dev = try ImageOpener.open(path, options: OpenOptions(format: .raw)).device
        let vol = try PartitionTable.volume(table.partition(3)!, of: dev)
        #expect(vol.size == 8 << 20)
    }

    private func damaged(_ path: String, _ edits: [(Int, [UInt8])], _ body: (String) throws -> Void) throws {
        try Fixtures.withTemporaryDirectory { tmp in
            var b = try Fixtures.read(path)
            for (off, bytes) in edits { b.replaceSubrange(off ..< off + bytes.count, with: bytes) }
            try Fixtures.write(b, to: tmp + "/d.raw")
            try body(tmp + "/d.raw")
        }
    }

    @Test func damagedPrimaryGPTFallsBackToBackup() throws {
        let path = try PartFixture.gpt()
        let size = try Fixtures.read(path).count
        // Header CRC zeroed; entry array corrupted; signature wiped.
        for edit in [(512 + 16, [UInt8](repeating: 0, count: 4)), (1024 + 40, [0xFF, 0xEE]), (512, [UInt8](repeating: 0, count: 8))] {
            try damaged(path, [edit]) { d in
                let table = try PartFixture.open(d)
                #expect(table.warnings.contains { $0.contains("primary GPT header is damaged") && $0.contains("using the backup GPT") })
                try PartFixture.check(table, against: path)
            }
        }
        // Backup damaged only: primary used, warning given.
        try damaged(path, [(size - 512 + 16, [1, 2, 3, 4])]) { d in
            let table = try PartFixture.open(d)
            #expect(table.warnings.contains { $0.contains("backup GPT header") })
            try PartFixture.check(table, against: path)
        }
        // Both damaged: refused.
        try damaged(path, [(512 + 16, [0, 0, 0, 0]), (size - 512 + 16, [1, 2, 3, 4])]) { d in
            let e = #expect(throws: WardenError.self) { _ = try PartFixture.open(d) }
            #expect(e?.code == .corrupt)
        }
        // Hostile geometry with a valid CRC: recompute the header CRC after editing.
        for (field, value) in [(80, UInt32.max), (84, UInt32(100)), (84, UInt32(1 << 20))] {
            var b = try Fixtures.read(path)
            for k in 0..<4 { b[512 + field + k] = UInt8(truncatingIfNeeded: value >> (8 * k)) }
            for k in 0..<4 { b[512 + 16 + k] = 0 }
            let crc = CRC32.ieee.checksum(b[512 ..< 512 + 92])
            for k in 0..<4 { b[512 + 16 + k] = UInt8(truncatingIfNeeded: crc >> (8 * k)) }
            try Fixtures.withTemporaryDirectory { tmp in
                try Fixtures.write(b, to: tmp + "/h.raw")
                let table = try PartFixture.open(tmp + "/h.raw")
                #expect(table.warnings.contains { $0.contains("primary GPT header is damaged") })
                try PartFixture.check(table, against: path)
            }
        }
    }

    @Test func ebrLoopStopsWithWarning() throws {
        let path = try PartFixture.dos()
        let bytes = try Fixtures.read(path)
        // The extended partition starts at sector 16384; its first EBR links to the second.
        let ext: UInt64 = 16384
        let link = Int(ext) * 512 + 446 + 16
        let secondRel = UInt32(bytes[link + 8]) | UInt32(bytes[link + 9]) << 8 | UInt32(bytes[link + 10]) << 16 | UInt32(bytes[link + 11]) << 24
        #expect(secondRel > 0)
        let second = (Int(ext) + Int(secondRel)) * 512
        for target: UInt32 in [0, secondRel] {  // back to the first EBR, or to itself
            var edit = Array(bytes[second + 446 + 16 ..< second + 446 + 32])
            edit[4] = 0x05
            for k in 0..<4 { edit[8 + k] = UInt8(truncatingIfNeeded: target >> (8 * k)) }
            edit[12] = 1
            try damaged(path, [(second + 446 + 16, edit)]) { d in
                let table = try PartFixture.open(d)
                #expect(table.warnings.contains { $0.contains("loops") })
                #expect(table.partitions.filter { $0.kind == .logical }.map(\.index) == [5, 6])
            }
        }
        // A chain pointing past the end of the disk.
        var far = Array(bytes[Int(ext) * 512 + 446 + 16 ..< Int(ext) * 512 + 446 + 32])
        for k in 0..<4 { far[8 + k] = 0xF0 }
        try damaged(path, [(Int(ext) * 512 + 446 + 16, far)]) { d in
            let table = try PartFixture.open(d)
            #expect(table.warnings.contains { $0.contains("beyond the end") })
            #expect(table.partitions.filter { $0.kind == .logical }.map(\.index) == [5])
        }
    }

    @Test func longEBRChainIsCapped() throws {
        // 300 EBRs, each linking to the next: only the cap is followed.
        try Fixtures.withTemporaryDirectory { tmp in
            var b = [UInt8](repeating: 0, count: 1 << 20)
            func entry(_ at: Int, type: UInt8, start: UInt32, size: UInt32) {
                b[at + 4] = type
                for k in 0..<4 { b[at + 8 + k] = UInt8(truncatingIfNeeded: start >> (8 * k)); b[at + 12 + k] = UInt8(truncatingIfNeeded: size >> (8 * k)) }
            }
            entry(446, type: 0x05, start: 4, size: 2000)
            b[510] = 0x55; b[511] = 0xAA
            for i in 0..<300 {
                let s = (4 + i * 2) * 512
                entry(s + 446, type: 0x83, start: 1, size: 1)
                entry(s + 462, type: 0x05, start: UInt32(i * 2 + 2), size: 2)
                b[s + 510] = 0x55; b[s + 511] = 0xAA
            }
            try Fixtures.write(b, to: tmp + "/chain.raw")
            let table = try PartFixture.open(tmp + "/chain.raw")
            #expect(table.partitions.filter { $0.kind == .logical }.count == MBR.maxLogicals)
            #expect(!table.warnings.isEmpty)
        }
    }

    @Test(arguments: ["dos", "gpt"])
    func truncatedDisksNeverTrap(_ which: String) throws {
        let path = which == "dos" ? try PartFixture.dos() : try PartFixture.gpt()
        let full = try Fixtures.read(path)
        var lengths = [0, 1, 100, 511, 512, 513, 1024, 1536, 4096, 17408, 17920, 20480, 1 << 20, 9 << 20]
        lengths += stride(from: 5 << 20, to: full.count, by: 5 << 20).map { $0 }
        lengths.append(full.count - 512)
        try Fixtures.withTemporaryDirectory { tmp in
            var cuts = Rejections(.corrupt, .unsupported, .limitExceeded)
            for n in lengths {
                try Fixtures.write(Array(full[0..<n]), to: tmp + "/t.raw")
                cuts.feed {
                    let table = try PartFixture.open(tmp + "/t.raw")
                    for p in table.partitions where p.start + p.size <= UInt64(n) {
                        #expect(p.size > 0)
                    }
                }
            }
            #expect(cuts.accepted + cuts.rejected == lengths.count)
        }
    }

    @Test func tinyAndNonTableDisksHaveNoTable() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try Fixtures.write([UInt8](repeating: 0x55, count: 100), to: tmp + "/tiny.raw")
            #expect(try PartFixture.open(tmp + "/tiny.raw").scheme == .none)
            // A boot sector with 0x55AA but garbage boot indicators is not a table.
            var b = [UInt8](repeating: 0x41, count: 4096)
            b[510] = 0x55; b[511] = 0xAA
            try Fixtures.write(b, to: tmp + "/vbr.raw")
            #expect(try PartFixture.open(tmp + "/vbr.raw").scheme == .none)
            // A FAT filesystem at offset 0 is not a table.
            try Tool.run(["truncate", "-s", "4M", tmp + "/fat.raw"])
            if (try? Tool.run(["mkfs.vfat", tmp + "/fat.raw"])) != nil {
                #expect(try PartFixture.open(tmp + "/fat.raw").scheme == .none)
            }
        }
    }
}
