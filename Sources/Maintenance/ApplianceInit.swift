/// The appliance's `/init`: a busybox shell script that reads the boot's `/plan` (written by
/// ``MaintenancePlan``, every value checked on the host), brings up the restricted network,
/// assembles the guest's filesystems under `/sysroot`, runs the guest's own apt-get and dpkg
/// there in a chroot, unmounts, and powers off. Each step reports one console line
/// `WARDEN-<token> <step> …`; the host believes none of them for the outcome (a guest's
/// maintainer scripts run here as root and could print anything): it re-assesses the disk
/// offline afterwards.
enum ApplianceInit {
    static let script = #"""
    #!/bin/busybox sh
    /bin/busybox --install -s /bin
    export PATH=/bin:/sbin
    set -f
    mount -t proc proc /proc
    mount -t sysfs sys /sys
    mount -t devtmpfs dev /dev
    mkdir -p /dev/pts /run/lvm /run/lock/lvm
    mount -t devpts devpts /dev/pts
    T=x
    while read -r kind rest; do [ "$kind" = token ] && T=$rest; done < /plan
    say() { echo "WARDEN-$T $* @$(cut -d' ' -f1 /proc/uptime)"; }
    while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /lib/modules/load-order
    say ready "$(uname -r)"
    created_rc=""
    finish() {
        [ -n "$created_rc" ] && rm -f /sysroot/usr/sbin/policy-rc.d
        for m in $(awk '$2 ~ "^/sysroot" {print $2}' /proc/mounts | sort -r); do
            umount "$m" 2>/dev/null || mount -o remount,ro "$m" 2>/dev/null || umount -l "$m"
        done
        sync
        say done "$1" "$2"
        poweroff -f
        sleep 60
    }
    plan() { grep "^$1 " /plan | cut -d' ' -f2-; }

    # The network: one address, the gateway; the mirror is reached through QEMU's guestfwd.
    net=$(plan net)
    if [ -n "$net" ]; then
        set -- $net
        ip link set lo up
        ip link set eth0 up && ip addr add "$1" dev eth0 && ip route add default via "$2" || finish fail network
        say network "$1"
        for u in $(plan probe); do
            r=fail
            for try in 1 2 3; do
                if timeout 5 wget -q -O /dev/null "$u" 2>/dev/null; then r=ok; break; fi
                sleep 1
            done
            say probe "$u" "$r"
        done
    fi
    [ "$(plan mode)" = none ] && finish ok probes

    # The disks appear asynchronously.
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ -b /dev/vda ] || finish fail assemble
    group() { [ -f "/lib/modules/group-$1" ] && while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < "/lib/modules/group-$1"; }
    for fs in $(plan mount | cut -d' ' -f2 | sort -u); do
        case "$fs" in ext2|ext3|ext4) group ext4 ;; *) group "$fs" ;; esac
    done
    if [ "$(plan lvm)" = 1 ]; then
        group dm
        CFG='activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } devices { use_devicesfile = 0 }'
        lvm vgchange -ay --sysinit --config "$CFG" 2>&1 | sed 's/^/lvm: /'
        lvm vgmknodes --config "$CFG" 2>&1 | sed 's/^/lvm: /'
    fi
    plan mount > /tmp/mounts
    while read -r dev fs mp opts need; do
        [ "$mp" = / ] && target=/sysroot || target="/sysroot$mp"
        mkdir -p "$target" 2>/dev/null
        if [ "$opts" = - ]; then mount -t "$fs" "$dev" "$target"; else mount -t "$fs" -o "$opts" "$dev" "$target"; fi
        if [ $? != 0 ]; then
            say mount "$mp" fail
            [ "$need" = essential ] && finish fail assemble
        else
            say mount "$mp" ok
        fi
    done < /tmp/mounts
    [ -x /sysroot/usr/bin/apt-get ] && [ -x /sysroot/usr/bin/dpkg ] || finish fail no-apt
    say assembled

    for d in proc sys dev run tmp; do mkdir -p "/sysroot/$d" 2>/dev/null; done
    mount -t proc proc /sysroot/proc
    mount -t sysfs sys /sysroot/sys
    mount -o bind /dev /sysroot/dev
    mount -t devpts devpts /sysroot/dev/pts 2>/dev/null
    mount -t tmpfs -o mode=755 tmpfs /sysroot/run
    mount -t tmpfs -o mode=1777 tmpfs /sysroot/tmp
    W=/sysroot/run/warden
    mkdir -p $W/lists/partial $W/archives/partial $W/parts
    plan source > $W/sources.list
    [ -f /mirror.gpg ] && cp /mirror.gpg $W/mirror.gpg
    if [ ! -e /sysroot/usr/sbin/policy-rc.d ] && [ ! -L /sysroot/usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /sysroot/usr/sbin/policy-rc.d && chmod 755 /sysroot/usr/sbin/policy-rc.d && created_rc=1
    fi
    CH="chroot /sysroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true"
    # The layer is discarded unless the offline re-assessment passes, and QEMU flushes it at
    # exit: dpkg's per-file fsyncs buy nothing here.
    APT="apt-get -q -y -o Dpkg::Options::=--force-unsafe-io -o Dir::Etc::SourceList=/run/warden/sources.list -o Dir::Etc::SourceParts=/run/warden/parts \
      -o Dir::State::Lists=/run/warden/lists -o Dir::Cache::Archives=/run/warden/archives \
      -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Acquire::Retries=2 -o Acquire::http::Timeout=30 \
      -o Acquire::Languages=none -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
    pkgs=$(plan package | tr '\n' ' ')
    $CH $APT update --error-on=any || finish fail update
    say update ok
    case "$(plan mode)" in
        upgrade) $CH $APT install --only-upgrade --no-install-recommends $pkgs ;;
        install) $CH $APT install --no-install-recommends $pkgs ;;
        all) $CH $APT upgrade ;;
        *) false ;;
    esac
    rc=$?
    [ $rc = 0 ] || finish fail "install-rc-$rc"
    say install ok
    audit=$($CH dpkg --audit 2>&1)
    [ -z "$audit" ] || finish fail audit
    finish ok patched
    """#
}
