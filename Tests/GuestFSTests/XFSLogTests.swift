import Foundation
import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// XFS log state against xfs_repair: filesystems fresh from mkfs, unmounted cleanly after use,
/// and shut down (`xfs_io -x -c "shutdown -f"`) with changes in the log. `xfs_repair -n` says
/// "valuable metadata changes in a log" exactly for the dirty ones; Warden must agree.
@Suite struct XFSLogTests {
    static var available: Bool {
        getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control")
    }

    /// (This kernel mounts no V4 filesystem, so only a fresh one of those.)
    static let cases = ["fresh", "fresh-v4", "used", "dirty"]

    static let recipe = #"""
    set -eu
    mkdir -p mnt
    make() {  # name, state, mkfs options
      truncate -s 300M $1.img; mkfs.xfs -q -f $3 $1.img 2>/dev/null
      if [ $2 != fresh ]; then
        mount -o loop $1.img mnt
        trap 'umount mnt 2>/dev/null || true' EXIT
        echo hello > mnt/hello; mkdir mnt/d; for i in $(seq 1 30); do echo $i > mnt/d/f$i; done
        sync; echo late > mnt/late; rm mnt/d/f7
        if [ $2 = dirty ]; then xfs_io -x -c "shutdown -f" mnt; fi
        umount mnt; trap - EXIT
      fi
      out=$(xfs_repair -n $1.img 2>&1 || true)
      case "$out" in *"valuable metadata changes in a log"*) echo dirty > $1.oracle ;; *) echo clean > $1.oracle ;; esac
    }
    make fresh fresh ""
    make fresh-v4 fresh "-m crc=0"
    make used used ""
    make dirty dirty ""
    """#

    static func fixtures() throws -> String {
        try Fixtures.cached("xfs-log-states", recipe: recipe) { dir in try Tool.run(["bash", "-euo", "pipefail", "-c", recipe], cwd: dir) }
    }

    @Test(.enabled(if: XFSLogTests.available, "needs root and loop devices to mount XFS"), arguments: cases)
    func logStateAgreesWithXfsRepair(_ name: String) throws {
        let dir = try Self.fixtures()
        let oracle = try String(contentsOfFile: dir + "/\(name).oracle", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(oracle == (name.hasPrefix("dirty") ? "dirty" : "clean"), "the fixture is what it claims")
        let fs = try XFS.open(RawDevice(file: try ImageFile(path: dir + "/\(name).img")))
        #expect(fs.logState.rawValue == oracle)
        #expect(fs.warnings.contains { $0.contains("log is dirty") } == (oracle == "dirty"), "\(fs.warnings)")
    }

    /// A damaged log is reported as unknown, never as clean, and the filesystem stays readable.
    @Test(.enabled(if: XFSLogTests.available, "needs root and loop devices to mount XFS"))
    func aDamagedLogIsNotCalledClean() throws {
        let dir = try Self.fixtures()
        try Fixtures.withTemporaryDirectory { tmp in
            var bytes = try Fixtures.read(dir + "/used.img")
            let fs = try XFS.open(RawDevice(file: try ImageFile(path: dir + "/used.img")))
            // Scribble over every log record header: no record can be found.
            let logStart = Int(try fs.diskBlock(try XFS.logStart(of: bytes), count: 1, what: "log")) * fs.sb.blockSize
            let logBytes = Int(try XFS.logBlocks(of: bytes)) * fs.sb.blockSize
            var i = logStart
            while i < logStart + logBytes {
                if bytes[i] == 0xFE && bytes[i + 1] == 0xED && bytes[i + 2] == 0xBA && bytes[i + 3] == 0xBE { bytes[i] = 0 }
                i += 512
            }
            try Fixtures.write(bytes, to: tmp + "/damaged.img")
            let v = try XFS.open(RawDevice(file: try ImageFile(path: tmp + "/damaged.img")))
            #expect(v.logState != .clean)
            #expect(v.warnings.contains { $0.contains("log") }, "\(v.warnings)")
        }
    }
}
