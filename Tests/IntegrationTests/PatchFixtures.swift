import Foundation
import WardenTestSupport

/// The patch tests' guest and mirror, built at test time with Debian's own tools and cached by
/// recipe:
/// - two small packages in two versions each, made with `dpkg-deb`: `warden-demo` 1.0-1 and
///   1.1-1 (whose postinst records the kernel command line it ran under, so the tests can tell
///   the maintenance VM from the host), and `warden-broken` 1.0-1 and 1.1-1 (whose postinst
///   fails: a package that does not configure);
/// - a flat apt repository of the 1.1-1 versions, indexed by `dpkg-scanpackages` (dpkg-dev);
///   the guest's apt trusts it (`[trusted=yes]`, a directory on the test host: docs/patching.md);
/// - the debootstrapped Debian 12 guest (``GuestFixtures/rootTree()``) with both 1.0-1 versions
///   installed by `dpkg --root`, laid out as guest A (GPT, ESP and ext4 root) in `disk.qcow2`,
///   and the same with an fstab whose `/var` is on a filesystem the disk does not have
///   (`disk-novar.qcow2`: a root that cannot be assembled).
enum PatchFixtures {
    static let rootUUID = "5e1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    static let missingUUID = "deadbeef-0000-4000-8000-000000000001"

    /// Where the postinst of warden-demo 1.1-1 writes `/proc/cmdline`.
    static let marker = "/var/lib/warden-demo/configured-under"

    static func control(_ name: String, _ version: String) -> String {
        """
        Package: \(name)
        Version: \(version)
        Architecture: all
        Maintainer: Warden tests <tests@warden.invalid>
        Section: misc
        Priority: optional
        Description: Warden patch test package
         A small package whose versions the patch tests move between.

        """
    }

    /// `dir` with `debs/` (all four packages) and `mirror/` (the 1.1-1 versions, flat, indexed).
    static func packages() throws -> String {
        let recipe = "patch-packages-v1 " + control("x", "0") + marker
        return try Fixtures.cached("patch-packages", recipe: recipe) { dir in
            for (name, version, postinst) in [
                ("warden-demo", "1.0-1", nil),
                ("warden-demo", "1.1-1", "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then mkdir -p /var/lib/warden-demo; cat /proc/cmdline > \(marker); fi\n"),
                ("warden-broken", "1.0-1", nil),
                ("warden-broken", "1.1-1", "#!/bin/sh\necho 'warden-broken: refusing to configure' >&2\nexit 1\n"),
            ] as [(String, String, String?)] {
                let root = "\(dir)/build/\(name)-\(version)"
                try FileManager.default.createDirectory(atPath: root + "/DEBIAN", withIntermediateDirectories: true)
                try FileManager.default.createDirectory(atPath: root + "/usr/share/\(name)", withIntermediateDirectories: true)
                try control(name, version).write(toFile: root + "/DEBIAN/control", atomically: true, encoding: .utf8)
                try "\(version)\n".write(toFile: root + "/usr/share/\(name)/VERSION", atomically: true, encoding: .utf8)
                if let p = postinst {
                    try p.write(toFile: root + "/DEBIAN/postinst", atomically: true, encoding: .utf8)
                    chmod(root + "/DEBIAN/postinst", 0o755)
                }
                try Tool.run(["chmod", "-R", "u=rwX,go=rX", root])
                try FileManager.default.createDirectory(atPath: dir + "/debs", withIntermediateDirectories: true)
                try Tool.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, "\(dir)/debs/\(name)_\(version)_all.deb"])
            }
            try Tool.sh("""
            set -eu
            cd "\(dir)"
            rm -rf build
            mkdir mirror
            cp debs/*_1.1-1_all.deb mirror/
            cd mirror
            dpkg-scanpackages --multiversion . > Packages 2>/dev/null
            gzip -9kn Packages
            chmod -R a+rX "\(dir)"
            """)
        }
    }

    /// `dir` with `mirror/`: the same repository signed (a `Release` with the SHA-256 of the
    /// index files, clear-signed as `InRelease` by a key made with gpg), `key.gpg` (its public
    /// keyring) and `other.gpg` (the public keyring of a key that did not sign it).
    static func signedMirror() throws -> String {
        let pkgs = try packages()
        return try Fixtures.cached("patch-signed-mirror", recipe: "patch-signed-mirror-v1 \(pkgs)") { dir in
            try Tool.sh("""
            set -eu
            cd "\(dir)"
            cp -a "\(pkgs)/mirror" mirror
            # A short private home (the agent's socket path must fit a sockaddr_un); the agent gpg
            # starts for it is stopped, and the home removed, whatever happens.
            export GNUPGHOME="$(mktemp -d /tmp/wgpg.XXXXXX)"
            trap 'gpgconf --kill gpg-agent 2>/dev/null || true; rm -rf "$GNUPGHOME"' EXIT
            for who in signer other; do
              gpg --batch --quiet --pinentry-mode loopback --passphrase '' --quick-gen-key "Warden $who <$who@warden.invalid>" ed25519 sign never 2>/dev/null
            done
            gpg --batch --quiet --export 'Warden signer' > key.gpg
            gpg --batch --quiet --export 'Warden other' > other.gpg
            cd mirror
            {
              echo "Origin: Warden tests"
              echo "Label: Warden tests"
              echo "Date: $(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S UTC')"
              echo "SHA256:"
              for f in Packages Packages.gz; do echo " $(sha256sum $f | cut -d' ' -f1) $(stat -c %s $f) $f"; done
            } > Release
            gpg --batch --quiet --yes --pinentry-mode loopback --passphrase '' --local-user 'Warden signer' --clearsign -o InRelease Release
            cd ..
            chmod -R a+rX "\(dir)"
            """)
        }
    }

    /// `dir` with `disk.qcow2` and `disk-novar.qcow2` (see above).
    static func guest() throws -> String {
        let tree = try GuestFixtures.rootTree()
        let pkgs = try packages()
        return try Fixtures.cached("patch-guest", recipe: "patch-guest-v1 \(tree) \(pkgs) root=\(rootUUID) missing=\(missingUUID)") { dir in
            try Tool.sh("""
            set -eu
            cd "\(dir)"
            cp -a "\(tree)/root" root
            dpkg --root="$PWD/root" -i "\(pkgs)/debs/warden-demo_1.0-1_all.deb" "\(pkgs)/debs/warden-broken_1.0-1_all.deb" >/dev/null
            printf 'UUID=\(rootUUID) / ext4 errors=remount-ro 0 1\\nUUID=\(GuestFixtures.espUUID) /boot/efi vfat umask=0077 0 1\\n' > root/etc/fstab
            truncate -s 64M esp.img
            mkfs.vfat -F 32 -i \(GuestFixtures.espVolumeID) -n ESP esp.img >/dev/null
            truncate -s 1G root.img
            mkfs.ext4 -q -F -U \(rootUUID) -L root -d root root.img
            cp --sparse=always root.img novar.img
            printf 'UUID=\(rootUUID) / ext4 errors=remount-ro 0 1\\nUUID=\(missingUUID) /var ext4 defaults 0 2\\n' > fstab-novar
            debugfs -w -R 'rm /etc/fstab' novar.img >/dev/null 2>&1
            debugfs -w -R 'write fstab-novar /etc/fstab' novar.img >/dev/null 2>&1
            for v in "root.img disk" "novar.img disk-novar"; do
              set -- $v
              truncate -s 1100M "$2.raw"
              sgdisk -n 1:2048:+64M -t 1:ef00 -c 1:EFI -n 2:0:0 -t 2:8300 -c 2:root "$2.raw" >/dev/null
              s1=$(sgdisk -i 1 "$2.raw" | awk '/First sector/ {print $3}')
              s2=$(sgdisk -i 2 "$2.raw" | awk '/First sector/ {print $3}')
              dd if=esp.img of="$2.raw" bs=512 seek="$s1" conv=notrunc,sparse status=none
              dd if="$1" of="$2.raw" bs=512 seek="$s2" conv=notrunc,sparse status=none
              qemu-img convert -q -O qcow2 "$2.raw" "$2.qcow2"
              rm -f "$2.raw"
            done
            rm -rf root root.img novar.img esp.img fstab-novar
            chmod 0644 disk.qcow2 disk-novar.qcow2
            """)
        }
    }

    /// The tracker feed: warden-demo fixed in 1.1-1 (high), warden-broken fixed in 1.1-1 (low).
    static let tracker = """
    {"warden-demo": {"CVE-2099-4242": {"description": "warden-demo test issue", "releases": {
        "bookworm": {"status": "resolved", "fixed_version": "1.1-1", "urgency": "high"}}}},
     "warden-broken": {"CVE-2099-4243": {"description": "warden-broken test issue", "releases": {
        "bookworm": {"status": "resolved", "fixed_version": "1.1-1", "urgency": "low"}}}}}
    """

    /// What dpkg itself says of `package` on the root filesystem of `image` (a qcow2 with the
    /// GPT layout above): the status file is copied out with debugfs, then `dpkg-query --admindir`.
    /// With `lvm`, the root is the first logical volume on partition 2 (guest C): its offset is
    /// the partition's start plus the PV's `pe_start`, as lvm itself reports it (metadata only,
    /// nothing activated on the host).
    static func dpkgVersion(_ package: String, image: String, scratch: String, lvm: Bool = false) throws -> String {
        let out = try Tool.sh("""
        set -eu
        S="\(scratch)/oracle-$$"
        rm -rf "$S"; mkdir -p "$S/admin/info" "$S/admin/updates"
        qemu-img convert -q -O raw "\(image)" "$S/disk.raw"
        s2=$(sgdisk -i 2 "$S/disk.raw" | awk '/First sector/ {print $3}')
        n2=$(sgdisk -i 2 "$S/disk.raw" | awk '/Partition size/ {print $3}')
        if [ \(lvm ? 1 : 0) = 1 ]; then
          CFG='global { activation = 0 } devices { use_devicesfile = 0 } backup { backup = 0 archive = 0 }'
          L=$(losetup -f --show -r -o $((s2 * 512)) --sizelimit $((n2 * 512)) "$S/disk.raw")
          pe=$(lvm pvs -q --config "$CFG" -o pe_start --units b --noheadings --nosuffix "$L" | tr -d ' ') || true
          losetup -d "$L"
          dd if="$S/disk.raw" of="$S/root.img" bs=1M iflag=skip_bytes,count_bytes skip=$((s2 * 512 + pe)) count=$((1024 * 1024 * 1024)) conv=sparse status=none
        else
          dd if="$S/disk.raw" of="$S/root.img" bs=512 skip="$s2" count="$n2" conv=sparse status=none
        fi
        debugfs -R 'dump /var/lib/dpkg/status '"$S/admin/status" "$S/root.img" >/dev/null 2>&1
        : > "$S/admin/available"
        dpkg-query --admindir="$S/admin" -W -f '${Version} ${db:Status-Abbrev}' \(package)
        rm -rf "$S"
        """)
        return out.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A file of the root filesystem of `image`, read with debugfs (nil when absent).
    static func file(_ path: String, image: String, scratch: String) throws -> String? {
        let out = try Tool.sh("""
        set -eu
        S="\(scratch)/file-$$"
        rm -rf "$S"; mkdir -p "$S"
        qemu-img convert -q -O raw "\(image)" "$S/disk.raw"
        s2=$(sgdisk -i 2 "$S/disk.raw" | awk '/First sector/ {print $3}')
        n2=$(sgdisk -i 2 "$S/disk.raw" | awk '/Partition size/ {print $3}')
        dd if="$S/disk.raw" of="$S/root.img" bs=512 skip="$s2" count="$n2" conv=sparse status=none
        debugfs -R 'dump \(path) '"$S/out" "$S/root.img" >/dev/null 2>&1 || true
        if [ -f "$S/out" ]; then cat "$S/out"; else echo WARDEN-ABSENT; fi
        rm -rf "$S"
        """)
        let text = out.stdoutText
        return text.hasPrefix("WARDEN-ABSENT") ? nil : text
    }
}
