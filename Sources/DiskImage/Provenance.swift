import WardenCore

/// A device that can say which image file defines a range of its bytes.
///
/// A qcow2 clone reads the clusters it never wrote from its backing file. When every byte of
/// a range comes from one layer, the range's bytes are fixed by that layer's file: the same
/// range of an unchanged file (equal ``ImageFile/contentStamp``) holds the same bytes, whether
/// it is read through the base itself or through any of its overlays. Scanners use this to
/// reuse what they learnt of a base's files for its clones without reading them again.
public protocol ProvenanceDevice {
    /// The identity of the one layer that stores (or zero-fills) every byte of
    /// `offset ..< offset + length`, including where it sits; nil when several layers do, a
    /// layer cannot be identified, or the range is out of bounds.
    func source(at offset: UInt64, length: UInt64) throws -> String?
}

extension RawDevice: ProvenanceDevice {
    public func source(at offset: UInt64, length: UInt64) throws -> String? {
        guard let stamp = file.contentStamp, offset <= size, length <= size - offset else { return nil }
        return "raw:" + stamp
    }
}

extension SliceDevice: ProvenanceDevice {
    public func source(at offset: UInt64, length: UInt64) throws -> String? {
        guard let base = base as? ProvenanceDevice, offset <= size, length <= size - offset else { return nil }
        // The layer's identity already names the file; the offset travels in the key the
        // caller builds from its own (slice-relative) offsets, so the slice's start joins it.
        return try base.source(at: start + offset, length: length).map { "\($0)@\(start)" }
    }
}

extension QCOW2.Device: ProvenanceDevice {
    public func source(at offset: UInt64, length: UInt64) throws -> String? {
        guard let layerID, offset <= size, length <= size - offset else { return nil }
        var here = false, below = false
        var pos = offset
        let end = offset + length
        var work: UInt64 = 0
        while pos < end {
            let (run, len) = try resolve(pos, limit: end - pos, work: &work)
            guard len > 0 else { return nil }
            if case .unallocated = run, backing != nil { below = true } else { here = true }
            if here && below { return nil }
            pos += len
        }
        if !below { return layerID }
        guard let backing, let b = backing as? ProvenanceDevice, end <= backing.size else { return nil }
        return try b.source(at: offset, length: length)
    }
}
