import Foundation
import Testing
import WardenTestSupport
@testable import Policy

@Suite struct DestinationProbeTests {
    /// The real machine: /tmp is on a fixed (virtio or loop) disk, never removable.
    @Test func realMountIsReadThroughSysfs() throws {
        try Fixtures.withTemporaryDirectory { dir in
            let facts = DestinationProbe().probe(dir + "/not-yet/out.qcow2")
            #expect(facts.removable == .known(false))
            #expect(facts.device != nil)
            #expect(facts.resolved.hasSuffix("/not-yet/out.qcow2"))
            // The device named must be what findmnt/lsblk says holds the directory.
            let source = try Tool.run(["findmnt", "-n", "-o", "SOURCE", "--target", dir]).stdoutText
                .trimmingCharacters(in: .whitespacesAndNewlines)
            if source.hasPrefix("/dev/") {
                let chain = try Tool.run(["lsblk", "-n", "-s", "-o", "NAME", source]).stdoutText
                #expect(chain.contains(facts.device ?? "?"), "\(chain)")
            }
        }
    }

    @Test func resolvesSymlinksAndDotDot() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try FileManager.default.createDirectory(atPath: dir + "/real/sub", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: dir + "/link", withDestinationPath: dir + "/real")
            let real = DestinationProbe.resolve(dir + "/real")
            #expect(DestinationProbe.resolve(dir + "/link/sub/../x.img") == real + "/x.img")
            #expect(DestinationProbe.resolve(dir + "/link/missing/deeper/x.img") == real + "/missing/deeper/x.img")
            #expect(DestinationProbe.resolve("/../../etc/../tmp") == DestinationProbe.resolve("/tmp"))
        }
    }

    @Test func mountinfoEscapes() {
        let text = """
        22 27 0:21 / /proc rw,relatime - proc proc rw
        30 27 8:17 / /media/usb\\040stick rw,relatime shared:1 - vfat /dev/sdb1 rw
        31 27 0:40 / /mnt/btrfs rw - btrfs /dev/sdc2 rw
        """
        let m = DestinationProbe.parseMountinfo(text)
        #expect(m.count == 3)
        #expect(m[1].point == "/media/usb stick")
        #expect(m[1].major == 8 && m[1].minor == 17 && m[1].fstype == "vfat" && m[1].source == "/dev/sdb1")
        #expect(m[2].fstype == "btrfs")
    }

    /// A sysfs tree laid out as the kernel does it: a removable USB stick sdb with partition
    /// sdb1, a fixed disk sda with sda1, and dm-0 on top of sdb1.
    func fakeSys(_ root: String) throws {
        let fm = FileManager.default
        func dir(_ p: String) throws { try fm.createDirectory(atPath: root + p, withIntermediateDirectories: true) }
        func file(_ p: String, _ s: String) throws { try s.write(toFile: root + p, atomically: true, encoding: .utf8) }
        let usb = "/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb"
        let sata = "/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda"
        try dir(usb + "/sdb1"); try file(usb + "/removable", "1\n"); try file(usb + "/sdb1/partition", "1\n")
        try dir(sata + "/sda1"); try file(sata + "/removable", "0\n"); try file(sata + "/sda1/partition", "1\n")
        try dir("/devices/virtual/block/dm-0/slaves"); try file("/devices/virtual/block/dm-0/removable", "0\n")
        try fm.createSymbolicLink(atPath: root + "/devices/virtual/block/dm-0/slaves/sdb1", withDestinationPath: root + usb + "/sdb1")
        try dir("/dev/block")
        try fm.createSymbolicLink(atPath: root + "/dev/block/8:17", withDestinationPath: root + usb + "/sdb1")
        try fm.createSymbolicLink(atPath: root + "/dev/block/8:1", withDestinationPath: root + sata + "/sda1")
        try fm.createSymbolicLink(atPath: root + "/dev/block/254:0", withDestinationPath: root + "/devices/virtual/block/dm-0")
    }

    @Test func removableFollowsPartitionsAndSlaves() throws {
        try Fixtures.withTemporaryDirectory { dir in
            try fakeSys(dir + "/sys")
            try """
            1 0 8:1 / / rw - ext4 /dev/sda1 rw
            2 1 8:17 / /media/stick rw - vfat /dev/sdb1 rw
            3 1 254:0 / /srv/crypt rw - ext4 /dev/mapper/secret rw
            4 1 0:30 / /srv/tmp rw - tmpfs tmpfs rw
            5 2 8:1 / /media/stick/bound rw - ext4 /dev/sda1 rw
            """.write(toFile: dir + "/mountinfo", atomically: true, encoding: .utf8)
            let probe = DestinationProbe(mountinfoPath: dir + "/mountinfo", sysRoot: dir + "/sys")
            let stick = probe.probe("/media/stick/vm.qcow2")
            #expect(stick.removable == .known(true))
            #expect(stick.device == "sdb")
            #expect(probe.probe("/media/stick/bound/vm.qcow2").removable == .known(false))   // topmost, longest mount
            #expect(probe.probe("/srv/crypt/vm.qcow2").removable == .known(true))            // dm on a USB partition
            #expect(probe.probe("/srv/tmp/vm.qcow2").removable == .known(false))             // tmpfs: no block device
            let root = probe.probe("/var/lib/vm.qcow2")
            #expect(root.removable == .known(false) && root.device == "sda")
            // No sysfs entry: unknown, which fails closed.
            let broken = DestinationProbe(mountinfoPath: dir + "/mountinfo", sysRoot: dir + "/nosys")
            if case .unknown(let why) = broken.probe("/media/stick/x").removable {
                #expect(why.contains("no sysfs entry for block device 8:17"))
            } else {
                Issue.record("expected unknown")
            }
            #expect(DestinationProbe(mountinfoPath: dir + "/none", sysRoot: dir + "/sys").probe("/x").removable.value == nil)
        }
    }
}
