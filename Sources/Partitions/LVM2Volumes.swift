import Foundation
import WardenCore
import DiskImage

extension LVM2 {
    public static let maxPVs = 1024
    public static let maxLVs = 4096
    public static let maxSegments = 65536

    /// One physical volume as the VG metadata describes it.
    public struct PVEntry: Sendable, Equatable {
        /// The key inside the VG ("pv0").
        public var key: String
        public var uuid: String
        /// Byte offset of the first extent on the PV.
        public var peStart: UInt64
        public var peCount: UInt64
    }

    public struct Stripe: Sendable, Equatable {
        public var pvKey: String
        public var startExtent: UInt64
    }

    public struct Segment: Sendable, Equatable {
        public var startExtent: UInt64
        public var extentCount: UInt64
        public var type: String
        /// Stripe size in bytes (0 for linear).
        public var stripeSize: UInt64
        public var stripes: [Stripe]
        /// The legs of a raid1 or mirror segment: sub-LVs holding the same data.
        public var legs: [String] = []
        /// A thin-pool segment's metadata and data sub-LVs.
        public var poolMetadata: String?
        public var poolData: String?
        /// A thin segment's pool and its device id in the pool's metadata.
        public var thinPool: String?
        public var thinDeviceID: UInt64?
        /// A thin segment whose unprovisioned chunks come from another LV (not read).
        public var externalOrigin: String?
    }

    public struct LVEntry: Sendable, Equatable {
        public var name: String
        public var uuid: String
        public var status: [String]
        public var segments: [Segment]
        public var isVisible: Bool { status.contains("VISIBLE") }
        /// A thin pool holds other LVs' chunks: it is not a volume of its own.
        public var isThinPool: Bool { segments.first?.type == "thin-pool" }
        /// A volume a guest sees: visible, and not a thin pool.
        public var isGuestVolume: Bool { isVisible && !isThinPool }
        public var extentCount: UInt64 { segments.reduce(0) { $0 &+ $1.extentCount } }
    }

    public struct VolumeGroup: Sendable {
        public var name: String
        public var uuid: String
        public var seqno: Int64
        /// Extent size in bytes.
        public var extentSize: UInt64
        public var physicalVolumes: [PVEntry]
        public var logicalVolumes: [LVEntry]

        /// Builds the VG from parsed metadata (the one top-level section holding `id` and `extent_size`).
        public init(metadata: Section) throws {
            guard let (name, vg) = metadata.sections.first(where: { $0.section["extent_size"] != nil }) else {
                throw WardenError.corrupt("lvm2: metadata holds no volume group section")
            }
            func int(_ s: Section, _ k: String, _ ctx: String) throws -> UInt64 {
                guard let v = s[k]?.integer else { throw WardenError.corrupt("lvm2: \(ctx) has no integer \(k)") }
                guard v >= 0 else { throw WardenError.corrupt("lvm2: \(ctx) \(k) is negative (\(v))") }
                return UInt64(v)
            }
            self.name = name
            uuid = vg["id"]?.string ?? ""
            seqno = vg["seqno"]?.integer ?? 0
            let es = try int(vg, "extent_size", "VG \(name)")
            guard es >= 1, es <= (UInt64(1) << 32) else { throw WardenError.corrupt("lvm2: VG \(name) extent size \(es) sectors is invalid") }
            extentSize = es * 512
            physicalVolumes = []
            for (key, pv) in vg["physical_volumes"]?.section?.sections ?? [] {
                guard physicalVolumes.count < LVM2.maxPVs else { throw WardenError.limit("lvm2: more than \(LVM2.maxPVs) PVs") }
                let peStart = try int(pv, "pe_start", "PV \(key)")
                physicalVolumes.append(PVEntry(
                    key: key, uuid: pv["id"]?.string ?? "",
                    peStart: try Checked.mul(peStart, 512, "lvm2: PV \(key) pe_start"),
                    peCount: try int(pv, "pe_count", "PV \(key)")))
            }
            logicalVolumes = []
            for (lvName, lv) in vg["logical_volumes"]?.section?.sections ?? [] {
                guard logicalVolumes.count < LVM2.maxLVs else { throw WardenError.limit("lvm2: more than \(LVM2.maxLVs) LVs") }
                var segs: [Segment] = []
                for (segName, seg) in lv.sections where segName.hasPrefix("segment") {
                    guard segs.count < LVM2.maxSegments else { throw WardenError.limit("lvm2: LV \(lvName) has more than \(LVM2.maxSegments) segments") }
                    let ctx = "LV \(lvName) \(segName)"
                    let type = seg["type"]?.string ?? ""
                    var stripes: [Stripe] = []
                    var stripeSize: UInt64 = 0
                    if type == "striped" {
                        let list = seg["stripes"]?.array ?? []
                        guard !list.isEmpty, list.count % 2 == 0 else {
                            throw WardenError.corrupt("lvm2: \(ctx) has a malformed stripes list (\(list.count) elements)")
                        }
                        for i in stride(from: 0, to: list.count, by: 2) {
                            guard let pv = list[i].string, let start = list[i + 1].integer, start >= 0 else {
                                throw WardenError.corrupt("lvm2: \(ctx) stripe \(i / 2) is malformed")
                            }
                            stripes.append(Stripe(pvKey: pv, startExtent: UInt64(start)))
                        }
                        let count = try int(seg, "stripe_count", ctx)
                        guard count == UInt64(stripes.count) else {
                            throw WardenError.corrupt("lvm2: \(ctx) stripe_count \(count) but \(stripes.count) stripes listed")
                        }
                        if stripes.count > 1 {
                            stripeSize = try Checked.mul(try int(seg, "stripe_size", ctx), 512, "lvm2: \(ctx) stripe size")
                        }
                    }
                    // raid1: raids = [rmeta_0, rimage_0, rmeta_1, rimage_1, …]; mirror: mirrors = [mimage_0, 0, mimage_1, 0, …].
                    var legs: [String] = []
                    if type == "raid1" {
                        let list = seg["raids"]?.array ?? []
                        legs = stride(from: 1, to: list.count, by: 2).compactMap { list[$0].string }
                    } else if type == "mirror" {
                        let list = seg["mirrors"]?.array ?? []
                        legs = stride(from: 0, to: list.count, by: 2).compactMap { list[$0].string }
                    }
                    guard legs.count <= 64 else { throw WardenError.limit("lvm2: \(ctx) has more than 64 legs") }
                    var segment = Segment(startExtent: try int(seg, "start_extent", ctx), extentCount: try int(seg, "extent_count", ctx),
                                          type: type, stripeSize: stripeSize, stripes: stripes, legs: legs)
                    if type == "thin-pool" {
                        segment.poolMetadata = seg["metadata"]?.string
                        segment.poolData = seg["pool"]?.string
                    } else if type == "thin" {
                        segment.thinPool = seg["thin_pool"]?.string
                        segment.thinDeviceID = try int(seg, "device_id", ctx)
                        segment.externalOrigin = seg["external_origin"]?.string
                    }
                    segs.append(segment)
                }
                segs.sort { $0.startExtent < $1.startExtent }
                let status = (lv["status"]?.array ?? []).compactMap { $0.string }
                logicalVolumes.append(LVEntry(name: lvName, uuid: lv["id"]?.string ?? "", status: status, segments: segs))
            }
        }
    }

    /// A logical volume ready to read.
    public struct LogicalVolume: Sendable {
        public var name: String
        public var vgName: String
        public var uuid: String
        public var size: UInt64
        public var device: any BlockDevice
        /// `/dev/mapper/VG-LV`.
        public var mapperPath: String { LVM2.mapperPath(vg: vgName, lv: name) }
    }

    /// Maps every visible LV of `vg`. `pvs` maps PV UUIDs (dashed, as in the metadata) to
    /// their devices. Throws `.unsupported` for an LV of a type other than linear/striped
    /// (use ``logicalVolume(_:in:pvs:)`` per LV to skip those instead).
    public static func logicalVolumes(_ vg: VolumeGroup, pvs: [String: any BlockDevice]) throws -> [LogicalVolume] {
        try vg.logicalVolumes.filter(\.isGuestVolume).map { try logicalVolume($0, in: vg, pvs: pvs) }
    }

    /// Maps one LV of `vg` onto its PVs. A raid1 or mirror LV is read from its first leg whose
    /// physical volumes are all present (every leg holds the same data).
    public static func logicalVolume(_ lv: LVEntry, in vg: VolumeGroup, pvs: [String: any BlockDevice], depth: Int = 0) throws -> LogicalVolume {
        if let seg = lv.segments.first, seg.type == "thin" {
            return try thinVolume(lv, seg, in: vg, pvs: pvs, depth: depth)
        }
        if let seg = lv.segments.first, seg.type == "raid1" || seg.type == "mirror" {
            guard lv.segments.count == 1, seg.startExtent == 0, !seg.legs.isEmpty, depth < 4 else {
                throw WardenError.unsupported("lvm2: LV \(vg.name)/\(lv.name) is a \(seg.type) volume of a shape Warden does not read (several segments, nested, or no legs)")
            }
            let size = try Checked.mul(seg.extentCount, vg.extentSize, "lvm2: LV \(lv.name) size")
            var failure: WardenError?
            for name in seg.legs {
                guard let entry = vg.logicalVolumes.first(where: { $0.name == name }) else {
                    failure = WardenError.corrupt("lvm2: LV \(lv.name) names leg \(name), which the metadata does not hold"); continue
                }
                do {
                    let leg = try logicalVolume(entry, in: vg, pvs: pvs, depth: depth + 1)
                    guard leg.size >= size else { throw WardenError.corrupt("lvm2: leg \(name) of LV \(lv.name) is smaller than the LV") }
                    return LogicalVolume(name: lv.name, vgName: vg.name, uuid: lv.uuid, size: size,
                                         device: try SliceDevice(base: leg.device, start: 0, size: size))
                } catch let e as WardenError {
                    failure = e   // a leg on a missing PV: the next one holds the same data
                }
            }
            throw failure ?? WardenError.corrupt("lvm2: LV \(lv.name) has no readable leg")
        }
        var pieces: [LVM2ExtentDevice.Piece] = []
        var next: UInt64 = 0
        let es = vg.extentSize
        for seg in lv.segments {
            guard seg.type == "striped" else {
                throw WardenError.unsupported("lvm2: LV \(vg.name)/\(lv.name) uses segment type \"\(seg.type)\" (linear, striped, raid1, mirror and thin are supported)")
            }
            guard seg.startExtent == next else {
                throw WardenError.corrupt("lvm2: LV \(lv.name) segment at extent \(seg.startExtent) does not follow extent \(next)")
            }
            let n = UInt64(seg.stripes.count)
            guard seg.extentCount > 0, seg.extentCount % n == 0 else {
                throw WardenError.corrupt("lvm2: LV \(lv.name) segment of \(seg.extentCount) extents cannot be split over \(n) stripes")
            }
            let perStripe = seg.extentCount / n
            let areaBytes = try Checked.mul(perStripe, es, "lvm2: LV \(lv.name) stripe area")
            var areas: [LVM2ExtentDevice.Area] = []
            for s in seg.stripes {
                guard let pv = vg.physicalVolumes.first(where: { $0.key == s.pvKey }) else {
                    throw WardenError.corrupt("lvm2: LV \(lv.name) refers to unknown PV \"\(s.pvKey)\"")
                }
                guard let dev = pvs[pv.uuid] else {
                    throw WardenError.notFound("lvm2: LV \(vg.name)/\(lv.name) needs PV \(pv.uuid), which was not supplied")
                }
                let endExtent = try Checked.add(s.startExtent, perStripe, "lvm2: LV \(lv.name) extent")
                guard endExtent <= pv.peCount else {
                    throw WardenError.corrupt("lvm2: LV \(lv.name) uses extents \(s.startExtent)..<\(endExtent) of PV \(s.pvKey), which has \(pv.peCount)")
                }
                let start = try Checked.add(pv.peStart, try Checked.mul(s.startExtent, es, "lvm2: extent offset"), "lvm2: extent offset")
                let end = try Checked.add(start, areaBytes, "lvm2: extent end")
                guard end <= dev.size else {
                    throw WardenError.corrupt("lvm2: LV \(lv.name) extents end at byte \(end), beyond the \(dev.size)-byte PV \(s.pvKey)")
                }
                areas.append(LVM2ExtentDevice.Area(device: dev, offset: start))
            }
            if n > 1 {
                guard seg.stripeSize > 0, areaBytes % seg.stripeSize == 0 else {
                    throw WardenError.corrupt("lvm2: LV \(lv.name) stripe size \(seg.stripeSize) does not divide the \(areaBytes)-byte stripe area")
                }
            }
            let len = try Checked.mul(seg.extentCount, es, "lvm2: LV \(lv.name) size")
            pieces.append(LVM2ExtentDevice.Piece(start: try Checked.mul(seg.startExtent, es, "lvm2: segment start"), length: len,
                                             stripeSize: n > 1 ? seg.stripeSize : areaBytes, areas: areas))
            next = try Checked.add(next, seg.extentCount, "lvm2: LV \(lv.name) extents")
        }
        let size = try Checked.mul(next, es, "lvm2: LV \(lv.name) size")
        return LogicalVolume(name: lv.name, vgName: vg.name, uuid: lv.uuid, size: size,
                             device: LVM2ExtentDevice(size: size, pieces: pieces))
    }
}

extension LVM2 {
    /// A thin LV, read through its pool: the pool's metadata and data sub-LVs are mapped like
    /// any other LV (linear, striped, raid1), and the metadata says where each chunk is.
    static func thinVolume(_ lv: LVEntry, _ seg: Segment, in vg: VolumeGroup, pvs: [String: any BlockDevice], depth: Int) throws -> LogicalVolume {
        let what = "thin LV \(vg.name)/\(lv.name)"
        guard lv.segments.count == 1, seg.startExtent == 0, depth < 4 else {
            throw WardenError.unsupported("lvm2: \(what) has a shape Warden does not read (several segments, or nested)")
        }
        if let origin = seg.externalOrigin {
            throw WardenError.unsupported("lvm2: \(what) reads unprovisioned chunks from external origin \(origin) (not read)")
        }
        guard let poolName = seg.thinPool, let pool = vg.logicalVolumes.first(where: { $0.name == poolName }),
              let poolSeg = pool.segments.first, pool.isThinPool else {
            throw WardenError.corrupt("lvm2: \(what) names pool \(seg.thinPool ?? "(none)"), which the metadata does not hold")
        }
        guard let id = seg.thinDeviceID, let metaName = poolSeg.poolMetadata, let dataName = poolSeg.poolData,
              let metaEntry = vg.logicalVolumes.first(where: { $0.name == metaName }),
              let dataEntry = vg.logicalVolumes.first(where: { $0.name == dataName }) else {
            throw WardenError.corrupt("lvm2: thin pool \(vg.name)/\(poolName) does not name its metadata and data volumes")
        }
        let meta = try logicalVolume(metaEntry, in: vg, pvs: pvs, depth: depth + 1)
        let data = try logicalVolume(dataEntry, in: vg, pvs: pvs, depth: depth + 1)
        let metadata = try LVM2Thin.Metadata(device: meta.device, name: "\(vg.name)/\(metaName)")
        guard let root = try metadata.deviceRoot(id) else {
            throw WardenError.corrupt("lvm2: \(what) is device \(id) of pool \(poolName), which its metadata does not hold")
        }
        let size = try Checked.mul(seg.extentCount, vg.extentSize, "lvm2: LV \(lv.name) size")
        return LogicalVolume(name: lv.name, vgName: vg.name, uuid: lv.uuid, size: size,
                             device: LVM2ThinDevice(size: size, metadata: metadata, root: root, data: data.device, name: "\(vg.name)/\(lv.name)"))
    }
}

/// A block device that maps an LV's bytes onto PV extents (linear and striped segments).
/// Immutable after init, so reads are thread-safe as long as the PV devices are.
public final class LVM2ExtentDevice: BlockDevice, @unchecked Sendable {
    struct Area { var device: any BlockDevice; var offset: UInt64 }
    struct Piece {
        var start: UInt64
        var length: UInt64
        /// Bytes per stripe chunk (the whole area for linear segments).
        var stripeSize: UInt64
        var areas: [Area]
    }
    public let size: UInt64
    let pieces: [Piece]

    init(size: UInt64, pieces: [Piece]) {
        self.size = size
        self.pieces = pieces
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, buffer.count)
        var done = 0
        var pos = offset
        while done < buffer.count {
            // Binary search for the piece holding `pos`.
            var lo = 0, hi = pieces.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if pieces[mid].start + pieces[mid].length <= pos { lo = mid + 1 } else { hi = mid }
            }
            guard lo < pieces.count, pieces[lo].start <= pos else {
                throw WardenError.corrupt("lvm2: LV byte \(pos) is not mapped")
            }
            let p = pieces[lo]
            let within = pos - p.start
            let n = UInt64(p.areas.count)
            let chunk = within / p.stripeSize
            let inChunk = within % p.stripeSize
            let area = p.areas[Int(chunk % n)]
            let areaOffset = (chunk / n) * p.stripeSize + inChunk
            let take = Int(min(UInt64(buffer.count - done), p.stripeSize - inChunk, p.start + p.length - pos))
            let sub = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + take)])
            try area.device.read(at: area.offset + areaOffset, into: sub)
            done += take
            pos += UInt64(take)
        }
    }
}
