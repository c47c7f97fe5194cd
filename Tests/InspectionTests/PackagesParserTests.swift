import Foundation
import Testing
import WardenCore
@testable import Inspection

/// Direct tests of the stanza parsers on byte strings: hostile input must never trap.
@Suite struct PackagesParserTests {
    @Test func randomInputNeverTraps() {
        var rng = SeededRandom(seed: 0x9E37_79B9_7F4A_7C15)
        let alphabet: [UInt8] = Array("Package: Status install ok installed Source: ( ) Version: 1:2-3 P:V:o:A:\n\n\r\t -".utf8) + [0, 0xFF, 0xC3]
        for round in 0..<300 {
            let n = Int.random(in: 0...4000, using: &rng)
            let bytes = (0..<n).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] }
            var inv = PackageInventory(manager: .dpkg, source: "x")
            var w = CappedWarnings()
            DpkgStatus.parse(bytes, into: &inv, warnings: &w, statusOptional: round % 2 == 0)
            var apk = PackageInventory(manager: .apk, source: "y")
            ApkInstalled.parse(bytes, into: &apk, warnings: &w)
            #expect(w.items.count <= PackageLimits.maxWarnings)
            for p in inv.packages + inv.incomplete + apk.packages { #expect(!p.name.isEmpty) }
        }
    }

    @Test func longContinuationIsCutAndLaterFieldsSurvive() {
        var text = "Package: p\nDescription: d\n"
        for _ in 0..<20_000 { text += " continuation line of some length\n" }
        text += "Status: install ok installed\nVersion: 1\nArchitecture: all\n"
        var inv = PackageInventory(manager: .dpkg, source: "x")
        var w = CappedWarnings()
        DpkgStatus.parse(Array(text.utf8), into: &inv, warnings: &w, statusOptional: false)
        #expect(inv.packages.map(\.name) == ["p"])
        #expect(inv.packages.first?.version == "1")
        #expect(w.items.count == 1 && w.items.first?.contains("cut at") == true)
    }

    @Test func oversizedStanzaIsSkipped() {
        var text = "Package: big\nStatus: install ok installed\nVersion: 1\n"
        let line = " " + String(repeating: "x", count: 1000) + "\n"
        text += "Description: d\n" + String(repeating: line, count: (PackageLimits.maxStanzaBytes / 1000) + 10)
        text += "\nPackage: small\nStatus: install ok installed\nVersion: 2\n"
        var inv = PackageInventory(manager: .dpkg, source: "x")
        var w = CappedWarnings()
        DpkgStatus.parse(Array(text.utf8), into: &inv, warnings: &w, statusOptional: false)
        #expect(inv.packages.map(\.name) == ["small"])
        #expect(w.items.contains { $0.contains("larger than") })
    }

    @Test func encodesAsSnakeCaseJSON() throws {
        let inv = PackageInventory(manager: .rpm, source: "/var/lib/rpm/Packages", unknownReason: "r")
        let enc = JSONEncoder()
        enc.keyEncodingStrategy = .convertToSnakeCase
        enc.outputFormatting = .sortedKeys
        let json = String(decoding: try enc.encode(inv), as: UTF8.self)
        #expect(json == #"{"incomplete":[],"manager":"rpm","packages":[],"source":"\/var\/lib\/rpm\/Packages","unknown_reason":"r","warnings":[]}"#)
        let p = InstalledPackage(name: "a", version: "1", architecture: "all", sourceName: "a", sourceVersion: "1", manager: .dpkg, status: "s")
        let pj = String(decoding: try enc.encode(p), as: UTF8.self)
        #expect(pj.contains(#""source_name":"a""#) && pj.contains(#""source_version":"1""#))
    }
}
