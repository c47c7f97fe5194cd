import WardenCore
import DiskImage

/// DOS/MBR partition tables with extended/logical partitions.
enum MBR {
    /// Most logical partitions followed in one extended partition.
    static let maxLogicals = 128

    struct Entry {
        var bootIndicator: UInt8
        var type: UInt8
        var startLBA: UInt32
        var sectors: UInt32
        var isEmpty: Bool { type == 0 || sectors == 0 }
        var isExtended: Bool { type == 0x05 || type == 0x0F || type == 0x85 }
    }

    /// A sector holding a partition table (an MBR or an EBR).
    struct Sector {
        var entries: [Entry]
        var diskSignature: UInt32

        /// Nil unless the sector ends with 0x55 0xAA.
        init?(_ b: [UInt8]) {
            guard b.count >= 512, b[510] == 0x55, b[511] == 0xAA else { return nil }
            entries = (0..<4).map { i in
                let o = 446 + 16 * i
                func u32(_ at: Int) -> UInt32 {
                    UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
                }
                return Entry(bootIndicator: b[o], type: b[o + 4], startLBA: u32(o + 8), sectors: u32(o + 12))
            }
            diskSignature = UInt32(b[440]) | UInt32(b[441]) << 8 | UInt32(b[442]) << 16 | UInt32(b[443]) << 24
        }
    }

    /// True when sector 0 looks like a filesystem boot sector rather than a partition table.
    static func looksLikeBootSector(_ b: [UInt8]) -> Bool {
        func has(_ s: String, at o: Int) -> Bool { Array(b[o..<o + s.utf8.count]) == Array(s.utf8) }
        return has("NTFS    ", at: 3) || has("EXFAT   ", at: 3) || has("FAT12   ", at: 54) || has("FAT16   ", at: 54)
            || has("FAT32   ", at: 82) || has("FAT     ", at: 54)
    }

    static func read(_ disk: any BlockDevice, sector0: Sector) throws -> PartitionTable {
        let raw = try disk.read(at: 0, count: 512)
        let none = PartitionTable(scheme: .none, partitions: [])
        // Boot indicators other than 0x00/0x80 mean this is not a partition table.
        guard sector0.entries.allSatisfy({ $0.bootIndicator == 0 || $0.bootIndicator == 0x80 }) else { return none }
        guard sector0.entries.contains(where: { !$0.isEmpty }) else { return none }
        if looksLikeBootSector(raw) { return none }

        let diskSectors = disk.size / mbrSectorSize
        let sig = String(sector0.diskSignature, radix: 16).leftPadded(to: 8)
        var table = PartitionTable(scheme: .mbr, partitions: [], diskID: sig)
        func uuid(_ n: Int) -> String? {
            sector0.diskSignature == 0 ? nil : "\(sig)-\(String(n, radix: 16).leftPadded(to: 2))"
        }
        func add(_ index: Int, _ kind: Partition.Kind, start: UInt64, sectors: UInt64, type: UInt8, boot: UInt8) {
            let end = start + sectors // both < 2^33: no overflow
            if start >= diskSectors {
                table.warnings.append("partition \(index) starts at sector \(start), beyond the end of the \(diskSectors)-sector disk; skipped")
                return
            }
            if end > diskSectors {
                table.warnings.append("partition \(index) ends at sector \(end), beyond the end of the \(diskSectors)-sector disk")
            }
            table.partitions.append(Partition(
                index: index, kind: kind, start: start * mbrSectorSize, size: sectors * mbrSectorSize,
                typeCode: "0x" + String(type, radix: 16).leftPadded(to: 2), typeName: PartitionTypes.mbrName(type),
                uuid: uuid(index), bootable: boot == 0x80))
        }

        var nextLogical = 5
        for (i, e) in sector0.entries.enumerated() where !e.isEmpty {
            add(i + 1, e.isExtended ? .extended : .primary, start: UInt64(e.startLBA), sectors: UInt64(e.sectors),
                type: e.type, boot: e.bootIndicator)
            if e.isExtended {
                try readLogicals(disk, extendedStart: UInt64(e.startLBA), diskSectors: diskSectors,
                                 next: &nextLogical, warn: { table.warnings.append($0) }, add: add)
            }
        }
        table.partitions.sort { $0.index < $1.index }
        return table
    }

    /// Follows the EBR chain of one extended partition.
    private static func readLogicals(
        _ disk: any BlockDevice, extendedStart: UInt64, diskSectors: UInt64,
        next: inout Int, warn: (String) -> Void,
        add: (Int, Partition.Kind, UInt64, UInt64, UInt8, UInt8) -> Void
    ) throws {
        var ebr = extendedStart
        var seen: Set<UInt64> = []
        var hops = 0
        while true {
            guard ebr < diskSectors else {
                warn("extended boot record at sector \(ebr) lies beyond the end of the disk; logical partitions after it are missing")
                return
            }
            guard seen.insert(ebr).inserted else {
                warn("extended boot record chain loops back to sector \(ebr); stopped following it")
                return
            }
            hops += 1
            guard hops <= maxLogicals else {
                warn("more than \(maxLogicals) extended boot records; stopped following the chain")
                return
            }
            guard let sector = Sector(try disk.read(at: ebr * mbrSectorSize, count: 512)) else {
                if hops > 1 {
                    warn("extended boot record at sector \(ebr) has no 0x55AA signature; logical partitions after it are missing")
                }
                return
            }
            var link: Entry?
            for e in sector.entries.prefix(2) where !e.isEmpty {
                if e.isExtended {
                    if link == nil { link = e }
                } else {
                    add(next, .logical, ebr + UInt64(e.startLBA), UInt64(e.sectors), e.type, e.bootIndicator)
                    next += 1
                }
            }
            guard let link else { return }
            ebr = extendedStart + UInt64(link.startLBA)
        }
    }
}

extension String {
    func leftPadded(to n: Int, with c: Character = "0") -> String {
        count >= n ? self : String(repeating: c, count: n - count) + self
    }
}
