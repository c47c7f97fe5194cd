import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

/// VHDX files left with a log to replay, made by qemu itself: qemu-io writes through blkdebug,
/// which fails the flush that follows the log write, so the log entry is on disk and the header
/// names the log, but the update never reached its place (the BAT still says "absent"). The
/// oracle is qemu's own replay: `qemu-img check -r all` on a copy, then `qemu-img convert -O raw`.
@Suite struct VHDXLogTests {
    static let recipe = #"""
    set -euo pipefail
    # Fail the Nth flush_to_os (and every later one): states 1..N-1 count them.
    conf() { for s in $(seq 1 $(($1 - 1))); do printf '[set-state]\nstate = "%d"\nevent = "flush_to_os"\nnew_state = "%d"\n\n' $s $((s + 1)); done
             printf '[inject-error]\nstate = "%d"\nevent = "flush_to_os"\nerrno = "5"\n' $1; }
    qemu-img create -q -f vhdx -o log_size=1M,block_size=1M base.vhdx 64M
    qemu-io -c "write -P 0x11 0 1M" base.vhdx >/dev/null
    # one: a single entry (a new block's BAT sector).
    cp base.vhdx one.vhdx; conf 2 > c2
    qemu-io -c "write -P 0xab 4M 64k" "blkdebug:c2:one.vhdx" >/dev/null 2>&1 || true
    # stale: the first write completes (its entry stays in the log under an older GUID), the
    # second is left in the log under the header's GUID.
    cp base.vhdx stale.vhdx; conf 6 > c6
    qemu-io -c "write -P 0xcd 8M 64k" -c "write -P 0xef 20M 4k" "blkdebug:c6:stale.vhdx" >/dev/null 2>&1 || true
    # torn: one's entry with a byte of its data sector changed: its checksum fails, so the log
    # holds no valid entry and nothing may be replayed.
    cp one.vhdx torn.vhdx
    printf '\x5a' | dd of=torn.vhdx bs=1 seek=$((1048576 + 4096 + 100)) conv=notrunc status=none
    for n in one stale torn; do
      qemu-img info $n.vhdx > $n.info 2>&1 || true
      cp $n.vhdx $n.fixed.vhdx; qemu-img check -q -r all $n.fixed.vhdx >/dev/null 2>&1 || true
      qemu-img convert -f vhdx -O raw $n.fixed.vhdx $n.oracle.raw
      rm $n.fixed.vhdx
    done
    qemu-img convert -f vhdx -O raw base.vhdx base.raw
    """#

    static func fixtures() throws -> String {
        try Fixtures.cached("vhdx-logs", recipe: recipe) { dir in try Tool.run(["bash", "-euo", "pipefail", "-c", recipe], cwd: dir) }
    }

    static func bytes(_ img: OpenedImage) throws -> [UInt8] {
        try img.device.read(at: 0, count: Int(img.device.size))
    }

    @Test(arguments: ["one", "stale", "torn"])
    func replayMatchesQemu(_ name: String) throws {
        let dir = try Self.fixtures()
        let info = try String(contentsOfFile: "\(dir)/\(name).info", encoding: .utf8)
        // The fixture's header names a log (qemu asks for a replay unless, as in "torn", no entry is valid).
        let file0 = try Fixtures.read("\(dir)/\(name).vhdx")
        #expect([64 << 10, 128 << 10].contains { !file0[($0 + 48)..<($0 + 64)].allSatisfy { $0 == 0 } })
        #expect(info.contains("replay") == (name != "torn"), "\(info)")
        let oracle = try Fixtures.read("\(dir)/\(name).oracle.raw")
        let before = try Fixtures.read("\(dir)/base.raw")
        let file = try Fixtures.read("\(dir)/\(name).vhdx")
        let img = try ImageOpener.open("\(dir)/\(name).vhdx")
        let mine = try Self.bytes(img)
        #expect(mine.count == oracle.count)
        let firstDifference = mine == oracle ? nil : zip(mine, oracle).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(firstDifference == nil, "\(name): the replayed disk equals qemu's (first difference at byte \(firstDifference ?? -1))")
        let log = img.chain.first?.details["log"] ?? ""
        switch name {
        case "one":
            #expect(oracle[4 << 20] == 0xab && before[4 << 20] == 0, "the update is only in the log")
            #expect(log.contains("replayed in memory: 1 log entry"), "\(log)")
        case "stale":
            #expect(oracle[20 << 20] == 0xef && oracle[8 << 20] == 0xcd)
            #expect(log.contains("replayed in memory: 1 log entry"), "only the header's GUID counts: \(log)")
        default:
            #expect(oracle[4 << 20] == 0, "qemu replays nothing from a torn entry")
            #expect(log.contains("nothing was replayed"), "\(log)")
        }
        // The replay is in memory: the file is unchanged.
        let unchanged = try Fixtures.read("\(dir)/\(name).vhdx") == file
        #expect(unchanged, "the file is unchanged")
    }

    /// A tail outside the sequence, and entries whose descriptors point into the headers, are
    /// typed errors, never a trap or a half-applied log.
    @Test func damagedLogsAreRefused() throws {
        let dir = try Self.fixtures()
        let clean = try Fixtures.read("\(dir)/one.vhdx")
        let logAt = 1 << 20
        func reseal(_ b: inout [UInt8]) {
            // Recompute the entry's CRC-32C after an edit, so only the edited field is wrong.
            let len = Int(UInt32(b[logAt + 8]) | UInt32(b[logAt + 9]) << 8 | UInt32(b[logAt + 10]) << 16 | UInt32(b[logAt + 11]) << 24)
            for i in 4..<8 { b[logAt + i] = 0 }
            let crc = CRC32.castagnoli.checksum(Array(b[logAt..<(logAt + len)]))
            for i in 0..<4 { b[logAt + 4 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
        }
        let edits: [(String, (inout [UInt8]) -> Void)] = [
            ("tail outside", { b in b[logAt + 12] = 0; b[logAt + 13] = 0x10; reseal(&b) }),
            ("descriptor into the headers", { b in for i in 0..<8 { b[logAt + 64 + 16 + i] = 0 }; b[logAt + 64 + 17] = 0x10; reseal(&b) }),
        ]
        for (what, edit) in edits {
            var b = clean
            edit(&b)
            try Fixtures.withTemporaryDirectory { tmp in
                try Fixtures.write(b, to: tmp + "/d.vhdx")
                #expect(throws: WardenError.self, "\(what)") { _ = try ImageOpener.open(tmp + "/d.vhdx") }
            }
        }
    }
}
