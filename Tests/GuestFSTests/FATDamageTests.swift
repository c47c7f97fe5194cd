import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// Damaged and hostile FAT images: everything must end in a WardenError, never a trap or a hang.
@Suite struct FATDamageTests {

    /// Runs `body`, recording any error that is not a WardenError. Returns true on success.
    @discardableResult
    static func guarded(_ body: () throws -> Void) -> Bool {
        do { try body(); return true }
        catch is WardenError { return false }
        catch { Issue.record("non-WardenError: \(error)"); return false }
    }

    /// Opens and walks everything reachable (bounded depth and count), reading every file.
    static func exercise(_ bytes: [UInt8]) -> Bool {
        var opened = false
        guarded {
            let fs = try FAT.open(MemoryDevice(bytes))
            opened = true
            var budget = 3000
            func visit(_ inode: UInt64, depth: Int) {
                guard depth < 12 else { return }
                var entries: [DirectoryEntry] = []
                guarded { entries = try fs.readDirectory(inode) }
                for e in entries {
                    budget -= 1
                    if budget <= 0 { return }
                    guarded { _ = try fs.stat(e.inode) }
                    if e.type == .directory { visit(e.inode, depth: depth + 1) }
                    else { guarded { try fs.forEachChunk(e.inode, chunkSize: 65536) { _ in } } }
                }
            }
            visit(fs.rootInode, depth: 0)
            _ = fs.warnings
        }
        return opened
    }

    static func image(_ bits: Int) throws -> [UInt8] {
        try Fixtures.read("\(try FATFixture.dir())/fat\(bits).img")
    }

    static func put(_ v: UInt64, width: Int, _ b: inout [UInt8], at o: Int) {
        for i in 0..<width { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    /// Sets the FAT entry of cluster `c` in every FAT copy.
    static func setFAT(_ fs: FATVolume, _ c: UInt64, _ value: UInt64, _ b: inout [UInt8]) {
        for copy in 0..<fs.boot.fatCount {
            let base = Int(fs.boot.fatOffset + copy * fs.boot.fatSectors * fs.boot.bytesPerSector)
            switch fs.boot.kind {
            case .fat32: put(value, width: 4, &b, at: base + Int(c) * 4)
            case .fat16: put(value, width: 2, &b, at: base + Int(c) * 2)
            case .fat12:
                let o = base + Int(c + c / 2)
                var w = UInt64(b[o]) | UInt64(b[o + 1]) << 8
                if c & 1 == 0 { w = (w & 0xF000) | (value & 0xFFF) } else { w = (w & 0x000F) | ((value & 0xFFF) << 4) }
                put(w, width: 2, &b, at: o)
            }
        }
    }

    static func entry(_ fs: FATVolume, _ name: String) throws -> (DirectoryEntry, UInt64) {
        let e = try #require(try fs.readDirectory(fs.rootInode).first { $0.name == name })
        return (e, try fs.entry(e.inode).firstCluster)
    }

    @Test(arguments: [12, 16, 32])
    func truncatedImages(bits: Int) throws {
        let full = try Self.image(bits)
        var lengths = [0, 1, 11, 36, 90, 511, 512, 513, 1024, 4096, 8192, 65536, full.count / 2, full.count - 512, full.count - 1]
        for k in stride(from: 0, to: full.count, by: max(1, full.count / 37)) { lengths.append(k) }
        for n in lengths where n < full.count {
            #expect(!Self.exercise(Array(full[0..<n])), "truncated to \(n) bytes opened")
        }
    }

    @Test(arguments: [12, 16, 32])
    func chainLoopIsAnError(bits: Int) throws {
        var b = try Self.image(bits)
        let fs = try FAT.open(MemoryDevice(b))
        let (big, first) = try Self.entry(fs, "big.bin")
        let second = try fs.fatEntry(first)
        Self.setFAT(fs, second, first, &b)
        let bad = try FAT.open(MemoryDevice(b))
        #expect(throws: WardenError.self) { _ = try bad.read(big.inode, at: 0, count: 1_000_000) }
        #expect(throws: WardenError.self) { try bad.forEachChunk(big.inode) { _ in } }
        // A directory whose chain loops onto itself.
        let wide = try #require(try fs.readDirectory(fs.rootInode).first { $0.name == "wide" })
        let wc = try fs.entry(wide.inode).firstCluster
        var d = try Self.image(bits)
        Self.setFAT(fs, wc, wc, &d)
        let badDir = try FAT.open(MemoryDevice(d))
        #expect(throws: WardenError.self) { _ = try badDir.readDirectory(wide.inode) }
        _ = Self.exercise(d)
    }

    @Test(arguments: [12, 16, 32])
    func chainPastTheEnd(bits: Int) throws {
        var b = try Self.image(bits)
        let fs = try FAT.open(MemoryDevice(b))
        let (big, first) = try Self.entry(fs, "big.bin")
        Self.setFAT(fs, first, fs.boot.maxCluster + 1, &b)
        let bad = try FAT.open(MemoryDevice(b))
        #expect(throws: WardenError.self) { _ = try bad.read(big.inode, at: 0, count: 10) }
        // Free cluster in the middle, and a chain too short for the size.
        var c = try Self.image(bits)
        Self.setFAT(fs, first, 0, &c)
        #expect(throws: WardenError.self) { _ = try FAT.open(MemoryDevice(c)).read(big.inode, at: 0, count: 10) }
        var e = try Self.image(bits)
        Self.setFAT(fs, first, 0xFFFF_FFF, &e)
        #expect(throws: WardenError.self) { _ = try FAT.open(MemoryDevice(e)).read(big.inode, at: 0, count: 10) }
    }

    @Test func garbledBootSectors() throws {
        let good = try Self.image(16)
        let cases: [(Int, [UInt8])] = [
            (11, [0xE8, 0x03]),       // 1000 bytes per sector
            (11, [0x00, 0x20]),       // 8192 bytes per sector
            (13, [3]),                // 3 sectors per cluster
            (13, [0]),
            (14, [0, 0]),             // no reserved sectors
            (16, [0]),                // no FATs
            (16, [9]),
            (19, [0xFF, 0xFF]),       // more sectors than the device
            (22, [0, 0]),             // FAT32 layout with root entries
            (22, [1, 0]),             // FAT too small
            (0, [0x00]),              // no jump
        ]
        for (o, patch) in cases {
            var b = good
            b.replaceSubrange(o..<(o + patch.count), with: patch)
            #expect(!FAT.probe(MemoryDevice(b)), "patch at \(o)")
            #expect(throws: WardenError.self) { _ = try FAT.open(MemoryDevice(b)) }
        }
    }

    @Test(arguments: [12, 16, 32])
    func randomCorruption(bits: Int) throws {
        let good = try Self.image(bits)
        let fs = try FAT.open(MemoryDevice(good))
        let metaEnd = Int(fs.boot.dataOffset) + 64 * 1024
        var rng = SeededRandom(seed: 0x9E37_79B9_7F4A_7C15 &+ UInt64(bits))
        for round in 0..<60 {
            var b = good
            let hits = 1 + Int(rng.next() % 40)
            for _ in 0..<hits {
                let o = round < 15 ? Int(rng.next() % 90) : Int(rng.next() % UInt64(metaEnd))
                b[o] = UInt8(truncatingIfNeeded: rng.next())
            }
            _ = Self.exercise(b)
        }
    }

    @Test func badStatInodes() throws {
        let fs = try FAT.open(MemoryDevice(try Self.image(16)))
        for ino: UInt64 in [0, 2, 31, 33, 512, UInt64.max, UInt64.max - 31, fs.boot.dataOffset + 1] {
            #expect(throws: WardenError.self) { _ = try fs.stat(ino) }
            #expect(throws: WardenError.self) { _ = try fs.read(ino, at: 0, count: 1) }
        }
        #expect(throws: WardenError.self) { _ = try fs.readLink(fs.rootInode) }
    }
}
