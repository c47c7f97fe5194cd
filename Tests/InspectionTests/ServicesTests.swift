import Testing
import WardenCore
import WardenTestSupport
import GuestFS
@testable import Inspection

@Suite struct ServicesTests {
    /// A merged-/usr systemd layout (`/lib` → `usr/lib`) plus OpenRC runlevels, built from real symlinks.
    static let script = """
    mkdir -p usr/lib/systemd/system etc/systemd/system dev etc/init.d
    ln -s usr/lib lib
    cd etc/systemd/system
    mkdir multi-user.target.wants sockets.target.wants getty.target.wants sysinit.target.requires
    ln -s /lib/systemd/system/ssh.service multi-user.target.wants/ssh.service
    ln -s /lib/systemd/system/cron.service multi-user.target.wants/cron.service
    ln -s /lib/systemd/system/ssh.socket sockets.target.wants/ssh.socket
    mkdir multi-user.target.upholds
    ln -s /lib/systemd/system/watchdog.service multi-user.target.upholds/watchdog.service
    ln -s /lib/systemd/system/getty@.service getty.target.wants/getty@tty1.service
    ln -s ../../../usr/lib/systemd/system/systemd-remount-fs.service sysinit.target.requires/systemd-remount-fs.service
    echo not-a-link > multi-user.target.wants/stray.conf
    ln -s /dev/null bluetooth.service
    ln -s /dev/null systemd-timesyncd.service
    ln -s /lib/systemd/system/sshd.service sshd.service
    echo '[Unit]' > local.service
    ln -s /lib/systemd/system/graphical.target default.target
    cd ../../../usr/lib/systemd/system
    touch ssh.service cron.service ssh.socket getty@.service graphical.target multi-user.target
    mkdir -p multi-user.target.wants local-fs.target.wants
    ln -s ../getty.target multi-user.target.wants/getty.target
    ln -s ../tmp.mount local-fs.target.wants/tmp.mount
    ln -s multi-user.target default.target
    cd ../../../..
    mkdir -p etc/runlevels/default etc/runlevels/boot etc/runlevels/sysinit etc/runlevels/shutdown
    ln -s /etc/init.d/sshd etc/runlevels/default/sshd
    ln -s /etc/init.d/crond etc/runlevels/default/crond
    ln -s /etc/init.d/hostname etc/runlevels/boot/hostname
    ln -s /etc/init.d/devfs etc/runlevels/sysinit/devfs
    mkdir etc/runlevels/default/stacked
    """

    @Test func findsEveryLinkAndNothingElse() throws {
        let (g, _) = try PkgFixture.guest("svc-systemd-openrc", size: "8M", script: Self.script)
        let s = try Inspection.services(g)
        func u(_ unit: String, _ by: String, _ dep: String, _ dir: String, _ target: String, _ local: Bool) -> EnabledUnit {
            EnabledUnit(unit: unit, wantedBy: by, dependency: dep,
                        path: "\(dir)/\(by).\(dep)/\(unit)", target: target, local: local)
        }
        let etc = "/etc/systemd/system", usr = "/usr/lib/systemd/system"
        #expect(s.enabled == [
            u("getty@tty1.service", "getty.target", "wants", etc, "/lib/systemd/system/getty@.service", true),
            u("tmp.mount", "local-fs.target", "wants", usr, "../tmp.mount", false),
            u("cron.service", "multi-user.target", "wants", etc, "/lib/systemd/system/cron.service", true),
            u("getty.target", "multi-user.target", "wants", usr, "../getty.target", false),
            u("ssh.service", "multi-user.target", "wants", etc, "/lib/systemd/system/ssh.service", true),
            u("watchdog.service", "multi-user.target", "upholds", etc, "/lib/systemd/system/watchdog.service", true),
            u("ssh.socket", "sockets.target", "wants", etc, "/lib/systemd/system/ssh.socket", true),
            u("systemd-remount-fs.service", "sysinit.target", "requires", etc,
              "../../../usr/lib/systemd/system/systemd-remount-fs.service", true),
        ])
        #expect(s.masked == [
            MaskedUnit(unit: "bluetooth.service", path: "/etc/systemd/system/bluetooth.service"),
            MaskedUnit(unit: "systemd-timesyncd.service", path: "/etc/systemd/system/systemd-timesyncd.service"),
        ])
        #expect(s.defaultTarget == DefaultTarget(unit: "graphical.target", path: "/etc/systemd/system/default.target",
                                                 target: "/lib/systemd/system/graphical.target"))
        #expect(s.openrc == [
            OpenRCService(runlevel: "boot", service: "hostname", path: "/etc/runlevels/boot/hostname", target: "/etc/init.d/hostname"),
            OpenRCService(runlevel: "default", service: "crond", path: "/etc/runlevels/default/crond", target: "/etc/init.d/crond"),
            OpenRCService(runlevel: "default", service: "sshd", path: "/etc/runlevels/default/sshd", target: "/etc/init.d/sshd"),
            OpenRCService(runlevel: "sysinit", service: "devfs", path: "/etc/runlevels/sysinit/devfs", target: "/etc/init.d/devfs"),
        ])
        #expect(s.warnings.sorted() == [
            "/etc/runlevels/default/stacked is not a symbolic link; ignored",
            "/etc/systemd/system/multi-user.target.wants/stray.conf is not a symbolic link; ignored",
        ])
    }

    @Test func vendorDefaultTargetAndEmptyGuest() throws {
        let (g, _) = try PkgFixture.guest("svc-vendor-default", size: "8M", script: """
        mkdir -p lib/systemd/system etc/systemd/system
        ln -s multi-user.target lib/systemd/system/default.target
        """)
        let s = try Inspection.services(g)
        #expect(s.defaultTarget == DefaultTarget(unit: "multi-user.target", path: "/lib/systemd/system/default.target",
                                                 target: "multi-user.target"))
        #expect(s.enabled.isEmpty && s.masked.isEmpty && s.openrc.isEmpty && s.warnings.isEmpty)

        let (e, _) = try PkgFixture.guest("svc-empty", size: "8M", script: "mkdir etc")
        let es = try Inspection.services(e)
        #expect(es == ServiceInventory(defaultTarget: nil, enabled: [], masked: [], openrc: [], warnings: []))
    }
}
