import Foundation
import WardenCore
import WardenTestSupport
import DiskImage
import GuestFS
@testable import Inspection

/// Guest trees for the identity readers, built with real tools and cached.
/// The `root` tree is kept beside `fs.img` so oracles (ssh-keygen, readelf) can read the same files.
enum IdentityFixture {
    static let psk = "PSKSECRET-do-not-leak-4711"
    static let hashMarker = "HASHSECRET"

    static let full = """
    set -euo pipefail
    cd "$DIR"
    R=root
    mkdir -p $R/etc/ssh/sshd_config.d $R/etc/sudoers.d $R/usr/lib $R/usr/bin $R/bin $R/sbin $R/lib/systemd \
      $R/var/lib/dbus $R/var/lib/systemd $R/var/lib/cloud/data $R/etc/udev/rules.d \
      $R/etc/NetworkManager/system-connections $R/var/lib/dhcp $R/var/lib/NetworkManager \
      $R/home/alice/.ssh $R/root/.ssh oracle
    cat > $R/usr/lib/os-release <<'OS'
    PRETTY_NAME="Ubuntu 24.04.1 LTS"
    NAME="Ubuntu"
    VERSION_ID="24.04"
    VERSION="24.04.1 LTS (Noble Numbat)"
    ID=ubuntu
    ID_LIKE=debian
    # a comment
    UBUNTU_CODENAME=noble
    OS
    ln -s ../usr/lib/os-release $R/etc/os-release
    cp "$(readlink -f /bin/sh)" $R/usr/bin/dash
    ln -s /usr/bin/dash $R/bin/sh
    printf 'not a real systemd' > $R/lib/systemd/systemd
    ln -s /lib/systemd/systemd $R/sbin/init
    printf '# comment\\nweb-01.example.com\\n' > $R/etc/hostname
    echo 0123456789abcdef0123456789abcdef > $R/etc/machine-id
    ln -s /etc/machine-id $R/var/lib/dbus/machine-id
    head -c 512 /dev/urandom > $R/var/lib/systemd/random-seed
    echo i-0abc123def456 > $R/var/lib/cloud/data/instance-id
    cat > $R/etc/udev/rules.d/70-persistent-net.rules <<'UDEV'
    # This file was automatically generated
    SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="52:54:00:12:34:56", ATTR{dev_id}=="0x0", ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"
    SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="52:54:00:ab:cd:ef", NAME="eth1"
    UDEV
    cat > "$R/etc/NetworkManager/system-connections/Home WiFi.nmconnection" <<NM
    [connection]
    id=Home WiFi
    type=wifi
    [wifi]
    mac-address=AA:BB:CC:DD:EE:FF
    ssid=home
    [wifi-security]
    key-mgmt=wpa-psk
    psk=\(psk)
    NM
    cat > $R/etc/NetworkManager/system-connections/wired.nmconnection <<'NM'
    [connection]
    id=Wired
    type=ethernet
    [ethernet]
    mac-address=52:54:00:12:34:56
    [802-1x]
    password=also-secret
    NM
    cat > $R/etc/NetworkManager/system-connections/nomac.nmconnection <<'NM'
    [connection]
    id=NoMac
    type=ethernet
    NM
    echo 'lease {}' > $R/var/lib/dhcp/dhclient.eth0.leases
    echo 'x' > $R/var/lib/NetworkManager/internal-abc-eth0.lease
    echo 'x' > $R/var/lib/NetworkManager/NetworkManager.state
    cat > $R/etc/passwd <<'PW'
    root:x:0:0:root:/root:/bin/bash
    daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
    alice:x:1000:1000:Alice Admin,,,:/home/alice:/bin/bash
    bob:x:1001:1001::/home/bob:/bin/bash
    carol:x:1002:1002::/home/carol:/bin/sh
    dave:x:1003:1003::/home/dave:/bin/bash
    eve:x:1004:1004::/home/eve:/bin/false
    frank:x:1005:1005::/home/frank:/bin/zsh
    gina:x:1006:1006::/home/gina:/bin/bash
    broken line
    PW
    cat > $R/etc/shadow <<'SH'
    root:$6$salt$HASHSECRETroot:19000:0:99999:7:::
    daemon:*:19000:0:99999:7:::
    alice:$y$j9T$salt$HASHSECRETalice:19000:0:99999:7:::
    bob:!$6$salt$HASHSECRETbob:19000:0:99999:7:::
    carol::19000:0:99999:7:::
    eve:$2b$10$HASHSECRETeve:19000:0:99999:7:::
    frank:$1$salt$HASHSECRETfrank:19000:0:99999:7:::
    gina:$9$weird$HASHSECRETgina:19000:0:99999:7:::
    SH
    chmod 0640 $R/etc/shadow
    cat > $R/etc/group <<'GR'
    root:x:0:
    sudo:x:27:alice
    alice:x:1000:
    wheel:x:10:
    ops:x:2000:gina
    GR
    cat > $R/etc/sudoers <<'SU'
    # sudoers fixture
    Defaults env_reset
    User_Alias OPS = frank, \\
                     eve
    root ALL=(ALL:ALL) ALL   # root
    %sudo ALL=(ALL:ALL) ALL
    OPS ALL=(root) NOPASSWD: /usr/bin/systemctl, \\
        /usr/bin/journalctl
    #includedir /etc/sudoers.d
    SU
    printf 'dave ALL=(ALL) NOPASSWD: ALL\\n' > $R/etc/sudoers.d/10-dave
    printf '#include /etc/sudoers\\n@include 30-ops\\n' > $R/etc/sudoers.d/20-loop
    printf '%%ops ALL = (root) /usr/bin/apt\\n' > $R/etc/sudoers.d/30-ops
    printf 'carol ALL=(ALL) ALL\\n' > $R/etc/sudoers.d/file.bak
    chmod 0440 $R/etc/sudoers $R/etc/sudoers.d/*
    cat > $R/etc/ssh/sshd_config <<'SSHD'
    # fixture
    Include /etc/ssh/sshd_config.d/*.conf
    PermitRootLogin yes
    PasswordAuthentication no
    Port 2222
    Port 22
    ListenAddress 192.0.2.7:2200
    ListenAddress [2001:db8::7]:2201
    ListenAddress 0.0.0.0
    Match User alice
        PermitEmptyPasswords yes
        Port 9999
    SSHD
    printf 'PermitRootLogin=no\\n' > $R/etc/ssh/sshd_config.d/10-root.conf
    printf 'Include sshd_config\\nInclude sshd_config.d/20-loop.conf\\n' > $R/etc/ssh/sshd_config.d/20-loop.conf
    printf 'PermitRootLogin yes\\n' > $R/etc/ssh/sshd_config.d/30-late.conf.disabled
    ssh-keygen -q -t ed25519 -N '' -C 'root@web-01' -f $R/etc/ssh/ssh_host_ed25519_key
    ssh-keygen -q -t ecdsa -b 256 -N '' -C 'root@web-01' -f $R/etc/ssh/ssh_host_ecdsa_key
    ssh-keygen -q -t ecdsa -b 384 -N '' -C 'p384 key' -f $R/etc/ssh/ssh_host_ecdsa384_key
    ssh-keygen -q -t ecdsa -b 521 -N '' -C '' -f $R/etc/ssh/ssh_host_ecdsa521_key
    ssh-keygen -q -t rsa -b 2048 -N '' -C 'rsa2048' -f $R/etc/ssh/ssh_host_rsa_key
    ssh-keygen -q -t rsa -b 3072 -N '' -C 'rsa3072' -f $R/etc/ssh/ssh_host_rsa3072_key
    ssh-keygen -q -t ed25519 -N '' -C 'orphan' -f $R/etc/ssh/ssh_host_orphan_key && rm $R/etc/ssh/ssh_host_orphan_key.pub
    chmod 0600 $R/etc/ssh/ssh_host_*_key
    ssh-keygen -q -t ed25519 -N '' -C 'alice@laptop' -f oracle/k1
    ssh-keygen -q -t rsa -b 3072 -N '' -C 'backup key' -f oracle/k2
    ssh-keygen -q -t ecdsa -b 384 -N '' -C '' -f oracle/k3
    {
      echo '# alice keys'
      cat oracle/k1.pub
      printf 'command="/usr/bin/backup --tag \\\\"x y\\\\"",from="10.0.0.0/8,192.168.1.1",no-pty %s\\n' "$(cat oracle/k2.pub)"
      printf 'restrict %s\\n' "$(cat oracle/k3.pub)"
      echo 'ssh-ed25519 notbase64!!! broken'
      echo ''
    } > $R/home/alice/.ssh/authorized_keys
    cp oracle/k1.pub $R/root/.ssh/authorized_keys2
    rm -f oracle/k1 oracle/k2 oracle/k3
    chown -R 1000:1000 $R/home/alice
    truncate -s 16M fs.img && mkfs.ext4 -q -F -d $R fs.img
    """

    static let alpine = """
    set -euo pipefail
    cd "$DIR"
    R=root
    mkdir -p $R/usr/lib $R/bin $R/sbin $R/etc/init.d $R/etc/runlevels/default
    cat > $R/usr/lib/os-release <<'OS'
    NAME="Alpine Linux"
    ID=alpine
    VERSION_ID=3.20.3
    PRETTY_NAME="Alpine Linux v3.20"
    OS
    cp "$(readlink -f /bin/sh)" $R/bin/busybox
    printf 'x' > $R/sbin/openrc
    printf 'uninitialized\\n' > $R/etc/machine-id
    printf 'alp\\n' > $R/etc/HOSTNAME
    truncate -s 8M fs.img && mkfs.ext4 -q -F -d $R fs.img
    """

    static func build(_ name: String, _ script: String) throws -> String {
        try Fixtures.cached(name, recipe: script) { dir in
            try Tool.run(["bash", "-c", script], environment: ["DIR": dir])
        }
    }

    static func open(_ dir: String) throws -> GuestFiles {
        GuestFiles(try EXT4.open(try ImageOpener.open(dir + "/fs.img").device))
    }

    static func json<T: Encodable>(_ v: T) throws -> String {
        let enc = JSONEncoder()
        enc.keyEncodingStrategy = .convertToSnakeCase
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: try enc.encode(v), as: UTF8.self)
    }
}

extension IdentityFixture {
    /// Hostile and broken inputs: loops, deep includes, wrong file types, garbage keys.
    static let hostile = """
    set -euo pipefail
    cd "$DIR"
    R=root
    mkdir -p $R/etc/ssh $R/etc/hostname $R/bin $R/usr/bin $R/etc/sudoers.d $R/home/u/.ssh $R/var/lib/dbus
    ln -s sh $R/bin/sh
    printf 'hello' > $R/usr/bin/sh
    printf 'ID="unterminated\\nVERSION_ID=1\\n' > $R/etc/os-release
    printf 'XYZ\\n' > $R/etc/machine-id
    ln -s /var/lib/dbus/machine-id $R/var/lib/dbus/machine-id
    printf 'Include a0\\n' > $R/etc/ssh/sshd_config
    for i in $(seq 0 30); do printf 'Include a%d\\n' $((i+1)) > $R/etc/ssh/a$i; done
    printf 'PermitRootLogin YES\\n' > $R/etc/ssh/a31
    printf 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP garbage\\n' > $R/etc/ssh/ssh_host_bad_key.pub
    printf 'u:x:5:5::/home/u:/bin/sh\\nv:x:notanumber:5::/:/bin/sh\\nw:x:6:6::relative:/bin/sh\\n' > $R/etc/passwd
    printf 'u:!:1::::::\\n' > $R/etc/shadow
    { printf 'u ALL=(ALL) NOPASSWD: /bin/a'; for i in $(seq 1 3000); do printf ', \\\\\\n /bin/x%d' $i; done; printf '\\n#includedir /etc/sudoers.d\\n'; } > $R/etc/sudoers
    printf '#includedir /etc/sudoers.d\\n' > $R/etc/sudoers.d/loop
    printf 'from="a" ssh-ed25519\\n"unbalanced ssh-rsa AAAA\\n' > $R/home/u/.ssh/authorized_keys
    truncate -s 8M fs.img && mkfs.ext4 -q -F -d $R fs.img
    """
}
