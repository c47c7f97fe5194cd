import Foundation
import WardenCore
import WardenTestSupport
import DiskImage
@testable import GuestFS

/// btrfs images made by btrfs-progs and the kernel: `mkfs.btrfs --rootdir` (no mount), and
/// loop-mounted filesystems written with each compression (zlib, lzo, zstd) and laid out as
/// distributions do (subvolumes, a nested subvolume, read-only and writable snapshots, a
/// default subvolume). The oracle of each is the kernel's view of the same image: `find`,
/// `sha256sum` and `btrfs subvolume list` on a read-only mount of the top level.
enum BtrfsFixture {
    static var canMount: Bool {
        getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control")
    }

    /// The images: name → how it was made.
    static let mounted = ["zstd-fedora", "lzo-suse", "zlib-plain", "none-dup"]

    static let recipe = #"""
    set -euo pipefail
    tree() {  # a guest-like tree at $1
      mkdir -p "$1" && cd "$1"
      mkdir -p etc home usr/bin var/log var/lib deep/a/b/c/d/e many dev links
      printf 'PRETTY_NAME="Fixture Linux"\nID=fixture\nVERSION_ID=1\n' > etc/os-release
      echo btrfs-guest > etc/hostname
      : > empty
      printf 'hello, world\n' > small.txt
      for n in 1 100 2047 2048 2049 4095 4096 4097 65536 131072 131073 1048577; do head -c $n /dev/urandom > "rand_$n"; done
      seq 1 300000 > numbers.txt                       # 2 MB of compressible text: many compressed extents
      head -c 3000 < <(yes 'compressible line of text') > inline-text   # compressed inline extent
      head -c 200000 < <(yes z) > var/log/zeros.log
      truncate -s 10M sparse
      dd if=/dev/urandom of=sparse bs=4096 count=3 seek=100 conv=notrunc status=none
      printf 'end' | dd of=sparse bs=1 seek=$((10485760 - 3)) conv=notrunc status=none
      head -c 70000 /dev/urandom > usr/bin/tool; chmod 4755 usr/bin/tool
      printf 'x' > deep/a/b/c/d/e/leaf
      for i in $(seq 1 1500); do echo "$i" > "many/entry-with-a-longer-name-$i"; done
      ln -s ../usr/bin links/bin; ln -s /../../etc links/escape; ln -s missing links/dangling
      ln -s "$(printf 'p%.0s' $(seq 1 300))" links/long
      mkfifo dev/fifo; mknod dev/null c 1 3; mknod dev/sda b 8 0
      ln numbers.txt hardlink.txt
      echo secret > private; chmod 0600 private
      echo owned > owned; chown 1000:1234 owned
      echo spaced > "name with spaces"
      touch -d '2001-02-03 04:05:06' small.txt
      cd - >/dev/null
    }
    listing() {  # name: the kernel's view of what is mounted at mnt
      (cd mnt && find . -mindepth 1 -printf '%P\t%y\t%m\t%U\t%G\t%s\t%i\t%T@\t%l\n' | LC_ALL=C sort > "../$1.find")
      (cd mnt && find . -type f -print0 | xargs -0 -r sha256sum | sed 's#  \./#\t#' | LC_ALL=C sort -t "$(printf '\t')" -k2 > "../$1.sha")
      btrfs subvolume list -p -u -q mnt > "$1.subvols"
      btrfs subvolume get-default mnt | awk '{print $2}' > "$1.default"
    }
    oracle() {  # image, name: the kernel's view of the top level
      mount -o loop,ro,subvolid=5 "$1" mnt
      trap 'umount mnt 2>/dev/null || true' EXIT
      listing "$2"
      umount mnt; trap - EXIT
    }
    mkdir -p mnt src
    tree src
    # 1. mkfs.btrfs --rootdir: written by btrfs-progs alone, never mounted.
    truncate -s 256M rootdir.img
    mkfs.btrfs -q -L rootdir --rootdir src rootdir.img
    oracle rootdir.img rootdir
    # 2. Written by the kernel.
    make() {  # name, mount options, mkfs options
      truncate -s 300M $1.img
      mkfs.btrfs -q -f $3 -L $1 $1.img
      mount -o loop$2 $1.img mnt
      trap 'umount mnt 2>/dev/null || true' EXIT
      case $1 in
        *fedora)
          btrfs -q subvolume create mnt/root; btrfs -q subvolume create mnt/home
          cp -a src/. mnt/root/
          uuid=$(blkid -s UUID -o value $1.img)
          printf 'UUID=%s / btrfs subvol=root,compress=zstd:1 0 0\nUUID=%s /home btrfs subvol=home,compress=zstd:1 0 0\n' $uuid $uuid > mnt/root/etc/fstab
          mkdir -p mnt/home/alice; echo 'alice file' > mnt/home/alice/notes; chown -R 1000:1000 mnt/home/alice
          btrfs -q subvolume create mnt/root/var/lib/machines   # nested
          echo machine > mnt/root/var/lib/machines/m1
          mkdir mnt/snapshots
          btrfs -q subvolume snapshot -r mnt/root mnt/snapshots/root-1
          echo changed-after-snapshot > mnt/root/small.txt; rm mnt/root/rand_100
          btrfs -q subvolume snapshot mnt/home mnt/snapshots/home-rw
          ;;
        *suse)
          btrfs -q subvolume create mnt/@; mkdir -p mnt/@/.snapshots/1
          btrfs -q subvolume create mnt/@/home
          btrfs -q subvolume create mnt/@/.snapshots/1/snapshot
          cp -a src/. mnt/@/.snapshots/1/snapshot/
          uuid=$(blkid -s UUID -o value $1.img)
          printf 'UUID=%s / btrfs defaults 0 0\nUUID=%s /home btrfs subvol=/@/home 0 0\n' $uuid $uuid > mnt/@/.snapshots/1/snapshot/etc/fstab
          echo 'suse home' > mnt/@/home/readme
          btrfs subvolume set-default $(btrfs subvolume list mnt | awk '/snapshot$/ {print $2}') mnt
          ;;
        *)
          cp -a src/. mnt/
          ;;
      esac
      umount mnt; trap - EXIT
      oracle $1.img $1
    }
    make zstd-fedora ",compress-force=zstd" ""
    make lzo-suse ",compress-force=lzo" ""
    make zlib-plain ",compress-force=zlib" "-m single"
    make none-dup "" "-m dup -d single"
    # 3. RAID1 data and metadata over two devices: each image alone holds a copy of everything.
    truncate -s 300M raid1-a.img raid1-b.img
    mkfs.btrfs -q -f -d raid1 -m raid1 -L raid1 raid1-a.img raid1-b.img
    A=$(losetup -f --show raid1-a.img); B=$(losetup -f --show raid1-b.img)
    trap 'umount mnt 2>/dev/null || true; losetup -d $A $B 2>/dev/null || true' EXIT
    btrfs device scan $A $B >/dev/null
    mount -o compress-force=zstd,device=$A,device=$B $A mnt
    cp -a src/. mnt/
    mount -o remount,ro mnt
    listing raid1
    umount mnt; losetup -d $A $B; trap - EXIT
    """#

    static func directory() throws -> String {
        try Fixtures.cached("btrfs-images", recipe: recipe) { dir in
            try Tool.run(["bash", "-euo", "pipefail", "-c", recipe], cwd: dir)
        }
    }

    static func open(_ path: String) throws -> BtrfsVolume {
        try Btrfs.open(RawDevice(file: try ImageFile(path: path)))
    }

    /// One line per entry below the root, as the oracle's `find -printf` writes it (without
    /// the inode and time, compared separately), plus the file digests.
    struct Tree {
        var lines: [String: [String]] = [:]   // path → fields
        var sha: [String: String] = [:]
    }

    static func oracle(_ dir: String, _ name: String) throws -> Tree {
        var t = Tree()
        for line in try String(contentsOfFile: "\(dir)/\(name).find", encoding: .utf8).split(separator: "\n") {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard f.count >= 9 else { continue }
            t.lines[f[0]] = f
        }
        for line in try String(contentsOfFile: "\(dir)/\(name).sha", encoding: .utf8).split(separator: "\n") {
            let f = line.split(separator: "\t", maxSplits: 1).map(String.init)
            if f.count == 2 { t.sha[f[1]] = f[0] }
        }
        return t
    }

    /// The same lines read by Warden: a walk of `fs` from its root.
    /// Files larger than `maxHashed` (damage can make a sparse file of exabytes) are not hashed.
    static func walk(_ fs: any FileSystem, maxHashed: UInt64 = 1 << 30) throws -> Tree {
        var t = Tree()
        func visit(_ ino: UInt64, _ prefix: String) throws {
            for e in try fs.readDirectory(ino) {
                let path = prefix.isEmpty ? e.name : prefix + "/" + e.name
                let st = try fs.stat(e.inode)
                let y: String
                switch st.type {
                case .regular: y = "f"
                case .directory: y = "d"
                case .symlink: y = "l"
                case .characterDevice: y = "c"
                case .blockDevice: y = "b"
                case .fifo: y = "p"
                case .socket: y = "s"
                }
                let target = st.type == .symlink ? String(decoding: try fs.readLink(e.inode), as: UTF8.self) : ""
                t.lines[path] = [path, y, String(st.permissions, radix: 8), "\(st.uid)", "\(st.gid)", "\(st.size)",
                                 "\(e.inode & BtrfsVolume.objectMask)", "\(st.mtime)", target]
                if st.type == .regular && st.size <= maxHashed {
                    var h = SHA256Stream()
                    try fs.forEachChunk(e.inode) { h.update($0) }
                    t.sha[path] = h.hex
                }
                if st.type == .directory { try visit(e.inode, path) }
            }
        }
        try visit(fs.rootInode, "")
        return t
    }
}

import Crypto

struct SHA256Stream {
    var h = SHA256()
    mutating func update(_ b: [UInt8]) { h.update(data: b) }
    var hex: String { h.finalize().map { String(format: "%02x", $0) }.joined() }
}
