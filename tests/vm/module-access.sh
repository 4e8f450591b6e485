#!/bin/bash
# Who may use the control device, and how much it may hold: opening
# /dev/dm-user/CTL needs CAP_SYS_ADMIN unless the table's owner=, group=,
# mode= admit the opener; DM_USER_IOC_CLAIM makes the target one process's;
# queue_depth= bounds the requests mapped at once (NOWAIT bios get EAGAIN
# past it, others wait).
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/module-lib.bash"
WAITERS=$VMT_BUILD/tests/module-waiters

# as UID[:GID[:GROUPS]] CMD...: run CMD with those IDs and no capabilities.
as() {
    local uid=${1%%:*} rest gid groups
    rest=${1#*:}
    [ "$rest" = "$1" ] && rest=$uid
    gid=${rest%%:*}
    groups=${rest#*:}
    [ "$groups" = "$rest" ] && groups=
    shift
    if [ -n "$groups" ]; then
        setpriv --reuid="$uid" --regid="$gid" --groups="$groups" --inh-caps=-all -- "$@"
    else
        setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all -- "$@"
    fi
}

# opens WANT WHO CTL: `module-waiters open CTL` as WHO (see as) prints WANT.
opens() {
    local want=$1 who=$2 ctl=$3 got
    got=$(as "$who" "$WAITERS" open "$ctl")
    echo "open /dev/dm-user/$ctl as $who: $got"
    [ "$got" = "$want" ] || fail "open as $who: $got, wanted $want"
}

# Without access options: root only, even when the node's mode is widened.
t_root_only() {
    need_cmd setpriv "$WAITERS"
    dm_user_create ro 8192 ro-ctl || fail "create"
    stat -c '%a %U:%G' /dev/dm-user/ro-ctl
    opens opened 0 ro-ctl
    opens EACCES 1000 ro-ctl
    # The node's permission bits are not what guards it: the driver is.
    chmod 0666 /dev/dm-user/ro-ctl
    opens EPERM 1000 ro-ctl
    dm_user_remove ro || fail "remove"
}

# owner= admits that user (who then serves the device), nobody else; group=
# with its default mode 0660 admits the group; mode= is honoured.
t_owner_group_mode() {
    need_cmd setpriv fio "$WAITERS"
    dm_user_create ow 32768 ow-ctl 1 owner=1000 || fail "create"
    dmsetup table ow
    dmsetup table ow | grep -q 'owner=1000 group=0 mode=0600' || fail "table: $(dmsetup table ow)"
    opens opened 1000 ow-ctl
    opens EACCES 1001 ow-ctl
    opens EACCES 1001:1001:1000 ow-ctl
    as 1000 "$WAITERS" serve ow-ctl block block >/tmp/w.out 2>&1 &
    VMT_DAEMON_PID[w]=$!
    echo "$! w" >>"$VMT_DAEMONS_FILE"
    wait_for 10 grep -q ready /tmp/w.out || fail "the owner's daemon did not start: $(cat /tmp/w.out)"
    fio_verify /dev/mapper/ow --size=4M --iodepth=4 || fail "the owner's daemon does not serve"
    daemon_stop w
    dm_user_remove ow || fail "remove"

    dm_user_create og 8192 og-ctl 2 owner=1000 group=2000 || fail "create"
    dmsetup table og
    opens opened 1001:1001:2000 og-ctl
    opens EACCES 1001 og-ctl
    dm_user_remove og || fail "remove"

    dm_user_create om 8192 om-ctl 2 group=2000 mode=0606 || fail "create"
    opens EACCES 1001:1001:2000 om-ctl
    opens opened 1001 om-ctl
    dm_user_remove om || fail "remove"
    dmsetup create bad --table "0 8192 user 0 8192 bad-ctl 1 mode=999" 2>/dev/null &&
        fail "mode=999 accepted"
    return 0
}

# The first process to claim the target keeps it: another's open and another
# process's channel opened earlier get EBUSY (a stray cat cannot take
# requests); when the claimant exits, the target is free again.
t_claim() {
    need_cmd "$WAITERS" fio
    dm_user_create cl 32768 cl-ctl || fail "create"
    exec 7<>/dev/dm-user/cl-ctl || fail "open before the claim"
    "$WAITERS" claim cl-ctl >/tmp/c1.out 2>&1 &
    VMT_DAEMON_PID[c1]=$!
    echo "$! c1" >>"$VMT_DAEMONS_FILE"
    wait_for 10 grep -q claimed /tmp/c1.out || fail "first claim: $(cat /tmp/c1.out)"
    local out
    out=$("$WAITERS" claim cl-ctl)
    echo "second claimant: $out"
    [ "$out" = EBUSY ] || fail "a second process could open or claim: $out"
    out=$(timeout 10 cat /dev/dm-user/cl-ctl 2>&1)
    echo "cat: $out"
    grep -q 'busy' <<<"$out" || fail "cat of a claimed target: '$out'"
    out=$(timeout 10 dd bs=4096 count=1 <&7 2>&1 >/dev/null)
    echo "read on a channel opened before the claim: $out"
    grep -q 'busy' <<<"$out" || fail "read on another process's channel: '$out'"
    exec 7>&-
    daemon_stop c1
    out=$("$WAITERS" open cl-ctl)
    [ "$out" = opened ] || fail "after the claimant exited: $out"
    # A claiming daemon serves as usual.
    "$WAITERS" serve cl-ctl block uring >/tmp/w.out 2>&1 &
    VMT_DAEMON_PID[w]=$!
    echo "$! w" >>"$VMT_DAEMONS_FILE"
    wait_for 10 grep -q ready /tmp/w.out || fail "daemon: $(cat /tmp/w.out)"
    fio_verify /dev/mapper/cl --size=4M --iodepth=4 || fail "serve after the claim ended"
    daemon_stop w
    dm_user_remove cl || fail "remove"
}

# queue_depth=4 with a daemon that holds 4 requests: a fifth waits in map
# (nothing more is queued), a NOWAIT read gets EAGAIN at once; when the
# holder answers, the fifth goes through.
t_queue_depth() {
    need_cmd "$PROBE" "$WAITERS"
    dm_user_create qd 8192 qd-ctl 1 queue_depth=4 || fail "create"
    dmsetup table qd | grep -q 'queue_depth=4' || fail "table: $(dmsetup table qd)"
    "$PROBE" hold qd-ctl 4 >/tmp/hold.out 2>&1 &
    VMT_DAEMON_PID[hold]=$!
    echo "$! hold" >>"$VMT_DAEMONS_FILE"
    local i
    for i in 0 1 2 3; do
        dd if=/dev/mapper/qd of=/dev/null bs=4k count=1 skip=$i iflag=direct 2>/dev/null &
    done
    wait_for 20 grep -q 'holding 4' /tmp/hold.out || fail "holder: $(cat /tmp/hold.out); $(dmsetup status qd)"
    dd if=/dev/mapper/qd of=/dev/null bs=4k count=1 skip=9 iflag=direct 2>/tmp/dd5.err &
    local dd5=$!
    wait_for 20 grep -q '^State:.*D' /proc/$dd5/status || fail "the fifth read is not waiting: $(grep State /proc/$dd5/status)"
    dmsetup status qd
    dmsetup status qd | grep -q ' queued=0 inflight_read=4 ' || fail "past the depth: $(dmsetup status qd)"
    local out
    out=$("$WAITERS" nowait-read /dev/mapper/qd)
    echo "NOWAIT read at full depth: $out"
    [ "$out" = EAGAIN ] || fail "NOWAIT read at full depth: $out, wanted EAGAIN"
    serve d qd-ctl
    kill -USR1 "$(daemon_pid hold)"
    wait "$dd5" || fail "the fifth read failed: $(cat /tmp/dd5.err)"
    daemon_wait hold 10 || fail "holder"
    out=$("$WAITERS" nowait-read /dev/mapper/qd)
    echo "NOWAIT read with room: $out"
    [ "$out" = read ] || fail "NOWAIT read with room: $out"
    wait_for 10 idle qd || fail "left: $(dmsetup status qd)"
    daemon_stop d
    dm_user_remove qd || fail "remove"
}

mtest access-root-only t_root_only 120
mtest access-owner-group-mode t_owner_group_mode 180
mtest access-claim t_claim 180
mtest access-queue-depth t_queue_depth 180
vm_tests_run
