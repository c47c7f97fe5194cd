import CLibvirt
import Foundation
import HypervisorHook
import WardenCore

/// Read-only questions to libvirt about one domain.
public enum LibvirtDomains {
    /// The host interfaces of the running domain with this UUID (its live XML's
    /// `<interface><target dev=…>`); nil when libvirt cannot be reached or the domain is not
    /// running here.
    public static func interfaces(uri: String = "qemu:///system", uuid: UUID) -> [String]? {
        guard let conn = virConnectOpenReadOnly(uri) else { return nil }
        defer { virConnectClose(conn) }
        guard let dom = virDomainLookupByUUIDString(conn, uuid.uuidString.lowercased()) else { return nil }
        defer { virDomainFree(dom) }
        guard virDomainIsActive(dom) == 1, let p = virDomainGetXMLDesc(dom, 0) else { return nil }
        defer { Glibc.free(p) }
        let xml = Data(String(cString: p).utf8)
        return (try? LibvirtDomain.parse(xml))?.interfaces
    }
}
