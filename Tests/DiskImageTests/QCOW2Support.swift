import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// Helpers shared by the qcow2 tests: fixtures built with qemu-img/qemu-io,
/// the qemu-img oracle, and whole-device comparison.
enum Q {
    /// Builds (once, cached) a fixture directory by running `script` in it.
    static func fixture(_ name: String, _ script: String) throws -> String {
        try Fixtures.cached("qcow2-" + name, recipe: script) { dir in
            try Tool.sh(script, cwd: dir)
        }
    }

    /// The guest bytes according to qemu-img (`convert -O raw`), cached next to the image.
    static func oracle(_ image: String, snapshot: String? = nil) throws -> [UInt8] {
        let out = image + (snapshot.map { ".snap-\($0)" } ?? "") + ".oracle.raw"
        if !FileManager.default.fileExists(atPath: out) {
            let tmp = out + ".tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
            var args = ["qemu-img", "convert", "-U"]
            if let snapshot { args += ["-l", "snapshot.name=\(snapshot)"] }
            args += ["-O", "raw", image, tmp]
            try Tool.run(args)
            // rename(2) replaces atomically if a concurrent test got there first.
            guard rename(tmp, out) == 0 else { throw WardenError(.io, "cannot rename \(tmp)") }
        }
        return try Fixtures.read(out)
    }

    /// `qemu-img info --output=json` for one file (not the chain).
    static func info(_ image: String) throws -> [String: Any] {
        let r = try Tool.run(["qemu-img", "info", "-U", "--output=json", image])
        return try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
    }

    /// Reads the whole device in uneven chunks (so runs start and end mid-cluster).
    static func readAll(_ dev: any BlockDevice) throws -> [UInt8] {
        let size = try Checked.cast(dev.size) as Int
        var out = [UInt8](repeating: 0xA5, count: size)
        let chunks = [1 << 20, 4096, 65536 + 512, 3 << 20, 777, 512, 2 << 20]
        try out.withUnsafeMutableBytes { buf in
            var pos = 0
            var i = 0
            while pos < size {
                let n = min(chunks[i % chunks.count], size - pos)
                try dev.read(at: UInt64(pos), into: UnsafeMutableRawBufferPointer(rebasing: buf[pos..<pos + n]))
                pos += n
                i += 1
            }
        }
        return out
    }

    /// Byte-for-byte equality without a slow element loop; reports the first difference.
    static func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
        if a.count != b.count { return min(a.count, b.count) }
        let same = a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in
            pa.count == 0 || memcmp(pa.baseAddress!, pb.baseAddress!, pa.count) == 0
        } }
        if same { return nil }
        return zip(a, b).enumerated().first { $0.element.0 != $0.element.1 }?.offset
    }

    /// Opens `image`, reads it all and compares with qemu-img's conversion.
    @discardableResult
    static func expectMatchesOracle(_ image: String, options: OpenOptions = OpenOptions(),
                                    sourceLocation: SourceLocation = #_sourceLocation) throws -> OpenedImage {
        let img = try ImageOpener.open(image, options: options)
        var expected = try oracle(image, snapshot: options.snapshot)
        if options.snapshot != nil && UInt64(expected.count) > img.device.size {
            // qemu-img convert -l keeps the current virtual size; Warden uses the
            // snapshot's own. Past it, qemu reads zeros.
            let tail = expected[Int(img.device.size)...]
            #expect(tail.allSatisfy { $0 == 0 }, "qemu-img read data past the snapshot's size", sourceLocation: sourceLocation)
            expected = Array(expected.prefix(Int(img.device.size)))
        }
        #expect(img.device.size == UInt64(expected.count), "size of \(image)", sourceLocation: sourceLocation)
        let got = try readAll(img.device)
        let diff = firstDifference(got, expected)
        #expect(diff == nil, "\(image) differs from qemu-img at byte \(diff.map { hex($0) } ?? "-")", sourceLocation: sourceLocation)
        try expectMappingConsistent(img.device, expected, sourceLocation: sourceLocation)
        try expectRandomReads(img.device, expected, sourceLocation: sourceLocation)
        return img
    }

    /// The mapping covers the device in order, is merged, and `.zero` runs read as zeros.
    static func expectMappingConsistent(_ dev: any BlockDevice, _ expected: [UInt8],
                                        sourceLocation: SourceLocation = #_sourceLocation) throws {
        let map = try dev.mapping(at: 0, length: dev.size)
        var pos: UInt64 = 0
        var lastKind: BlockExtent.Kind?
        for e in map {
            #expect(e.offset == pos && e.length > 0, "extent at \(hex(e.offset)) expected at \(hex(pos))", sourceLocation: sourceLocation)
            #expect(e.kind != lastKind, "adjacent extents of the same kind at \(hex(e.offset))", sourceLocation: sourceLocation)
            if e.kind == .zero {
                let s = Int(e.offset), t = Int(e.offset + e.length)
                let allZero = expected[s..<t].withUnsafeBytes { p in
                    p.allSatisfy { $0 == 0 }
                }
                #expect(allZero, ".zero extent \(hex(s))..<\(hex(t)) holds data", sourceLocation: sourceLocation)
            }
            pos = e.offset + e.length
            lastKind = e.kind
        }
        #expect(pos == dev.size, sourceLocation: sourceLocation)
        // A sub-range mapping agrees with the whole-range one.
        if dev.size > 10000 {
            let sub = try dev.mapping(at: 1234, length: dev.size / 2)
            #expect(sub.first?.offset == 1234, sourceLocation: sourceLocation)
            #expect(sub.reduce(0) { $0 + $1.length } == dev.size / 2, sourceLocation: sourceLocation)
        }
    }

    /// Small reads at awkward offsets agree with the oracle.
    static func expectRandomReads(_ dev: any BlockDevice, _ expected: [UInt8],
                                  sourceLocation: SourceLocation = #_sourceLocation) throws {
        var rng = SeededRandom(seed: UInt64(expected.count))
        for _ in 0..<200 where !expected.isEmpty {
            let off = Int(rng.next() % UInt64(expected.count))
            let n = min(Int(rng.next() % 200_000) + 1, expected.count - off)
            let got = try dev.read(at: UInt64(off), count: n)
            #expect(firstDifference(got, Array(expected[off..<off + n])) == nil,
                    "read of \(n) at \(hex(off))", sourceLocation: sourceLocation)
        }
    }

    /// zero ranges per `qemu-img map`, merged.
    static func qemuZeroRanges(_ image: String) throws -> [Range<UInt64>] {
        let r = try Tool.run(["qemu-img", "map", "-U", "--output=json", image])
        let arr = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]])
        var out: [Range<UInt64>] = []
        for e in arr {
            let start = try #require((e["start"] as? NSNumber)?.uint64Value)
            let len = try #require((e["length"] as? NSNumber)?.uint64Value)
            guard (e["zero"] as? Bool) == true, (e["data"] as? Bool) == false else { continue }
            if let last = out.last, last.upperBound == start {
                out[out.count - 1] = last.lowerBound..<start + len
            } else {
                out.append(start..<start + len)
            }
        }
        return out
    }

    static func zeroRanges(_ dev: any BlockDevice) throws -> [Range<UInt64>] {
        try dev.mapping(at: 0, length: dev.size).filter { $0.kind == .zero }.map { $0.offset..<$0.offset + $0.length }
    }

    /// Writes a patched copy of `source` to `dest`.
    static func patch(_ source: String, _ dest: String, _ edits: [(Int, [UInt8])], truncate: Int? = nil) throws {
        var bytes = try Fixtures.read(source)
        for (off, b) in edits {
            if bytes.count < off + b.count { bytes += [UInt8](repeating: 0, count: off + b.count - bytes.count) }
            bytes.replaceSubrange(off..<off + b.count, with: b)
        }
        if let truncate { bytes = Array(bytes.prefix(truncate)) }
        try Fixtures.write(bytes, to: dest)
    }

    static func be64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) } }
    static func be32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * $0)) } }

    static func readBE64(_ bytes: [UInt8], _ off: Int) -> UInt64 {
        (0..<8).reduce(0) { ($0 << 8) | UInt64(bytes[off + $1]) }
    }

    /// Opens `path` and reads the whole device and its mapping. Returns the error,
    /// if any; any error that is not a `WardenError` fails the test.
    static func openAndReadEverything(_ path: String, options: OpenOptions = OpenOptions(),
                                      sourceLocation: SourceLocation = #_sourceLocation) -> WardenError? {
        do {
            let img = try ImageOpener.open(path, options: options)
            _ = try img.device.mapping(at: 0, length: img.device.size)
            let n = min(img.device.size, 256 << 20)
            var pos: UInt64 = 0
            var buf = [UInt8](repeating: 0, count: 1 << 20)
            while pos < n {
                let len = Int(min(UInt64(buf.count), n - pos))
                try buf.withUnsafeMutableBytes { try img.device.read(at: pos, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<len])) }
                pos += UInt64(len)
            }
            return nil
        } catch let e as WardenError {
            return e
        } catch {
            Issue.record("non-Warden error \(error) for \(path)", sourceLocation: sourceLocation)
            return nil
        }
    }
}

