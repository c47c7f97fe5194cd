import Testing
import WardenCore
import WardenTestSupport
import DiskImage
import GuestFS
@testable import Inspection

@Suite struct GuestFilesTests {
    @Test func readsConfinedToTheGuestRoot() throws {
        let dir = try Fixtures.cached("inspection-basic", recipe: "v1") { dir in
            try Tool.sh("""
            cd "\(dir)" && mkdir -p root/etc && echo guest-host > root/etc/hostname
            ln -s /../../../etc/hostname root/hn
            truncate -s 8M fs.img && mkfs.ext4 -q -F -d root fs.img && rm -rf root
            """)
        }
        let fs = try EXT4.open(try ImageOpener.open(dir + "/fs.img").device)
        let g = GuestFiles(fs)
        #expect(try g.text("/etc/hostname") == "guest-host\n")
        #expect(try g.text("/hn") == "guest-host\n")
        #expect(try g.readLink("/hn") == "/../../../etc/hostname")
        #expect(try g.read("/etc/nope") == nil)
        #expect(try g.list("/etc")?.map(\.name) == ["hostname"])
        #expect(throws: WardenError.self) { _ = try g.read("/etc") }
    }
}
