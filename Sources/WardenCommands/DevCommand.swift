import ArgumentParser
import DiskImage
import Foundation
import GuestFS
import WardenCore
#if canImport(Glibc)
import Glibc
#endif

/// `warden dev …`: hidden commands for testing Warden itself.
struct DevCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev",
        abstract: "Commands for testing Warden itself.",
        shouldDisplay: false,
        subcommands: [DevWriteTest.self, DevSynth.Advisories.self, DevSynth.Inventories.self,
                      DevLedgerSynth.self, DevAppendLoop.self, DevBenchProof.self, DevBenchAppend.self, DevIngestLoad.self, DevNetBench.self, DevSimulate.self]
    )
}

/// `warden dev write-test IMAGE`: a deterministic stream of random writes for crash tests.
///
/// Write `i` covers `length` bytes at `offset`, both drawn from a SplitMix64 stream
/// seeded with `--seed`; its bytes are `(i * 131 + k) & 0xff` for `k` in `0..<length`.
/// Before write `i` the log gets `B i offset length`, after it returns `D i`, so a test
/// that kills the process knows which writes were acknowledged. With `--ext4 PART`
/// (a partition number, 0 for the whole disk) the writes are files instead: write `i`
/// replaces `/warden-crash-<i % 16>` with its bytes, and `D i` follows the commit.
struct DevWriteTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write-test",
        abstract: "Write a deterministic random sequence into an image (crash tests).",
        discussion: """
            Example:
              warden dev write-test scratch.qcow2 --log writes.log --writes 100
            """,
        shouldDisplay: false
    )

    @Argument(help: "A raw or qcow2 image opened for writing.")
    var image: String

    @Option(help: "Seed of the write sequence.")
    var seed: UInt64 = 1

    @Option(help: "Number of writes.")
    var writes: Int = 1000

    @Option(help: "Largest write, in bytes.")
    var maxLength: Int = 20000

    @Option(help: "Log file (appended).")
    var log: String

    @Option(help: "Write files into the ext2/3/4 filesystem on this partition (0: the whole disk) instead of raw bytes.")
    var ext4: Int?

    @Option(help: "First write index (to continue a sequence).")
    var start: Int = 0

    func run() throws {
        let img = try ImageOpener.openWritable(image)
        let dev = img.device
        guard dev.size > 0 else { throw WardenError(.invalidArgument, "empty image", file: image) }
        let fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw WardenError(.io, "cannot open the log", file: log) }
        defer { close(fd) }
        func note(_ s: String) throws {
            try Array((s + "\n").utf8).withUnsafeBytes { try FileDescriptorIO.writeAll(fd, $0, name: log) }
        }
        var fs: (any MutableFileSystem)?
        if let part = ext4 {
            let layout = try GuestDisk.layout(of: dev)
            let vol = try GuestDisk.select(layout, partition: part)
            guard let w = try GuestDisk.device(for: vol, in: layout, on: dev) as? any WritableBlockDevice else {
                throw WardenError.unsupported("the volume cannot be written", file: image)
            }
            fs = try GuestDisk.openMutableFileSystem(w)
        }
        var rng = SeededRandom(seed: seed)
        func next() -> UInt64 { rng.next() }
        for i in 0..<(start + writes) {
            let offset = next() % dev.size
            let length = Int(min(UInt64(max(1, maxLength)), dev.size - offset, next() % UInt64(max(1, maxLength)) + 1))
            if i < start { continue }
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: i &* 131 &+ $0) }
            try note("B \(i) \(offset) \(length)")
            if let fs {
                try fs.replaceContents(of: "/warden-crash-\(i % 16)", with: bytes)
                try fs.commit()
            } else {
                try dev.write(bytes, at: offset)
            }
            try note("D \(i)")
        }
        try dev.flush()
    }
}
