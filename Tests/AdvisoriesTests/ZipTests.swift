import Foundation
import Testing
import WardenCore
import WardenTestSupport
@testable import Advisories

/// The zip reader against archives written by Info-ZIP `zip` and python3's zipfile, and hostile ones.
@Suite struct ZipTests {
    func writeOSVDir(_ dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (name, text) in [("DSA-5532-1", FeedFixtures.dsaOpenSSL), ("DEBIAN-CVE-2024-0001", FeedFixtures.debianCVEOpen),
                             ("DEBIAN-CVE-2023-9999", FeedFixtures.withdrawn), ("OSV-RANGES-1", FeedFixtures.ranges)] {
            try text.write(toFile: "\(dir)/\(name).json", atomically: true, encoding: .utf8)
        }
    }

    func expectError(_ path: String, _ code: WardenError.Code, _ words: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let zip = try ZipArchive(path: path)
            for e in zip.entries { _ = try zip.extract(e) }
            Issue.record("accepted \(path)", sourceLocation: sourceLocation)
        } catch let e as WardenError {
            #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
            #expect(e.description.contains(words), "\(e)", sourceLocation: sourceLocation)
            #expect(e.description.hasPrefix(path), "\(e)", sourceLocation: sourceLocation)
            #expect(!e.description.contains("\n"), sourceLocation: sourceLocation)
        } catch {
            Issue.record("untyped error \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func infoZipArchiveImports() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try writeOSVDir(tmp + "/osv")
            try Tool.sh("cd '\(tmp)/osv' && zip -q -9 ../all.zip *.json && zip -q -0 ../stored.zip *.json")
            for name in ["all.zip", "stored.zip"] {
                var ids: [String] = []
                let formats = try AdvisoryImporter.read(path: "\(tmp)/\(name)") { recs, _ in ids += recs.map(\.id) }
                #expect(formats == [.osv])
                #expect(ids.sorted() == ["DEBIAN-CVE-2023-9999", "DEBIAN-CVE-2024-0001", "DSA-5532-1", "OSV-RANGES-1"])
            }
            let zip = try ZipArchive(path: tmp + "/all.zip")
            #expect(zip.entries.allSatisfy { $0.method == 8 })
            let listing = try Tool.run(["unzip", "-Z1", tmp + "/all.zip"]).stdoutText.split(separator: "\n").map(String.init)
            #expect(zip.entries.map(\.name) == listing)
            // Same records as the directory.
            var fromDir: [AdvisoryRecord] = []
            try AdvisoryImporter.read(path: tmp + "/osv") { recs, _ in fromDir += recs }
            var fromZip: [AdvisoryRecord] = []
            try AdvisoryImporter.read(path: tmp + "/all.zip") { recs, _ in fromZip += recs }
            #expect(fromDir.sorted { $0.id < $1.id } == fromZip.sorted { $0.id < $1.id })
        }
    }

    @Test func zip64FromPythonWithManyEntries() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            // 70,000 entries: more than 16 bits, so python writes the zip64 end records.
            try Tool.run(["python3", "-c", """
            import zipfile, sys, json
            with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
                for i in range(70000):
                    z.writestr("OSV-%d.json" % i, json.dumps({"id": "OSV-%d" % i, "modified": "2024-01-01T00:00:00Z",
                        "affected": [{"package": {"ecosystem": "Debian:12", "name": "p%d" % (i % 50)},
                                      "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.%d-1" % i}]}]}]}))
            """, tmp + "/big.zip"])
            let zip = try ZipArchive(path: tmp + "/big.zip")
            #expect(zip.entries.count == 70000)
            var n = 0
            try AdvisoryImporter.read(path: tmp + "/big.zip") { recs, _ in n += recs.count }
            #expect(n == 70000)
        }
    }

    @Test func hostileArchivesGiveTypedErrors() throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try writeOSVDir(tmp + "/osv")
            try Tool.sh("cd '\(tmp)/osv' && zip -q ../good.zip *.json")
            let good = try Data(contentsOf: URL(fileURLWithPath: tmp + "/good.zip"))
            // A zip bomb: 200 MiB of zeros deflates to ~200 KiB (ratio ~1000).
            try Tool.run(["python3", "-c", """
            import zipfile, sys
            with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("bomb.json", b"\\0" * (200 << 20))
            with zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("ratio.json", b" " * (8 << 20))
            """, tmp + "/bomb.zip", tmp + "/ratio.zip"])
            // Refused when the directory is read: all entries together expand past the total ratio.
            expectError(tmp + "/bomb.zip", .limitExceeded, "zip bomb")
            expectError(tmp + "/ratio.zip", .limitExceeded, "zip bomb")
            // Not a zip, empty, truncated at every length.
            try Data("hello".utf8).write(to: URL(fileURLWithPath: tmp + "/text.zip"))
            expectError(tmp + "/text.zip", .corrupt, "too short")
            for n in 0..<good.count {
                let p = tmp + "/cut.zip"
                try good.prefix(n).write(to: URL(fileURLWithPath: p))
                do {
                    let zip = try ZipArchive(path: p)
                    for e in zip.entries { _ = try zip.extract(e) }
                    Issue.record("truncated at \(n) of \(good.count) accepted")
                } catch let e as WardenError {
                    #expect(!e.description.contains("\n"))
                }
            }
            // Claimed entry count far above the limit (zip64 EOCD saying 2^40 entries).
            var huge = Data()
            var z64 = [UInt8](repeating: 0, count: 56)
            z64[0...3] = [0x50, 0x4B, 0x06, 0x06]
            z64[32...39] = [0, 0, 0, 0, 0, 1, 0, 0]
            huge.append(contentsOf: z64)
            var loc = [UInt8](repeating: 0, count: 20)
            loc[0...3] = [0x50, 0x4B, 0x06, 0x07]
            huge.append(contentsOf: loc)
            var eocd = [UInt8](repeating: 0, count: 22)
            eocd[0...3] = [0x50, 0x4B, 0x05, 0x06]
            eocd[10] = 0xFF; eocd[11] = 0xFF
            huge.append(contentsOf: eocd)
            try huge.write(to: URL(fileURLWithPath: tmp + "/count.zip"))
            expectError(tmp + "/count.zip", .limitExceeded, "entries; the limit")
            // Central directory claiming more entries than fit.
            var lying = good
            let e = lying.count - 22
            lying[e + 10] = 0xF0; lying[e + 11] = 0x7F; lying[e + 8] = 0xF0; lying[e + 9] = 0x7F
            try lying.write(to: URL(fileURLWithPath: tmp + "/lying.zip"))
            expectError(tmp + "/lying.zip", .corrupt, "does not fit")
            // A flipped byte inside the compressed data: inflate error or CRC mismatch.
            var flipped = good
            let first = try #require(try ZipArchive(path: tmp + "/good.zip").entries.first)
            let lh = Int(first.localHeaderOffset)
            let dataStart = lh + 30 + Int(good[lh + 26]) + Int(good[lh + 27]) << 8 + Int(good[lh + 28]) + Int(good[lh + 29]) << 8
            flipped[dataStart + Int(first.compressedSize) / 2] ^= 0xFF
            try flipped.write(to: URL(fileURLWithPath: tmp + "/flip.zip"))
            expectError(tmp + "/flip.zip", .corrupt, "DEBIAN-CVE-2023-9999.json: ")
            // Malformed JSON inside a valid archive names the entry.
            try "{ not json".write(toFile: tmp + "/osv/BAD.json", atomically: true, encoding: .utf8)
            try Tool.sh("cd '\(tmp)/osv' && zip -q ../badjson.zip BAD.json")
            do {
                try AdvisoryImporter.read(path: tmp + "/badjson.zip") { _, _ in }
                Issue.record("malformed JSON accepted")
            } catch let e as WardenError {
                #expect(e.description == "\(tmp)/badjson.zip: BAD.json: malformed JSON" || e.description.hasPrefix("\(tmp)/badjson.zip: BAD.json: malformed JSON"), "\(e)")
            }
        }
    }
}
