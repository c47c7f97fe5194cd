import WardenCore
import DiskImage

/// GUID Partition Tables (UEFI spec, chapter 5).
enum GPT {
    static let maxEntries: UInt32 = 16384
    static let maxEntryBytes: UInt32 = 4096
    static let maxArrayBytes = 4 << 20

    struct Header {
        var lba: UInt64
        var alternateLBA: UInt64
        var firstUsable: UInt64
        var lastUsable: UInt64
        var diskGUID: [UInt8]
        var entriesLBA: UInt64
        var entryCount: UInt32
        var entrySize: UInt32
        var entriesCRC: UInt32
    }

    /// Why a header could not be used.
    struct Problem: Error { var text: String }

    static func read(_ disk: any BlockDevice) throws -> PartitionTable {
        var lastError = "no GPT header at LBA 1"
        for sectorSize: UInt64 in [512, 4096] {
            guard disk.size >= sectorSize * 2 else { continue }
            let sig = try disk.read(at: sectorSize, count: 8)
            let lastLBA = disk.size / sectorSize - 1
            var warnings: [String] = []
            var chosen: (Header, [UInt8])?
            do {
                chosen = try load(disk, lba: 1, sectorSize: sectorSize)
            } catch let p as Problem {
                // Only fall back at this sector size if it plausibly is this sector size.
                if sig != Array("EFI PART".utf8) && sectorSize != 512 { continue }
                lastError = "primary GPT header is damaged (\(p.text))"
                var candidates: [UInt64] = [lastLBA]
                if let alt = try? alternateLBA(disk, sectorSize: sectorSize), alt != lastLBA, alt > 1, alt <= lastLBA {
                    candidates.insert(alt, at: 0)
                }
                for lba in candidates {
                    if let h = try? load(disk, lba: lba, sectorSize: sectorSize) {
                        chosen = h
                        warnings.append("primary GPT header is damaged (\(p.text)); using the backup GPT at LBA \(lba)")
                        break
                    }
                }
                if chosen == nil {
                    if sig != Array("EFI PART".utf8) && sectorSize == 512 {
                        // Maybe a 4096-byte-sector disk: try that before giving up.
                        continue
                    }
                    throw WardenError.corrupt("both GPT headers are damaged: \(lastError) and the backup GPT is unusable")
                }
            }
            guard let (header, array) = chosen else { continue }
            if header.lba == 1 {
                // Check the backup too, so a damaged backup is reported.
                let alt = header.alternateLBA
                if alt > lastLBA || alt <= 1 {
                    warnings.append("backup GPT header location (LBA \(alt)) lies beyond the end of the disk")
                } else if (try? load(disk, lba: alt, sectorSize: sectorSize)) == nil {
                    warnings.append("backup GPT header at LBA \(alt) is damaged")
                }
            }
            return try table(header, array, sectorSize: sectorSize, diskSectors: lastLBA + 1, warnings: warnings)
        }
        throw WardenError.corrupt("protective MBR found but \(lastError)")
    }

    /// The alternate LBA from a header whose CRC may be bad (a hint only).
    static func alternateLBA(_ disk: any BlockDevice, sectorSize: UInt64) throws -> UInt64 {
        let b = try disk.read(at: sectorSize, count: 92)
        guard Array(b[0..<8]) == Array("EFI PART".utf8) else { throw Problem(text: "no signature") }
        return try b.le(32, UInt64.self)
    }

    /// Reads and fully validates the header at `lba` and its entry array.
    static func load(_ disk: any BlockDevice, lba: UInt64, sectorSize: UInt64) throws -> (Header, [UInt8]) {
        let (off, o) = lba.multipliedReportingOverflow(by: sectorSize)
        guard !o, off + sectorSize <= disk.size else { throw Problem(text: "header LBA \(lba) is beyond the end of the disk") }
        let b = try disk.read(at: off, count: Int(sectorSize))
        guard Array(b[0..<8]) == Array("EFI PART".utf8) else { throw Problem(text: "no \"EFI PART\" signature") }
        let headerSize: UInt32 = try b.le(12)
        guard headerSize >= 92, UInt64(headerSize) <= sectorSize else { throw Problem(text: "header size \(headerSize) is invalid") }
        let crc: UInt32 = try b.le(16)
        var copy = Array(b[0..<Int(headerSize)])
        copy[16] = 0; copy[17] = 0; copy[18] = 0; copy[19] = 0
        guard CRC32.ieee.checksum(copy) == crc else { throw Problem(text: "CRC mismatch") }
        let h = Header(
            lba: try b.le(24), alternateLBA: try b.le(32), firstUsable: try b.le(40), lastUsable: try b.le(48),
            diskGUID: Array(b[56..<72]), entriesLBA: try b.le(72), entryCount: try b.le(80), entrySize: try b.le(84),
            entriesCRC: try b.le(88))
        guard h.lba == lba else { throw Problem(text: "header claims to be at LBA \(h.lba), not \(lba)") }
        guard h.entrySize >= 128, h.entrySize <= maxEntryBytes, h.entrySize % 8 == 0 else {
            throw Problem(text: "partition entry size \(h.entrySize) is invalid")
        }
        guard h.entryCount <= maxEntries, Int(h.entryCount) * Int(h.entrySize) <= maxArrayBytes else {
            throw Problem(text: "partition entry array of \(h.entryCount) entries is too large")
        }
        let arrayBytes = Int(h.entryCount) * Int(h.entrySize)
        let (aoff, ao) = h.entriesLBA.multipliedReportingOverflow(by: sectorSize)
        guard !ao, aoff <= disk.size, UInt64(arrayBytes) <= disk.size - aoff else {
            throw Problem(text: "partition entry array lies beyond the end of the disk")
        }
        let array = try disk.read(at: aoff, count: arrayBytes)
        guard CRC32.ieee.checksum(array) == h.entriesCRC else { throw Problem(text: "partition entry array CRC mismatch") }
        return (h, array)
    }

    static func table(_ h: Header, _ array: [UInt8], sectorSize: UInt64, diskSectors: UInt64, warnings: [String]) throws -> PartitionTable {
        var t = PartitionTable(scheme: .gpt, partitions: [], warnings: warnings, diskID: guidString(h.diskGUID).lowercased())
        let size = Int(h.entrySize)
        for i in 0..<Int(h.entryCount) {
            let e = Array(array[i * size ..< i * size + 128])
            let type = Array(e[0..<16])
            if type.allSatisfy({ $0 == 0 }) { continue }
            let first: UInt64 = try e.le(32), last: UInt64 = try e.le(40)
            let attrs: UInt64 = try e.le(48)
            let index = i + 1
            guard first <= last else {
                t.warnings.append("GPT entry \(index) ends (LBA \(last)) before it starts (LBA \(first)); skipped")
                continue
            }
            guard first < diskSectors else {
                t.warnings.append("GPT partition \(index) starts at LBA \(first), beyond the end of the disk; skipped")
                continue
            }
            if last >= diskSectors {
                t.warnings.append("GPT partition \(index) ends at LBA \(last), beyond the end of the disk")
            }
            let sectors = try Checked.add(last - first, 1, "GPT partition \(index) size")
            let start = try Checked.mul(first, sectorSize, "GPT partition \(index) start")
            let bytes = try Checked.mul(sectors, sectorSize, "GPT partition \(index) size")
            var units: [UInt16] = []
            for k in 0..<36 {
                let u = UInt16(e[56 + 2 * k]) | UInt16(e[57 + 2 * k]) << 8
                if u == 0 { break }
                units.append(u)
            }
            let typeGUID = guidString(type)
            t.partitions.append(Partition(
                index: index, kind: .gpt, start: start, size: bytes, typeCode: typeGUID,
                typeName: PartitionTypes.gptName(typeGUID), name: String(decoding: units, as: UTF16.self),
                uuid: guidString(Array(e[16..<32])).lowercased(), bootable: attrs & 0x4 != 0))
        }
        return t
    }

    /// Canonical upper-case GUID text from its mixed-endian on-disk form.
    static func guidString(_ b: [UInt8]) -> String {
        func h(_ r: [Int]) -> String {
            r.map { String(b[$0], radix: 16, uppercase: true).leftPadded(to: 2) }.joined()
        }
        return [h([3, 2, 1, 0]), h([5, 4]), h([7, 6]), h([8, 9]), h(Array(10..<16))].joined(separator: "-")
    }
}
