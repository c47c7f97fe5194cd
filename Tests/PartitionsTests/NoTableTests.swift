import Testing
import WardenCore
import WardenTestSupport
import DiskImage
@testable import Partitions

@Suite struct NoTableTests {
    @Test func blankDiskHasNoTable() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let path = dir + "/blank.raw"
            try Fixtures.write([UInt8](repeating: 0, count: 1 << 20), to: path)
            let img = try ImageOpener.open(path)
            let table = try PartitionReader.read(img.device)
            #expect(table.scheme == .none)
            #expect(table.partitions.isEmpty)
        }
    }
}
