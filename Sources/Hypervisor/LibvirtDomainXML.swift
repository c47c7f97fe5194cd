import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import WardenCore

/// What Warden needs from a libvirt domain XML: its name, UUID and disk sources.
///
/// Only `/domain/name`, `/domain/uuid` and `/domain/devices/disk/source` (file or dev) are
/// read; backing stores, cdrom media and network disks are ignored for mapping. The XML comes
/// from libvirtd, but it is still parsed defensively: size-capped, no external entities, and
/// a malformed document is an error, never a guess.
public struct LibvirtDomain: Sendable, Equatable {
    public var name: String
    public var uuid: UUID?
    /// Absolute paths of the domain's disks (device='disk'), in document order.
    public var diskPaths: [String]
    /// Each disk's `<driver type=…>` (qcow2, raw), `unknown` when not given.
    public var diskFormats: [String]
    /// `<domain type=…>` (qemu, kvm).
    public var type: String?

    public init(name: String, uuid: UUID?, diskPaths: [String], diskFormats: [String]? = nil, type: String? = nil) {
        self.name = name; self.uuid = uuid; self.diskPaths = diskPaths; self.type = type
        self.diskFormats = diskFormats ?? diskPaths.map { _ in "unknown" }
    }

    /// The largest domain XML accepted (libvirt's own limit for XML documents is 10 MiB).
    public static let maxSize = 10 << 20

    public static func parse(_ data: Data) throws -> LibvirtDomain {
        guard data.count <= maxSize else { throw WardenError.limit("domain XML larger than \(maxSize) bytes") }
        let delegate = DomainXMLDelegate()
        let parser = XMLParser(data: data)
        parser.shouldResolveExternalEntities = false
        parser.shouldProcessNamespaces = false
        parser.delegate = delegate
        guard parser.parse(), delegate.error == nil else {
            let why = delegate.error ?? parser.parserError.map { "\($0.localizedDescription)" } ?? "malformed"
            throw WardenError.corrupt("domain XML: \(why)")
        }
        guard delegate.rootClosed else { throw WardenError.corrupt("domain XML: truncated (no </domain>)") }
        guard let name = delegate.name?.trimmingCharacters(in: .whitespacesAndNewlines), !name.isEmpty else {
            throw WardenError.corrupt("domain XML has no <name>")
        }
        var uuid: UUID? = nil
        if let u = delegate.uuid?.trimmingCharacters(in: .whitespacesAndNewlines), !u.isEmpty {
            guard let parsed = UUID(uuidString: u) else { throw WardenError.corrupt("domain XML <uuid> is not a UUID") }
            uuid = parsed
        }
        return LibvirtDomain(name: name, uuid: uuid, diskPaths: delegate.disks, diskFormats: delegate.formats, type: delegate.type)
    }
}

private final class DomainXMLDelegate: NSObject, XMLParserDelegate {
    var path: [String] = []
    var name: String?
    var uuid: String?
    var type: String?
    var disks: [String] = []
    var formats: [String] = []
    var diskFormat: String?
    var error: String?
    var text = ""
    var inDisk = false
    var diskIsDisk = false
    var diskSource: String?
    var depth = 0
    var rootClosed = false
    var roots = 0

    func parser(_ parser: XMLParser, didStartElement element: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
        depth += 1
        if depth > 64 { error = "nested deeper than 64 elements"; parser.abortParsing(); return }
        path.append(element)
        text = ""
        if path.count == 1 {
            roots += 1
            guard element == "domain", roots == 1 else { error = "the root element is not one <domain>"; parser.abortParsing(); return }
            type = attributes["type"]
        }
        if path == ["domain", "devices", "disk"] {
            inDisk = true
            diskIsDisk = (attributes["device"] ?? "disk") == "disk"
            diskSource = nil
            diskFormat = nil
        }
        if path == ["domain", "devices", "disk", "driver"], let t = attributes["type"],
           t.count <= 16, t.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) {
            diskFormat = t
        }
        if path == ["domain", "devices", "disk", "source"] {
            diskSource = attributes["file"] ?? attributes["dev"]
        }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        if path == ["domain", "name"] || path == ["domain", "uuid"] {
            guard text.utf8.count + string.utf8.count <= 4096 else { error = "<\(path.last ?? "")> too long"; parser.abortParsing(); return }
            text += string
        }
    }

    func parser(_ parser: XMLParser, didEndElement element: String, namespaceURI: String?, qualifiedName: String?) {
        if path == ["domain", "name"] { name = text }
        if path == ["domain", "uuid"] { uuid = text }
        if path == ["domain", "devices", "disk"] {
            if diskIsDisk, let s = diskSource, s.hasPrefix("/") {
                if disks.count < 256 { disks.append(s); formats.append(diskFormat ?? "unknown") }
            }
            inDisk = false
        }
        if path == ["domain"] { rootClosed = true }
        _ = path.popLast()
        depth -= 1
    }
}
