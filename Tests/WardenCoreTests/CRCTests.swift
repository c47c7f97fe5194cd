import Testing
@testable import WardenCore

@Suite struct CRCTests {
    @Test func knownVectors() {
        // Standard check values for "123456789".
        let s = Array("123456789".utf8)
        #expect(CRC32.ieee.checksum(s) == 0xCBF4_3926)
        #expect(CRC32.castagnoli.checksum(s) == 0xE306_9283)
    }

    @Test func chunkedEqualsWhole() {
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        for split in [0, 1, 7, 8, 9, 500, 999, 1000] {
            let a = CRC32.castagnoli.update(0xFFFF_FFFF, data[0..<split])
            let b = CRC32.castagnoli.update(a, data[split...])
            #expect(~b == CRC32.castagnoli.checksum(data))
        }
    }
}

@Suite struct ByteReaderTests {
    @Test func truncatedAtEveryLength() throws {
        let full: [UInt8] = [1, 0, 0, 0, 2, 0, 3, 4, 5, 6, 7, 8, 9, 10]
        for n in 0..<full.count {
            var r = ByteReader(Array(full[0..<n]))
            #expect(throws: WardenError.self) {
                _ = try r.readLE(UInt32.self)
                _ = try r.readLE(UInt16.self)
                _ = try r.readBE(UInt64.self)
            }
        }
        var r = ByteReader(full)
        #expect(try r.readLE(UInt32.self) == 1)
        #expect(try r.readLE(UInt16.self) == 2)
        #expect(try r.readBE(UInt64.self) == 0x0304_0506_0708_090A)
    }

    @Test func checkedArithmeticThrows() {
        #expect(throws: WardenError.self) { _ = try Checked.add(UInt64.max, 1) }
        #expect(throws: WardenError.self) { _ = try Checked.mul(UInt64.max / 2, 3) }
        #expect(throws: WardenError.self) { _ = try Checked.sub(UInt32(0), 1) }
        #expect(throws: WardenError.self) { let _: Int32 = try Checked.cast(UInt64.max) }
    }
}
