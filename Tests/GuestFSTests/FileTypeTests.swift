import Testing
@testable import GuestFS

@Suite struct FileTypeTests {
    @Test func modeBitsMapToManifestLetters() {
        #expect(FileType(mode: 0o100644) == .regular)
        #expect(FileType(mode: 0o040755) == .directory)
        #expect(FileType(mode: 0o120777) == .symlink)
        #expect(FileType(mode: 0o020666) == .characterDevice)
        #expect(FileType(mode: 0o060660) == .blockDevice)
        #expect(FileType(mode: 0o010644) == .fifo)
        #expect(FileType(mode: 0o140755) == .socket)
        #expect(FileType(mode: 0o000644) == nil)
    }
}
