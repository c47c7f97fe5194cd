import WardenCore

extension QCOW2 {
    /// One entry of the internal snapshot table.
    struct Snapshot: Sendable {
        var info: SnapshotInfo
        var l1TableOffset: UInt64
        var l1Size: UInt32

        /// QEMU's limits: at most 65536 snapshots, a 64 MiB table, 1 KiB of extra data each.
        static let maxCount: UInt32 = 65536
        static let maxTableBytes: UInt64 = 64 << 20
        static let maxExtraData: UInt32 = 1024

        /// Reads the whole snapshot table (without loading any snapshot's L1 table).
        static func readTable(file: ImageFile, header: Header) throws -> [Snapshot] {
            let path = file.path
            let count = header.snapshotCount
            guard count > 0 else { return [] }
            guard count <= maxCount else {
                throw WardenError.limit("snapshot table claims \(count) snapshots (limit \(maxCount))", file: path)
            }
            let start = header.snapshotsOffset
            guard start & UInt64(header.clusterSize - 1) == 0 else {
                throw WardenError.corrupt("snapshot table offset \(hex(start)) is not aligned to a cluster", file: path, offset: start)
            }
            var out: [Snapshot] = []
            out.reserveCapacity(Int(count))
            var pos = start
            for index in 0..<Int(count) {
                let used = pos - start
                guard used <= maxTableBytes else {
                    throw WardenError.limit("snapshot table is larger than \(maxTableBytes >> 20) MiB", file: path)
                }
                let fixed = try file.read(at: pos, count: 40, what: "snapshot table entry \(index)")
                var r = ByteReader(fixed, context: "snapshot table entry \(index)")
                let l1Offset: UInt64 = try r.readBE()
                let l1Size: UInt32 = try r.readBE()
                let idLen: UInt16 = try r.readBE()
                let nameLen: UInt16 = try r.readBE()
                let dateSec: UInt32 = try r.readBE()
                let dateNsec: UInt32 = try r.readBE()
                let vmClock: UInt64 = try r.readBE()
                let vmState32: UInt32 = try r.readBE()
                let extraSize: UInt32 = try r.readBE()
                guard extraSize <= maxExtraData else {
                    throw WardenError.corrupt("snapshot table entry \(index) at offset \(hex(pos)) has \(extraSize) bytes of extra data (limit \(maxExtraData))", file: path, offset: pos)
                }
                let varLen = Int(extraSize) + Int(idLen) + Int(nameLen)
                let varStart = try Checked.add(pos, 40, "snapshot table entry offset")
                let rest = try file.read(at: varStart, count: varLen, what: "snapshot table entry \(index)")
                var vmState = UInt64(vmState32)
                var diskSize = header.size
                if extraSize >= 8 { vmState = try ByteReader.be(rest, at: 0, context: "snapshot extra data") }
                if extraSize >= 16 { diskSize = try ByteReader.be(rest, at: 8, context: "snapshot extra data") }
                let idBytes = rest[Int(extraSize)..<Int(extraSize) + Int(idLen)]
                let nameBytes = rest[(Int(extraSize) + Int(idLen))...]
                let info = SnapshotInfo(
                    id: String(decoding: idBytes, as: UTF8.self),
                    name: String(decoding: nameBytes, as: UTF8.self),
                    virtualSize: diskSize, dateSeconds: UInt64(dateSec), dateNanoseconds: dateNsec,
                    vmClockNanoseconds: vmClock, vmStateSize: vmState)
                out.append(Snapshot(info: info, l1TableOffset: l1Offset, l1Size: l1Size))
                // Entries are padded to a multiple of 8 bytes.
                let entryLen = UInt64((40 + varLen + 7) & ~7)
                pos = try Checked.add(pos, entryLen, "snapshot table entry offset")
            }
            return out
        }
    }
}
