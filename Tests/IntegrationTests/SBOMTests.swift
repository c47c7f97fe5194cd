import Foundation
import Testing
import WardenBuildInfo
import WardenTestSupport

/// Guests for `inspect --sbom`: a Debian root with real dpkg stanzas copied from the host's
/// status file (epochs, `+` and `~` in versions) plus hand-written ones with fixed versions,
/// and an Alpine root with an apk database. Raw ext4 images, no partition table.
enum SBOMFixtures {
    static let debianUUID = "5b0f3c2e-8d11-4c7a-9e3b-2a6d4f1c0e77"
    static let alpineUUID = "9e8d7c6b-5a49-4382-9170-a1b2c3d4e5f6"
    static let hostPackages = ["login", "libc6", "bsdutils", "ca-certificates-java", "base-files"]

    static let handStanzas = """
    Package: warden-epoch
    Status: install ok installed
    Architecture: amd64
    Source: warden-src (2:1.0+dfsg~rc1-3)
    Version: 2:1.0+dfsg~rc1-3
    Description: fixed version with epoch, plus and tilde

    Package: warden-removed
    Status: deinstall ok config-files
    Architecture: amd64
    Version: 1.0-1
    Description: not installed, must not be listed

    """

    static let apkDB = """
    P:musl
    V:1.2.4-r2
    A:x86_64
    o:musl

    P:libcrypto3
    V:3.1.4-r5
    A:x86_64
    o:openssl

    P:ca-certificates-bundle
    V:20230506-r0
    A:x86_64
    o:ca-certificates

    """

    static func debian() throws -> String {
        let names = hostPackages.joined(separator: " ")
        return try Fixtures.cached("sbom-debian", recipe: "v1 \(names)\n\(handStanzas)") { dir in
            try Tool.sh("""
            cd "\(dir)"
            mkdir -p root/etc root/var/lib/dpkg
            printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\\nID=debian\\nVERSION_ID="12"\\n' > root/etc/os-release
            for p in \(names); do
              awk -v p="$p" 'BEGIN{RS="";ORS="\\n\\n"} $0 ~ "^Package: " p "\\n" {print; exit}' /var/lib/dpkg/status >> root/var/lib/dpkg/status
            done
            cat >> root/var/lib/dpkg/status <<'DPKG'
            \(handStanzas)DPKG
            sed -i 's/^    //' root/var/lib/dpkg/status
            truncate -s 16M disk.raw && mkfs.ext4 -q -F -U \(debianUUID) -d root disk.raw
            """)
        }
    }

    static func alpine() throws -> String {
        try Fixtures.cached("sbom-alpine", recipe: "v1\n\(apkDB)") { dir in
            try Tool.sh("""
            cd "\(dir)"
            mkdir -p root/etc root/lib/apk/db
            printf 'NAME="Alpine Linux"\\nID=alpine\\nVERSION_ID=3.18.4\\n' > root/etc/os-release
            cat > root/lib/apk/db/installed <<'APK'
            \(apkDB)APK
            sed -i 's/^    //' root/lib/apk/db/installed
            truncate -s 8M disk.raw && mkfs.ext4 -q -F -U \(alpineUUID) -d root disk.raw
            """)
        }
    }

    /// `Version:` of package `name` in the Debian fixture's status file, from the host copy.
    static func hostVersion(_ name: String) throws -> (version: String, arch: String) {
        let r = try Tool.sh("awk -v p=\(name) 'BEGIN{RS=\"\";FS=\"\\n\"} $1==\"Package: \" p {print; exit}' /var/lib/dpkg/status")
        var v = "", a = ""
        for line in r.stdoutText.split(separator: "\n") {
            if line.hasPrefix("Version: ") { v = String(line.dropFirst(9)) }
            if line.hasPrefix("Architecture: ") { a = String(line.dropFirst(14)) }
        }
        return (v, a)
    }
}

@Suite struct SBOMTests {
    /// Runs `warden inspect --sbom` with SOURCE_DATE_EPOCH set for that process only.
    func sbom(_ format: String, _ image: String, epoch: String = "1700000000") throws -> ToolResult {
        try Tool.run(["timeout", "-s", "KILL", "120", Fixtures.wardenBinary, "inspect", "--sbom", format, image],
                     environment: ["SOURCE_DATE_EPOCH": epoch], check: false)
    }

    func validateCycloneDX(_ data: Data) throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try data.write(to: URL(fileURLWithPath: tmp + "/bom.json"))
            let r = try Tool.run(["python3", "-c", """
            import sys
            from cyclonedx.schema import SchemaVersion
            from cyclonedx.validation.json import JsonStrictValidator
            err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())
            if err is not None:
                print(err, file=sys.stderr); sys.exit(1)
            """, tmp + "/bom.json"], check: false)
            #expect(r.status == 0, "CycloneDX 1.5 schema: \(r.stderr)")
        }
    }

    func validateSPDX(_ data: Data) throws {
        try Fixtures.withTemporaryDirectory { tmp in
            try data.write(to: URL(fileURLWithPath: tmp + "/doc.spdx.json"))
            let r = try Tool.run(["python3", "-m", "spdx_tools.spdx.clitools.pyspdxtools", "-i", tmp + "/doc.spdx.json"],
                                 check: false)
            #expect(r.status == 0, "pyspdxtools: \(r.stdoutText) \(r.stderr)")
        }
    }

    func json(_ d: Data) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: d) as? [String: Any])
    }

    func debianExpectedPurls() throws -> [String: String] {
        var out: [String: String] = [:]
        for name in SBOMFixtures.hostPackages {
            let (v, a) = try SBOMFixtures.hostVersion(name)
            // The purl spec keeps letters, digits, `.-_~` and `:` as they are; `+` is `%2B`.
            out[name] = "pkg:deb/debian/\(name)@\(v.replacingOccurrences(of: "+", with: "%2B"))?arch=\(a)&distro=debian-12"
        }
        out["warden-epoch"] = "pkg:deb/debian/warden-epoch@2:1.0%2Bdfsg~rc1-3?arch=amd64&distro=debian-12"
        return out
    }

    @Test func cycloneDXForDebianIsValidAndHasExactPurls() throws {
        let r = try sbom("cyclonedx", try SBOMFixtures.debian() + "/disk.raw")
        #expect(r.status == 0, "stderr: \(r.stderr)")
        try validateCycloneDX(r.stdout)
        let doc = try json(r.stdout)
        #expect(doc["bomFormat"] as? String == "CycloneDX" && doc["specVersion"] as? String == "1.5")
        let comps = try #require(doc["components"] as? [[String: Any]])
        let os = try #require(comps.first { $0["type"] as? String == "operating-system" })
        #expect(os["name"] as? String == "debian" && os["version"] as? String == "12")
        let byName = Dictionary(comps.compactMap { c in (c["name"] as? String).map { ($0, c) } }, uniquingKeysWith: { a, _ in a })
        for (name, purl) in try debianExpectedPurls() {
            #expect(byName[name]?["purl"] as? String == purl, "\(name)")
        }
        #expect(byName["warden-removed"] == nil)
        #expect(comps.count == 1 + SBOMFixtures.hostPackages.count + 1)
        let props = try #require(byName["login"]?["properties"] as? [[String: String]])
        #expect(props.contains { $0["name"] == "warden:package:source_name" && $0["value"] == "shadow" })
        let bsd = try #require(byName["bsdutils"]?["properties"] as? [[String: String]])
        #expect(bsd.contains { $0["name"] == "warden:package:source_name" && $0["value"] == "util-linux" })
        let meta = try #require(doc["metadata"] as? [String: Any])
        #expect(meta["timestamp"] as? String == "2023-11-14T22:13:20Z")
        let tools = try #require((meta["tools"] as? [String: Any])?["components"] as? [[String: Any]])
        #expect(tools.first?["name"] as? String == "warden" && tools.first?["version"] as? String == WardenVersion.version)
        let serial = try #require(doc["serialNumber"] as? String)
        #expect(serial.hasPrefix("urn:uuid:"))
    }

    @Test func spdxForDebianIsValid() throws {
        let r = try sbom("spdx", try SBOMFixtures.debian() + "/disk.raw")
        #expect(r.status == 0, "stderr: \(r.stderr)")
        try validateSPDX(r.stdout)
        let doc = try json(r.stdout)
        #expect(doc["spdxVersion"] as? String == "SPDX-2.3" && doc["SPDXID"] as? String == "SPDXRef-DOCUMENT")
        let pkgs = try #require(doc["packages"] as? [[String: Any]])
        let os = try #require(pkgs.first { $0["primaryPackagePurpose"] as? String == "OPERATING-SYSTEM" })
        #expect(os["name"] as? String == "debian")
        for p in pkgs {
            let id = try #require(p["SPDXID"] as? String)
            #expect(id.hasPrefix("SPDXRef-") && id.dropFirst(8).allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-") })
            #expect(p["licenseConcluded"] as? String == "NOASSERTION" && p["downloadLocation"] as? String == "NOASSERTION")
            #expect(p["filesAnalyzed"] as? Bool == false && p["checksums"] == nil)
        }
        let expected = try debianExpectedPurls()
        for (name, purl) in expected {
            let p = try #require(pkgs.first { $0["name"] as? String == name }, "\(name)")
            let refs = try #require(p["externalRefs"] as? [[String: String]])
            #expect(refs == [["referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl]])
        }
        let login = try #require(pkgs.first { $0["name"] as? String == "login" })
        #expect((login["sourceInfo"] as? String)?.contains("shadow") == true)
        let rels = try #require(doc["relationships"] as? [[String: String]])
        #expect(rels.filter { $0["relationshipType"] == "DESCRIBES" }.count == 1)
        #expect(rels.filter { $0["relationshipType"] == "CONTAINS" }.count == expected.count)
        let created = (doc["creationInfo"] as? [String: Any])?["created"] as? String
        #expect(created == "2023-11-14T22:13:20Z")
    }

    @Test func alpineApkPurls() throws {
        let image = try SBOMFixtures.alpine() + "/disk.raw"
        let cdx = try sbom("cyclonedx", image)
        #expect(cdx.status == 0, "stderr: \(cdx.stderr)")
        try validateCycloneDX(cdx.stdout)
        let purls = Set(try #require(try json(cdx.stdout)["components"] as? [[String: Any]]).compactMap { $0["purl"] as? String })
        #expect(purls == [
            "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&distro=alpine-3.18.4",
            "pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64&distro=alpine-3.18.4",
            "pkg:apk/alpine/ca-certificates-bundle@20230506-r0?arch=x86_64&distro=alpine-3.18.4",
        ])
        let spdx = try sbom("spdx", image)
        #expect(spdx.status == 0, "stderr: \(spdx.stderr)")
        try validateSPDX(spdx.stdout)
    }

    @Test func deterministicWithSourceDateEpoch() throws {
        let image = try SBOMFixtures.debian() + "/disk.raw"
        for format in ["cyclonedx", "spdx"] {
            let a = try sbom(format, image), b = try sbom(format, image)
            #expect(a.status == 0 && !a.stdout.isEmpty)
            #expect(a.stdout == b.stdout, "\(format) differs between runs")
            // Only the timestamp changes with the epoch.
            let c = try sbom(format, image, epoch: "1600000000")
            let strip = { (d: Data) in String(decoding: d, as: UTF8.self).split(separator: "\n").filter { !$0.contains("2023-11-14T") && !$0.contains("2020-09-13T") } }
            #expect(a.stdout != c.stdout && strip(a.stdout) == strip(c.stdout))
        }
        // A different guest gets a different serial number.
        let d = try json(try sbom("cyclonedx", image).stdout)["serialNumber"] as? String
        let e = try json(try sbom("cyclonedx", try SBOMFixtures.alpine() + "/disk.raw").stdout)["serialNumber"] as? String
        #expect(d != nil && d != e)
    }

    @Test func refusesSeveralImagesAndJSON() throws {
        let image = try SBOMFixtures.debian() + "/disk.raw"
        let r = try WardenRun.run(["inspect", "--sbom", "spdx", image, image])
        #expect(r.status != 0 && r.stdout.isEmpty)
        #expect(r.stderr.contains("--sbom writes one document for one image"))
        let j = try WardenRun.run(["inspect", "--sbom", "cyclonedx", "--json", image])
        #expect(j.status != 0 && j.stderr.contains("cannot be combined"))
        let bad = try WardenRun.run(["inspect", "--sbom", "swid", image])
        #expect(bad.status != 0)
    }
}
