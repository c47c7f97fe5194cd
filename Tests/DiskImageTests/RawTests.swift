import Testing
import WardenCore
import WardenTestSupport
@testable import DiskImage

@Suite struct RawTests {
    @Test func rawReadsBytesAndRefusesPastEnd() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let path = dir + "/disk.raw"
            let bytes = (0..<8192).map { UInt8(truncatingIfNeeded: $0 * 31) }
            try Fixtures.write(bytes, to: path)
            let img = try ImageOpener.open(path)
            #expect(img.info.format == .raw)
            #expect(img.device.size == 8192)
            #expect(try img.device.read(at: 100, count: 50) == Array(bytes[100..<150]))
            #expect(throws: WardenError.self) { _ = try img.device.read(at: 8190, count: 4) }
            #expect(throws: WardenError.self) { _ = try img.device.read(at: UInt64.max - 1, count: 4) }
        }
    }

    @Test func refusesUnsupportedContainers() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let path = dir + "/disk.vhdx"
            try Fixtures.write(Array("vhdxfile".utf8) + [UInt8](repeating: 0, count: 1000), to: path)
            #expect(throws: WardenError.self) { _ = try ImageOpener.open(path) }
            let forced = try ImageOpener.open(path, options: OpenOptions(format: .raw))
            #expect(forced.info.format == .raw)
        }
    }
}
