import Foundation

/// Fixture disks used by more than one test target.
public enum SharedFixtures {
    public static let rootUUID = "0b7c6e1a-3f55-4d2e-9a41-5c2f7b0e9d11"
    public static let varPartUUID = "6f1d2c3b-4a5e-4f60-8172-93a4b5c6d7e8"

    /// A GPT disk: ESP (vfat, UUID 1234-ABCD), a Debian-like root whose fstab mounts the
    /// ESP, a LABEL=DATA volume, /var by PARTUUID and partition 3 again, plus lines
    /// that cannot be assembled (nfs, unknown UUID, another disk, garbage).
    public static func guestViewDisk() throws -> String {
        try Fixtures.cached("guestview-disk", recipe: "v1") { dir in
            try Tool.sh("""
            cd "\(dir)"
            mkdir -p root/etc root/boot/efi root/srv/data root/var root/mnt/again data/sub var/lib/app esp/EFI/BOOT
            printf 'ID=debian\\nVERSION_ID="12"\\n' > root/etc/os-release
            ln -s /var/lib/app/state root/etc/app-state
            ln -s ../../srv/data/sub/../hello root/etc/data-link
            cat > root/etc/fstab <<'FSTAB'
            # <file system> <mount point> <type> <options> <dump> <pass>
            UUID=\(Self.rootUUID) / ext4 errors=remount-ro 0 1
            UUID=1234-ABCD /boot/efi vfat umask=0077 0 1
            LABEL=DATA /srv/data ext4 defaults 0 2
            PARTUUID=\(Self.varPartUUID) /var ext4 defaults 0 2
            /dev/vda3 /mnt/again ext4 defaults 0 0
            server:/export /mnt/nfs nfs defaults 0 0
            UUID=deadbeef-0000-0000-0000-000000000000 /opt ext4 defaults 0 2
            /dev/sdb1 /backup ext4 defaults 0 0
            garbage
            proc /proc proc defaults 0 0
            /swapfile none swap sw 0 0
            FSTAB
            sed -i 's/^ *//' root/etc/fstab
            echo hello-from-data > data/hello
            echo state-on-var > var/lib/app/state
            head -c 5000 /dev/urandom > esp/EFI/BOOT/BOOTX64.EFI
            truncate -s 8M root.img && mkfs.ext4 -q -F -U \(Self.rootUUID) -d root root.img
            truncate -s 4M data.img && mkfs.ext4 -q -F -L DATA -d data data.img
            truncate -s 4M var.img && mkfs.ext4 -q -F -d var var.img
            truncate -s 8M esp.img && mkfs.vfat -F 16 -s 1 -i 1234ABCD esp.img >/dev/null
            (cd esp && mcopy -i ../esp.img -s -- * ::/)
            truncate -s 40M disk.raw
            sgdisk -n 1:2048:+8M -t 1:ef00 -n 2:0:+8M -t 2:8300 -n 3:0:+4M -t 3:8300 -n 4:0:+4M -t 4:8300 -u 4:\(Self.varPartUUID) disk.raw >/dev/null
            for p in 1:esp 2:root 3:data 4:var; do
              s=$(sgdisk -i ${p%%:*} disk.raw | awk '/First sector/ {print $3}')
              dd if=${p##*:}.img of=disk.raw bs=512 seek=$s conv=notrunc status=none
            done
            qemu-img convert -q -O qcow2 disk.raw disk.qcow2
            """)
        }
    }
}
