import Foundation
import WardenBuildInfo
import Crypto
import WardenCore

/// Software bills of materials built from an ``Inventory``: CycloneDX 1.5 JSON and SPDX 2.3 JSON.
///
/// Output is deterministic: components are sorted, the serial number / document namespace
/// is derived from the root filesystem UUID and a digest of the package list, and the
/// only varying field is the timestamp, which the caller passes in (the CLI honours
/// `SOURCE_DATE_EPOCH`).
public enum SBOM {
    public static let toolName = "warden"
    public static let toolVersion = WardenVersion.version

    public enum Format: String, Sendable, CaseIterable {
        case cyclonedx, spdx
    }

    /// One installed package with its package URL.
    public struct Entry: Sendable, Equatable {
        public var package: InstalledPackage
        public var purl: String
    }

    /// The OS the packages belong to, as used in purls: `id` lowercased, `versionId` as written.
    public struct Distro: Sendable, Equatable {
        public var id: String
        public var versionId: String?
        public var prettyName: String?
        /// `ID-VERSION_ID` (or `ID` alone without a version), the purl `distro` qualifier.
        public var qualifier: String { versionId.map { "\(id)-\($0)" } ?? id }
    }

    static func distro(_ os: OSInfo) -> Distro? {
        guard let id = os.id.value?.lowercased(), !id.isEmpty else { return nil }
        return Distro(id: id, versionId: os.versionId.value, prettyName: os.prettyName.value)
    }

    // MARK: purl

    /// Percent-encodes a purl component per the purl spec: ASCII letters, digits, `.-_~`
    /// and `:` stay as they are; every other byte of the UTF-8 form becomes `%XX`
    /// (so `+` is `%2B`, `/` `%2F`, `@` `%40`, space `%20`).
    public static func purlEncode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"),
                 UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: ":"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                let hex = Array("0123456789ABCDEF".utf8)
                out += "%" + String(decoding: [hex[Int(b >> 4)], hex[Int(b & 0xF)]], as: UTF8.self)
            }
        }
        return out
    }

    /// The package URL of `p`, or nil when the OS is unknown (no namespace to give it).
    ///
    /// - dpkg: `pkg:deb/<os id>/NAME@VERSION?arch=ARCH&distro=ID-VERSION_ID` (version as dpkg
    ///   writes it, epoch included).
    /// - rpm: `pkg:rpm/<os id>/NAME@VERSION?arch=ARCH&distro=…&epoch=N` (version without the epoch).
    /// - apk: `pkg:apk/alpine/NAME@VERSION?arch=ARCH&distro=alpine-3.18`.
    ///
    /// Qualifiers are sorted by key and omitted when empty, as the spec's canonical form asks.
    public static func purl(_ p: InstalledPackage, distro: Distro) -> String {
        let type: String
        let namespace: String
        var version = p.version
        var qualifiers: [(String, String)] = []
        switch p.manager {
        case .dpkg:
            type = "deb"
            namespace = distro.id
        case .rpm:
            type = "rpm"
            namespace = distro.id
            if let colon = version.firstIndex(of: ":"), version[..<colon].allSatisfy(\.isNumber) {
                let epoch = String(version[..<colon])
                version = String(version[version.index(after: colon)...])
                if !epoch.isEmpty { qualifiers.append(("epoch", String(p.epoch ?? Int(epoch) ?? 0))) }
            } else if let e = p.epoch {
                qualifiers.append(("epoch", String(e)))
            }
        case .apk:
            type = "apk"
            namespace = "alpine"
        }
        if !p.architecture.isEmpty { qualifiers.append(("arch", p.architecture)) }
        qualifiers.append(("distro", distro.qualifier))
        qualifiers.sort { $0.0 < $1.0 }
        var s = "pkg:\(type)/\(purlEncode(namespace))/\(purlEncode(p.name))"
        if !version.isEmpty { s += "@" + purlEncode(version) }
        let q = qualifiers.filter { !$0.1.isEmpty }.map { "\($0.0)=\(purlEncode($0.1))" }
        if !q.isEmpty { s += "?" + q.joined(separator: "&") }
        return s
    }

    /// Installed packages of every database, deduplicated by purl, sorted by purl.
    public static func entries(_ inv: Inventory) -> [Entry] {
        guard let distro = distro(inv.os) else { return [] }
        var byPurl: [String: InstalledPackage] = [:]
        for db in inv.packages.value ?? [] {
            for p in db.packages where byPurl[purl(p, distro: distro)] == nil {
                byPurl[purl(p, distro: distro)] = p
            }
        }
        return byPurl.map { Entry(package: $0.value, purl: $0.key) }
            .sorted { $0.purl.utf8.lexicographicallyPrecedes($1.purl.utf8) }
    }

    // MARK: identity

    /// The root filesystem's UUID, if the root volume has one.
    static func rootUUID(_ inv: Inventory) -> String? {
        inv.mounts.first { $0.path == "/" }?.volume.filesystem?.uuid
    }

    /// A UUID (RFC 4122 layout, version 5 bits) derived from the SHA-256 of the root
    /// filesystem UUID, the OS and the package list: same guest, same UUID.
    public static func documentUUID(_ inv: Inventory, entries: [Entry]) -> String {
        var fields = ["warden-sbom-v1", rootUUID(inv) ?? "no-root-uuid", inv.os.id.value ?? "", inv.os.versionId.value ?? ""]
        for e in entries { fields += [e.purl, e.package.version, e.package.sourceName, e.package.sourceVersion] }
        return nameBasedUUID(fields)
    }

    /// A UUID (RFC 4122 layout, version 5 bits) from the SHA-256 of `fields`, each ended by a NUL.
    static func nameBasedUUID(_ fields: [String]) -> String {
        var h = SHA256()
        for f in fields { h.update(data: Array(f.utf8) + [0]) }
        var b = Array(h.finalize().prefix(16))
        b[6] = (b[6] & 0x0F) | 0x50
        b[8] = (b[8] & 0x3F) | 0x80
        return formatUUID(b)
    }

    /// `2024-01-02T03:04:05Z`
    public static func timestamp(_ date: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        f.timeZone = TimeZone(identifier: "UTC")
        return f.string(from: date)
    }

    static func encode<T: Encodable>(_ v: T) throws -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return Array(try enc.encode(v)) + [0x0A]
    }

    /// The SBOM of `inv` in `format`, as JSON bytes ending with a newline.
    /// Throws when the guest's OS is unknown (packages cannot be named without it).
    public static func document(_ inv: Inventory, format: Format, created: Date) throws -> [UInt8] {
        guard distro(inv.os) != nil else {
            throw WardenError(.unsupported, "cannot write an SBOM: the guest's OS id is unknown (\(inv.os.id.unknownReason ?? "no id"))")
        }
        switch format {
        case .cyclonedx: return try encode(cycloneDX(inv, created: created))
        case .spdx: return try encode(spdx(inv, created: created))
        }
    }

    static func sourceNote(_ p: InstalledPackage) -> String {
        "source package \(p.sourceName) \(p.sourceVersion)"
    }

    // MARK: CycloneDX 1.5

    struct CDXDocument: Encodable {
        var bomFormat = "CycloneDX"
        var specVersion = "1.5"
        var serialNumber: String
        var version = 1
        var metadata: CDXMetadata
        var components: [CDXComponent]
        var dependencies: [CDXDependency]
    }

    struct CDXMetadata: Encodable {
        var timestamp: String
        var tools: CDXTools
        var properties: [CDXProperty]
    }

    struct CDXTools: Encodable { var components: [CDXComponent] }

    struct CDXComponent: Encodable {
        var type: String
        var bomRef: String?
        var name: String
        var version: String?
        var description: String?
        var purl: String?
        var properties: [CDXProperty]?

        enum CodingKeys: String, CodingKey {
            case type, bomRef = "bom-ref", name, version, description, purl, properties
        }
    }

    struct CDXProperty: Encodable {
        var name: String
        var value: String
    }

    struct CDXDependency: Encodable {
        var ref: String
        var dependsOn: [String]
    }

    static func cycloneDX(_ inv: Inventory, created: Date) -> CDXDocument {
        let es = entries(inv)
        let d = distro(inv.os)!
        let osRef = "warden:os"
        var components = [CDXComponent(type: "operating-system", bomRef: osRef, name: d.id, version: d.versionId,
                                       description: d.prettyName, purl: nil, properties: nil)]
        for e in es {
            let p = e.package
            components.append(CDXComponent(
                type: "library", bomRef: e.purl, name: p.name, version: p.version, description: nil, purl: e.purl,
                properties: [
                    CDXProperty(name: "warden:package:manager", value: p.manager.rawValue),
                    CDXProperty(name: "warden:package:architecture", value: p.architecture),
                    CDXProperty(name: "warden:package:source_name", value: p.sourceName),
                    CDXProperty(name: "warden:package:source_version", value: p.sourceVersion),
                ]))
        }
        var props = [CDXProperty(name: "warden:image", value: inv.image.split(separator: "/").last.map(String.init) ?? inv.image)]
        if let u = rootUUID(inv) { props.append(CDXProperty(name: "warden:root_filesystem_uuid", value: u)) }
        let tool = CDXComponent(type: "application", bomRef: nil, name: toolName, version: toolVersion,
                                description: nil, purl: nil, properties: nil)
        return CDXDocument(
            serialNumber: "urn:uuid:" + documentUUID(inv, entries: es),
            metadata: CDXMetadata(timestamp: timestamp(created), tools: CDXTools(components: [tool]), properties: props),
            components: components,
            dependencies: [CDXDependency(ref: osRef, dependsOn: es.map(\.purl))] + es.map { CDXDependency(ref: $0.purl, dependsOn: []) })
    }

    // MARK: SPDX 2.3

    struct SPDXDocument: Encodable {
        var spdxVersion = "SPDX-2.3"
        var dataLicense = "CC0-1.0"
        var spdxID = "SPDXRef-DOCUMENT"
        var name: String
        var documentNamespace: String
        var creationInfo: SPDXCreationInfo
        var packages: [SPDXPackage]
        var relationships: [SPDXRelationship]

        enum CodingKeys: String, CodingKey {
            case spdxVersion, dataLicense, spdxID = "SPDXID", name, documentNamespace, creationInfo, packages, relationships
        }
    }

    struct SPDXCreationInfo: Encodable {
        var created: String
        var creators: [String]
    }

    struct SPDXPackage: Encodable {
        var spdxID: String
        var name: String
        var versionInfo: String?
        var downloadLocation = "NOASSERTION"
        var filesAnalyzed = false
        var licenseConcluded = "NOASSERTION"
        var licenseDeclared = "NOASSERTION"
        var copyrightText = "NOASSERTION"
        var primaryPackagePurpose: String?
        var sourceInfo: String?
        var comment: String?
        var externalRefs: [SPDXExternalRef]?

        enum CodingKeys: String, CodingKey {
            case spdxID = "SPDXID", name, versionInfo, downloadLocation, filesAnalyzed, licenseConcluded,
                 licenseDeclared, copyrightText, primaryPackagePurpose, sourceInfo, comment, externalRefs
        }
    }

    struct SPDXExternalRef: Encodable {
        var referenceCategory = "PACKAGE-MANAGER"
        var referenceType = "purl"
        var referenceLocator: String
    }

    struct SPDXRelationship: Encodable {
        var spdxElementId: String
        var relationshipType: String
        var relatedSpdxElement: String
    }

    /// `SPDXRef-` followed by `s` with every character outside `[A-Za-z0-9.-]` replaced by `-`.
    public static func spdxID(_ s: String) -> String {
        "SPDXRef-" + String(s.unicodeScalars.map { c -> Character in
            (c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "." || c == "-")) ? Character(c) : "-"
        })
    }

    static func spdx(_ inv: Inventory, created: Date) -> SPDXDocument {
        let es = entries(inv)
        let d = distro(inv.os)!
        let osID = "SPDXRef-OperatingSystem"
        var packages = [SPDXPackage(spdxID: osID, name: d.id, versionInfo: d.versionId,
                                    primaryPackagePurpose: "OPERATING-SYSTEM", comment: d.prettyName)]
        var rels = [SPDXRelationship(spdxElementId: "SPDXRef-DOCUMENT", relationshipType: "DESCRIBES", relatedSpdxElement: osID)]
        for (i, e) in es.enumerated() {
            let p = e.package
            // The index keeps ids unique where sanitising makes two names collide.
            let id = spdxID("Package-\(i + 1)-\(p.manager.rawValue)-\(p.name)")
            packages.append(SPDXPackage(spdxID: id, name: p.name, versionInfo: p.version,
                                        primaryPackagePurpose: "LIBRARY",
                                        sourceInfo: "built from " + sourceNote(p),
                                        externalRefs: [SPDXExternalRef(referenceLocator: e.purl)]))
            rels.append(SPDXRelationship(spdxElementId: osID, relationshipType: "CONTAINS", relatedSpdxElement: id))
        }
        let base = inv.image.split(separator: "/").last.map(String.init) ?? inv.image
        let uuid = documentUUID(inv, entries: es)
        return SPDXDocument(
            name: "warden-" + base,
            documentNamespace: "https://spdx.org/spdxdocs/warden-\(purlEncode(d.id))-\(uuid)",
            creationInfo: SPDXCreationInfo(created: timestamp(created), creators: ["Tool: \(toolName)-\(toolVersion)"]),
            packages: packages, relationships: rels)
    }
}

// MARK: Windows guests

extension SBOM {
    /// The SBOM of a Windows guest: the operating system (product, build.UBR) and every program
    /// from the Uninstall keys (64- and 32-bit) as an application component. Windows programs
    /// have no package URL type, so components carry name, version and publisher (CycloneDX's
    /// `publisher`; SPDX's `supplier`), and the view as a property.
    public static func windowsDocument(_ w: WindowsInfo, image: String, format: Format, created: Date) throws -> [UInt8] {
        guard let programs = w.software.value else {
            throw WardenError(.unsupported, "cannot write an SBOM: the guest's software list is unknown (\(w.software.unknownReason ?? "no SOFTWARE hive"))")
        }
        let product = w.productName.value ?? "Windows"
        let build = w.build.value
        let uuid = nameBasedUUID([w.machineGuid.value ?? "", product, build ?? ""]
                                 + programs.map { "\($0.name)\u{1}\($0.version ?? "")\u{1}\($0.view)" })
        let base = image.split(separator: "/").last.map(String.init) ?? image
        func ref(_ i: Int, _ p: WindowsInfo.Software) -> String { "warden:windows:\(i + 1):" + p.name }
        switch format {
        case .cyclonedx:
            let osRef = "warden:os"
            var components = [CDXComponent(type: "operating-system", bomRef: osRef, name: "windows", version: build,
                                           description: product, purl: nil, properties: nil)]
            for (i, p) in programs.enumerated() {
                var props = [CDXProperty(name: "warden:windows:view", value: p.view)]
                if let pub = p.publisher { props.append(CDXProperty(name: "warden:windows:publisher", value: pub)) }
                components.append(CDXComponent(type: "application", bomRef: ref(i, p), name: p.name, version: p.version,
                                               description: nil, purl: nil, properties: props))
            }
            let tool = CDXComponent(type: "application", bomRef: nil, name: toolName, version: toolVersion, description: nil, purl: nil, properties: nil)
            var props = [CDXProperty(name: "warden:image", value: base)]
            if let g = w.machineGuid.value { props.append(CDXProperty(name: "warden:windows:machine_guid", value: g)) }
            let refs = programs.enumerated().map { ref($0.offset, $0.element) }
            return try encode(CDXDocument(serialNumber: "urn:uuid:" + uuid,
                                          metadata: CDXMetadata(timestamp: timestamp(created), tools: CDXTools(components: [tool]), properties: props),
                                          components: components,
                                          dependencies: [CDXDependency(ref: osRef, dependsOn: refs)] + refs.map { CDXDependency(ref: $0, dependsOn: []) }))
        case .spdx:
            let osID = "SPDXRef-OperatingSystem"
            var packages = [SPDXPackage(spdxID: osID, name: "windows", versionInfo: build, primaryPackagePurpose: "OPERATING-SYSTEM", comment: product)]
            var rels = [SPDXRelationship(spdxElementId: "SPDXRef-DOCUMENT", relationshipType: "DESCRIBES", relatedSpdxElement: osID)]
            for (i, p) in programs.enumerated() {
                let id = spdxID("Program-\(i + 1)-\(p.name)")
                packages.append(SPDXPackage(spdxID: id, name: p.name, versionInfo: p.version, primaryPackagePurpose: "APPLICATION",
                                            comment: "\(p.view) program" + (p.publisher.map { ", publisher \($0)" } ?? "")))
                rels.append(SPDXRelationship(spdxElementId: osID, relationshipType: "CONTAINS", relatedSpdxElement: id))
            }
            return try encode(SPDXDocument(name: "warden-" + base, documentNamespace: "https://spdx.org/spdxdocs/warden-windows-\(uuid)",
                                           creationInfo: SPDXCreationInfo(created: timestamp(created), creators: ["Tool: \(toolName)-\(toolVersion)"]),
                                           packages: packages, relationships: rels))
        }
    }
}
