#!/bin/sh
# warden-state.sh: guest client for the Warden state port (virtio-serial port
# "org.warden.state"). POSIX sh; works with busybox ash. Protocol: docs/guest-protocol.md.
#
#   warden-state.sh generation        current VM generation id (the vmgenid GUID)
#   warden-state.sh random N          N fresh random bytes from the host, as hex (N <= 4096)
#   warden-state.sh counter NAME      next value of the monotonic counter NAME
#   warden-state.sh watch             print GENERATION-CHANGED lines as they come, run hooks
#
# Environment: WARDEN_STATE_PORT (device path; found by name otherwise),
# WARDEN_STATE_HOOKS (directory of executables run with the new generation id as $1
# on a GENERATION-CHANGED line; default /etc/warden/generation.d).
set -u
PORT=${WARDEN_STATE_PORT:-}
HOOKS=${WARDEN_STATE_HOOKS:-/etc/warden/generation.d}

die() { echo "warden-state: $*" >&2; exit 2; }

find_port() {
    [ -n "$PORT" ] && return 0
    if [ -e /dev/virtio-ports/org.warden.state ]; then
        PORT=/dev/virtio-ports/org.warden.state; return 0
    fi
    for d in /sys/class/virtio-ports/vport*; do
        [ -r "$d/name" ] || continue
        if [ "$(cat "$d/name")" = org.warden.state ]; then
            PORT=/dev/${d##*/}; return 0
        fi
    done
    return 1
}

generation_changed() {
    # $1: the new generation id. Remember it and run the hooks (re-key, drop sessions...).
    mkdir -p /run/warden 2>/dev/null && printf '%s\n' "$1" > /run/warden/generation
    if [ -d "$HOOKS" ]; then
        for h in "$HOOKS"/*; do
            [ -x "$h" ] && "$h" "$1"
        done
    fi
    echo "warden-state: generation changed to $1" >&2
}

# request LINE: send one request, print the value of the OK answer (exit 0) or the
# ERR reason on stderr (exit 1). Notification lines before the answer are handled.
request() {
    find_port || die "no org.warden.state port (is the VM run by warden vm start?)"
    # The port opens exclusively: retry briefly while another client holds it.
    tries=0
    # ("command exec" so that a failed open does not end the shell.)
    while ! { command exec 3<>"$PORT"; } 2>/dev/null; do
        tries=$((tries + 1))
        [ "$tries" -ge 20 ] && die "cannot open $PORT"
        sleep 1
    done
    printf '%s\n' "$1" >&3
    while IFS= read -r line <&3; do
        case "$line" in
            "GENERATION-CHANGED "*) generation_changed "${line#GENERATION-CHANGED }" ;;
            "OK "*) exec 3<&-; printf '%s\n' "${line#OK }"; return 0 ;;
            "ERR "*) exec 3<&-; echo "warden-state: ${line#ERR }" >&2; return 1 ;;
            *) ;;
        esac
    done
    exec 3<&-
    die "the host closed the state port"
}

[ $# -ge 1 ] || die "usage: warden-state.sh generation | random N | counter NAME | watch"
case "$1" in
    generation) request "GENERATION" ;;
    random) [ $# -eq 2 ] || die "usage: warden-state.sh random N"; request "RANDOM $2" ;;
    counter) [ $# -eq 2 ] || die "usage: warden-state.sh counter NAME"; request "COUNTER $2" ;;
    watch)
        find_port || die "no org.warden.state port"
        { command exec 3<>"$PORT"; } 2>/dev/null || die "cannot open $PORT"
        while IFS= read -r line <&3; do
            case "$line" in
                "GENERATION-CHANGED "*) generation_changed "${line#GENERATION-CHANGED }"
                                        printf '%s\n' "$line" ;;
            esac
        done ;;
    *) die "unknown command $1" ;;
esac
