import Foundation
import Testing
import WardenTestSupport

/// LVM raid1 and mirror volumes, made inside the libguestfs appliance (this machine's kernel
/// has no device-mapper): read from a leg, and from the other leg when the first leg's PV is gone.
@Suite struct LVMRaidTests {
    static let recipe = """
    truncate -s 200M disk.img
    export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
    guestfish -a disk.img <<'EOF'
    run
    part-init /dev/sda mbr
    part-add /dev/sda p 2048 200000
    part-add /dev/sda p 200001 400000
    pvcreate /dev/sda1
    pvcreate /dev/sda2
    vgcreate vg "/dev/sda1 /dev/sda2"
    debug sh "lvm lvcreate --type raid1 -m1 -L 12M -n r1 -y vg && lvm lvcreate --type mirror -m1 --mirrorlog core -L 12M -n m1 -y vg"
    mkfs ext4 /dev/vg/r1
    mkfs ext4 /dev/vg/m1
    mount /dev/vg/r1 /
    write /hello.txt "raid1 leg data"
    umount /
    mount /dev/vg/m1 /
    write /hello.txt "mirror leg data"
    umount /
    EOF
    cp disk.img degraded.img
    # The first PV's label and metadata area are gone: only the second PV's copy of the VG remains.
    dd if=/dev/zero of=degraded.img bs=512 seek=2048 count=2048 conv=notrunc status=none
    """

    static func fixture() throws -> String {
        try Fixtures.cached("lvm-raid", recipe: recipe) { dir in try Tool.sh(recipe, cwd: dir) }
    }

    @Test(.enabled(if: GuestFixtures.virtInspectorAvailable, "needs libguestfs (guestfish) to make raid LVs"),
          arguments: ["disk.img", "degraded.img"])
    func raid1AndMirrorReadFromALeg(_ image: String) throws {
        let dir = try Self.fixture()
        for (lv, text) in [("vg/r1", "raid1 leg data"), ("vg/m1", "mirror leg data")] {
            let r = try WardenRun.run(["image", "cat", "--lv", lv, dir + "/" + image, "/hello.txt"])
            #expect(r.status == 0, "\(image) \(lv): \(r.stderr)")
            #expect(r.stdoutText == text, "\(image) \(lv)")
        }
    }
}
