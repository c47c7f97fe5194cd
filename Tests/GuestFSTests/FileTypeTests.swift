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

@Suite struct DirentCodeTests {
    @Test func direntCodesMatchModeTypes() {
        let pairs: [(UInt8, UInt32)] = [(1, 0o100000), (2, 0o040000), (3, 0o020000), (4, 0o060000),
                                        (5, 0o010000), (6, 0o140000), (7, 0o120000)]
        for (code, mode) in pairs { #expect(FileType(direntCode: code) == FileType(mode: mode)) }
        for code: UInt8 in [0, 8, 15, 255] { #expect(FileType(direntCode: code) == nil) }
    }
}
