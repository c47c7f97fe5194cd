import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// The content fingerprint must not depend on how the guest's bytes are stored.
@Suite struct ContentFingerprintTests {
    /// An independent implementation of the documented algorithm, over a raw file.
    static let pythonOracle = """
    import hashlib, struct, sys
    CH, BL = 4 << 20, 64 << 10
    f = open(sys.argv[1], 'rb'); f.seek(0, 2); size = f.tell(); f.seek(0)
    top = hashlib.sha256(b'warden-content-v1\\0' + struct.pack('>Q', size))
    c = 0
    while c * CH < size:
        data = f.read(CH); h = hashlib.sha256(); anyb = False
        for o in range(0, len(data), BL):
            blk = data[o:o + BL]
            if blk.count(0) != len(blk):
                h.update(struct.pack('>Q', (c * CH + o) // BL) + blk); anyb = True
        if anyb: top.update(struct.pack('>Q', c) + h.digest())
        c += 1
    print('sha256:' + top.hexdigest())
    """

    func fingerprint(_ path: String, format: ImageFormat? = nil) throws -> String {
        try ContentFingerprint.of(ImageOpener.open(path, options: OpenOptions(format: format, probeBacking: true)).device).description
    }

    @Test func sameGuestBytesSameFingerprintAcrossFormats() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let raw = dir + "/disk.raw"
            // 20 MiB sparse disk with data at scattered offsets, one block of written zeros,
            // and a tail that is not a multiple of the chunk size (qcow2 sizes are whole sectors).
            try Tool.sh("""
                truncate -s 20971520 \(raw) && truncate -s +12288 \(raw)
                head -c 300000 /dev/urandom | dd of=\(raw) bs=1 seek=70000 conv=notrunc status=none
                head -c 65536 /dev/urandom | dd of=\(raw) bs=65536 seek=200 conv=notrunc status=none
                dd if=/dev/zero of=\(raw) bs=65536 seek=100 count=3 conv=notrunc status=none
                printf 'tail' | dd of=\(raw) bs=1 seek=20983000 conv=notrunc status=none
                """)
            let oracle = try Tool.run(["python3", "-c", Self.pythonOracle, raw]).stdoutText
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let base = try fingerprint(raw)
            #expect(base == oracle)

            try Tool.run(["qemu-img", "convert", "-O", "qcow2", "-c", "-o", "compression_type=zstd,cluster_size=4096", raw, dir + "/c.qcow2"])
            try Tool.run(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, dir + "/s.vmdk"])
            try Tool.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "c.qcow2", "-F", "qcow2", dir + "/overlay.qcow2"])
            try Tool.run(["cp", "--sparse=never", raw, dir + "/dense.raw"])
            #expect(try fingerprint(dir + "/c.qcow2") == base)
            #expect(try fingerprint(dir + "/s.vmdk") == base)
            #expect(try fingerprint(dir + "/overlay.qcow2") == base)
            #expect(try fingerprint(dir + "/dense.raw") == base)

            // One changed byte in the overlay changes the fingerprint, and the oracle agrees.
            try Tool.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 5000000 1", dir + "/overlay.qcow2"])
            let changed = try fingerprint(dir + "/overlay.qcow2")
            #expect(changed != base)
            try Tool.run(["qemu-img", "convert", "-O", "raw", dir + "/overlay.qcow2", dir + "/changed.raw"])
            let changedOracle = try Tool.run(["python3", "-c", Self.pythonOracle, dir + "/changed.raw"]).stdoutText
                .trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(changed == changedOracle)
        }
    }

    @Test func emptyAndAllZeroDisksDifferOnlyBySize() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try Tool.sh("truncate -s 1048576 \(dir)/a.raw && truncate -s 2097152 \(dir)/b.raw && head -c 1048576 /dev/zero > \(dir)/z.raw")
            #expect(try fingerprint(dir + "/a.raw") == fingerprint(dir + "/z.raw"))
            #expect(try fingerprint(dir + "/a.raw") != fingerprint(dir + "/b.raw"))
        }
    }
}
