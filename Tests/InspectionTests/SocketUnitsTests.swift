import Testing
import WardenCore
import WardenTestSupport
import GuestFS
@testable import Inspection

/// Enabled systemd socket units and their network ports, with drop-ins, masks and dpkg owners,
/// from an ext4 image made by mkfs.ext4 -d.
@Suite struct SocketUnitsTests {
    static let script = #"""
    mkdir -p usr/lib/systemd/system etc/systemd/system/sockets.target.wants var/lib/dpkg/info
    ln -s usr/lib lib
    cd usr/lib/systemd/system
    printf '[Unit]\nDescription=OpenBSD Secure Shell server socket\n\n[Socket]\nListenStream=22\nAccept=yes\n\n[Install]\nWantedBy=sockets.target\n' > ssh.socket
    printf '[Socket]\nListenStream=/run/cups/cups.sock\nListenStream=[::1]:631\nListenStream=127.0.0.1:631\n' > cups.socket
    printf '[Socket]\nListenStream=0.0.0.0:3306\n' > db.socket
    printf '[Socket]\nListenDatagram=[::]:161\nListenStream=vsock:2:1234\n' > snmp.socket
    printf '[Socket]\nListenStream=9999\n' > masked.socket
    printf '[Socket]\nListenStream=8443\n' > idle.socket
    cd ../../../../etc/systemd/system
    for u in ssh cups db snmp masked; do ln -s /lib/systemd/system/$u.socket sockets.target.wants/$u.socket; done
    ln -s /dev/null masked.socket
    # The administrator moved ssh to 2222 (a drop-in clears the list, then sets it).
    mkdir ssh.socket.d && printf '[Socket]\nListenStream=\nListenStream=2222\n' > ssh.socket.d/port.conf
    cd ../../../var/lib/dpkg/info
    printf '/.\n/lib\n/lib/systemd\n/lib/systemd/system\n/lib/systemd/system/ssh.socket\n/usr/sbin/sshd\n' > openssh-server.list
    printf '/lib/systemd/system/snmp.socket\n' > snmpd:amd64.list
    printf '/usr/lib/systemd/system/db.socket\n' > mariadb-server.list
    """#

    @Test func enabledSocketsListenWhereTheirUnitsAndDropInsSay() throws {
        let (g, _) = try PkgFixture.guest("socket-units", size: "8M", script: Self.script)
        let listeners = Inspection.socketListeners(g, services: try Inspection.services(g))
        let byUnit = Dictionary(uniqueKeysWithValues: listeners.map { ($0.unit, $0) })
        // cups only on loopback and a Unix socket, masked.socket masked, idle.socket not enabled.
        #expect(Set(byUnit.keys) == ["ssh.socket", "db.socket", "snmp.socket"])
        #expect(byUnit["ssh.socket"]?.tcp == [2222] && byUnit["ssh.socket"]?.package == "openssh-server")
        #expect(byUnit["db.socket"]?.tcp == [3306] && byUnit["db.socket"]?.package == "mariadb-server")
        #expect(byUnit["snmp.socket"]?.udp == [161] && byUnit["snmp.socket"]?.tcp == [] && byUnit["snmp.socket"]?.package == "snmpd")
    }

    @Test func listenAddresses() {
        for (value, port) in [("22", 22), ("0.0.0.0:80", 80), ("[::]:443", 443), ("192.0.2.1:25", 25)] as [(String, UInt16)] {
            #expect(Inspection.networkPort(value) == port, "\(value)")
        }
        for value in ["/run/x.sock", "@abstract", "127.0.0.1:631", "[::1]:631", "vsock:2:22", "0", "99999", "[::]", "host:port", ""] {
            #expect(Inspection.networkPort(value) == nil, "\(value)")
        }
    }
}
