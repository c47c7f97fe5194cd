import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// qemu-io writes shared by several fixtures: data, unaligned data, zero
/// ranges over data and over nothing, data at the very end of the disk.
private let layoutWrites = """
    -c "write -P 0x11 0 1M" -c "write -P 0x22 5243392 300000" -c "write -z 65536 131072" \
    -c "write -z 8M 2M" -c "write -P 0x55 10M 4M" -c "write -z 11M 64k" -c "write -P 0x66 25161728 4096"
    """

/// A raw source with compressible text, patterns and incompressible random data.
private let rawSource = """
    qemu-img create -q -f raw src.raw 24M
    qemu-io -f raw -c "write -P 0x11 0 1M" -c "write -P 0x22 5243392 300000" -c "write -P 0x55 10M 4M" \
        -c "write -P 0x66 25161728 4096" src.raw >/dev/null
    seq 1 300000 | dd of=src.raw bs=4096 seek=1024 conv=notrunc status=none
    head -c 1048576 /dev/urandom | dd of=src.raw bs=4096 seek=4096 conv=notrunc status=none
    """

/// Single-file fixtures: name -> script producing img.qcow2.
let singleFixtures: [String: String] = [
    "v2": """
        qemu-img create -q -f qcow2 -o compat=0.10 img.qcow2 24M
        qemu-io -f qcow2 \(layoutWrites) img.qcow2 >/dev/null
        """,
    "v3": """
        qemu-img create -q -f qcow2 -o compat=1.1 img.qcow2 24M
        qemu-io -f qcow2 \(layoutWrites) img.qcow2 >/dev/null
        """,
    "v3-512": """
        qemu-img create -q -f qcow2 -o cluster_size=512 img.qcow2 24M
        qemu-io -f qcow2 \(layoutWrites) img.qcow2 >/dev/null
        """,
    "v3-2M": """
        qemu-img create -q -f qcow2 -o cluster_size=2M img.qcow2 24M
        qemu-io -f qcow2 \(layoutWrites) img.qcow2 >/dev/null
        """,
    "v3-4k-refcount1": """
        qemu-img create -q -f qcow2 -o cluster_size=4096,refcount_bits=1 img.qcow2 24M
        qemu-io -f qcow2 \(layoutWrites) img.qcow2 >/dev/null
        """,
    "zlib": """
        \(rawSource)
        qemu-img convert -c -O qcow2 src.raw img.qcow2
        """,
    "zstd": """
        \(rawSource)
        qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw img.qcow2
        """,
    "zlib-512": """
        \(rawSource)
        qemu-img convert -c -O qcow2 -o cluster_size=512 src.raw img.qcow2
        """,
    "zstd-2M": """
        \(rawSource)
        qemu-img convert -c -O qcow2 -o cluster_size=2M,compression_type=zstd src.raw img.qcow2
        """,
    "zlib-v2": """
        \(rawSource)
        qemu-img convert -c -O qcow2 -o compat=0.10 src.raw img.qcow2
        qemu-io -f qcow2 -c "write -P 0x77 100000 5000" img.qcow2 >/dev/null
        """,
    "extl2": """
        qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k img.qcow2 24M
        qemu-io -f qcow2 -c "write -P 0x33 4096 2048" -c "write -z 8192 4096" -c "write -P 0x44 100000 70000" \
            -c "write -z 1M 64k" -c "write -P 0x55 3M 1M" -c "write -P 0x66 3145728 6144" img.qcow2 >/dev/null
        """,
    "extl2-zstd-compressed": """
        \(rawSource)
        qemu-img convert -c -O qcow2 -o extended_l2=on,compression_type=zstd src.raw img.qcow2
        qemu-io -f qcow2 -c "write -P 0x77 4M 3000" -c "write -z 16M 8192" img.qcow2 >/dev/null
        """,
]

@Suite struct QCOW2ReadTests {
    @Test(arguments: singleFixtures.keys.sorted())
    func readsLikeQemu(_ name: String) throws {
        let dir = try Q.fixture(name, try #require(singleFixtures[name]))
        let path = dir + "/img.qcow2"
        let img = try Q.expectMatchesOracle(path)
        #expect(img.chain.count == 1)
        #expect(img.info.format == .qcow2)

        // Facts agree with qemu-img info.
        let qi = try Q.info(path)
        #expect((qi["virtual-size"] as? NSNumber)?.uint64Value == img.info.virtualSize)
        #expect((qi["cluster-size"] as? NSNumber).map { String($0.intValue) } == img.info.details["cluster_size"])
        let data = (qi["format-specific"] as? [String: Any])?["data"] as? [String: Any] ?? [:]
        #expect(img.info.details["version"] == ((data["compat"] as? String) == "0.10" ? "2" : "3"))
        #expect(img.info.details["compression_type"] == (data["compression-type"] as? String ?? "zlib"))
        #expect(img.info.details["extended_l2"] == String((data["extended-l2"] as? Bool) ?? false))
        #expect(img.info.details["refcount_bits"] == (data["refcount-bits"] as? NSNumber).map { String($0.intValue) })
        #expect(img.info.details["corrupt"] == "false")
        #expect(img.info.details["dirty"] == "false")
        #expect(img.info.backingFile == nil)

        // Zero ranges agree with qemu-img map (no backing file: unallocated and zero clusters).
        #expect(try Q.zeroRanges(img.device) == Q.qemuZeroRanges(path))
    }

    @Test func readsConcurrentlyFromManyThreads() throws {
        let dir = try Q.fixture("zlib", try #require(singleFixtures["zlib"]))
        let path = dir + "/img.qcow2"
        let img = try ImageOpener.open(path)
        let expected = try Q.oracle(path)
        let failures = Locked(0)
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            var rng = SeededRandom(seed: UInt64(t))
            for _ in 0..<100 {
                let off = Int(rng.next() % UInt64(expected.count))
                let n = min(Int(rng.next() % 300_000) + 1, expected.count - off)
                let ok = (try? img.device.read(at: UInt64(off), count: n)).map {
                    Q.firstDifference($0, Array(expected[off..<off + n])) == nil
                } ?? false
                if !ok { failures.withLock { $0 += 1 } }
            }
        }
        #expect(failures.withLock { $0 } == 0)
    }

    @Test func readsPastTheEndAreRefused() throws {
        let dir = try Q.fixture("v3", try #require(singleFixtures["v3"]))
        let img = try ImageOpener.open(dir + "/img.qcow2")
        #expect(throws: WardenError.self) { _ = try img.device.read(at: img.device.size - 10, count: 11) }
        #expect(throws: WardenError.self) { _ = try img.device.read(at: UInt64.max - 4, count: 8) }
        #expect(throws: WardenError.self) { _ = try img.device.mapping(at: 0, length: img.device.size + 1) }
        #expect(try img.device.read(at: img.device.size, count: 0).isEmpty)
    }
}

final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ v: T) { value = v }
    func withLock<R>(_ body: (inout T) -> R) -> R { lock.withLock { body(&value) } }
}

@Suite struct QCOW2ChainTests {
    static let chainScript = """
        mkdir sub
        qemu-img create -q -f raw sub/base.raw 16M
        qemu-io -f raw -c "write -P 0x01 0 6M" -c "write -P 0x09 12M 1M" sub/base.raw >/dev/null
        qemu-img create -q -f qcow2 -b base.raw -F raw sub/mid.qcow2 32M
        qemu-io -f qcow2 -c "write -P 0x02 1M 2M" -c "write -z 4M 1M" -c "write -P 0x05 20M 100k" sub/mid.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 top.qcow2 48M
        qemu-io -f qcow2 -c "write -P 0x03 2M 512k" -c "write -P 0x04 20M 1M" -c "write -z 12M 64k" \
            -c "write -P 0x06 40M 64k" top.qcow2 >/dev/null
        """

    @Test func threeFileChainWithRelativePaths() throws {
        let dir = try Q.fixture("chain3", Self.chainScript)
        let img = try Q.expectMatchesOracle(dir + "/top.qcow2")
        #expect(img.chain.count == 3)
        #expect(img.chain.map(\.format) == [.qcow2, .qcow2, .raw])
        #expect(img.chain[0].backingFile == "sub/mid.qcow2")
        #expect(img.chain[0].backingFormat == "qcow2")
        #expect(img.chain[1].backingFile == "base.raw")
        #expect(img.chain[1].backingFormat == "raw")
        #expect(img.chain[1].path.hasSuffix("/sub/mid.qcow2"))
        #expect(img.chain[2].path.hasSuffix("/sub/base.raw"))
        #expect(img.device.size == 48 << 20)
        // The middle image alone, read through its raw backing file.
        try Q.expectMatchesOracle(dir + "/sub/mid.qcow2")
        // qemu-img map agrees on which ranges read as zeros (depth aside).
        #expect(try Q.zeroRanges(img.device) == Q.qemuZeroRanges(dir + "/top.qcow2"))
    }

    @Test func extendedL2OverBackingFile() throws {
        let dir = try Q.fixture("extl2-backing", """
            qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k base.qcow2 8M
            qemu-io -f qcow2 -c "write -P 0xaa 0 8M" base.qcow2 >/dev/null
            qemu-img create -q -f qcow2 -o extended_l2=on -b base.qcow2 -F qcow2 img.qcow2 8M
            qemu-io -f qcow2 -c "write -P 0x33 4096 2048" -c "write -z 8192 4096" -c "write -P 0x44 100000 70000" \
                -c "write -z 1M 64k" -c "write -P 0x55 3M 1M" -c "write -P 0x66 5M 6144" img.qcow2 >/dev/null
            """)
        let img = try Q.expectMatchesOracle(dir + "/img.qcow2")
        #expect(img.info.details["extended_l2"] == "true")
        #expect(try Q.zeroRanges(img.device) == Q.qemuZeroRanges(dir + "/img.qcow2"))
    }

    @Test func backingCycleIsRefused() throws {
        let dir = try Q.fixture("cycle", """
            qemu-img create -q -f qcow2 b.qcow2 4M
            qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 a.qcow2 4M
            qemu-img rebase -u -b a.qcow2 -F qcow2 b.qcow2
            """)
        let err = Q.openAndReadEverything(dir + "/a.qcow2")
        #expect(err?.code == .corrupt)
        #expect(err?.message.contains("cycle") == true)
        // A self-reference too.
        try Fixtures.withTemporaryDirectory { tmp in
            try Tool.sh("qemu-img create -q -f qcow2 s.qcow2 1M && qemu-img rebase -u -b s.qcow2 -F qcow2 s.qcow2", cwd: tmp)
            #expect(Q.openAndReadEverything(tmp + "/s.qcow2")?.message.contains("cycle") == true)
        }
    }

    @Test func chainDeeperThanTheLimitIsRefused() throws {
        let dir = try Q.fixture("deep", """
            qemu-img create -q -f qcow2 l0.qcow2 1M
            for i in 1 2 3 4; do qemu-img create -q -f qcow2 -b l$((i-1)).qcow2 -F qcow2 l$i.qcow2 1M; done
            """)
        let err = Q.openAndReadEverything(dir + "/l4.qcow2", options: OpenOptions(maxBackingDepth: 2))
        #expect(err?.code == .limitExceeded)
        #expect(Q.openAndReadEverything(dir + "/l4.qcow2", options: OpenOptions(maxBackingDepth: 4)) == nil)
    }

    @Test func rawImageLookingLikeQcow2DoesNotTouchItsBackingFile() throws {
        try Fixtures.withTemporaryDirectory { dir in
            // The named backing file does not exist: opening as qcow2 would fail.
            try Tool.sh("qemu-img create -q -f qcow2 -u -b /nonexistent/secret.img -F raw disk.img 1M", cwd: dir)
            let asQcow2 = Q.openAndReadEverything(dir + "/disk.img")
            #expect(asQcow2?.code == .notFound)
            let raw = try ImageOpener.open(dir + "/disk.img", options: OpenOptions(format: .raw))
            #expect(raw.chain.count == 1)
            #expect(raw.info.format == .raw)
            #expect(raw.info.backingFile == nil)
        }
    }

    @Test func undeclaredBackingFormatIsReadAsRawUnlessProbing() throws {
        let dir = try Q.fixture("undeclared", """
            qemu-img create -q -f qcow2 base.qcow2 4M
            qemu-io -f qcow2 -c "write -P 0x42 0 1M" base.qcow2 >/dev/null
            qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M
            """)
        // Hide the backing format extension (an unknown extension type is skipped).
        let bytes = try Fixtures.read(dir + "/top.qcow2")
        let at = try #require((0..<65536).first { Array(bytes[$0..<$0 + 4]) == Q.be32(0xe279_2aca) })
        try Fixtures.withTemporaryDirectory { tmp in
            try FileManager.default.copyItem(atPath: dir + "/base.qcow2", toPath: tmp + "/base.qcow2")
            try Q.patch(dir + "/top.qcow2", tmp + "/top.qcow2", [(at, Q.be32(0x0bad_0bad))])
            let plain = try ImageOpener.open(tmp + "/top.qcow2")
            #expect(plain.info.backingFormat == nil)
            #expect(plain.chain.count == 2)
            #expect(plain.chain[1].format == .raw)
            let probed = try ImageOpener.open(tmp + "/top.qcow2", options: OpenOptions(probeBacking: true))
            #expect(probed.chain[1].format == .qcow2)
            #expect(try probed.device.read(at: 0, count: 4) == [0x42, 0x42, 0x42, 0x42])
        }
    }
}

@Suite struct QCOW2SnapshotTests {
    static let script = """
        qemu-img create -q -f qcow2 img.qcow2 8M
        qemu-io -f qcow2 -c "write -P 0x11 0 2M" -c "write -P 0x12 7M 1M" img.qcow2 >/dev/null
        qemu-img snapshot -c first img.qcow2
        qemu-io -f qcow2 -c "write -P 0x22 1M 2M" -c "write -z 0 64k" img.qcow2 >/dev/null
        qemu-img resize -q img.qcow2 12M
        qemu-io -f qcow2 -c "write -P 0x33 10M 1M" img.qcow2 >/dev/null
        qemu-img snapshot -c second img.qcow2
        qemu-io -f qcow2 -c "write -P 0x44 0 4M" img.qcow2 >/dev/null
        qemu-img snapshot -c 1 img.qcow2
        qemu-io -f qcow2 -c "write -P 0x55 3M 4M" -c "write -z 10M 512k" img.qcow2 >/dev/null
        """

    @Test func listsSnapshotsLikeQemu() throws {
        let dir = try Q.fixture("snapshots", Self.script)
        let path = dir + "/img.qcow2"
        let img = try Q.expectMatchesOracle(path)
        let qsnaps = try #require(try Q.info(path)["snapshots"] as? [[String: Any]])
        let ours = img.info.snapshots
        #expect(ours.count == qsnaps.count)
        for (s, q) in zip(ours, qsnaps) {
            #expect(s.id == q["id"] as? String)
            #expect(s.name == q["name"] as? String)
            #expect(s.dateSeconds == (q["date-sec"] as? NSNumber)?.uint64Value)
            #expect(s.dateNanoseconds == (q["date-nsec"] as? NSNumber)?.uint32Value)
            #expect(s.vmStateSize == (q["vm-state-size"] as? NSNumber)?.uint64Value)
            let clock = ((q["vm-clock-sec"] as? NSNumber)?.uint64Value ?? 0) * 1_000_000_000
                + ((q["vm-clock-nsec"] as? NSNumber)?.uint64Value ?? 0)
            #expect(s.vmClockNanoseconds == clock)
        }
        #expect(ours.map(\.virtualSize) == [8 << 20, 12 << 20, 12 << 20])
    }

    @Test(arguments: ["first", "second", "1"])
    func readsThroughSnapshot(_ name: String) throws {
        let dir = try Q.fixture("snapshots", Self.script)
        let img = try Q.expectMatchesOracle(dir + "/img.qcow2", options: OpenOptions(snapshot: name))
        #expect(img.info.details["snapshot_name"] == name)
    }

    @Test func snapshotNameWinsOverIdThenIdIsUsed() throws {
        let dir = try Q.fixture("snapshots", Self.script)
        let path = dir + "/img.qcow2"
        // "1" is the name of snapshot id 3, so the name wins.
        let byName = try ImageOpener.open(path, options: OpenOptions(snapshot: "1"))
        #expect(byName.info.details["snapshot_id"] == "3")
        // "2" is no name: it selects id 2 ("second").
        let byId = try ImageOpener.open(path, options: OpenOptions(snapshot: "2"))
        #expect(byId.info.details["snapshot_name"] == "second")
        let expected = try Q.oracle(path, snapshot: "second")
        #expect(Q.firstDifference(try Q.readAll(byId.device), expected) == nil)
    }

    @Test func missingSnapshotIsNotFound() throws {
        let dir = try Q.fixture("snapshots", Self.script)
        let err = Q.openAndReadEverything(dir + "/img.qcow2", options: OpenOptions(snapshot: "nope"))
        #expect(err?.code == .notFound)
        #expect(err?.message.contains("first") == false)
    }
}
